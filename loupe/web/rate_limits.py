"""Per-client rate limits on the generation routes, with Flask-Limiter."""

from __future__ import annotations

from typing import cast

from flask import Flask
from flask.typing import RouteCallable
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from loupe.settings import Settings

# The routes that cost a generation; the page, probes and /v1/models are never limited.
GENERATION_ENDPOINTS = ("api.chat_completions", "history.create_inference")


def init_rate_limits(app: Flask, settings: Settings) -> Limiter | None:
    """Limit each client's generation requests to RATE_LIMIT; None when it is `off`."""
    if settings.rate_limit.lower() == "off":
        return None
    limiter = Limiter(
        key_func=get_remote_address,  # the client's address (behind proxies, TRUSTED_PROXIES says which)
        app=app,
        storage_uri=settings.rate_limit_storage,
        strategy="moving-window",  # no burst of twice the limit across a window boundary
        headers_enabled=True,  # X-RateLimit-* on every limited response, Retry-After on 429
        in_memory_fallback_enabled=True,  # Redis down: limit per process rather than fail every request
        default_limits=[],
    )
    limit = limiter.limit(
        settings.rate_limit,
        methods=["POST"],
        error_message=f"Rate limit exceeded ({settings.rate_limit} per client); "
        "retry after the time in the Retry-After header.",
    )
    for endpoint in GENERATION_ENDPOINTS:
        # The wrapped view checks the limit after the key check, so refused keys cost nothing.
        # Flask-Limiter's decorator is typed for async views too; these are sync, and stay so.
        app.view_functions[endpoint] = cast("RouteCallable", limit(app.view_functions[endpoint]))
    return limiter
