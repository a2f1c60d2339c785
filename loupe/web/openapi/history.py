"""Schemas of the history API (`/inferences`): list entries, whole records, their images and sampling.

A new recorded field goes in one place here: `record_fields` (and `summary_fields` if the list shows it);
a new sampling field is read from SamplingParams by `sampling_schema`.
"""

from __future__ import annotations

import typing

from loupe.inference import ResponseFormat, SamplingParams
from loupe.protocol.chat_requests import ROLES
from loupe.protocol.image_budget import SMALLEST
from loupe.web.openapi.chat_responses import FINISH_REASONS, boxes
from loupe.web.openapi.shapes import Schema, boolean, integer, nullable, obj, ref, string

STATUS = {"enum": ["completed", "failed", "cancelled"]}
TIME = string("UTC, ISO 8601 with a Z.", format="date-time")


def summary_fields() -> dict[str, Schema]:
    """A list entry: enough for a history panel."""
    return {
        "id": string(format="uuid"),
        "object": {"const": "inference"},
        "created_at": TIME,
        "finished_at": nullable(TIME),
        "status": STATUS,
        "model": string(),
        "first_question": string("The first user turn's text, cut at 200 characters."),
        "question": string("The last user turn's text, cut at 200 characters."),
        "answer_preview": string("The answer, cut at 200 characters."),
        "finish_reason": nullable({"enum": FINISH_REASONS}),
        "image_count": integer(minimum=0),
        "box_count": integer("How many boxes and points the answer located.", minimum=0),
        "thumbnail_url": nullable(string("The first image: a path on this server.")),
        "url": string("The record: a path on this server."),
    }


def record_message() -> Schema:
    """A recorded message: OpenAI-shaped, each image a reference to the record's `images`."""
    part = {
        "oneOf": [
            obj({"type": {"const": "text"}, "text": string()}, ("type", "text"), closed=True),
            obj(
                {
                    "type": {"const": "image"},
                    "image": integer("Index into `images`.", minimum=0),
                    **image_budget(),
                    "url": string(),
                },
                ("type", "image", "url"),
                closed=True,
            ),
        ]
    }
    return obj(
        {"role": {"enum": list(ROLES)}, "content": {"type": "array", "items": part}}, ("role", "content"), closed=True
    )


def image_budget() -> dict[str, Schema]:
    """The budget an image was read at (README: Image budget), as the request resolved it."""
    return {
        "detail": {
            "enum": ["low", "high"],
            "description": "`auto` resolved by IMAGE_DETAIL; absent in records made before image budgets.",
        },
        "min_pixels": integer("When the request set it (lowered to IMAGE_MAX_EDGE squared).", minimum=SMALLEST),
        "max_pixels": integer("When the request set it, or `detail` was `low`.", minimum=SMALLEST),
    }


def record_fields() -> dict[str, Schema]:
    """A whole record."""
    error = obj(
        {
            "message": string(),
            "type": string(),
            "param": nullable(string()),
            "code": nullable(string()),
            "status": integer("The HTTP status the client was sent."),
        },
        ("message", "type", "param", "code", "status"),
        closed=True,
    )
    image = obj(
        {
            "index": integer(minimum=0),
            "sha256": string(pattern="^[0-9a-f]{64}$"),
            "mime": string(),
            "bytes": integer(minimum=0),
            "width": integer(minimum=1),
            "height": integer(minimum=1),
            "url": string(),
        },
        ("index", "sha256", "mime", "bytes", "width", "height", "url"),
        closed=True,
    )
    summary = summary_fields()
    return {
        **{name: summary[name] for name in ("id", "object", "created_at", "finished_at", "status")},
        "client": nullable(string("The client's address.")),
        "model": string(),
        "stream": boolean(),
        "messages": {"type": "array", "items": record_message()},
        "sampling": ref("Sampling"),
        "response_format": nullable(ref("RecordedResponseFormat")),
        "answer": string("The answer, or as much as was written."),
        "boxes": boxes("What the answer located, as a response's `boxes`; empty if nothing.", min_items=0),
        "finish_reason": summary["finish_reason"],
        "usage": nullable(ref("Usage")),
        "timings": nullable(ref("Timings")),
        "error": nullable(error),
        "images": {"type": "array", "items": image},
    }


def sampling_schema() -> Schema:
    """The sampling parameters a record keeps: SamplingParams' fields, as the request resolved them."""
    kinds: dict[object, Schema] = {
        int: integer(),
        float: {"type": "number"},
        bool: boolean(),
        int | None: nullable(integer()),
        tuple[str, ...]: {"type": "array", "items": string()},
        ResponseFormat: nullable(ref("RecordedResponseFormat")),
    }
    # A field of a type not listed here fails the build: it needs a line above, and a look at the docs.
    fields = {name: kinds[hint] for name, hint in typing.get_type_hints(SamplingParams).items()}
    # Records made before JSON answers have no `response_format` in their sampling (the record's own is null).
    return obj(fields, tuple(name for name in fields if name != "response_format"), closed=True)


def recorded_response_format() -> Schema:
    """The `response_format` a record keeps (ResponseFormat.to_dict, the schema parsed); null for free text."""
    inner = obj(
        {"name": string(), "schema": {"type": "object"}, "strict": boolean()},
        ("name", "schema", "strict"),
        closed=True,
    )
    return {
        "description": "The JSON format the answer was asked in.",
        "oneOf": [
            obj({"type": {"const": "json_object"}}, ("type",), closed=True),
            obj({"type": {"const": "json_schema"}, "json_schema": inner}, ("type", "json_schema"), closed=True),
        ],
    }


def history_schemas() -> dict[str, Schema]:
    """The named schemas of the history API."""
    return {
        "InferenceSummary": obj(summary_fields(), tuple(summary_fields()), closed=True),
        "InferenceList": obj(
            {
                "object": {"const": "list"},
                "data": {"type": "array", "items": ref("InferenceSummary")},
                "has_more": boolean(),
                "next_cursor": nullable(string("Pass as `cursor` for the next page.")),
            },
            ("object", "data", "has_more", "next_cursor"),
            closed=True,
        ),
        "Inference": obj(record_fields(), tuple(record_fields()), closed=True),
        "Sampling": sampling_schema(),
        "RecordedResponseFormat": recorded_response_format(),
        "InferenceDeleted": obj(
            {"id": string(), "object": {"const": "inference.deleted"}, "deleted": {"const": True}},
            ("id", "object", "deleted"),
            closed=True,
        ),
    }
