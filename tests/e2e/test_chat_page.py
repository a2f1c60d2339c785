"""The chat page in headless Chromium against the real gunicorn server running the tiny random model."""

from __future__ import annotations

import base64
import json
import re

import pytest
from playwright.sync_api import expect

from tests.e2e.page_actions import (
    answer_states,
    chat_requests,
    conversation_keys,
    goto_under_the_servers_csp,
    open_settings,
    set_max_tokens,
    wait_until_ready,
    watch_answer_states,
)
from tests.support.live_server import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a browser, and a real gunicorn server

IMAGE_MAX_EDGE = 256  # small, so the tiny model reads images fast
BMP_REFUSED = "Image format BMP is not supported; send PNG, JPEG, WebP or GIF."


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """One real server for this module: `gunicorn 'app:create_app()'` on the tiny model."""
    live = LiveServer(
        {
            "MODEL_ID": str(tiny_model_dir),
            "MAX_NEW_TOKENS": "8",
            "IMAGE_MAX_EDGE": str(IMAGE_MAX_EDGE),
            "MAX_IMAGES": "4",
            "QUEUE_SIZE": "2",
            # One generation at a time, so a generation that went on after Stop would hold up the next.
            "MAX_BATCH": "1",
        },
        tmp_path_factory.mktemp("e2e-server") / "server.log",
    )
    live.start("ok")
    yield live
    live.stop()


