"""The one mapping of Loupe's errors, werkzeug's HTTP errors and anything unexpected to OpenAI's envelope."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from loupe.errors import LoupeError, error_body, server_error_body

log = logging.getLogger(__name__)

# The OpenAI error type of each werkzeug HTTP error (404, 405, 413, the limiter's 429); others are invalid requests.
HTTP_ERROR_TYPES = {
    401: "authentication_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    503: "unavailable_error",
}


def register_error_handlers(app: Flask) -> None:
    """Map LoupeError, werkzeug's HTTP errors and anything unexpected to the envelope."""

    @app.errorhandler(LoupeError)
    def _loupe_error(error: LoupeError):
        if error.internal:
            log.error("request failed: %s", error.message, exc_info=error)
        g.loupe_error_headers = error.headers
        return jsonify(error.to_dict()), error.status, error.headers

    @app.after_request
    def _error_headers_last(response: Response) -> Response:
        """Re-apply the error's own headers, so the limiter's Retry-After never replaces the busy one."""
        # Flask-Limiter writes Retry-After (its window's reset) on every limited response; hooks run in
        # reverse order of registration, so this one, registered before the limiter's, runs after it.
        response.headers.update(g.pop("loupe_error_headers", {}))
        return response

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        status = error.code or 500
        if status >= 500:
            log.error("HTTP %s", status, exc_info=error)
            return jsonify(server_error_body()), status
        type_ = HTTP_ERROR_TYPES.get(status, "invalid_request_error")
        code = (error.name or "error").lower().replace(" ", "_")
        response = jsonify(error_body(error.description or error.name, type_, None, code))
        response.status_code = status
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error")
        return jsonify(server_error_body()), 500
