"""Loupe: ask questions about images with Qwen3-VL on a CPU. `create_app()` builds the Flask app.

The composition root: it reads the settings, starts the engine on the model loader (or, with
BACKEND=openai, on an engine behind an API), opens the history, and hands them to the web layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loupe.engine.engine import Engine
from loupe.engine.generation import AnyBackend, AnyStreamingBackend
from loupe.engine.streaming import StreamingEngine
from loupe.history.store import HistoryStore
from loupe.settings import Settings
from loupe.web.factory import build_app
from loupe.web.observability import configure_logging

if TYPE_CHECKING:
    from flask import Flask

ROOT = Path(__file__).resolve().parent  # templates/ and static/ live here


def create_app(
    config: Settings | None = None, engine: Engine | None = None, history: HistoryStore | None = None
) -> Flask:
    """The app factory; with no engine given, one starts loading the configured model in the background.

    With no history store given, one is opened (and migrated) from the settings unless HISTORY is off.
    """
    settings = config if config is not None else Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    if engine is None:
        engine = start_engine(settings)
    if history is None and settings.history:
        history = HistoryStore.open(settings)
    return build_app(settings, engine, history if settings.history else None, ROOT)


def start_engine(settings: Settings) -> Engine:
    """The engine for BACKEND: the model in this process (batched here), or an engine behind an API (streamed)."""
    limits = (settings.queue_size, settings.max_batch, settings.request_timeout)
    if settings.backend == "openai":
        return StreamingEngine(lambda: load_upstream(settings), *limits).start()
    return Engine(lambda: load_model(settings), *limits).start()


def load_upstream(settings: Settings) -> AnyStreamingBackend:
    """The engine at BACKEND_URL as a backend: no model and no torch here; whether it answers, /health says."""
    from loupe.upstream.backend import UpstreamBackend

    backend = UpstreamBackend(settings)
    backend.problem()  # a first look: the model's name, for the first request's record (a failure is /health's)
    return backend


def load_model(settings: Settings) -> AnyBackend:
    """Load the model; torch is imported here, on the engine's thread, never by the web layer."""
    import model_loader

    return model_loader.load_backend(settings)


if __name__ == "__main__":
    dev_settings = Settings.from_env()
    create_app(dev_settings).run(host=dev_settings.host, port=dev_settings.port, threaded=True)
