"""The client's address on each record, and indexes for newest-first paging by date and status.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inferences") as batch:
        batch.add_column(sa.Column("client", sa.String(64), nullable=True))
    op.create_index("ix_inferences_created", "inferences", ["created_at", "id"])
    op.create_index("ix_inferences_status_created", "inferences", ["status", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_inferences_status_created", "inferences")
    op.drop_index("ix_inferences_created", "inferences")
    with op.batch_alter_table("inferences") as batch:
        batch.drop_column("client")
