"""Builders for the pieces the document repeats: references, objects, nullable values, operations."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    """A reference to a named schema of the document's components."""
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), *, closed: bool, doc: str = "") -> Schema:
    """An object schema; `closed` forbids fields not listed (responses are closed, so a new field must be
    documented before the contract test passes; requests are open, as the server ignores unknown fields)."""
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if doc:
        schema["description"] = doc
    return schema


def nullable(schema: Schema) -> Schema:
    """`schema` or JSON null."""
    return {"anyOf": [schema, {"type": "null"}]}


def or_null(schema: Schema) -> Schema:
    """`schema` (one with a single `type`, and its bounds) or JSON null, as one schema (a copy)."""
    return {**schema, "type": [schema["type"], "null"]}


def described(schema: Schema, doc: str) -> Schema:
    """`schema` with a description (a copy)."""
    return {**schema, "description": doc}


def string(doc: str = "", **extra: Any) -> Schema:
    """A string schema."""
    return {"type": "string", **({"description": doc} if doc else {}), **extra}


def integer(doc: str = "", **extra: Any) -> Schema:
    """An integer schema."""
    return {"type": "integer", **({"description": doc} if doc else {}), **extra}


def number(doc: str = "", **extra: Any) -> Schema:
    """A number schema."""
    return {"type": "number", **({"description": doc} if doc else {}), **extra}


def boolean(doc: str = "") -> Schema:
    """A boolean schema."""
    return {"type": "boolean", **({"description": doc} if doc else {})}


def json_content(schema: Schema) -> dict[str, Schema]:
    """A `content` map with one application/json media type."""
    return {"application/json": {"schema": schema}}


def operation(endpoint: str, tag: str, summary: str, responses: dict[str, Schema], **more: object) -> Schema:
    """One operation; `endpoint` is the Flask endpoint that serves it."""
    return {"operationId": endpoint, "tags": [tag], "summary": summary, "responses": responses, **more}
