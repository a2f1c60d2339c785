"""Streamed answers over HTTP: Server-Sent Events with ids, and resuming them with `Last-Event-ID`.

The stream itself (its frames, its readers, stopping a generation nobody reads) is
loupe/engine/resumable.py; this module does the HTTP part: the ids, the headers, who may read.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

from flask import Response, request

from loupe.engine.resumable import ResumableStream, ResumableStreams
from loupe.errors import InvalidRequest, NotFound
from loupe.inference import ChatRequest
from loupe.protocol.responses import SSE_ACCEPTED, CompletionMeta, stream_frames, with_event_id
from loupe.web.chat_flow import ChatRun, close_at_end
from loupe.web.observability import RequestRecord, current_record, note_finished
from loupe.web.services import services

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
STREAM_ID_HEADER = "X-Stream-ID"
LAST_EVENT_ID_HEADER = "Last-Event-ID"
# `<stream id>:<number>`: the stream's 32 hex digits, then the event's number from 1.
_EVENT_ID = re.compile(r"([0-9a-f]{32}):(\d{1,9})")


def stream_response(chat: ChatRequest, run: ChatRun, meta: CompletionMeta) -> Response:
    """The streamed answer: resumable (events with ids, the stream's id in a header) unless resuming is off."""
    streams = services().streams
    if streams is None:
        frames = close_at_end(stream_frames(run.events, meta, chat.include_usage, chat.image_sizes()), run)
        return Response(frames, mimetype="text/event-stream", headers=SSE_HEADERS)
    stream = streams.open(
        request_owner(),
        run.events,
        lambda events: stream_frames(events, meta, chat.include_usage, chat.image_sizes(), accepted=False),
        stop=run.generation.fail,
        close=run.close,
    )
    body = accepted_first(sse_events(streams, stream, 0, current_record()))
    return Response(body, mimetype="text/event-stream", headers={**SSE_HEADERS, STREAM_ID_HEADER: stream.id})


def accepted_first(events: Iterator[str]) -> Iterator[str]:
    """The `: accepted` comment, then the events; a generator, so closing the response closes the events."""
    yield SSE_ACCEPTED
    yield from events


def resumed_response(stream_id: str) -> Response:
    """The rest of a stream, after the event named by `Last-Event-ID` (from its start without one)."""
    streams = resumable_streams()
    stream = streams.find(stream_id, request_owner())
    seen = last_event_seen(stream)
    events = sse_events(streams, stream, seen, current_record(), resumed=True)
    return Response(events, mimetype="text/event-stream", headers={**SSE_HEADERS, STREAM_ID_HEADER: stream.id})


def cancel_stream(stream_id: str) -> None:
    """Stop a stream's generation now (its client does not want the rest); its events so far stay readable."""
    streams = resumable_streams()
    streams.find(stream_id, request_owner()).cancel()


def sse_events(
    streams: ResumableStreams, stream: ResumableStream, seen: int, record: RequestRecord, resumed: bool = False
) -> Iterator[str]:
    """The stream's frames after number `seen` as SSE events with ids; the request's log line says how it ended."""
    delivered_all = False
    try:
        for number, frame in streams.read(stream, seen, resumed):
            yield with_event_id(frame, f"{stream.id}:{number}")
        delivered_all = True
    finally:
        # A connection that drops leaves the generation running for a resume: `detached`, not cancelled.
        if delivered_all and stream.finished is not None:
            note_finished(record, stream.finished)
        else:
            record.outcome = stream.outcome if delivered_all else "detached"


def resumable_streams() -> ResumableStreams:
    """The app's streams, or 404 when resuming is off."""
    streams = services().streams
    if streams is None:
        raise NotFound("Resuming streams is off on this server (STREAM_RESUME_SECONDS=0).", code="stream_not_found")
    return streams


def request_owner() -> str:
    """Who may resume the streams this request opens: a digest of its API key; "" when keys are off."""
    settings = services().settings
    if not (settings.api_key or settings.api_key_file):
        return ""
    key = request.headers.get("Authorization", "").partition(" ")[2].strip()
    return hashlib.sha256(key.encode()).hexdigest()


def last_event_seen(stream: ResumableStream) -> int:
    """The number of the last event the client has, from `Last-Event-ID` (0 without one)."""
    given = request.headers.get(LAST_EVENT_ID_HEADER, "").strip()
    if not given:
        return 0
    match = _EVENT_ID.fullmatch(given)
    if match is None or match[1] != stream.id:
        raise InvalidRequest(
            f"{LAST_EVENT_ID_HEADER} must be the id of an event of this stream, `{stream.id}:<number>`, "
            "as its events carried it.",
            param=LAST_EVENT_ID_HEADER,
        )
    seen = int(match[2])
    if seen > stream.count:
        raise InvalidRequest(
            f"{LAST_EVENT_ID_HEADER} names event {seen}, but stream {stream.id} has sent {stream.count} so far.",
            param=LAST_EVENT_ID_HEADER,
        )
    return seen