def test_attach_an_image_ask_and_watch_the_answer_stream(server, open_page, images, screenshot):
    opened = open_page(server.url)
    page = opened.page
    sent = chat_requests(page)
    wait_until_ready(page)
    expect(page.get_by_role("button", name="Send")).to_be_disabled()  # nothing to send yet
    open_settings(page)
    page.get_by_label("Temperature").fill("0")  # greedy: the random model's answer is the same every run
    page.get_by_role("button", name="Done").click()

    page.set_input_files("#file-input", str(images / "photo.jpg"))
    thumbnail = page.locator("#attachments .attachment")
    expect(thumbnail).to_have_count(1)
    # The 1600×1200 photo is scaled in the browser to the server's IMAGE_MAX_EDGE before upload.
    expect(thumbnail.locator(".attachment-caption")).to_have_text(f"{IMAGE_MAX_EDGE}×{IMAGE_MAX_EDGE * 3 // 4}")
    expect(page.get_by_role("button", name="Remove photo.jpg")).to_be_visible()

    page.get_by_label("Message").fill("What is in this picture?")
    watch_answer_states(page)
    page.get_by_role("button", name="Send").click()

    answer = page.locator(".turn.assistant").last
    expect(answer).to_have_attribute("data-state", "done")
    body = answer.locator(".answer")
    expect(body).to_have_attribute("aria-live", "polite")
    expect(body).to_have_attribute("aria-busy", "false")
    assert body.inner_text().strip(), "the answer is empty"
    # Queued, then the model read the image, then wrote: the stream was followed, not waited for.
    assert answer_states(page) == ["queued", "reading", "writing", "done"]
    stats = answer.locator(".stats")
    expect(stats).to_contain_text(re.compile(r"\d+ image tokens"))
    expect(stats).to_contain_text("first token")
    expect(stats).to_contain_text("tokens/s")
    expect(answer.get_by_role("button", name="Copy the answer")).to_be_visible()
    expect(answer.get_by_role("button", name="Regenerate the answer")).to_be_visible()

    # The question and its (downscaled) image are in the conversation and were sent as a data URL.
    user_turn = page.locator(".turn.user").last
    expect(user_turn.locator(".bubble")).to_have_text("What is in this picture?")
    expect(user_turn.locator("img")).to_have_attribute("alt", "photo.jpg")
    assert len(sent) == 1
    content = sent[0]["messages"][-1]["content"]
    assert content[0]["type"] == "image_url" and content[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert content[1] == {"type": "text", "text": "What is in this picture?"}
    assert sent[0]["stream"] is True and sent[0]["max_tokens"] == 8
    assert sent[0]["stream_options"] == {"include_usage": True}
    expect(page.locator("#attachments")).to_be_hidden()
    expect(page.get_by_label("Message")).to_have_value("")
    screenshot(page, "desktop-answer")


def test_follow_up_questions_send_the_history_and_regenerate_replaces_the_answer(server, open_page, images):
    page = open_page(server.url).page
    sent = chat_requests(page)
    keys = conversation_keys(page)
    wait_until_ready(page)
    open_settings(page)
    page.get_by_label("Temperature").fill("0")  # greedy: the tiny model's answers are deterministic
    page.get_by_label("System prompt").fill("Answer briefly.")
    page.keyboard.press("Escape")  # closing by Escape keeps what was typed: it is saved as you type
    page.set_input_files("#file-input", str(images / "icon.png"))
    expect(page.locator("#attachments .attachment")).to_have_count(1)
    page.get_by_role("button", name="Describe").click()  # a one-click task sends at once
    expect(page.locator(".turn.assistant").last).to_have_attribute("data-state", "done")

    page.get_by_label("Message").fill("And what colour is it?")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".turn.assistant")).to_have_count(2)
    expect(page.locator(".turn.assistant").last).to_have_attribute("data-state", "done")

    first, follow_up = sent
    assert first["temperature"] == 0
    assert first["messages"][0] == {"role": "system", "content": "Answer briefly."}
    assert first["messages"][1]["content"][1]["text"] == "Describe this image in detail."
    # The PNG with transparency is small: it is sent as it is, still a PNG.
    assert first["messages"][1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    roles = [m["role"] for m in follow_up["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert follow_up["messages"][1] == first["messages"][1]  # the image goes again with the history
    assert follow_up["messages"][3]["content"] == [{"type": "text", "text": "And what colour is it?"}]

    # Only the last answer can be regenerated; doing so replaces it and resends the same history.
    first_answer, last_answer = page.locator(".turn.assistant").all()
    expect(first_answer.get_by_role("button", name="Regenerate the answer")).to_be_hidden()
    last_answer.get_by_role("button", name="Regenerate the answer").click()
    expect(page.locator(".turn.assistant")).to_have_count(2)
    expect(page.locator(".turn.assistant").last).to_have_attribute("data-state", "done")
    assert sent[2]["messages"] == follow_up["messages"]
    # Every turn names the same conversation, for a proxy to keep it on one instance.
    assert len(keys) == 3 and len(set(keys)) == 1 and re.fullmatch(r"page-[0-9a-f]{14}", keys[0] or "")

    page.get_by_role("button", name="New chat").click()
    expect(page.locator(".turn")).to_have_count(0)
    expect(page.locator("#empty-state")).to_be_visible()
    expect(page.get_by_label("Message")).to_be_focused()


def test_stop_aborts_the_generation_and_the_server_stops(server, open_page, images):
    page = open_page(server.url).page
    wait_until_ready(page)
    set_max_tokens(page, 2048)

    # The tiny random model ends its answers early; the page has no `ignore_eos`, so this test adds it
    # on the way out to make the generation long enough to stop.
    def long_generation(route):
        body = route.request.post_data_json
        route.continue_(post_data=json.dumps({**body, "ignore_eos": True}))

    page.route("**/v1/chat/completions", long_generation)
    page.set_input_files("#file-input", str(images / "photo.jpg"))
    page.get_by_label("Message").fill("Tell me everything about it.")
    page.get_by_label("Message").press("Enter")
    answer = page.locator(".turn.assistant").last
    expect(answer).to_have_attribute("data-state", "writing")
    expect(page.get_by_role("button", name="Send")).to_be_hidden()
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_visible()
    expect(answer.locator(".answer")).to_have_text(re.compile(r"[\s\S]{21,}"))  # no eval: the CSP forbids it
    stop.click()

    expect(answer).to_have_attribute("data-state", "stopped")
    expect(answer.locator(".stats")).to_have_text("Stopped.")
    expect(stop).to_be_hidden()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(page.get_by_label("Message")).to_be_focused()
    kept = answer.locator(".answer").inner_text()
    page.wait_for_timeout(300)  # not a poll: a moment in which no more text may come
    assert answer.locator(".answer").inner_text() == kept, "text kept arriving after Stop"

    # The server dropped the aborted generation: the next request does not wait behind it.
    # (In a new chat: the random model's text may hold special-token strings the server refuses as history.)
    page.unroute("**/v1/chat/completions")
    page.get_by_role("button", name="New chat").click()
    set_max_tokens(page, 8)
    page.get_by_label("Message").fill("Short answer please.")
    page.get_by_label("Message").press("Enter")
    answer = page.locator(".turn.assistant").last
    expect(answer).to_have_attribute("data-state", "done")
    assert float(answer.get_attribute("data-queue-ms")) < 1000
    health = server.health()
    assert health["status"] == "ok" and health["queue_depth"] == 0


# Counts, as Enter goes down in the message box, the images the tray is still preparing.
COUNT_PREPARING_AT_ENTER = """() => document.addEventListener("keydown", (event) => {
    if (event.key === "Enter") window.__preparingAtEnter = document.querySelectorAll("#attachments .preparing").length;
}, {capture: true})"""


def test_enter_while_a_large_photo_is_prepared_waits_and_sends_it(server, open_page, images):
    page = open_page(server.url).page
    sent = chat_requests(page)
    wait_until_ready(page)
    page.evaluate(COUNT_PREPARING_AT_ENTER)
    page.get_by_label("Message").fill("What is in this photo?")
    page.set_input_files("#file-input", str(images / "camera.jpg"))
    page.get_by_label("Message").press("Enter")
    assert page.evaluate("window.__preparingAtEnter") == 1, "Enter came after the photo was ready: nothing tested"
    expect(page.locator(".turn.assistant")).to_have_attribute("data-state", "done")
    expect(page.locator(".turn.user img")).to_have_attribute("alt", "camera.jpg")
    assert len(sent) == 1
    image, text = sent[0]["messages"][-1]["content"]
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert text == {"type": "text", "text": "What is in this photo?"}
    expect(page.locator("#attachments")).to_be_hidden()
    expect(page.get_by_label("Message")).to_have_value("")


def test_refused_files_are_explained_in_the_servers_words(server, open_page, images, screenshot):
    opened = open_page(server.url)
    page = opened.page
    wait_until_ready(page)
    notice = page.locator("#attach-notice")

    page.set_input_files("#file-input", str(images / "scan.bmp"))
    expect(notice).to_be_visible()
    expect(notice).to_have_attribute("role", "alert")
    expect(notice).to_contain_text(f"scan.bmp: {BMP_REFUSED}")
    expect(page.locator("#attachments .attachment")).to_have_count(0)

    # A BMP named .png is recognised by its bytes, as the server does.
    page.set_input_files("#file-input", str(images / "disguised.png"))
    expect(notice).to_contain_text(f"disguised.png: {BMP_REFUSED}")
    expect(page.locator("#attachments .attachment")).to_have_count(0)
    screenshot(page, "desktop-refused-file")

    # Should one get through anyway, the server's 415 appears in the conversation, readably.
    bmp_data_url = "data:image/png;base64," + base64.b64encode((images / "scan.bmp").read_bytes()).decode()

    def swap_in_the_bmp(route):
        body = route.request.post_data_json
        body["messages"][-1]["content"][0]["image_url"]["url"] = bmp_data_url
        route.continue_(post_data=json.dumps(body))

    opened.console.allow(r"status of 415")  # the browser logs the refused request itself
    page.route("**/v1/chat/completions", swap_in_the_bmp)
    page.set_input_files("#file-input", str(images / "icon.png"))
    expect(notice).to_be_hidden()
    page.get_by_label("Message").fill("What is this?")
    page.get_by_label("Message").press("Enter")
    answer = page.locator(".turn.assistant").last
    expect(answer).to_have_attribute("data-state", "error")
    expect(answer.get_by_role("alert")).to_have_text(f"Error: {BMP_REFUSED}")
    expect(page.locator(".turn.user.left-out")).to_have_count(1)
    expect(answer.get_by_role("button", name="Retry")).to_be_visible()
    screenshot(page, "desktop-api-error")

    # The refused turn is left out of the history, so the conversation goes on.
    page.unroute("**/v1/chat/completions")
    sent = chat_requests(page)
    page.get_by_label("Message").fill("Hello?")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".turn.assistant").last).to_have_attribute("data-state", "done")
    assert [m["role"] for m in sent[0]["messages"]] == ["user"]


def test_drop_and_paste_attach_images_and_thumbnails_can_be_removed(server, open_page, images):
    page = open_page(server.url).page
    wait_until_ready(page)
    png = list((images / "icon.png").read_bytes())
    page.evaluate(
        """(bytes) => {
        const file = (name) => new File([new Uint8Array(bytes)], name, {type: "image/png"});
        const dropped = new DataTransfer();
        dropped.items.add(file("dropped.png"));
        for (const type of ["dragenter", "dragover", "drop"]) {
            document.getElementById("main").dispatchEvent(
                new DragEvent(type, {dataTransfer: dropped, bubbles: true, cancelable: true}));
        }
        const pasted = new DataTransfer();
        pasted.items.add(file("pasted.png"));
        document.getElementById("prompt").dispatchEvent(
            new ClipboardEvent("paste", {clipboardData: pasted, bubbles: true, cancelable: true}));
    }""",
        png,
    )
    expect(page.locator("#attachments .attachment")).to_have_count(2)
    expect(page.locator("#drop-overlay")).to_be_hidden()
    expect(page.get_by_role("img", name="dropped.png")).to_be_visible()
    page.get_by_role("button", name="Remove dropped.png").click()
    expect(page.locator("#attachments .attachment")).to_have_count(1)
    expect(page.get_by_role("img", name="pasted.png")).to_be_visible()

    # At most MAX_IMAGES (4) per conversation: the fifth is refused with the reason.
    page.set_input_files("#file-input", [str(images / "icon.png")] * 4)
    expect(page.locator("#attachments .attachment")).to_have_count(4)
    expect(page.locator("#attach-notice")).to_contain_text("at most 4 images per conversation")


def test_enter_sends_and_shift_enter_adds_a_line(server, open_page):
    page = open_page(server.url).page
    sent = chat_requests(page)
    authorizations = []
    page.on("request", lambda r: authorizations.append(r.headers.get("authorization")) if "/v1/" in r.url else None)
    wait_until_ready(page)
    prompt = page.get_by_label("Message")
    prompt.click()
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(prompt).to_have_value("first line\nsecond line")
    expect(page.locator(".turn")).to_have_count(0)
    page.keyboard.press("Enter")
    expect(page.locator(".turn.user .bubble")).to_have_text("first line\nsecond line")
    expect(page.locator(".turn.assistant")).to_have_attribute("data-state", "done")
    assert sent[0]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "first line\nsecond line"}]}]
    # This server needs no API key: the page never asks for one, nor sends one.
    expect(page.get_by_role("dialog", name="API key needed")).to_be_hidden()
    assert authorizations == [None]


