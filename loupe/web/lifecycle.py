"""Graceful shutdown: on SIGTERM stop taking generations, let running ones finish, then exit."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from flask import Flask

from loupe.errors import ShuttingDown
from loupe.web.services import services

log = logging.getLogger(__name__)

SignalHandler = Callable[[int, FrameType | None], object]


# gunicorn's graceful_timeout is SHUTDOWN_GRACE plus this, so ended streams can send their error frame.
EXIT_SLACK_SECONDS = 5


def begin_shutdown(app: Flask) -> threading.Timer:
    """Make /health say `shutting_down` and refuse new generations; running and queued ones go on
    for SHUTDOWN_GRACE seconds, then end with a clear 503 error. Returns the grace timer."""
    engine = services(app).engine
    engine.drain()
    grace = services(app).settings.shutdown_grace
    log.info(
        "shutting down: %d generation(s) running, %d queued; up to %d s to finish",
        engine.running,
        engine.queue_depth,
        grace,
    )

    def end_unfinished() -> None:
        ended = engine.abort_all(ShuttingDown("The server stopped before this generation finished."))
        if ended:
            log.warning("grace period over: ended %d unfinished generation(s)", ended)

    timer = threading.Timer(grace, end_unfinished)
    timer.daemon = True
    timer.start()
    return timer


def report_exit(app: Flask) -> None:
    """Say whether the process stops with work unfinished (the grace period ran out)."""
    engine = services(app).engine
    if engine.running or engine.queue_depth:
        log.warning(
            "stopped with unfinished work: %d generation(s) running, %d queued", engine.running, engine.queue_depth
        )
    else:
        log.info("stopped with no unfinished work")


def drain_on_sigterm(app: Flask) -> None:
    """Run begin_shutdown() on SIGTERM, then the server's own handler (gunicorn's graceful stop)."""
    previous = signal.getsignal(signal.SIGTERM)

    def handle(signum: int, frame: FrameType | None) -> None:
        begin_shutdown(app)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handle)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn does: a signal must not break a running request
