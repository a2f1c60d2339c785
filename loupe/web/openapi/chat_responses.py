"""Schemas of what the chat API answers: completions, stream chunks, usage, timings, the model list, probes.

A new response field goes in one place here: `message_fields` for the answer's message (whole answers
and the history's record), `completion_fields` for the completion object, `TIMINGS` for `timings`,
`box_schema` for a box or point the answer located (whole, streamed and recorded).
"""

from __future__ import annotations

from loupe.protocol.grounding import MAX_REGIONS
from loupe.settings import BACKENDS
from loupe.web.openapi.shapes import Schema, integer, nullable, number, obj, ref, string

FINISH_REASONS = ["stop", "length"]
TIMINGS = {
    "image_tokens": integer("Tokens the images became; what a CPU pays for."),
    "prompt_tokens": integer("Prompt tokens, images included."),
    "cached_tokens": integer("Prompt tokens reused from the prefix cache."),
    "queue_ms": number("Waiting for a place in the batch."),
    "prompt_ms": number("Reading the prompt and images."),
    "ttft_ms": number("Request to first token."),
    "decode_ms": number("Generating after the first token."),
    "decode_tokens_per_second": number(),
}


BOXES_DOC = (
    "What the answer located, in pixels of the last image as the client sent it (README: Boxes); "
    "absent when it located nothing."
)


def pixels(count: int, doc: str) -> Schema:
    """`count` pixel coordinates (to a tenth), each at least 0."""
    return {"type": "array", "items": number(minimum=0), "minItems": count, "maxItems": count, "description": doc}


def box_schema() -> Schema:
    """One region the answer located (loupe/protocol/grounding.py's `to_pixels`): a box or a point."""
    shared = {
        "label": string("What the model called it; empty if it said nothing."),
        "image": integer("Index of the image among the request's images: always the last.", minimum=0),
    }
    box = pixels(4, "[x1, y1, x2, y2]: the top-left and bottom-right corners.")
    point = pixels(2, "[x, y].")
    return {
        "description": "A box or a point the answer located.",
        "oneOf": [
            obj({**shared, "bbox": box}, ("label", "image", "bbox"), closed=True),
            obj({**shared, "point": point}, ("label", "image", "point"), closed=True),
        ],
    }


def boxes(doc: str = BOXES_DOC, min_items: int = 1) -> Schema:
    """A list of located regions."""
    return {"type": "array", "items": ref("Box"), "minItems": min_items, "maxItems": MAX_REGIONS, "description": doc}


def message_fields() -> dict[str, Schema]:
    """The fields of the assistant's message in a whole answer."""
    return {"role": {"const": "assistant"}, "content": string("The answer."), "boxes": boxes()}


def completion_fields() -> dict[str, Schema]:
    """The fields of a whole `chat.completion`."""
    choice = obj(
        {
            "index": {"const": 0},
            "message": ref("ChatCompletionMessage"),
            "logprobs": {"type": "null"},
            "finish_reason": {"enum": FINISH_REASONS},
        },
        ("index", "message", "logprobs", "finish_reason"),
        closed=True,
    )
    return {
        "id": string(pattern="^chatcmpl-"),
        "object": {"const": "chat.completion"},
        "created": integer("Unix time, seconds."),
        "model": string("The served model."),
        "choices": {"type": "array", "items": choice, "minItems": 1, "maxItems": 1},
        "usage": ref("Usage"),
        "timings": ref("Timings"),
    }


def chunk_fields() -> dict[str, Schema]:
    """The fields of one `chat.completion.chunk`."""
    delta = obj(
        {
            "role": {"const": "assistant"},
            "content": string(),
            "boxes": boxes(BOXES_DOC.replace("absent", "in the `finish_reason` chunk only; absent")),
        },
        closed=True,
    )
    choice = obj(
        {
            "index": {"const": 0},
            "delta": delta,
            "logprobs": {"type": "null"},
            "finish_reason": nullable({"enum": FINISH_REASONS}),
        },
        ("index", "delta", "logprobs", "finish_reason"),
        closed=True,
    )
    return {
        "id": string(pattern="^chatcmpl-"),
        "object": {"const": "chat.completion.chunk"},
        "created": integer(),
        "model": string(),
        "choices": {"type": "array", "items": choice, "maxItems": 1, "description": "Empty in the usage chunk."},
        "timings": ref("Timings"),
        "usage": ref("Usage"),
    }


def chat_response_schemas() -> dict[str, Schema]:
    """The named schemas of chat responses and probes."""
    every = tuple(TIMINGS)
    return {
        "ChatCompletion": obj(completion_fields(), tuple(completion_fields()), closed=True),
        "ChatCompletionMessage": obj(message_fields(), ("role", "content"), closed=True),
        "ChatCompletionChunk": obj(
            chunk_fields(),
            ("id", "object", "created", "model", "choices"),
            closed=True,
            doc="One `data:` frame of a stream: the role chunk when the model starts, text chunks, the "
            "`finish_reason` chunk (with `timings`), and with `include_usage` a chunk with `usage` and no choices.",
        ),
        "Usage": obj(
            {
                "prompt_tokens": integer(),
                "completion_tokens": integer(),
                "total_tokens": integer(),
                "prompt_tokens_details": obj({"cached_tokens": integer()}, ("cached_tokens",), closed=True),
            },
            ("prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"),
            closed=True,
        ),
        "Timings": obj(TIMINGS, every, closed=True, doc="Where the time of one generation went."),
        "Box": box_schema(),
        **probe_schemas(),
    }


def probe_schemas() -> dict[str, Schema]:
    """The model list and the probes' bodies."""
    return {
        "ModelList": obj(
            {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": obj(
                        {
                            "id": string(),
                            "object": {"const": "model"},
                            "created": integer(),
                            "owned_by": {"const": "loupe"},
                        },
                        ("id", "object", "created", "owned_by"),
                        closed=True,
                    ),
                },
            },
            ("object", "data"),
            closed=True,
        ),
        "HealthReady": obj(
            {
                "status": {"const": "ok"},
                "backend": {
                    "enum": list(BACKENDS),
                    "description": "What generates: this process, or an engine behind it.",
                },
                "model": string(),
                "device": string(),
                "dtype": string(),
                "kernels": string(
                    "What computes the model: `native avx2`, `native avx512`, … or the LINEAR_KERNEL; with "
                    "BACKEND=openai, the engine's address."
                ),
                "queue_depth": integer(minimum=0),
            },
            ("status", "backend", "model", "device", "dtype", "kernels", "queue_depth"),
            closed=True,
        ),
        "HealthNotReady": {
            "oneOf": [
                obj({"status": {"const": "loading"}, "model": string()}, ("status", "model"), closed=True),
                obj(
                    {
                        "status": {"const": "error"},
                        "model": string("With BACKEND=openai: the model asked of the engine."),
                        "error": nullable(string("What is wrong.")),
                    },
                    ("status", "error"),
                    closed=True,
                ),
                obj({"status": {"const": "shutting_down"}}, ("status",), closed=True),
            ]
        },
        "Live": obj({"status": {"const": "alive"}}, ("status",), closed=True),
    }
