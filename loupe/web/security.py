"""Who may call the API: API keys, CORS, and the security headers every response carries."""

from __future__ import annotations

import hmac
import re
from typing import Any

from flask import Flask, Response, request
from flask_cors import CORS

from loupe.errors import AuthenticationError
from loupe.settings import Settings

# Routes that need a key when keys are configured; the page, its static files and probes stay open.
PROTECTED_PREFIXES = ("/v1/", "/inferences")
METRICS_PATH = "/metrics"

# The page loads only external ES modules and CSS from /static, a JSON data block (not script, so
# script-src does not apply), and previews attached images from blob:/data: URLs.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",
}
# What a cross-origin page may send and read.
CORS_ALLOW_HEADERS = ["Authorization", "Content-Type", "X-Request-ID", "X-Loupe-Conversation", "Last-Event-ID"]
CORS_EXPOSE_HEADERS = [
    "X-Request-ID",
    "X-Loupe-Conversation",
    "X-Stream-ID",
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
]


def init_security(app: Flask, settings: Settings) -> None:
    """Install key checks, CORS (only when origins are configured) and the security headers."""
    keys = tuple(key.encode() for key in settings.api_keys())
    if keys:
        _require_keys(app, keys, settings.metrics_require_key)
    origins = settings.cors_origin_list()
    if origins:
        resources: dict[str | re.Pattern[str], dict[str, Any]] = {rf"{prefix}*": {} for prefix in PROTECTED_PREFIXES}
        CORS(
            app,
            resources=resources,
            origins=origins,
            supports_credentials=settings.cors_allow_credentials,
            send_wildcard=origins == ["*"],  # a literal `*`, not the caller's origin echoed back
            allow_headers=CORS_ALLOW_HEADERS,
            expose_headers=CORS_EXPOSE_HEADERS,
            max_age=600,
        )

    @app.after_request
    def _security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def _require_keys(app: Flask, keys: tuple[bytes, ...], metrics_too: bool) -> None:
    """Refuse protected requests without a valid `Authorization: Bearer <key>`."""

    @app.before_request
    def _check_key() -> None:
        if request.method == "OPTIONS":  # CORS preflights never carry credentials
            return
        path = request.path
        if not (path.startswith(PROTECTED_PREFIXES) or (metrics_too and path == METRICS_PATH)):
            return
        if not key_is_valid(request.headers.get("Authorization", ""), keys):
            raise AuthenticationError("A valid API key is required: send `Authorization: Bearer <key>`.")


def key_is_valid(authorization: str, keys: tuple[bytes, ...]) -> bool:
    """Whether an Authorization header holds one of the keys, comparing in constant time."""
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    candidate = given.strip().encode()
    matched = False
    for key in keys:  # every key is compared, so the time taken does not say which one matched
        matched |= hmac.compare_digest(candidate, key)
    return matched
