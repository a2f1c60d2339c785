"""The history panel against the real gunicorn server (tiny model), history in a temporary DATA_DIR."""

from __future__ import annotations

import json
import urllib.request

import pytest
from playwright.sync_api import expect

from tests.e2e.page_actions import (
    chat_requests,
    conversation_keys,
    goto_under_the_servers_csp,
    open_settings,
    wait_until_ready,
)
from tests.support.live_server import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a browser, and a real gunicorn server


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e-history")
    live = LiveServer(
        {
            "MODEL_ID": str(tiny_model_dir),
            "MAX_NEW_TOKENS": "8",
            "IMAGE_MAX_EDGE": "256",
            "MAX_IMAGES": "4",
            "QUEUE_SIZE": "2",
            "DATA_DIR": str(folder / "data"),
        },
        folder / "server.log",
    )
    live.start("ok")
    yield live
    live.stop()


def listed_ids(server) -> list[str]:
    return [entry["id"] for entry in fetch_json(server, "/inferences?limit=100")["data"]]


def fetch_json(server, path: str) -> dict:
    with urllib.request.urlopen(server.url + path) as response:
        return json.load(response)


def open_history(page):
    page.get_by_role("button", name="History").click()
    dialog = page.get_by_role("dialog", name="History")
    expect(dialog).to_be_visible()
    expect(page.locator("#history-status")).not_to_have_text("Loading…")
    return dialog


def test_ask_then_open_continue_and_delete_from_the_history(server, open_page, images, screenshot):
    page = open_page(server.url).page
    sent = chat_requests(page)
    keys = conversation_keys(page)
    wait_until_ready(page)
    open_settings(page)
    page.get_by_label("Temperature").fill("0")  # greedy, as in the chat page's follow-up test
    page.get_by_label("System prompt").fill("Answer briefly.")
    page.keyboard.press("Escape")
    page.set_input_files("#file-input", str(images / "icon.png"))
    expect(page.locator("#attachments .attachment")).to_have_count(1)
    page.get_by_role("button", name="Describe").click()
    expect(page.locator(".turn.assistant").last).to_have_attribute("data-state", "done")
    answer_text = page.locator(".turn.assistant .answer").inner_text()

    # The record is in the panel: its thumbnail (the image itself, loaded) and its question.
    dialog = open_history(page)
    item = dialog.locator(".history-item", has_text="Describe this image in detail.")
    expect(item).to_have_count(1)
    recorded = fetch_json(server, f"/inferences/{item.get_attribute('data-id')}")
    thumb = item.locator("img.history-thumb")
    expect(thumb).to_have_js_property("complete", True)
    assert thumb.evaluate("img => img.naturalWidth") > 0
    screenshot(page, "desktop-history")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name="History")).to_be_focused()

    # Open it in a new chat: the question, the image and the answer are back.
    page.get_by_role("button", name="New chat").click()
    expect(page.locator(".turn")).to_have_count(0)
    open_history(page).locator(".history-open", has_text="Describe this image in detail.").click()
    expect(page.get_by_role("dialog", name="History")).to_be_hidden()
    expect(page.locator(".turn.user .bubble")).to_have_text("Describe this image in detail.")
    expect(page.locator(".turn.user img")).to_have_js_property("complete", True)
    expect(page.locator(".turn.assistant")).to_have_attribute("data-state", "done")
    expect(page.locator(".turn.assistant .answer")).to_have_text(answer_text)
    expect(page.get_by_label("Message")).to_be_focused()
    screenshot(page, "desktop-history-opened")

    # Continue it: the follow-up sends the recorded history, the image again as a data URL.
    page.get_by_label("Message").fill("And what colour is it?")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".turn.assistant")).to_have_count(2)
    expect(page.locator(".turn.assistant").last).to_have_attribute("data-state", "done")
    first, follow_up = sent
    assert [m["role"] for m in follow_up["messages"]] == ["system", "user", "assistant", "user"]
    assert follow_up["messages"][1] == first["messages"][1]  # the same image bytes, the same question
    assert follow_up["messages"][2] == {"role": "assistant", "content": recorded["answer"]}
    assert follow_up["messages"][3]["content"] == [{"type": "text", "text": "And what colour is it?"}]
    # Reopened, the conversation has the key it had: a proxy sends it back to the instance that read the image.
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0]

    # The list was refreshed: the follow-up is the newest entry.
    dialog = open_history(page)
    newest = dialog.locator(".history-item").first
    expect(newest.locator(".history-question")).to_have_text("Describe this image in detail.")
    expect(newest.locator(".history-last")).to_have_text("Last: And what colour is it?")

    # Delete it: asked once, then gone from the panel and from the API.
    record_id = newest.get_attribute("data-id")
    assert record_id in listed_ids(server)
    delete = newest.get_by_role("button", name="Delete “Describe this image in detail.”")
    delete.click()
    expect(newest.get_by_role("button", name="Keep")).to_be_focused()
    page.keyboard.press("Escape")  # cancels the question, not the drawer
    expect(dialog).to_be_visible()
    expect(delete).to_be_focused()
    delete.click()
    screenshot(page, "desktop-history-delete")
    newest.get_by_role("button", name="Delete", exact=True).click()
    expect(dialog.locator(f'.history-item[data-id="{record_id}"]')).to_have_count(0)
    assert record_id not in listed_ids(server)
    page.keyboard.press("Escape")
    page.reload()
    wait_until_ready(page)
    expect(open_history(page).locator(f'.history-item[data-id="{record_id}"]')).to_have_count(0)


HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> **bold?** & done'


def test_html_in_a_question_is_shown_as_text_under_a_strict_csp(server, open_page, images, screenshot):
    page = open_page(color_scheme="dark").page
    goto_under_the_servers_csp(page, server.url + "/")
    wait_until_ready(page)
    page.set_input_files("#file-input", str(images / "photo.jpg"))
    expect(page.locator("#attachments .attachment")).to_have_count(1)
    page.get_by_label("Message").fill(HOSTILE)
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".turn.assistant")).to_have_attribute("data-state", "done")

    dialog = open_history(page)
    item = dialog.locator(".history-item").first
    expect(item.locator(".history-question")).to_have_text(HOSTILE)
    expect(item.locator(".history-words img, .history-words script, .history-words strong")).to_have_count(0)
    expect(item.locator("img.history-thumb")).to_have_js_property("complete", True)
    screenshot(page, "desktop-history-dark")
    item.locator(".history-open").click()
    expect(page.locator(".turn.user .bubble")).to_have_text(HOSTILE)
    expect(page.locator(".turn.user .bubble *")).to_have_count(0)
    expect(page.locator(".turn.user img")).to_have_js_property("complete", True)
    assert page.evaluate("window.__pwned") is None


def test_history_on_a_phone(server, open_page, images, screenshot, fits_a_phone):
    page = open_page(server.url, device="phone").page
    wait_until_ready(page)
    page.set_input_files("#file-input", str(images / "photo.jpg"))
    question = "What colours are in this photo? A long question to see how it wraps in the list."
    page.get_by_label("Message").fill(question)
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".turn.assistant")).to_have_attribute("data-state", "done")
    fits_a_phone(page, buttons=("History",))
    dialog = open_history(page)
    expect(dialog.locator(".history-item").first).to_contain_text("What colours are in this photo?")
    fits_a_phone(page)
    panel = dialog.bounding_box()
    assert panel["width"] <= 390
    screenshot(page, "phone-history")
    page.get_by_role("button", name="Close history").click()
    expect(dialog).to_be_hidden()


def test_no_history_button_when_history_is_off(tiny_model_dir, tmp_path, open_page):
    live = LiveServer({"MODEL_ID": str(tiny_model_dir), "HISTORY": "off"}, tmp_path / "server.log")
    live.start("ok")
    try:
        page = open_page(live.url).page
        wait_until_ready(page)
        expect(page.get_by_role("button", name="New chat")).to_be_visible()
        expect(page.get_by_role("button", name="History")).to_have_count(0)
        assert page.evaluate("JSON.parse(document.getElementById('loupe-config').textContent).urls.history") is None
    finally:
        live.stop()


def test_older_records_load_on_request(server, open_page):
    for i in range(21):  # more than one page of the panel (20)
        body = json.dumps({"messages": [{"role": "user", "content": f"Question number {i}"}], "max_tokens": 1})
        request = urllib.request.Request(
            server.url + "/inferences", data=body.encode(), method="POST", headers={"Content-Type": "application/json"}
        )
        urllib.request.urlopen(request).close()
    total = len(listed_ids(server))
    assert 21 <= total <= 40
    page = open_page(server.url).page
    wait_until_ready(page)
    dialog = open_history(page)
    expect(dialog.locator(".history-item")).to_have_count(20)
    expect(dialog.locator(".history-item").first).to_contain_text("Question number 20")
    older = dialog.get_by_role("button", name="Show older")
    older.click()
    expect(dialog.locator(".history-item")).to_have_count(total)
    expect(older).to_be_hidden()
    ids = dialog.locator(".history-item").evaluate_all("items => items.map((item) => item.dataset.id)")
    assert ids == listed_ids(server)  # newest first, nothing twice


def test_a_failed_record_opens_with_its_error_and_can_be_retried(server, open_page):
    page = open_page(server.url).page
    sent = chat_requests(page)
    wait_until_ready(page)

    def as_failed(route):
        record = route.fetch().json()
        record.update(
            status="failed",
            answer="",
            finish_reason=None,
            error={"message": "The server is busy <b>now</b>.", "type": "server_error"},
        )
        route.fulfill(json=record)

    page.route(
        server.url + "/inferences/*",
        lambda route: as_failed(route) if route.request.method == "GET" else route.continue_(),
    )
    dialog = open_history(page)
    dialog.locator(".history-open").first.click()
    answer = page.locator(".turn.assistant")
    expect(answer).to_have_attribute("data-state", "error")
    expect(answer.get_by_role("alert")).to_have_text("Error: The server is busy <b>now</b>.")
    expect(page.locator(".turn.user.left-out")).to_have_count(1)
    answer.get_by_role("button", name="Retry").click()
    expect(page.locator(".turn.assistant")).to_have_attribute("data-state", "done")
    assert [m["role"] for m in sent[0]["messages"]] == ["user"]
