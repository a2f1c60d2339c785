"""The document's paths: one operation per Flask route, named by its endpoint (`operationId`)."""

from __future__ import annotations

from loupe.protocol.images import ACCEPTED_FORMATS
from loupe.web.history_api import DEFAULT_LIMIT, MAX_LIMIT, STATUSES
from loupe.web.openapi.errors import errors_for
from loupe.web.openapi.shapes import Schema, integer, json_content, operation, ref, string
from loupe.web.openapi.streams import STREAM_HEADERS, sse_event, stream_paths

GENERATION_ERRORS = (400, 413, 415, 429, 500, 502, 503, 504)  # 502: BACKEND=openai's engine failed
RECORD_ID = {"name": "record_id", "in": "path", "required": True, "schema": string(format="uuid")}


def chat_body() -> Schema:
    """The chat request body, in each content type the route reads."""
    return {
        "required": True,
        "content": {
            "application/json": {"schema": ref("ChatCompletionRequest")},
            "multipart/form-data": {
                "schema": ref("ChatCompletionForm"),
                "encoding": {"image": {"contentType": ", ".join(sorted(ACCEPTED_FORMATS.values()))}},
            },
            "application/x-www-form-urlencoded": {"schema": ref("ChatCompletionForm")},
        },
    }


def query(name: str, schema: Schema) -> Schema:
    """An optional query parameter; empty (`?since=`) is the same as absent."""
    return {"name": name, "in": "query", "schema": {"anyOf": [schema, {"const": ""}]}}


def moment(doc: str) -> Schema:
    """A query parameter holding a date or a date and time."""
    return {"description": doc, "anyOf": [string(format="date"), string(format="date-time")]}


def image_response() -> Schema:
    """A stored image: the original bytes with their own type."""
    binary = {"schema": string(format="binary")}
    return {
        "200": {
            "description": "The image as the client sent it; immutable (ETag is its SHA-256).",
            "content": dict.fromkeys(sorted(ACCEPTED_FORMATS.values()), binary),
        },
        "304": {"description": "Not modified (If-None-Match matched the ETag)."},
        **errors_for(404, 500),
    }


def api_paths() -> dict[str, Schema]:
    """The OpenAI-compatible routes and the probes."""
    return {**chat_paths(), **probe_paths()}


def chat_paths() -> dict[str, Schema]:
    """Chat completions and the model list."""
    return {
        "/v1/chat/completions": {
            "post": operation(
                "api.chat_completions",
                "chat",
                "Answer a question about images (OpenAI Chat Completions), whole or streamed.",
                {
                    "200": {
                        "description": "A whole answer, or with `stream` the answer as Server-Sent Events.",
                        "headers": STREAM_HEADERS,
                        "content": {
                            **json_content(ref("ChatCompletion")),
                            "text/event-stream": {"schema": sse_event()},
                        },
                    },
                    **errors_for(*GENERATION_ERRORS),
                },
                requestBody=chat_body(),
            )
        },
        **stream_paths(),
        "/v1/models": {
            "get": operation(
                "api.models",
                "chat",
                "The one model this server serves.",
                {"200": {"description": "OpenAI's model list.", "content": json_content(ref("ModelList"))}},
            )
        },
    }


def probe_paths() -> dict[str, Schema]:
    """Health, liveness and metrics."""
    return {
        "/health": {
            "get": operation(
                "api.health",
                "probes",
                "Readiness: 200 once the model is loaded (BACKEND=openai: while the engine behind serves it).",
                {
                    "200": {"description": "Ready.", "content": json_content(ref("HealthReady"))},
                    "503": {
                        "description": "Loading, failed to load (BACKEND=openai: the engine behind is away or serves "
                        "another model), or stopping.",
                        "content": json_content(ref("HealthNotReady")),
                    },
                },
            )
        },
        "/live": {
            "get": operation(
                "api.live",
                "probes",
                "Liveness: 200 whenever the process answers.",
                {"200": {"description": "Alive.", "content": json_content(ref("Live"))}},
            )
        },
        "/metrics": {
            "get": operation(
                "metrics.metrics_endpoint",
                "probes",
                "Prometheus metrics (docs/metrics.md).",
                {
                    "200": {
                        "description": "The Prometheus text format.",
                        "content": {"text/plain": {"schema": string()}},
                    }
                },
            )
        },
    }


def history_paths() -> dict[str, Schema]:
    """The history routes (docs/history.md); 404 `history_disabled` when HISTORY is off."""
    return {**inferences_paths(), **record_paths()}


def inferences_paths() -> dict[str, Schema]:
    """Listing records, and asking to make one."""
    since_until = "An ISO 8601 date or time, UTC unless it says otherwise"
    return {
        "/inferences": {
            "get": operation(
                "history.list_inferences",
                "history",
                "Records, newest first.",
                {
                    "200": {"description": "One page.", "content": json_content(ref("InferenceList"))},
                    **errors_for(400, 404, 500),
                },
                parameters=[
                    query("limit", integer(f"Default {DEFAULT_LIMIT}.", minimum=1, maximum=MAX_LIMIT)),
                    query("cursor", string("A page's `next_cursor`.")),
                    query("status", {"enum": list(STATUSES)}),
                    query("since", moment(f"{since_until}; inclusive.")),
                    query("until", moment(f"{since_until}; exclusive.")),
                ],
            ),
            "post": operation(
                "history.create_inference",
                "history",
                "Ask (as /v1/chat/completions, not streamed) and get the stored record.",
                {
                    "201": {
                        "description": "The record.",
                        "headers": {
                            "Location": {"schema": string(), "required": True, "description": "The record's path."}
                        },
                        "content": json_content(ref("Inference")),
                    },
                    **errors_for(*GENERATION_ERRORS, 404),
                },
                requestBody=chat_body(),
            ),
        },
    }


def record_paths() -> dict[str, Schema]:
    """One record and its images."""
    return {
        "/inferences/{record_id}": {
            "get": operation(
                "history.get_inference",
                "history",
                "One whole record.",
                {
                    "200": {"description": "The record.", "content": json_content(ref("Inference"))},
                    **errors_for(404, 500),
                },
                parameters=[RECORD_ID],
            ),
            "delete": operation(
                "history.delete_inference",
                "history",
                "Delete a record and the images no other record uses.",
                {
                    "200": {"description": "Deleted.", "content": json_content(ref("InferenceDeleted"))},
                    **errors_for(404, 500),
                },
                parameters=[RECORD_ID],
            ),
        },
        "/inferences/{record_id}/image": {
            "get": operation(
                "history.get_first_image",
                "history",
                "A record's first image.",
                image_response(),
                parameters=[RECORD_ID],
            )
        },
        "/inferences/{record_id}/images/{position}": {
            "get": operation(
                "history.get_image",
                "history",
                "A record's image by its index.",
                image_response(),
                parameters=[
                    RECORD_ID,
                    {"name": "position", "in": "path", "required": True, "schema": integer(minimum=0)},
                ],
            )
        },
    }


def page_paths() -> dict[str, Schema]:
    """The chat page and this documentation."""
    html = {"text/html": {"schema": string()}}
    return {
        "/": {
            "get": operation("page.index", "page", "The chat page.", {"200": {"description": "HTML.", "content": html}})
        },
        "/docs": {
            "get": operation(
                "docs.docs_page",
                "page",
                "This document, browsable.",
                {"200": {"description": "HTML.", "content": html}},
            )
        },
        "/openapi.json": {
            "get": operation(
                "docs.openapi_json",
                "page",
                "This document.",
                {"200": {"description": "OpenAPI 3.1.", "content": json_content({"type": "object"})}},
            )
        },
    }
