"""Checking real requests and responses against the served OpenAPI document, with jsonschema."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT_URI = "urn:loupe-openapi"


def pointer(*parts: str) -> str:
    """A JSON pointer to these keys (escaping `/` and `~`)."""
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


class Contract:
    """The document and what it promises: `check_request` and `check_response` fail on any difference."""

    def __init__(self, document: dict):
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(ROOT_URI, resource)

    def validate(self, instance: Any, at: str) -> None:
        """Validate `instance` against the schema at this JSON pointer of the document."""
        self.validate_against(instance, {"$ref": f"{ROOT_URI}#{at}"})

    def validate_against(self, instance: Any, schema: dict) -> None:
        """Validate `instance` against a schema that may refer into the document."""
        Draft202012Validator(schema, registry=self.registry, format_checker=FormatChecker()).validate(instance)

    def operation(self, path: str, method: str) -> dict:
        """The documented operation; a KeyError if there is none."""
        return self.document["paths"][path][method.lower()]

    def check_request(self, path: str, method: str, media_type: str, body: Any) -> None:
        """The body a test sends is one the document describes."""
        assert media_type in self.operation(path, method)["requestBody"]["content"], media_type
        self.validate(body, pointer("paths", path, method.lower(), "requestBody", "content", media_type, "schema"))

    def check_response(self, path: str, method: str, response) -> None:
        """The status, content type, headers and body of a real (Flask test client) response are documented."""
        responses = self.operation(path, method)["responses"]
        status = str(response.status_code)
        assert status in responses, f"{method} {path}: status {status} is not documented"
        at = pointer("paths", path, method.lower(), "responses", status)
        entry = responses[status]
        if "$ref" in entry:
            at = entry["$ref"].removeprefix("#")
            entry = self.document["components"]["responses"][at.rsplit("/", 1)[-1]]
        for name, header in entry.get("headers", {}).items():
            self.check_header(f"{method} {path} {status}", name, header, response.headers.get(name))
        if "content" not in entry:
            assert not response.get_data(), f"{method} {path} {status}: a body where none is documented"
            return
        media_type = response.mimetype
        assert media_type in entry["content"], f"{method} {path} {status}: {media_type} is not documented"
        schema_at = at + pointer("content", media_type, "schema")
        if media_type == "application/json":
            self.validate(response.get_json(), schema_at)
        elif media_type == "text/event-stream":
            for event in sse_events(response.get_data(as_text=True)):
                self.validate(event, schema_at)
                if event["data"] != "[DONE]":
                    self.validate(json.loads(event["data"]), schema_at + "/properties/data/anyOf/1/contentSchema")

    def check_header(self, where: str, name: str, header: dict, value: str | None) -> None:
        """A documented header: present if `required`, and when present, its value as its schema says."""
        if "$ref" in header:
            header = self.document["components"]["headers"][header["$ref"].rsplit("/", 1)[-1]]
        if value is None:
            assert not header.get("required"), f"{where}: no {name} header"
            return
        self.validate_against(int(value) if header["schema"].get("type") == "integer" else value, header["schema"])


def sse_events(text: str) -> list[dict]:
    """The events of a Server-Sent Events body as {"data": …} or {"id": …, "data": …} (comments dropped); fails
    on any other field, and on an `id` anywhere but first."""
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        event = {"id": lines.pop(0).removeprefix("id: ")} if lines[0].startswith("id: ") else {}
        assert lines and all(line.startswith("data: ") for line in lines), block
        events.append({**event, "data": "\n".join(line.removeprefix("data: ") for line in lines)})
    return events
