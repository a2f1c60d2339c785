"""The history on a real PostgreSQL shared by several processes: migrations at once, writes and deletes at once.

The store's own behaviour on PostgreSQL (round trips, dedup, retention, paging) is test_history_store.py, run
on both databases.
"""

import multiprocessing
import uuid

from loupe.history.schema import current_revision, head_revision, make_engine, migrate
from loupe.history.store import HistoryStore
from loupe.settings import Settings
from tests.test_history_store import photo, record

PROCESSES = 3


def _settings(url: str, data_dir: str) -> Settings:
    return Settings.from_mapping({"DATA_DIR": data_dir, "DATABASE_URL": url})


def _start_together(url: str, data_dir: str, barrier) -> None:
    """One instance's start: wait for the others, then open (and so migrate) the shared history."""
    barrier.wait(30)
    HistoryStore.open(_settings(url, data_dir)).close()


def _write_and_delete(url: str, data_dir: str, seed: int, rounds: int, barrier) -> None:
    """One instance's traffic: records sharing one photo, each followed by deleting the previous one."""
    store = HistoryStore.open(_settings(url, data_dir))
    barrier.wait(30)
    previous = None
    for n in range(rounds):
        made = record(answer=f"{seed}-{n}")
        store.add(made, [photo(7), photo(seed * 100 + n % 50)])
        if previous is not None and n % 2:
            assert store.delete(previous["id"])
        previous = made
    store.close()


def _run_together(target, args_of) -> None:
    """Run `target(*args_of(n), barrier)` in PROCESSES fresh interpreters released together; all must succeed."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    processes = [context.Process(target=target, args=(*args_of(n), barrier)) for n in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert [p.exitcode for p in processes] == [0] * PROCESSES


def test_instances_starting_together_migrate_once(postgres_url, tmp_path):
    _run_together(_start_together, lambda n: (postgres_url, str(tmp_path)))
    store = HistoryStore.open(_settings(postgres_url, str(tmp_path)))
    assert current_revision(store.engine) == head_revision()
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
    store.close()


def test_instances_writing_and_deleting_at_once_lose_nothing(postgres_url, tmp_path):
    rounds = 20
    _run_together(_write_and_delete, lambda n: (postgres_url, str(tmp_path), n + 1, rounds))
    store = HistoryStore.open(_settings(postgres_url, str(tmp_path)))
    kept = store.page(limit=1000).records
    # Each process deleted every other record it made, the one before an odd round: half of each run is left.
    assert len(kept) == PROCESSES * rounds // 2
    assert store.missing_images() == []  # no delete removed a file a record made elsewhere still names
    named = {image["sha256"] for r in kept for image in r["images"]}
    assert set(store.images.addresses()) == named  # and every file left is one a record names
    store.close()


def test_a_postgres_database_at_the_first_revision_is_migrated(postgres_url, tmp_path):
    engine = make_engine(postgres_url)
    migrate(engine, "0001")
    assert current_revision(engine) == "0001"
    engine.dispose()
    store = HistoryStore.open(_settings(postgres_url, str(tmp_path)))
    assert current_revision(store.engine) == head_revision()
    made = record(id=str(uuid.uuid4()))
    store.add(made, [photo(1)])
    assert store.get(made["id"])["answer"] == "hello"
    store.close()
