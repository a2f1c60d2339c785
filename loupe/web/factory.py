"""Building the Flask app around an engine and a history store: routes, hooks and error handlers, in order."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from loupe.engine.engine import Engine
from loupe.engine.resumable import ResumableStreams
from loupe.history.store import HistoryStore
from loupe.settings import Settings
from loupe.web import api, history_api, page
from loupe.web.docs import init_docs
from loupe.web.errors import register_error_handlers
from loupe.web.metrics import init_metrics
from loupe.web.observability import init_request_ids
from loupe.web.rate_limits import init_rate_limits
from loupe.web.security import init_security
from loupe.web.services import Services, install


def build_app(settings: Settings, engine: Engine, history: HistoryStore | None, root: Path) -> Flask:
    """The Flask app serving `engine` (and `history`, None when off); `root` holds templates/ and static/."""
    app = Flask(__name__, root_path=str(root))
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_request_bytes  # a `messages` field may hold images
    app.json.sort_keys = False  # type: ignore[attr-defined]  # Flask's DefaultJSONProvider has it
    streams = None
    if settings.stream_resume_seconds > 0:
        streams = ResumableStreams(
            settings.stream_resume_seconds, settings.stream_replay_seconds, settings.stream_replay_bytes
        )
    install(app, Services(settings, engine, history, streams))
    init_request_ids(app)  # first, so even a refused request has an id and a log line
    init_security(app, settings)
    for blueprint in (page.bp, api.bp, history_api.bp):
        app.register_blueprint(blueprint)
    init_metrics(app, engine, streams)
    init_docs(app)
    register_error_handlers(app)  # before the rate limits: an error's own Retry-After must win (web/errors.py)
    init_rate_limits(app, settings)
    if settings.trusted_proxies:
        # The client's address from the last TRUSTED_PROXIES entries of X-Forwarded-For (each proxy appends its
        # peer's), so request.remote_addr, which the rate limits and the history use, is the real client's.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]  # Flask documents this wrapping
    return app