def test_settings_persist_in_the_browser_and_reset(server, open_page):
    opened = open_page(server.url)
    page = opened.page
    sent = chat_requests(page)
    wait_until_ready(page)
    open_settings(page)
    page.get_by_label("Max tokens").fill("5")
    page.get_by_label("Temperature").fill("0.3")
    page.get_by_label("Top p").fill("0.9")
    page.get_by_label("System prompt").fill("You are terse.")
    expect(page.get_by_role("button", name="Forget key")).to_be_hidden()  # no key needed, none stored
    page.get_by_role("button", name="Done").click()
    expect(page.get_by_role("button", name="Settings")).to_be_focused()  # focus returns to the opener

    page.reload()
    wait_until_ready(page)
    open_settings(page)
    expect(page.get_by_label("Max tokens")).to_have_value("5")
    expect(page.get_by_label("Temperature")).to_have_value("0.3")
    expect(page.get_by_label("Top p")).to_have_value("0.9")
    expect(page.get_by_label("System prompt")).to_have_value("You are terse.")

    # An out-of-range value is explained and not kept.
    page.get_by_label("Max tokens").fill("999999")
    page.get_by_role("button", name="Done").click()
    expect(page.locator("#settings-error")).to_contain_text("Max tokens")
    expect(page.get_by_role("dialog", name="Settings")).to_be_visible()
    page.get_by_label("Max tokens").fill("5")
    page.get_by_role("button", name="Done").click()

    page.get_by_label("Message").fill("hi")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".turn.assistant")).to_have_attribute("data-state", "done")
    request = sent[0]
    assert (request["max_tokens"], request["temperature"], request["top_p"]) == (5, 0.3, 0.9)
    assert request["messages"][0] == {"role": "system", "content": "You are terse."}

    open_settings(page)
    page.get_by_role("button", name="Reset to defaults").click()
    expect(page.get_by_label("Max tokens")).to_have_value("8")  # the server's MAX_NEW_TOKENS
    expect(page.get_by_label("Temperature")).to_have_value("")
    page.get_by_role("button", name="Done").click()
    page.reload()
    wait_until_ready(page)
    assert page.evaluate("localStorage.getItem('loupe.settings.v1')") is None
    open_settings(page)
    expect(page.get_by_label("System prompt")).to_have_value("")


