"""Internal events → OpenAI `chat.completion` objects, chunks and Server-Sent Events; pure."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from loupe.errors import LoupeError, server_error_body
from loupe.inference import Event, Finished, Started, TextDelta
from loupe.protocol.grounding import answer_boxes

log = logging.getLogger(__name__)

SSE_DONE = "data: [DONE]\n\n"
SSE_ACCEPTED = ": accepted\n\n"  # an SSE comment: clients ignore it; the page learns the upload is done


@dataclass(frozen=True)
class CompletionMeta:
    """What every object of one completion shares: its id, model name and creation time."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))


def usage_dict(finished: Finished) -> dict:
    """OpenAI's `usage` object."""
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": finished.timings.cached_tokens},
    }


def completion_body(
    meta: CompletionMeta, text: str, finished: Finished, image_sizes: Sequence[tuple[int, int]] = ()
) -> dict:
    """A whole `chat.completion` object; the message has `boxes` when the answer located something."""
    message: dict = {"role": "assistant", "content": text}
    boxes = answer_boxes(text, list(image_sizes))
    if boxes:
        message["boxes"] = boxes
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finished.finish_reason,
            }
        ],
        "usage": usage_dict(finished),
        "timings": finished.timings.to_dict(),
    }


def chunk_body(meta: CompletionMeta, delta: dict, finish_reason: str | None = None) -> dict:
    """One `chat.completion.chunk` object with a single choice."""
    return {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def sse_frame(payload: dict) -> str:
    """One Server-Sent Events `data:` frame holding a JSON-encoded payload."""
    return "data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def collect(events: Iterable[Event]) -> tuple[str, Finished]:
    """Run a generation to its end and return the whole text and how it finished."""
    pieces = []
    for event in events:
        if isinstance(event, TextDelta):
            pieces.append(event.text)
        elif isinstance(event, Finished):
            return "".join(pieces), event
    raise RuntimeError("generation ended without a Finished event")


def with_event_id(frame: str, event_id: str) -> str:
    """An SSE frame with an `id:` field first, which a client sends back as `Last-Event-ID` to resume."""
    return f"id: {event_id}\n{frame}"


def stream_frames(
    events: Iterable[Event],
    meta: CompletionMeta,
    include_usage: bool,
    image_sizes: Sequence[tuple[int, int]] = (),
    accepted: bool = True,
) -> Iterator[str]:
    """SSE frames in OpenAI's chunk format; an error after the start becomes an error frame.

    `accepted`: begin with the `: accepted` comment (a resumable stream's connection sends its own).
    """
    role_sent = False
    pieces: list[str] = []
    if accepted:
        yield SSE_ACCEPTED
    try:
        for event in events:
            if not role_sent and isinstance(event, (Started, TextDelta, Finished)):
                # The role chunk marks "the model started on this request" (it was queued until then).
                role_sent = True
                yield sse_frame(chunk_body(meta, {"role": "assistant", "content": ""}))
            if isinstance(event, TextDelta):
                pieces.append(event.text)
                yield sse_frame(chunk_body(meta, {"content": event.text}))
            elif isinstance(event, Finished):
                boxes = answer_boxes("".join(pieces), list(image_sizes))
                yield from _final_frames(meta, event, include_usage, boxes)
                return
    except LoupeError as error:
        if error.internal:
            log.error("stream failed: %s", error.message, exc_info=error)
        yield sse_frame(error.to_dict())
    except Exception:
        log.exception("stream failed")
        yield sse_frame(server_error_body())


def _final_frames(meta: CompletionMeta, finished: Finished, include_usage: bool, boxes: list[dict]) -> Iterator[str]:
    """The finish_reason chunk (with timings, and the answer's boxes in its delta), usage if asked for, [DONE]."""
    last = chunk_body(meta, {"boxes": boxes} if boxes else {}, finished.finish_reason)
    last["timings"] = finished.timings.to_dict()
    yield sse_frame(last)
    if include_usage:
        usage = chunk_body(meta, {})
        usage["choices"] = []
        usage["usage"] = usage_dict(finished)
        yield sse_frame(usage)
    yield SSE_DONE
