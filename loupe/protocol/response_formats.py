"""OpenAI's `response_format` (JSON or form-data) and the form's `schema` shortcut → `ResponseFormat`; pure."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from loupe.errors import InvalidRequest
from loupe.inference import ResponseFormat

TYPES = ("text", "json_object", "json_schema")
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for json_schema.name (whole: fullmatch)
DEFAULT_NAME = "extraction"
EXTRACT_PROMPT = "Extract these fields from the image and answer with JSON that follows this schema:\n{schema}"


def parse_response_format(raw: Any, *, from_form: bool = False) -> ResponseFormat:
    """`response_format`: {"type": "text" | "json_object" | "json_schema", "json_schema": {...}}; a form's is text."""
    if raw is None or (from_form and raw == ""):  # an HTML form sends every field, empty or not
        return ResponseFormat()
    if from_form and isinstance(raw, str):
        raw = _json(raw, "response_format")
    if not isinstance(raw, dict) or raw.get("type") not in TYPES:
        raise InvalidRequest(
            "`response_format` must be an object whose `type` is text, json_object or json_schema.",
            param="response_format",
        )
    if raw["type"] != "json_schema":
        return ResponseFormat(raw["type"])
    inner = raw.get("json_schema")
    if not isinstance(inner, dict):
        raise InvalidRequest("`response_format.json_schema` must be an object.", param="response_format.json_schema")
    name = inner.get("name", DEFAULT_NAME)
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidRequest(
            "`response_format.json_schema.name` must be 1-64 letters, digits, _ or -.",
            param="response_format.json_schema.name",
        )
    strict = inner.get("strict", False)
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequest(
            "`response_format.json_schema.strict` must be true or false.", param="response_format.json_schema.strict"
        )
    return ResponseFormat("json_schema", _schema_text(inner.get("schema")), name, bool(strict))


def form_response_format(form: Mapping[str, str]) -> ResponseFormat:
    """The form's `response_format` (JSON text) or its shortcut `schema` (a JSON schema, as text or a file)."""
    if form.get("response_format") and form.get("schema"):
        raise InvalidRequest("Send `response_format` or `schema`, not both.", param="schema")
    if not form.get("schema"):
        return parse_response_format(form.get("response_format"), from_form=True)
    schema = _json(form["schema"], "schema")
    name = schema.get("title") if isinstance(schema, dict) else None
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:64] if isinstance(name, str) and name.strip() else DEFAULT_NAME
    return ResponseFormat("json_schema", _schema_text(schema, "schema"), name, True)


def extraction_prompt(response_format: ResponseFormat) -> str:
    """What to ask when a form sends a schema and no prompt: the fields, by their schema."""
    return EXTRACT_PROMPT.format(schema=response_format.schema)


def _schema_text(schema: Any, param: str = "response_format.json_schema.schema") -> str:
    """The schema as compact JSON text; its keys keep their order, which is the order the answer's fields come in."""
    if not isinstance(schema, dict):
        raise InvalidRequest(f"`{param}` must be a JSON schema object.", param=param)
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def _json(text: str, param: str) -> Any:
    """A form field's JSON text, parsed."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise InvalidRequest(f"`{param}` must be JSON.", param=param) from None
