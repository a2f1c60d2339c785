"""Engines that tests start, themselves or through create_app, kept so that they can all be closed after."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from app import create_app
from loupe.engine.engine import Engine
from loupe.engine.generation import Backend
from loupe.history.store import HistoryStore
from loupe.settings import Settings
from loupe.web.services import services
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from flask import Flask


class Engines:
    """The engines of a test (or a fixture); `close()` stops them all. The `engines` fixture calls it."""

    def __init__(self) -> None:
        self.started: list[Engine] = []

    def start(
        self, load: Callable[[], Backend], queue_size: int = 2, max_batch: int = 1, request_timeout: float = 0.0
    ) -> Engine:
        """An engine loading with `load`, started (it may still be loading when this returns)."""
        engine = Engine(load, queue_size, max_batch, request_timeout).start()
        self.started.append(engine)
        return engine

    def ready(self, backend: Backend, queue_size: int = 2, max_batch: int = 1, request_timeout: float = 0.0) -> Engine:
        """An engine serving `backend`, once it is ready."""
        return wait_ready(self.start(lambda: backend, queue_size, max_batch, request_timeout))

    def app(self, settings: Settings, engine: Engine | None = None, history: HistoryStore | None = None) -> Flask:
        """`create_app(settings, engine, history)`; given no engine, the app starts one, closed with the others."""
        application = create_app(settings, engine, history)
        if engine is None:
            self.started.append(services(application).engine)
        return application

    def close(self) -> None:
        """Close every engine started here: their generations end with a 503 and their threads end."""
        while self.started:
            self.started.pop().close()


def wait_ready(engine: Engine, timeout: float = 60) -> Engine:
    """`engine` once it has loaded its backend; the test fails if loading failed or took too long."""
    wait_until(lambda: engine.status != "loading", timeout, message="the engine to load its backend")
    assert engine.status == "ok", f"the engine could not load: {engine.error}"
    return engine


def running_engines() -> set[threading.Thread]:
    """The worker threads of the engines running in this process (Engine names them "loupe-engine")."""
    return {thread for thread in threading.enumerate() if thread.name == "loupe-engine"}
