"""The history database: its tables (SQLAlchemy Core), its engine, and Alembic migrations at startup."""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_KEY = 0x4C6F757065  # "Loupe": the PostgreSQL advisory lock held while migrating
IMAGES_LOCK_KEY = MIGRATION_LOCK_KEY + 1  # the one that orders image files' writes and deletes between instances

metadata = sa.MetaData()

inferences = sa.Table(
    "inferences",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("finished_at", sa.DateTime(), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("client", sa.String(64), nullable=True),
    sa.Column("model", sa.Text(), nullable=False),
    sa.Column("messages", sa.JSON(), nullable=False),
    sa.Column("sampling", sa.JSON(), nullable=False),
    sa.Column("stream", sa.Boolean(), nullable=False),
    sa.Column("answer", sa.Text(), nullable=False),
    sa.Column("finish_reason", sa.String(16), nullable=True),
    sa.Column("usage", sa.JSON(), nullable=True),
    sa.Column("timings", sa.JSON(), nullable=True),
    sa.Column("error", sa.JSON(), nullable=True),
    sa.Column("boxes", sa.JSON(), nullable=True),
    sa.Index("ix_inferences_created", "created_at", "id"),
    sa.Index("ix_inferences_status_created", "status", "created_at", "id"),
)

images = sa.Table(
    "images",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("mime", sa.String(32), nullable=False),
    sa.Column("size", sa.Integer(), nullable=False),
    sa.Column("width", sa.Integer(), nullable=False),
    sa.Column("height", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
)

inference_images = sa.Table(
    "inference_images",
    metadata,
    sa.Column("inference_id", sa.String(36), sa.ForeignKey("inferences.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("position", sa.Integer(), primary_key=True),
    sa.Column("sha256", sa.String(64), sa.ForeignKey("images.sha256"), nullable=False, index=True),
)


def make_engine(url: str) -> sa.Engine:
    """A pooled, thread-safe engine; SQLite gets WAL, foreign keys and real transactions."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})  # wait up to 30 s for a writer
    sa.event.listen(engine, "connect", _sqlite_connect)
    sa.event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN"))
    return engine


def _sqlite_connect(dbapi_connection, _record) -> None:
    """Per connection: WAL (readers never block the writer), enforced foreign keys, explicit BEGIN."""
    # pysqlite would otherwise open transactions late and commit DDL on its own: take that over.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(connection: sa.Connection) -> Config:
    """Alembic's configuration, without an ini file, bound to an open connection."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(engine: sa.Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (all of it by default) in one transaction."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Instances sharing one database may start together: they migrate one at a time.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        before = MigrationContext.configure(connection).get_current_revision()
        command.upgrade(alembic_config(connection), revision)
        after = MigrationContext.configure(connection).get_current_revision()
    if before != after:
        log.info("history: database schema %s -> %s", before or "empty", after)


def current_revision(engine: sa.Engine) -> str | None:
    """The schema revision the database is at (None when empty)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The newest schema revision this code knows."""
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {MIGRATIONS}")
    return head
