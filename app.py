"""Loupe: ask questions about images with Qwen3-VL on a CPU. `create_app()` builds the Flask app."""
from __future__ import annotations

import logging

from flask import Flask, render_template

import api
import history_api
from config import Settings
from engine import Engine
from errors import register_error_handlers
from generation import Backend
from history_store import HistoryStore
from images import ACCEPTED_FORMATS
from metrics import init_metrics
from observability import configure_logging, init_request_ids
from rate_limits import init_rate_limits
from security import init_security

log = logging.getLogger(__name__)


def create_app(config: Settings | None = None, engine: Engine | None = None,
               history: HistoryStore | None = None) -> Flask:
    """The app factory; with no engine given, one starts loading the configured model in the background.

    With no history store given, one is opened (and migrated) from the settings unless HISTORY is off.
    """
    settings = config if config is not None else Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_request_bytes  # a `messages` field may hold images
    app.json.sort_keys = False
    if engine is None:
        engine = Engine(lambda: load_model(settings), settings.queue_size, settings.max_batch,
                        settings.request_timeout).start()
    if history is None and settings.history:
        history = HistoryStore.open(settings)
    app.extensions["loupe"] = api.Services(settings, engine, history if settings.history else None)
    init_request_ids(app)  # first, so even a refused request has an id and a log line
    init_security(app, settings)
    app.register_blueprint(api.bp)
    app.register_blueprint(history_api.bp)
    init_metrics(app, engine)
    register_error_handlers(app)  # before the rate limits: an error's own Retry-After must win (errors.py)
    init_rate_limits(app, settings)

    @app.get("/")
    def index():
        """The chat page."""
        # api_key_required lets the page ask for a key before its first request instead of after a 401.
        return render_template("index.html", settings=settings, accepted_types=sorted(ACCEPTED_FORMATS.values()),
                               api_key_required=bool(settings.api_keys()))

    return app


def load_model(settings: Settings) -> Backend:
    """Load the model; torch is imported here, on the engine's thread, never by the web layer."""
    import model_loader

    return model_loader.load_backend(settings)


if __name__ == "__main__":
    dev_settings = Settings.from_env()
    create_app(dev_settings).run(host=dev_settings.host, port=dev_settings.port, threaded=True)
