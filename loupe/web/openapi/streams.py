"""Streamed answers: each Server-Sent Event, and the routes that resume and stop a stream.

A new field of an event goes in `sse_event`; README's "Resuming a stream" says what the routes do.
"""

from __future__ import annotations

from loupe.protocol.responses import SSE_ACCEPTED
from loupe.web.openapi.errors import errors_for
from loupe.web.openapi.shapes import Schema, json_content, obj, operation, ref, string
from loupe.web.streams import LAST_EVENT_ID_HEADER, STREAM_ID_HEADER

SSE_DESCRIPTION = (
    f"Server-Sent Events. First the comment `{SSE_ACCEPTED.strip()}` (the upload is read), then `data:` frames, "
    "each a JSON `ChatCompletionChunk`: the role chunk when the model starts on the request, text chunks, "
    "the chunk with `finish_reason` and `timings`, a `usage` chunk if asked for, and `data: [DONE]`. "
    "An error after the stream started comes as one `data:` frame holding an `Error`, and the stream ends "
    "(`client_closed_request` when it was stopped by DELETE on its stream). "
    "Unless STREAM_RESUME_SECONDS is 0, each event has an `id` (`<stream id>:<number>`, from 1) and the "
    f"response an `{STREAM_ID_HEADER}` header, to resume the stream if the connection drops."
)
STREAM_ID_PATTERN = "[0-9a-f]{32}"
STREAM_ID = {
    "name": "stream_id",
    "in": "path",
    "required": True,
    "description": f"The stream's id, from the `{STREAM_ID_HEADER}` header of the POST that started it.",
    "schema": string(pattern=f"^{STREAM_ID_PATTERN}$"),
}
STREAM_HEADERS = {
    STREAM_ID_HEADER: {
        "description": "The stream's id, to resume it; absent when STREAM_RESUME_SECONDS is 0.",
        "schema": string(pattern=f"^{STREAM_ID_PATTERN}$"),
    }
}


def sse_event() -> Schema:
    """One event of a stream (OpenAPI 3.1 has `schema` describe each event): its `data`, a JSON chunk,
    a JSON error, or `[DONE]`."""
    chunk = {"oneOf": [ref("ChatCompletionChunk"), ref("Error")]}
    data = {"anyOf": [{"const": "[DONE]"}, string(contentMediaType="application/json", contentSchema=chunk)]}
    event_id = string(
        f"`<stream id>:<number>`: send it back as `{LAST_EVENT_ID_HEADER}` to resume after this event.",
        pattern=f"^{STREAM_ID_PATTERN}:[1-9][0-9]*$",
    )
    return {
        "description": SSE_DESCRIPTION,
        "type": "object",
        "properties": {"id": event_id, "data": data},
        "required": ["data"],
    }


def stream_paths() -> dict[str, Schema]:
    """Resuming a streamed answer whose connection dropped, and stopping it (README: Resuming a stream)."""
    not_found = "; 404 `stream_not_found` for one unknown, another API key's, or past STREAM_REPLAY_SECONDS"
    return {
        "/v1/chat/completions/streams/{stream_id}": {
            "get": operation(
                "api.resume_stream",
                "chat",
                "The rest of a streamed answer, after the event named by Last-Event-ID (from its first without)"
                + not_found
                + ".",
                {
                    "200": {
                        "description": "The stream's events after that one, as they come, up to `data: [DONE]` "
                        f"(no `{SSE_ACCEPTED.strip()}` comment).",
                        "headers": {name: {**header, "required": True} for name, header in STREAM_HEADERS.items()},
                        "content": {"text/event-stream": {"schema": sse_event()}},
                    },
                    **errors_for(400, 404, 500),
                },
                parameters=[
                    STREAM_ID,
                    {
                        "name": LAST_EVENT_ID_HEADER,
                        "in": "header",
                        "description": "The `id` of the last event read; a 400 if it is not one of this stream's.",
                        "schema": string(),
                    },
                ],
            ),
            "delete": operation(
                "api.delete_stream",
                "chat",
                "Stop a streamed answer's generation now; its events so far stay readable" + not_found + ".",
                {
                    "200": {
                        "description": "Stopped (or it had ended already).",
                        "content": json_content(ref("StreamCancelled")),
                    },
                    **errors_for(404, 500),
                },
                parameters=[STREAM_ID],
            ),
        }
    }


def stream_cancelled_schema() -> Schema:
    """What DELETE on a stream answers."""
    return obj(
        {"id": string(), "object": {"const": "chat.completion.stream"}, "cancelled": {"const": True}},
        ("id", "object", "cancelled"),
        closed=True,
    )


def stream_schemas() -> dict[str, Schema]:
    """The named schemas of the stream routes."""
    return {"StreamCancelled": stream_cancelled_schema()}
