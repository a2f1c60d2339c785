"""The history store: inference records and their images, one transaction per record, with retention."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from loupe.history.image_store import ImageStore
from loupe.history.schema import IMAGES_LOCK_KEY, images, inference_images, inferences, make_engine, migrate
from loupe.settings import Settings

log = logging.getLogger(__name__)

ORPHAN_GRACE_SECONDS = 3600  # files younger than this may belong to a record another process is writing
_BATCH = 500  # ids per IN (...) list: well under every database's parameter limit


def utcnow() -> datetime:
    """Now, in UTC, without tzinfo: how every time is stored (the same on SQLite and PostgreSQL)."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class NewImage:
    """An image to record: the bytes exactly as the client sent them, and what they are."""

    data: bytes
    mime: str
    width: int
    height: int


@dataclass(frozen=True)
class Page:
    """One page of records, newest first; `more` says whether older ones follow."""

    records: list[dict]
    more: bool


class HistoryStore:
    """Records in a SQL database, images in content-addressed files; safe to share between threads."""

    def __init__(self, engine: sa.Engine, image_store: ImageStore, max_days: int = 0, max_records: int = 0):
        self.engine = engine
        self.images = image_store
        self.max_days = max_days
        self.max_records = max_records
        self._write_lock = threading.Lock()  # see _writing

    @classmethod
    def open(cls, settings: Settings) -> HistoryStore:
        """Create the data directory, migrate the schema, sweep orphan files and apply retention."""
        data_dir = Path(settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.history_database_url)
        migrate(engine)
        store = cls(engine, ImageStore(data_dir / "images"), settings.history_max_days, settings.history_max_records)
        store.sweep(ORPHAN_GRACE_SECONDS)
        store.prune()
        return store

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def add(self, record: dict, new_images: Sequence[NewImage]) -> None:
        """Store a record: image files first (atomically), then its row and image rows in one transaction."""
        with self._writing(exclusive=False) as connection:
            shas = [self.images.put(image.data) for image in new_images]
            try:
                self._insert(connection, record, new_images, shas)
            except sa.exc.IntegrityError:
                # Another instance added one of these images between our check and our insert.
                self._insert(connection, record, new_images, shas)
            for image, sha in zip(new_images, shas, strict=True):
                if not self.images.exists(sha):  # a process without the lock (SQLite) deleted it: put it back
                    self.images.put(image.data)
        self.prune()

    @contextmanager
    def _writing(self, exclusive: bool) -> Iterator[sa.Connection]:
        """A connection for one write, with the lock that keeps deletes from removing files a record names.

        Held from an image file's write until its row commits, and from a row's delete until its file is
        gone. Within the process a thread lock; on PostgreSQL also a session advisory lock, so instances
        sharing the database and DATA_DIR order their writes too: adds share it, deletes take it alone.
        """
        with self._write_lock, self.engine.connect() as connection:
            if connection.dialect.name != "postgresql":
                yield connection
                return
            mode = "" if exclusive else "_shared"
            key = {"key": IMAGES_LOCK_KEY}
            connection.execute(sa.text(f"SELECT pg_advisory_lock{mode}(:key)"), key)
            connection.commit()  # ends the implicit transaction; a session lock outlives it
            try:
                yield connection
            finally:
                connection.rollback()
                connection.execute(sa.text(f"SELECT pg_advisory_unlock{mode}(:key)"), key)
                connection.commit()

    def _insert(self, connection: sa.Connection, record: dict, new_images: Sequence[NewImage], shas: list[str]) -> None:
        """The record, its new image rows and its image links, in one transaction."""
        with connection.begin():
            connection.execute(sa.insert(inferences), [record])  # a write first: takes SQLite's write lock
            self._insert_images(connection, new_images, shas)
            if shas:
                connection.execute(
                    sa.insert(inference_images),
                    [{"inference_id": record["id"], "position": n, "sha256": sha} for n, sha in enumerate(shas)],
                )

    @staticmethod
    def _insert_images(connection: sa.Connection, new_images: Sequence[NewImage], shas: list[str]) -> None:
        """Image rows for the addresses not yet known (the same photo is kept once)."""
        known = set(connection.scalars(sa.select(images.c.sha256).where(images.c.sha256.in_(set(shas)))))
        rows, now = {}, utcnow()
        for image, sha in zip(new_images, shas, strict=True):
            if sha not in known:
                rows[sha] = {
                    "sha256": sha,
                    "mime": image.mime,
                    "size": len(image.data),
                    "width": image.width,
                    "height": image.height,
                    "created_at": now,
                }
        if rows:
            # In address order: two instances adding the same new images never wait on each other in a cycle.
            connection.execute(sa.insert(images), [rows[sha] for sha in sorted(rows)])

    def get(self, record_id: str) -> dict | None:
        """One record with its images (in order), or None."""
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(inferences).where(inferences.c.id == record_id)).first()
            if row is None:
                return None
            record = dict(row._mapping)
            record["images"] = self._images_of(connection, [record_id]).get(record_id, [])
        return record

    def page(
        self,
        limit: int,
        before: tuple[datetime, str] | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Page:
        """Records newest first, after the `before` (created_at, id) cursor, filtered by status and date."""
        query = sa.select(inferences).order_by(inferences.c.created_at.desc(), inferences.c.id.desc())
        if before is not None:
            created, record_id = before
            query = query.where(
                sa.or_(
                    inferences.c.created_at < created,
                    sa.and_(inferences.c.created_at == created, inferences.c.id < record_id),
                )
            )
        if status is not None:
            query = query.where(inferences.c.status == status)
        if since is not None:
            query = query.where(inferences.c.created_at >= since)
        if until is not None:
            query = query.where(inferences.c.created_at < until)
        with self.engine.connect() as connection:
            rows = [dict(r._mapping) for r in connection.execute(query.limit(limit + 1))]
            records = rows[:limit]
            images_of = self._images_of(connection, [r["id"] for r in records])
        for record in records:
            record["images"] = images_of.get(record["id"], [])
        return Page(records, len(rows) > limit)

    @staticmethod
    def _images_of(connection: sa.Connection, record_ids: list[str]) -> dict[str, list[dict]]:
        """Each record's image rows, in position order."""
        if not record_ids:
            return {}
        query = (
            sa.select(inference_images.c.inference_id, inference_images.c.position, images)
            .join(images, images.c.sha256 == inference_images.c.sha256)
            .where(inference_images.c.inference_id.in_(record_ids))
            .order_by(inference_images.c.inference_id, inference_images.c.position)
        )
        found: dict[str, list[dict]] = {}
        for row in connection.execute(query):
            image = dict(row._mapping)
            found.setdefault(image.pop("inference_id"), []).append(image)
        return found

    def image(self, record_id: str, position: int) -> tuple[dict, Path] | None:
        """The image at `position` of a record: its row and its file, or None."""
        query = (
            sa.select(images)
            .join(inference_images, images.c.sha256 == inference_images.c.sha256)
            .where(inference_images.c.inference_id == record_id, inference_images.c.position == position)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        return dict(row._mapping), self.images.path(row.sha256)

    def delete(self, record_id: str) -> bool:
        """Delete a record and every image no other record uses; False if there was no such record."""
        return self.delete_many([record_id]) > 0

    def delete_many(self, record_ids: Iterable[str]) -> int:
        """Delete records (in batches) and the images only they used; returns how many were deleted."""
        ids, deleted = list(record_ids), 0
        for start in range(0, len(ids), _BATCH):
            deleted += self._delete_batch(ids[start : start + _BATCH])
        return deleted

    def _delete_batch(self, ids: list[str]) -> int:
        """One transaction: the records, their image links, then the images nobody names any more."""
        with self._writing(exclusive=True) as connection:
            with connection.begin():
                links = inference_images.c
                shas = set(connection.scalars(sa.select(links.sha256).where(links.inference_id.in_(ids))))
                connection.execute(sa.delete(inference_images).where(links.inference_id.in_(ids)))
                deleted = connection.execute(sa.delete(inferences).where(inferences.c.id.in_(ids))).rowcount
                used = set(connection.scalars(sa.select(links.sha256).where(links.sha256.in_(shas))))
                unused = shas - used
                if unused:
                    connection.execute(sa.delete(images).where(images.c.sha256.in_(unused)))
            for sha in unused:  # after the commit: a crash here leaves an orphan file, never a dangling row
                self.images.delete(sha)
        return deleted

    def prune(self, now: datetime | None = None) -> int:
        """Apply retention: drop records older than `max_days` and beyond the newest `max_records`."""
        if not self.max_days and not self.max_records:
            return 0
        doomed: set[str] = set()
        with self.engine.connect() as connection:
            if self.max_days:
                cutoff = (now or utcnow()) - timedelta(days=self.max_days)
                doomed.update(connection.scalars(sa.select(inferences.c.id).where(inferences.c.created_at < cutoff)))
            if self.max_records:
                query = (
                    sa.select(inferences.c.id)
                    .order_by(inferences.c.created_at.desc(), inferences.c.id.desc())
                    .offset(self.max_records)
                )
                doomed.update(connection.scalars(query))
        deleted = self.delete_many(sorted(doomed))
        if deleted:
            log.info("history: retention deleted %d records", deleted)
        return deleted

    def sweep(self, older_than: float = ORPHAN_GRACE_SECONDS) -> int:
        """Delete image files no image row names (left by a crash), if older than `older_than` seconds."""
        # Under the lock: another instance may be recording a record that names an old orphan file again.
        with self._writing(exclusive=True) as connection:
            keep = set(connection.scalars(sa.select(images.c.sha256)))
            return self.images.sweep(keep, older_than)

    def missing_images(self) -> list[str]:
        """Addresses that rows name but whose files are gone (should always be empty)."""
        with self.engine.connect() as connection:
            named = set(connection.scalars(sa.select(images.c.sha256)))
        return sorted(sha for sha in named if not self.images.exists(sha))
