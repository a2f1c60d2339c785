"""The history store on SQLite and PostgreSQL: transactions, dedup, retention, paging, migrations, orphan sweeping."""

import io
import threading
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from PIL import Image

from loupe.history.image_store import ImageStore, sha256_of
from loupe.history.schema import current_revision, head_revision, make_engine, migrate
from loupe.history.store import HistoryStore, NewImage, utcnow
from loupe.settings import Settings


def photo(seed=0, size=(40, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", size, (seed % 256, 80, 160)).save(buffer, "PNG")
    return NewImage(buffer.getvalue(), "image/png", *size)


def record(created=None, status="completed", **fields):
    return {
        "id": str(uuid.uuid4()),
        "created_at": created or utcnow(),
        "finished_at": utcnow(),
        "status": status,
        "client": "127.0.0.1",
        "model": "tiny",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "sampling": {"max_tokens": 4},
        "stream": False,
        "answer": "hello",
        "finish_reason": "stop",
        "usage": None,
        "timings": None,
        "error": None,
        **fields,
    }


def open_store(tmp_path, database_url="", **env):
    return HistoryStore.open(Settings.from_mapping({"DATA_DIR": str(tmp_path), "DATABASE_URL": database_url, **env}))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request) -> str:
    """Each database the history runs on: SQLite in DATA_DIR (""), and a fresh PostgreSQL database."""
    return "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def store(tmp_path, database_url):
    opened = open_store(tmp_path, database_url)
    yield opened
    opened.close()


def files(store):
    return sorted(store.images.addresses())


def test_a_record_round_trips_with_its_images_in_order(store):
    first, second = photo(1), photo(2, (64, 48))
    rec = record()
    store.add(rec, [first, second, first])
    got = store.get(rec["id"])
    assert {k: got[k] for k in rec} == rec
    assert [(i["position"], i["sha256"], i["width"]) for i in got["images"]] == [
        (0, sha256_of(first.data), 40),
        (1, sha256_of(second.data), 64),
        (2, sha256_of(first.data), 40),
    ]
    assert got["images"][1] | {"created_at": None} == {
        "position": 1,
        "sha256": sha256_of(second.data),
        "mime": "image/png",
        "size": len(second.data),
        "width": 64,
        "height": 48,
        "created_at": None,
    }
    row, path = store.image(rec["id"], 1)
    assert path.read_bytes() == second.data and row["mime"] == "image/png"
    assert store.image(rec["id"], 3) is None and store.get(str(uuid.uuid4())) is None


def test_the_same_photo_is_kept_once_and_deleted_with_its_last_record(store):
    shared, own = photo(1), photo(2)
    a, b = record(), record()
    store.add(a, [shared, own])
    store.add(b, [shared])
    assert files(store) == sorted({sha256_of(shared.data), sha256_of(own.data)})
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM images").scalar() == 2
    assert store.delete(a["id"]) is True
    assert files(store) == [sha256_of(shared.data)]  # b still uses it
    assert store.delete(a["id"]) is False
    store.delete(b["id"])
    assert files(store) == [] and store.missing_images() == []


def test_a_failed_insert_rolls_back_the_whole_record_and_leaves_only_a_sweepable_file(store):
    kept = record()
    store.add(kept, [photo(1)])
    clash = record(id=kept["id"])  # the same primary key: the insert must fail
    with pytest.raises(sa.exc.IntegrityError):
        store.add(clash, [photo(2)])
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM images").scalar() == 1
        assert connection.exec_driver_sql("SELECT count(*) FROM inference_images").scalar() == 1
    assert store.get(kept["id"])["answer"] == "hello"
    assert len(files(store)) == 2  # the new image's file was written first...
    assert store.sweep(older_than=0) == 1  # ...and is an orphan the startup sweep removes
    assert files(store) == [sha256_of(photo(1).data)]


def test_the_sweep_spares_young_files_and_removes_old_temp_files(store, tmp_path):
    sha = store.images.put(b"not in the database")
    temp = store.images.root / sha[:2] / f".{sha[:8]}-x.tmp"
    temp.write_bytes(b"half written")
    assert store.sweep(older_than=3600) == 0
    assert store.sweep(older_than=0) == 2 and files(store) == [] and not temp.exists()


def test_retention_keeps_the_newest_records(tmp_path, database_url):
    store = open_store(tmp_path, database_url, HISTORY_MAX_RECORDS="3")
    now = utcnow()
    made = [record(created=now - timedelta(minutes=10 - i)) for i in range(5)]
    for i, rec in enumerate(made):
        store.add(rec, [photo(i)])
    page = store.page(limit=10)
    assert [r["id"] for r in page.records] == [r["id"] for r in reversed(made[2:])]
    assert len(files(store)) == 3
    store.close()


def test_retention_by_age_also_runs_at_startup(tmp_path, database_url):
    store = open_store(tmp_path, database_url)
    old, new = record(created=utcnow() - timedelta(days=10)), record()
    store.add(old, [photo(1)])
    store.add(new, [photo(2)])
    store.close()
    store = open_store(tmp_path, database_url, HISTORY_MAX_DAYS="7")
    assert [r["id"] for r in store.page(limit=10).records] == [new["id"]]
    assert files(store) == [sha256_of(photo(2).data)]
    store.close()


def test_paging_is_newest_first_and_stable_under_inserts(store):
    now = utcnow()
    made = [
        record(created=now - timedelta(seconds=100 - i), status="failed" if i % 3 == 0 else "completed")
        for i in range(25)
    ]
    for rec in made:
        store.add(rec, [])
    seen, cursor = [], None
    while True:
        page = store.page(limit=10, before=cursor)
        seen += [r["id"] for r in page.records]
        store.add(record(), [])  # a newer record must not shift the pages being read
        if not page.more:
            break
        cursor = (page.records[-1]["created_at"], page.records[-1]["id"])
    assert seen == [r["id"] for r in reversed(made)]
    failed = store.page(limit=100, status="failed", until=now)
    assert [r["id"] for r in failed.records] == [r["id"] for r in reversed(made) if r["status"] == "failed"]
    recent = store.page(limit=100, since=now - timedelta(seconds=80), until=now)
    assert len(recent.records) == 5


def test_threads_recording_at_once_lose_nothing(store):
    shared = photo(7)
    errors = []

    def work():
        try:
            for _ in range(10):
                store.add(record(), [shared, photo(uuid.uuid4().int % 256)])
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    assert len(store.page(limit=100).records) == 80
    assert store.missing_images() == []


def test_sqlite_is_in_wal_mode_and_sound(tmp_path):
    store = open_store(tmp_path)
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    store.close()


def test_migrations_from_an_empty_file(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    assert current_revision(engine) is None
    migrate(engine)
    assert current_revision(engine) == head_revision() == "0003"
    assert {"inferences", "images", "inference_images", "alembic_version"} <= set(sa.inspect(engine).get_table_names())
    migrate(engine)  # idempotent at every start
    engine.dispose()


def test_migration_from_the_previous_schema_keeps_the_records(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'history.db'}")
    migrate(engine, "0001")
    old = record()
    del old["client"]  # 0001 had no client column
    image = photo(3)
    sha = ImageStore(tmp_path / "images").put(image.data)
    with engine.begin() as connection:
        connection.execute(
            sa.table("inferences", *[sa.column(k) for k in old]).insert(), [old | {"messages": "[]", "sampling": "{}"}]
        )
        connection.exec_driver_sql(
            "INSERT INTO images VALUES (?, 'image/png', ?, 40, 30, '2026-01-01 00:00:00')", (sha, len(image.data))
        )
        connection.exec_driver_sql("INSERT INTO inference_images VALUES (?, 0, ?)", (old["id"], sha))
    engine.dispose()
    store = open_store(tmp_path)
    assert current_revision(store.engine) == "0003"
    got = store.get(old["id"])
    assert (
        got["client"] is None
        and got["boxes"] is None
        and got["answer"] == "hello"
        and got["images"][0]["sha256"] == sha
    )
    assert {i["name"] for i in sa.inspect(store.engine).get_indexes("inferences")} >= {"ix_inferences_created"}
    assert store.images.read(sha) == image.data


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ab", "A" * 64, "../" + "a" * 61])
def test_image_paths_are_only_ever_addresses(tmp_path, bad):
    with pytest.raises(ValueError):
        ImageStore(tmp_path).path(bad)
