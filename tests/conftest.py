"""Shared fixtures: a tiny random-weight Qwen3-VL, settings, apps, a live gunicorn server and a Redis."""
from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app import create_app
from loupe.settings import Settings
from tests.support.live_server import KERNEL_CACHE_DIR, ROOT, LiveServer
from tests.support.tiny_model import build_tiny_model
from tests.support.waiting import wait_until


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight Qwen3-VL in Hugging Face format, built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3-vl"))


@pytest.fixture(scope="session")
def settings(tiny_model_dir, tmp_path_factory) -> Settings:
    """Test settings: the tiny model, small limits so tests stay quick, history in a temporary directory;
    no rate limit (its own tests set one)."""
    settings = Settings.from_mapping({"MODEL_ID": str(tiny_model_dir), "MAX_NEW_TOKENS": "8",
                                      "MAX_IMAGE_BYTES": str(2 * 1024 * 1024), "MAX_IMAGES": "3",
                                      "MAX_REQUEST_BYTES": str(4 * 1024 * 1024), "QUEUE_SIZE": "2",
                                      "RATE_LIMIT": "off", "KERNEL_CACHE_DIR": str(KERNEL_CACHE_DIR)})
    return settings.replace(data_dir=str(tmp_path_factory.mktemp("history")))


@pytest.fixture(scope="session")
def backend(settings):
    """The tiny model loaded through the real loader."""
    import model_loader

    return model_loader.load_backend(settings)


@pytest.fixture(scope="session")
def native() -> None:
    """Build (or find) Loupe's native kernels; skip where they cannot be (test_model_kernels covers why)."""
    from loupe.runtime import native_kernel

    problem = native_kernel.unavailable(str(KERNEL_CACHE_DIR))
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="session")
def app(settings, backend):
    """An app whose engine has loaded the tiny model (the loader's singleton makes this quick)."""
    application = create_app(settings)
    engine = application.extensions["loupe"].engine
    wait_until(lambda: engine.status != "loading", timeout=60, message="the session's engine to load the tiny model")
    assert engine.status == "ok", engine.error
    return application


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


@pytest.fixture
def redis_uri(tmp_path) -> Iterator[str]:
    """A real redis-server of the test's own on a free loopback port, nothing saved; its URI."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail("redis-server is not installed (tests/test.sh installs Debian's redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_for_redis(uri, server)
        yield uri
    finally:
        server.terminate()
        server.wait(10)


def _wait_for_redis(uri: str, server: subprocess.Popen) -> None:
    """Return once the server answers PING; fail if it exits or stays silent for 10 s."""
    client = redis.Redis.from_url(uri, socket_timeout=1)

    def answers() -> bool:
        if server.poll() is not None:
            pytest.fail(f"redis-server exited with {server.returncode}")
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    wait_until(answers, timeout=10, interval=0.05, message="redis-server to answer PING")
