"""Shared fixtures: a tiny random-weight Qwen3-VL, settings, apps and a live gunicorn server."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from app import create_app
from config import Settings
from live_server import ROOT, LiveServer
from tiny_model import build_tiny_model


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
                                      "RATE_LIMIT": "off"})
    return settings.replace(data_dir=str(tmp_path_factory.mktemp("history")))


@pytest.fixture(scope="session")
def backend(settings):
    """The tiny model loaded through the real loader."""
    import model_loader

    return model_loader.load_backend(settings)


@pytest.fixture(scope="session")
def app(settings, backend):
    """An app whose engine has loaded the tiny model (the loader's singleton makes this quick)."""
    application = create_app(settings)
    engine = application.extensions["loupe"].engine
    deadline = time.monotonic() + 60
    while engine.status == "loading" and time.monotonic() < deadline:
        time.sleep(0.02)
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
