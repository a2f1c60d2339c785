"""The error envelope and the error responses, read from loupe/errors.py's classes and web/errors.py's map.

An error class added to loupe/errors.py shows up here by itself: its status picks the response, its
code and docstring are listed there. Codes raised with an explicit `code=` or made by werkzeug are in
`OTHER_CODES`.
"""

from __future__ import annotations

from loupe import errors
from loupe.errors import LoupeError
from loupe.web.errors import HTTP_ERROR_TYPES
from loupe.web.openapi.shapes import Schema, json_content, nullable, obj, ref, string

# status → name of the response in the document's components
RESPONSE_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    429: "TooManyRequests",
    500: "ServerError",
    502: "BadGateway",
    503: "Unavailable",
    504: "Timeout",
}
# Codes that no class of loupe/errors.py fixes: raised with `code=`, or werkzeug's own HTTP errors.
OTHER_CODES = {
    404: {
        "history_disabled": "History is off on this server (HISTORY=off).",
        "not_found": "No such route.",
        "stream_not_found": "No such stream to resume or stop, or resuming is off (STREAM_RESUME_SECONDS=0).",
    },
    405: {"method_not_allowed": "The route exists, not with this method; `Allow` lists the methods it takes."},
    413: {"request_entity_too_large": "The body is over MAX_REQUEST_BYTES."},
    429: {"too_many_requests": "The client is over RATE_LIMIT; `Retry-After` says when the window lets it in."},
}
# Errors that come only as a stream's last event, never as a response: a stream stopped by DELETE ends with it.
STREAM_ONLY: tuple[type[LoupeError], ...] = (errors.ClientClosedRequest,)
RETRY_AFTER = {
    "description": "Seconds to wait before trying again.",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}


def error_classes() -> list[type[LoupeError]]:
    """Every LoupeError class a client can receive as a response (499's is for the access log; it comes only
    as a stream's last event, see `STREAM_ONLY`)."""
    found, todo = [], [LoupeError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__ == errors.__name__ and cls.status != errors.ClientClosedRequest.status:
            found.append(cls)
    return found


def error_schema() -> Schema:
    """OpenAI's error envelope."""
    classes = [*error_classes(), *STREAM_ONLY]
    types = sorted({cls.type for cls in classes} | set(HTTP_ERROR_TYPES.values()) | {"invalid_request_error"})
    inner = obj(
        {
            "message": string("What went wrong; on a 500, a generic sentence (the details are in the server's log)."),
            "type": {"enum": types},
            "param": nullable(string("The request field at fault, if one is.")),
            "code": nullable(string("A machine-readable reason, listed under each status.")),
        },
        ("message", "type", "param", "code"),
        closed=True,
    )
    return obj({"error": inner}, ("error",), closed=True, doc="OpenAI's error envelope, for every error.")


def describe(status: int) -> str:
    """A status's response description: what each class of that status and each other code means."""
    lines = []
    for cls in sorted(error_classes(), key=lambda c: c.__name__):
        if cls.status == status:
            first = (cls.__doc__ or "").strip().splitlines()[0]
            lines.append(f"- `{cls.code}` ({cls.type}): {first}" if cls.code else f"- {cls.type}: {first}")
    lines += [f"- `{code}`: {text}" for code, text in OTHER_CODES.get(status, {}).items()]
    return "\n".join(lines)


def error_responses() -> dict[str, Schema]:
    """The document's named error responses, one per status."""
    responses: dict[str, Schema] = {}
    for status, name in RESPONSE_NAMES.items():
        response: Schema = {"description": describe(status) or name, "content": json_content(ref("Error"))}
        if status == 429:
            response["headers"] = {"Retry-After": RETRY_AFTER}
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": string(), "required": True, "description": "Bearer."}}
        if status == 405:
            response["headers"] = {
                "Allow": {"schema": string(), "required": True, "description": "The methods the route takes."}
            }
        responses[name] = response
    return responses


def errors_for(*statuses: int) -> dict[str, Schema]:
    """An operation's `responses` entries for these statuses."""
    return {str(s): {"$ref": f"#/components/responses/{RESPONSE_NAMES[s]}"} for s in statuses}
