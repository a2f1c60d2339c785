"""Shared fixtures: a tiny random-weight Qwen3-VL, settings, apps and engines (closed after), a live gunicorn
server, a Redis and a PostgreSQL; and a check that no test leaves an engine running."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loupe.settings import Settings
from loupe.web.services import services
from tests.support.cpu import VARIANT_PARAMS
from tests.support.devices import DEVICES
from tests.support.engines import Engines, running_engines, wait_ready
from tests.support.live_server import KERNEL_CACHE_DIR, ROOT, LiveServer
from tests.support.postgres import PostgresServer, postgres_bin
from tests.support.redis_server import running_redis
from tests.support.tiny_model import build_tiny_model

_LEFT_BY_TESTS: set[threading.Thread] = set()  # engine threads a test has already been failed for


@pytest.fixture(scope="session", autouse=True)
def no_engine_left_at_the_end() -> Iterator[None]:
    """Fail the session if a fixture's engine still runs once every fixture is torn down."""
    before = running_engines()
    yield
    left = running_engines() - before - _LEFT_BY_TESTS
    assert not left, f"{len(left)} engine(s) still running at the end of the session: close them (see `engines`)"


@pytest.fixture(autouse=True)
def no_engine_left_by_the_test() -> Iterator[None]:
    """Fail a test that leaves an engine it started running (the `engines` fixture closes its own)."""
    before = running_engines()
    yield
    left = running_engines() - before - _LEFT_BY_TESTS
    _LEFT_BY_TESTS.update(left)
    assert not left, f"{len(left)} engine(s) this test started still run: start them with the `engines` fixture"


@pytest.fixture
def engines() -> Iterator[Engines]:
    """Start engines, and apps that start their own, through this: `engines.ready(backend)`,
    `engines.start(load)`, `engines.app(settings)`. All are closed when the test ends."""
    started = Engines()
    yield started
    started.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight Qwen3-VL in Hugging Face format, built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3-vl"))


@pytest.fixture(scope="session")
def settings(tiny_model_dir, tmp_path_factory) -> Settings:
    """Test settings: the tiny model, small limits so tests stay quick, history in a temporary directory;
    no rate limit (its own tests set one)."""
    settings = Settings.from_mapping(
        {
            "MODEL_ID": str(tiny_model_dir),
            "MAX_NEW_TOKENS": "8",
            "MAX_IMAGE_BYTES": str(2 * 1024 * 1024),
            "MAX_IMAGES": "3",
            "MAX_REQUEST_BYTES": str(4 * 1024 * 1024),
            "QUEUE_SIZE": "2",
            "RATE_LIMIT": "off",
            "KERNEL_CACHE_DIR": str(KERNEL_CACHE_DIR),
        }
    )
    return settings.replace(data_dir=str(tmp_path_factory.mktemp("history")))


@pytest.fixture(scope="session")
def backend(settings):
    """The tiny model loaded through the real loader."""
    import model_loader

    return model_loader.load_backend(settings)


@pytest.fixture(scope="session", params=DEVICES)
def device_backend(request, settings):
    """The tiny model on each device (tests/support/devices.py): the CPU's is `backend`, a GPU's its own."""
    if request.param == "cpu":
        return request.getfixturevalue("backend")
    import model_loader

    return model_loader.load_backend(settings.replace(device=request.param))


@pytest.fixture(scope="session", params=VARIANT_PARAMS)
def native(request) -> str:
    """Each variant of Loupe's native kernels this CPU runs, built (or found): its name. Skipped only on a CPU
    that runs none; a variant that does not build fails (CI installs g++)."""
    from loupe.runtime import native_build

    problem = native_build.unavailable(str(KERNEL_CACHE_DIR), request.param)
    assert problem is None, problem
    return request.param


@pytest.fixture(scope="session")
def app(settings, backend):
    """An app whose engine has loaded the tiny model (the loader's singleton makes this quick); closed at the end."""
    started = Engines()
    application = started.app(settings)
    try:
        wait_ready(services(application).engine)
        yield application
    finally:
        started.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def live_server(tiny_model_dir, tmp_path):
    """Start real gunicorn servers on the tiny model: `live_server(**env)`; stopped after the test."""
    servers: list[LiveServer] = []

    def start(ready_status: str = "ok", **env: str) -> LiveServer:
        server = LiveServer({"MODEL_ID": str(tiny_model_dir), **env}, tmp_path / f"server{len(servers)}.log")
        servers.append(server)
        return server.start(ready_status)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def readme_text() -> str:
    return (ROOT / "README.md").read_text()


@pytest.fixture(scope="session")
def docs_text(readme_text) -> str:
    """The README and every page of docs/, in that order: where a reader finds the examples that must run."""
    return "\n".join([readme_text, *(page.read_text() for page in sorted((ROOT / "docs").glob("*.md")))])


@pytest.fixture
def redis_uri(tmp_path) -> Iterator[str]:
    """A real redis-server of the test's own on a free loopback port, nothing saved; its URI."""
    with running_redis(tmp_path) as uri:
        yield uri


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Debian's PostgreSQL on a free loopback port, started once per session (tests/support/postgres.py)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.fail("PostgreSQL is not installed (tests/test.sh installs Debian's postgresql)")
    server = PostgresServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A new, empty database on the session's PostgreSQL: its SQLAlchemy URL (DATABASE_URL)."""
    name = f"t{uuid.uuid4().hex}"
    postgres_server.sql(f"CREATE DATABASE {name}", database="postgres")
    return postgres_server.url.rsplit("/", 1)[0] + f"/{name}"
