"""/docs in headless Chromium against the real gunicorn server: Swagger UI, served from static/vendor/, shows
every route of /openapi.json, under the server's Content-Security-Policy, asking nothing of another host."""

from __future__ import annotations

import json
import urllib.request

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a browser, and a real gunicorn server


def test_the_docs_page_shows_every_route(live_server, open_page, screenshot):
    server = live_server(API_KEY="docs-key")
    with urllib.request.urlopen(server.url + "/openapi.json", timeout=10) as response:
        document = json.load(response)
    opened = open_page()
    page = opened.page
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(server.url + "/docs")
    expect(page.get_by_role("heading", name="Loupe")).to_be_visible()
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    expect(page.locator(".opblock-summary")).to_have_count(len(documented))
    shown = page.eval_on_selector_all(
        ".opblock-summary",
        """blocks => blocks.map(b => [b.querySelector(".opblock-summary-method").textContent,
                                      b.querySelector(".opblock-summary-path").dataset.path])""",
    )
    assert {tuple(pair) for pair in shown} == documented
    expect(page.get_by_role("button", name="Authorize")).to_be_visible()  # the keys this server checks
    page.locator(".opblock-post").filter(has_text="/v1/chat/completions").first.click()
    expect(page.get_by_text("ChatCompletionRequest").first).to_be_visible()
    screenshot(page, "api-docs")
    assert all(url.startswith(server.url) or url.startswith("data:") for url in requested), requested
