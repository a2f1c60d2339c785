"""The whole OpenAPI 3.1 document for one server's settings: paths, schemas, error responses, security."""

from __future__ import annotations

import copy

from loupe.settings import Settings
from loupe.web.observability import CONVERSATION_HEADER, REQUEST_ID_HEADER, VALID_REQUEST_ID
from loupe.web.openapi.chat_requests import chat_request_schemas
from loupe.web.openapi.chat_responses import chat_response_schemas
from loupe.web.openapi.errors import error_responses, error_schema, errors_for
from loupe.web.openapi.history import history_schemas
from loupe.web.openapi.paths import api_paths, history_paths, page_paths
from loupe.web.openapi.shapes import Schema
from loupe.web.openapi.streams import stream_schemas
from loupe.web.security import METRICS_PATH, PROTECTED_PREFIXES

API_VERSION = "1"  # the `v1` of /v1/: the API's, not the code's
DESCRIPTION = """\
A self-hosted service that answers questions about images with Qwen3-VL, with OpenAI's Chat
Completions API. Every error is OpenAI's envelope, `{"error": {"message", "type", "param", "code"}}`.
Every response carries `X-Request-ID` (the caller's, if it sent a valid one), and `X-Loupe-Conversation`
when the request named its conversation in it (README: Conversations). This document describes
this server as configured: its limits (`max_tokens`, images) are its settings', and `Authorization`
appears only where it has API keys."""
TAGS = [
    {"name": "chat", "description": "OpenAI-compatible generation, resuming and stopping streams, the model list."},
    {"name": "history", "description": "The record of each request (docs/history.md); 404 when HISTORY is off."},
    {"name": "probes", "description": "Health, liveness and metrics for orchestrators and Prometheus."},
    {"name": "page", "description": "The chat page and this documentation."},
]


def build_document(settings: Settings) -> Schema:
    """The document for a server with these settings."""
    paths = {**api_paths(), **history_paths(), **page_paths()}
    components: Schema = {
        "schemas": {
            "Error": error_schema(),
            **chat_request_schemas(settings),
            **chat_response_schemas(),
            **history_schemas(),
            **stream_schemas(),
        },
        "responses": error_responses(),
        "headers": {
            REQUEST_ID_HEADER: {
                "description": "The request's id, in the server's log lines too.",
                "required": True,
                "schema": {"type": "string", "pattern": f"^{VALID_REQUEST_ID.pattern}$"},
            },
            CONVERSATION_HEADER: {
                "description": "The request's conversation key, handed back when it sent a valid one.",
                "schema": {"type": "string", "pattern": f"^{VALID_REQUEST_ID.pattern}$"},
            },
        },
    }
    for response in components["responses"].values():
        add_echoed_headers(response)
    for path, item in paths.items():
        for op in item.values():
            finish_operation(op, path, settings)
    if settings.api_keys():
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "One of API_KEY's or API_KEY_FILE's keys."}
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Loupe", "version": API_VERSION, "description": DESCRIPTION},
        "tags": TAGS,
        "paths": paths,
        "components": components,
    }


def finish_operation(op: Schema, path: str, settings: Settings) -> None:
    """What every operation shares: the request id (asked and answered), and keys where they are checked."""
    op["parameters"] = [
        *op.get("parameters", []),
        {
            "name": REQUEST_ID_HEADER,
            "in": "header",
            "description": "An id for the request (1 to 128 of A-Z a-z 0-9 . _ : / + = -); one is made otherwise.",
            "schema": {"type": "string"},
        },
        {
            "name": CONVERSATION_HEADER,
            "in": "header",
            "description": "The conversation this request belongs to, the same on every turn (README: Conversations): "
            "a proxy routes on it; logged and handed back. Ignored unless it is 1 to 128 of A-Z a-z 0-9 . _ : / + = -.",
            "schema": {"type": "string"},
        },
    ]
    for response in op["responses"].values():
        if "$ref" not in response:  # the shared error responses get theirs in `build_document`
            add_echoed_headers(response)
    if requires_key(path, settings):
        op["security"] = [{"bearer": []}]
        op["responses"].update(errors_for(401))


def add_echoed_headers(response: Schema) -> None:
    """Document the headers any response may carry: X-Request-ID (always) and X-Loupe-Conversation."""
    headers = response.setdefault("headers", {})
    for name in (REQUEST_ID_HEADER, CONVERSATION_HEADER):
        headers[name] = {"$ref": f"#/components/headers/{name}"}


def requires_key(path: str, settings: Settings) -> bool:
    """Whether security.py checks a key on this path with these settings."""
    if not settings.api_keys():
        return False
    return path.startswith(PROTECTED_PREFIXES) or (settings.metrics_require_key and path == METRICS_PATH)


def document_for_request(document: Schema, script_root: str) -> Schema:
    """The document with the server's URL: the app's mount point (a proxy's prefix), or `/`."""
    served = copy.copy(document)
    served["servers"] = [{"url": script_root or "/"}]
    return served
