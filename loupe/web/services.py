"""What the routes use (settings, engine, history store), kept on the Flask app by the factory."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from loupe.engine.engine import Engine
from loupe.engine.resumable import ResumableStreams
from loupe.history.store import HistoryStore
from loupe.settings import Settings

_EXTENSION = "loupe"


@dataclass(frozen=True)
class Services:
    """The app's settings, engine, history store (None when HISTORY is off) and resumable streams (None when
    STREAM_RESUME_SECONDS is 0)."""

    settings: Settings
    engine: Engine
    history: HistoryStore | None = None
    streams: ResumableStreams | None = None


def install(app: Flask, services: Services) -> None:
    """Keep the services on the app, for `services()` to find."""
    app.extensions[_EXTENSION] = services


def services(app: Flask | None = None) -> Services:
    """The services of `app`, or of the app handling the current request."""
    found = (app if app is not None else current_app).extensions[_EXTENSION]
    assert isinstance(found, Services)
    return found
