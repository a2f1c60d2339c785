"""Request ids, one log line per request, and the text or JSON log format."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from flask import Flask, Response, g, has_request_context, request

from loupe.errors import ClientClosedRequest
from loupe.inference import Event, Finished

REQUEST_ID_HEADER = "X-Request-ID"
# Names the conversation a request belongs to, so a proxy can send its follow-ups to the instance that
# holds its prefix (deploy/nginx hashes on it). Loupe only logs it and echoes it, for clients to send back.
CONVERSATION_HEADER = "X-Loupe-Conversation"
# A caller's id is honoured only if it is short and plain: it ends up in headers, logs and response ids.
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Probes hit these every few seconds; their lines are DEBUG so they do not drown the requests that matter.
QUIET_ROUTES = frozenset({"/health", "/live", "/metrics"})

request_log = logging.getLogger("loupe.requests")


@dataclass
class RequestRecord:
    """What one request's log line reports; the routes fill in the token counts."""

    id: str
    method: str
    path: str
    started: float
    route: str | None = None
    status: int | None = None
    outcome: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    image_tokens: int | None = None
    conversation: str | None = None

    def fields(self) -> dict:
        """The log line's fields, without the ones that are unset."""
        duration_ms = round((time.perf_counter() - self.started) * 1000, 1)
        values = {
            "request_id": self.id,
            "method": self.method,
            "route": self.route or self.path,
            "status": self.status,
            "duration_ms": duration_ms,
            "outcome": self.outcome,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "image_tokens": self.image_tokens,
            "conversation": self.conversation,
        }
        return {k: v for k, v in values.items() if v is not None}


def current_record() -> RequestRecord:
    """The record of the request being handled."""
    return g.loupe_request


def request_id() -> str:
    """The id of the request being handled (honoured from X-Request-ID or generated)."""
    return current_record().id


def observe(events: Iterable[Event]) -> Iterator[Event]:
    """Pass a generation's events through, noting its token counts and outcome in the request's record."""
    # The record is taken now: a stream is iterated after the request context is gone.
    return _observed(events, current_record())


def _observed(events: Iterable[Event], record: RequestRecord) -> Iterator[Event]:
    """The generator behind observe()."""
    record.outcome = "cancelled"  # until a Finished event says otherwise
    try:
        for event in events:
            if isinstance(event, Finished):
                note_finished(record, event)
            yield event
    except ClientClosedRequest:
        raise  # "cancelled" stands, as for a closed stream
    except Exception:
        record.outcome = "error"
        raise


def note_finished(record: RequestRecord, finished: Finished) -> None:
    """Note how a generation finished, and its token counts, in a request's record."""
    record.outcome = finished.finish_reason
    record.prompt_tokens = finished.prompt_tokens
    record.completion_tokens = finished.completion_tokens
    record.image_tokens = finished.timings.image_tokens


def init_request_ids(app: Flask) -> None:
    """Give every request an id, echo it (and its conversation key) in the response, and log one line on close."""

    @app.before_request
    def _start_record() -> None:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        rid = given if VALID_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        g.loupe_request = RequestRecord(rid, request.method, request.path, time.perf_counter())
        conversation = request.headers.get(CONVERSATION_HEADER, "")
        if VALID_REQUEST_ID.fullmatch(conversation):  # the same rule: it goes back in a header and the log
            g.loupe_request.conversation = conversation

    @app.after_request
    def _finish_record(response: Response) -> Response:
        record: RequestRecord | None = g.get("loupe_request")
        if record is None:  # a failure before our before_request ran
            return response
        record.status = response.status_code
        record.route = request.url_rule.rule if request.url_rule is not None else None
        response.headers[REQUEST_ID_HEADER] = record.id
        if record.conversation is not None:
            response.headers[CONVERSATION_HEADER] = record.conversation
        # Logged on close, not here, so a stream's line has its whole duration and its token counts.
        response.call_on_close(lambda: log_request(record))
        return response


def log_request(record: RequestRecord) -> None:
    """The one line a request leaves in the log: id, route, status, duration, token counts."""
    fields = record.fields()
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    level = logging.DEBUG if record.route in QUIET_ROUTES and record.status == 200 else logging.INFO
    request_log.log(level, "request %s", text, extra={"fields": fields})


class RequestIdFilter(logging.Filter):
    """Stamp log records made while handling a request with that request's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id") and has_request_context():
            current = g.get("loupe_request")
            if current is not None:
                record.request_id = current.id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if request_id := getattr(record, "request_id", None):  # RequestIdFilter's, or a caller's `extra`
            entry["request_id"] = request_id
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


JsonFormatter.converter = time.gmtime  # timestamps in UTC, as the trailing Z says


def configure_logging(level: str, log_format: str) -> None:
    """Log to stderr in the configured format, unless a host (pytest) already set logging up."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
