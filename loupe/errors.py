"""Loupe's exceptions: what each means to a client (status, OpenAI type and code, message) and its body.

Data only; the web layer (loupe/web/errors.py) maps them to HTTP responses.
"""

from __future__ import annotations

from typing import ClassVar


class LoupeError(Exception):
    """Base of every error a client may see; subclasses fix the HTTP status and OpenAI type."""

    status = 500
    type = "server_error"
    code: str | None = None
    headers: ClassVar[dict[str, str]] = {}  # extra response headers, e.g. WWW-Authenticate

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    @property
    def internal(self) -> bool:
        """A fault of the server's own: logged with its traceback, never described to the client."""
        return self.status == 500

    def to_dict(self) -> dict:
        """The OpenAI error envelope for this error (a generic one for internal faults)."""
        if self.internal:
            return server_error_body()
        return error_body(self.message, self.type, self.param, self.code)


class InvalidRequest(LoupeError):
    """The request is malformed or a field has a bad value."""

    status = 400
    type = "invalid_request_error"


class AuthenticationError(LoupeError):
    """No API key, or not one of the configured keys."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="loupe"'}


class NotFound(LoupeError):
    """No such route or resource."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(LoupeError):
    """The body or one image is larger than the configured limit."""

    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(LoupeError):
    """The content type of the body, or an image's format, is not accepted."""

    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


# Seconds a client is asked to wait when the queue is full. The server cannot know when a place frees:
# that is when some running generation ends, which hangs on prompts and max_tokens it has not read yet.
# A generation on a CPU takes seconds to minutes, so a few seconds is an honest shortest wait, not a
# promise; a fixed constant rather than a setting, as no setting measures how fast generations end.
SERVER_BUSY_RETRY_AFTER = 5


class ServerBusy(LoupeError):
    """The generation queue is full: 429 with Retry-After, like the rate limit's own."""

    status = 429
    type = "rate_limit_error"
    code = "server_busy"
    headers: ClassVar[dict[str, str]] = {"Retry-After": str(SERVER_BUSY_RETRY_AFTER)}


class ModelUnavailable(LoupeError):
    """The model is still loading, or failed to load."""

    status = 503
    type = "unavailable_error"
    code = "model_not_ready"


class ShuttingDown(LoupeError):
    """The server is stopping (SIGTERM): it finishes running work but takes no new generations."""

    status = 503
    type = "unavailable_error"
    code = "shutting_down"


class RequestTimeout(LoupeError):
    """The request waited and ran longer than REQUEST_TIMEOUT; its slot is freed."""

    status = 504
    type = "timeout_error"
    code = "request_timeout"


class ClientClosedRequest(LoupeError):
    """The client closed its connection before a whole answer was ready; the answer was stopped.

    Nobody receives it as a response: its status (nginx's 499) is for the access log and metrics. A resumable
    stream stopped by DELETE ends with it as its last event, for whoever is still reading.
    """

    status = 499
    type = "client_closed_request"
    code = "client_closed_request"


class UpstreamError(LoupeError):
    """The engine Loupe sends generation to (BACKEND=openai) could not be reached or answered wrongly."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class UpstreamTimeout(LoupeError):
    """The engine Loupe sends generation to (BACKEND=openai) sent nothing for BACKEND_TIMEOUT seconds."""

    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class GenerationFailed(LoupeError):
    """The model failed while generating; details are only in the log."""

    status = 500
    type = "server_error"


GENERIC_SERVER_ERROR = "The server had an error while processing your request."


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error envelope: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def server_error_body() -> dict:
    """The body of every 500: a generic message, never the exception's text."""
    return error_body(GENERIC_SERVER_ERROR, "server_error")
