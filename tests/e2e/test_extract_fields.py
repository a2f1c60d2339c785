"""The page's "Extract fields" in headless Chromium against the real server on the tiny random model."""

from __future__ import annotations

import json

import jsonschema
import pytest
from playwright.sync_api import expect

from tests.e2e.page_actions import chat_requests, open_settings, wait_until_ready
from tests.support.live_server import ROOT, LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a browser, and a real gunicorn server

LIMIT = 300  # the page asks for the server's ceiling: the JSON ends when it is complete, well within it
BASKET = {
    "title": "Basket",
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "kind": {"enum": ["fruit", "tool", "toy"]},
                    "count": {"type": "integer", "minimum": 0, "maximum": 99},
                },
                "required": ["kind", "count"],
                "additionalProperties": False,
            },
            "minItems": 1,
            "maxItems": 3,
        }
    },
    "required": ["items"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    live = LiveServer(
        {
            "MODEL_ID": str(tiny_model_dir),
            "MAX_NEW_TOKENS": "8",
            "MAX_NEW_TOKENS_LIMIT": str(LIMIT),
            "IMAGE_MAX_EDGE": "256",
        },
        tmp_path_factory.mktemp("e2e-extract") / "server.log",
    )
    live.start("ok")
    yield live
    live.stop()


def test_extract_fields_with_a_pasted_schema_shows_a_table_and_copies_the_json(server, open_page, images):
    page = open_page(server.url, permissions=["clipboard-read", "clipboard-write"]).page
    sent = chat_requests(page)
    wait_until_ready(page)
    open_settings(page)
    page.get_by_label("Temperature").fill("0")
    page.get_by_role("button", name="Done").click()
    page.set_input_files("#file-input", str(images / "photo.jpg"))
    expect(page.locator("#attachments .attachment")).to_have_count(1)

    page.get_by_role("button", name="Extract fields").click()
    dialog = page.get_by_role("dialog", name="Extract fields")
    expect(dialog).to_be_visible()
    # The shipped schemas are offered, the first one loaded into the box from static/schemas/.
    options = dialog.get_by_label("Document").locator("option").all_inner_texts()
    assert options == ["ID card", "Invoice", "Receipt", "My own schema"]
    shipped = json.loads((ROOT / "static" / "schemas" / "idcard.json").read_text())
    expect(dialog.get_by_label("JSON schema")).to_have_value((ROOT / "static" / "schemas" / "idcard.json").read_text())
    assert "nik" in shipped["properties"]

    dialog.get_by_label("Document").select_option(label="My own schema")
    dialog.get_by_label("JSON schema").fill("{not json")
    dialog.get_by_role("button", name="Extract").click()
    expect(dialog.get_by_role("alert")).to_have_text("The schema is not valid JSON.")
    dialog.get_by_label("JSON schema").fill(json.dumps(BASKET, indent=2))
    dialog.get_by_role("button", name="Extract").click()
    expect(dialog).to_be_hidden()

    answer = page.locator(".turn.assistant").last
    expect(answer).to_have_attribute("data-state", "done")
    table = answer.locator("table.fields")
    expect(table).to_be_visible()
    assert sent[-1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Basket", "schema": BASKET, "strict": True},
    }
    assert sent[-1]["max_tokens"] == LIMIT
    assert "items" in sent[-1]["messages"][-1]["content"][-1]["text"]  # the prompt names the fields

    answer.get_by_role("button", name="Copy as JSON").click()
    expect(answer.get_by_role("button", name="Copied")).to_be_visible()
    copied = json.loads(page.evaluate("navigator.clipboard.readText()"))
    jsonschema.validate(copied, BASKET)
    fields, values = table.locator("tbody th").all_inner_texts(), table.locator("tbody td").all_inner_texts()
    shown = dict(zip(fields, values, strict=True))
    expected = {
        f"items.{i}.{key}": str(value) for i, item in enumerate(copied["items"], 1) for key, value in item.items()
    }
    assert shown == expected

    # The history keeps the schema: the record opened in a new chat shows the table again.
    page.get_by_role("button", name="New chat").click()
    page.get_by_role("button", name="History").click()
    history = page.get_by_role("dialog", name="History")
    history.locator(".history-open", has_text="Extract the fields of Basket").click()
    expect(history).to_be_hidden()
    reopened = page.locator(".turn.assistant table.fields")
    expect(reopened).to_be_visible()
    assert reopened.locator("tbody td").all_inner_texts() == values