def test_markdown_answers_are_rendered_and_sanitised(server, open_page, screenshot):
    """Model output is untrusted: formatting is rendered, scripts and HTML injection are not."""
    opened = open_page(server.url, permissions=["clipboard-read", "clipboard-write"])
    # The server's CSP refuses the payload's inline handler while DOMPurify parses it: blocked, as it should be.
    opened.console.allow(r"inline event handler violates the following Content Security Policy")
    page = opened.page
    wait_until_ready(page)
    answer = (
        "## Findings\n\n- **bold** item\n- `code` item\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
        "```python\nprint('hi')\n```\n\n"
        '<script>window.__pwned = 1</script>\n\n<img src=x onerror="window.__pwned = 2">\n\n'
        '<iframe src="javascript:window.__pwned=3"></iframe>\n\n'
        '[click](javascript:window.__pwned=4) [docs](https://example.org/docs) <b onclick="x()">hi</b>'
    )
    pieces = [answer[i : i + 40] for i in range(0, len(answer), 40)]
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    chunks += [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    chunks.append(
        {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
            "timings": {
                "image_tokens": 0,
                "prompt_tokens": 9,
                "queue_ms": 0,
                "prompt_ms": 5,
                "ttft_ms": 1500,
                "decode_ms": 100,
                "decode_tokens_per_second": 12.5,
            },
        }
    )
    stream = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    page.route(
        "**/v1/chat/completions", lambda route: route.fulfill(status=200, content_type="text/event-stream", body=stream)
    )
    page.get_by_label("Message").fill("Show me markdown")
    page.get_by_label("Message").press("Enter")
    turn = page.locator(".turn.assistant")
    expect(turn).to_have_attribute("data-state", "done")
    body = turn.locator(".answer")
    expect(body.locator("h2")).to_have_text("Findings")
    expect(body.locator("li strong")).to_have_text("bold")
    expect(body.locator("table td")).to_have_count(2)
    expect(body.locator("pre code.language-python")).to_have_text("print('hi')")
    expect(body.get_by_role("button", name="Copy code")).to_be_visible()
    expect(body.locator("script, img, iframe, [onerror], [onclick]")).to_have_count(0)
    expect(body.locator("a", has_text="click")).not_to_have_attribute("href", re.compile("javascript"))
    link = body.locator("a", has_text="docs")
    expect(link).to_have_attribute("href", "https://example.org/docs")
    expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    assert page.evaluate("window.__pwned") is None
    expect(turn.locator(".stats")).to_have_text("first token 1.5 s · 12.5 tokens/s · cut off at the max-tokens limit")
    screenshot(page, "desktop-markdown")

    # Both copy buttons copy and say so for a moment: the code block's code, the answer's Markdown.
    copy_code = body.get_by_role("button", name="Copy code")
    copy_code.click()
    expect(copy_code).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()").strip() == "print('hi')"
    expect(copy_code).to_have_text("Copy")
    copy_answer = turn.get_by_role("button", name="Copy the answer")
    copy_answer.click()
    expect(copy_answer).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == answer
    expect(copy_answer).to_have_text("Copy")


def test_keyboard_and_screen_reader_basics(server, open_page):
    page = open_page(server.url).page
    wait_until_ready(page)
    # Every control is labelled.
    for role, name in [
        ("textbox", "Message"),
        ("button", "Attach images"),
        ("button", "Send"),
        ("button", "History"),
        ("button", "New chat"),
        ("button", "Settings"),
        ("button", "Describe"),
        ("button", "Extract text (OCR)"),
        ("button", "Explain"),
        ("button", "Find"),
        ("button", "Extract fields"),
    ]:
        expect(page.get_by_role(role, name=name)).to_have_count(1)
    expect(page.get_by_role("region", name="Conversation")).to_be_visible()
    expect(page.locator("#model-status")).to_have_attribute("role", "status")
    # Focus order: skip link, header actions, then the composer.
    page.reload()  # focus starts at the top of the document
    wait_until_ready(page)
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to the message box")).to_be_focused()
    order = []
    for _ in range(9):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
    assert order == [
        "open-history",
        "new-chat",
        "open-settings",
        "Describe",
        "Extract text (OCR)",
        "Explain",
        "Find",
        "extract-fields",
        "attach-button",
    ]
    page.keyboard.press("Tab")
    expect(page.get_by_label("Message")).to_be_focused()
    # The settings dialog takes focus and gives it back on Escape.
    page.get_by_role("button", name="Settings").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Max tokens")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.get_by_role("button", name="Settings")).to_be_focused()


def test_phone_layout(server, open_page, images, screenshot, fits_a_phone):
    page = open_page(server.url, device="phone").page
    wait_until_ready(page)
    screenshot(page, "phone-empty")
    page.set_input_files("#file-input", str(images / "photo.jpg"))
    expect(page.locator("#attachments .attachment")).to_have_count(1)
    page.get_by_label("Message").fill("What is in this picture? Please answer in detail.")
    send = page.get_by_role("button", name="Send")
    expect(send).to_be_visible()
    send.click()
    expect(page.locator(".turn.assistant")).to_have_attribute("data-state", "done")
    fits_a_phone(page, buttons=("Send", "New chat", "Settings", "Attach images"))
    screenshot(page, "phone-answer")
    open_settings(page)
    screenshot(page, "phone-settings")


def test_dark_scheme(server, open_page, images, screenshot):
    page = open_page(server.url, color_scheme="dark").page
    wait_until_ready(page)
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(22, 24, 29)"
    page.set_input_files("#file-input", str(images / "photo.jpg"))
    page.get_by_label("Message").fill("Describe it.")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".turn.assistant")).to_have_attribute("data-state", "done")
    screenshot(page, "desktop-dark")


def test_the_page_works_under_a_strict_content_security_policy(server, open_page, images):
    """No inline script, style or handler: the page runs under the server's CSP without 'unsafe-inline'."""
    page = open_page().page
    goto_under_the_servers_csp(page, server.url + "/")
    wait_until_ready(page)
    page.set_input_files("#file-input", str(images / "photo.jpg"))
    expect(page.locator("#attachments .attachment")).to_have_count(1)
    page.get_by_label("Message").fill("What is this?")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".turn.assistant")).to_have_attribute("data-state", "done")
    expect(page.locator(".turn.user img")).to_have_js_property("complete", True)
    open_settings(page)
    page.get_by_label("Max tokens").fill("7")
    page.keyboard.press("Escape")
