"""The chat page against a real server started with API_KEY: the page asks for the key and sends it."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.page_actions import wait_until_ready
from tests.support.live_server import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a browser, and a real gunicorn server

KEY = "page-test-key"
# Chromium logs every refused request itself; the tests provoke these on purpose.
REFUSED_LOG = r"status of 401"


@pytest.fixture(scope="module")
def keyed_server(tiny_model_dir, tmp_path_factory):
    """One real server for this module that wants `Authorization: Bearer <KEY>` on /v1 and /inferences."""
    folder = tmp_path_factory.mktemp("e2e-keyed")
    live = LiveServer(
        {
            "MODEL_ID": str(tiny_model_dir),
            "MAX_NEW_TOKENS": "8",
            "IMAGE_MAX_EDGE": "256",
            "API_KEY": KEY,
            "DATA_DIR": str(folder / "data"),
        },
        folder / "server.log",
    )
    live.start("ok")
    yield live
    live.stop()


def api_authorizations(page) -> list[tuple[str, str | None]]:
    """Collect (path, Authorization header) of every request the page makes to /v1 or /inferences."""
    seen: list[tuple[str, str | None]] = []

    def record(request):
        path = "/" + request.url.split("/", 3)[3]
        if path.startswith(("/v1/", "/inferences")):
            seen.append((path, request.headers.get("authorization")))

    page.on("request", record)
    return seen


def enter_key(page, key: str):
    dialog = page.get_by_role("dialog", name="API key needed")
    expect(dialog).to_be_visible()
    expect(page.get_by_label("API key", exact=True)).to_be_focused()
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Use this key").click()
    expect(dialog).to_be_hidden()


def ask(page, question: str):
    page.get_by_label("Message").fill(question)
    page.get_by_label("Message").press("Enter")


def test_the_page_asks_for_the_key_first_and_sends_it(keyed_server, open_page, screenshot):
    page = open_page(keyed_server.url).page
    seen = api_authorizations(page)
    screenshot(page, "desktop-api-key")
    enter_key(page, KEY)
    wait_until_ready(page)
    ask(page, "Hello?")
    expect(page.locator(".turn.assistant")).to_have_attribute("data-state", "done")
    assert seen == [("/v1/chat/completions", f"Bearer {KEY}")]
    assert page.evaluate("localStorage.getItem('loupe.apiKey')") == KEY


def test_a_refused_key_is_asked_for_again_and_the_request_retried_once(keyed_server, open_page):
    opened = open_page(keyed_server.url)
    opened.console.allow(REFUSED_LOG)
    page = opened.page
    seen = api_authorizations(page)
    enter_key(page, "not-the-key")
    wait_until_ready(page)
    ask(page, "Hello?")
    expect(page.locator("#key-error")).to_have_text("The server did not accept that key. Check it and enter it again.")
    enter_key(page, KEY)
    answer = page.locator(".turn.assistant")
    expect(answer).to_have_attribute("data-state", "done")  # the same question, answered: no error on screen
    expect(page.locator(".turn.user")).to_have_count(1)
    assert seen == [("/v1/chat/completions", "Bearer not-the-key"), ("/v1/chat/completions", f"Bearer {KEY}")]


def test_declining_the_key_shows_the_servers_refusal(keyed_server, open_page):
    opened = open_page(keyed_server.url)
    opened.console.allow(REFUSED_LOG)
    page = opened.page
    expect(page.get_by_role("dialog", name="API key needed")).to_be_visible()
    page.get_by_role("button", name="Not now").click()
    wait_until_ready(page)
    ask(page, "Hello?")  # asked again before sending, since there is still no key
    expect(page.get_by_role("dialog", name="API key needed")).to_be_visible()
    page.keyboard.press("Escape")
    answer = page.locator(".turn.assistant")
    expect(answer).to_have_attribute("data-state", "error")
    expect(answer.get_by_role("alert")).to_contain_text("A valid API key is required")


def test_a_stored_key_survives_a_reload_and_forget_key_clears_it(keyed_server, open_page):
    page = open_page(keyed_server.url).page
    enter_key(page, KEY)
    page.reload()
    wait_until_ready(page)
    expect(page.get_by_role("dialog", name="API key needed")).to_be_hidden()
    seen = api_authorizations(page)
    ask(page, "Still there?")
    expect(page.locator(".turn.assistant")).to_have_attribute("data-state", "done")
    assert seen == [("/v1/chat/completions", f"Bearer {KEY}")]

    page.get_by_role("button", name="Settings").click()
    page.get_by_role("button", name="Forget key").click()
    expect(page.locator("#help-key")).to_have_text("Forgotten. The page asks for a key before its next request.")
    assert page.evaluate("localStorage.getItem('loupe.apiKey')") is None
    page.get_by_role("button", name="Done").click()
    page.reload()
    expect(page.get_by_role("dialog", name="API key needed")).to_be_visible()


# Whether an image URL still loads (fetch() of a blob: URL is not allowed by the page's connect-src).
LOAD_IMAGE = """url => new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve("loaded");
    img.onerror = () => resolve("failed");
    img.src = url;
})"""


def test_the_history_panel_lists_and_shows_images_with_the_key(keyed_server, open_page, images):
    opened = open_page(keyed_server.url)
    opened.console.allow(r"ERR_FILE_NOT_FOUND")  # the revoked blob URL, on purpose
    page = opened.page
    enter_key(page, KEY)
    wait_until_ready(page)
    seen = api_authorizations(page)
    page.set_input_files("#file-input", str(images / "icon.png"))
    expect(page.locator("#attachments .attachment")).to_have_count(1)
    page.get_by_label("Message").fill("What is this icon?")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".turn.assistant")).to_have_attribute("data-state", "done")

    page.get_by_role("button", name="History").click()
    dialog = page.get_by_role("dialog", name="History")
    item = dialog.locator(".history-item", has_text="What is this icon?")
    expect(item).to_have_count(1)
    thumb = item.locator("img.history-thumb")
    expect(thumb).to_have_attribute("src", re.compile(r"^blob:"))  # an <img src> could not send the key
    expect(thumb).to_have_js_property("complete", True)
    assert thumb.evaluate("img => img.naturalWidth") > 0
    first_thumb_url = thumb.get_attribute("src")
    assert page.evaluate(LOAD_IMAGE, first_thumb_url) == "loaded"

    # Reloading the list frees the old thumbnails' blob URLs.
    page.get_by_role("button", name="Close history").click()
    page.get_by_role("button", name="History").click()
    expect(item.locator("img.history-thumb")).not_to_have_attribute("src", first_thumb_url)
    assert page.evaluate(LOAD_IMAGE, first_thumb_url) == "failed"

    item.locator(".history-open").click()
    expect(page.locator(".turn.user img")).to_have_js_property("complete", True)
    assert page.locator(".turn.user img").evaluate("img => img.naturalWidth") > 0
    paths = {path.split("?")[0] for path, _ in seen}
    assert "/inferences" in paths  # the list
    assert any(re.fullmatch(r"/inferences/[0-9a-f-]{36}", path) for path in paths)  # the record
    assert any(re.fullmatch(r"/inferences/[0-9a-f-]{36}/image.*", path) for path in paths)  # its images
    assert {authorization for _, authorization in seen} == {f"Bearer {KEY}"}
