"""Boxes on the page: Find, the image detail setting, and boxes drawn over their image from the history.

Random weights locate nothing, so the drawing is tested with a known grounding answer: a record
written into the server's history by this test (its `model` says so), its boxes computed by the
server's own parser; and a stream the page receives for that answer, its frames made by the server's
own protocol code (the route is answered by the test, and says so in its `model`). The live model is
still asked through Find: whatever it writes, the page shows what the server found in it, no more, no less.
"""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest
from playwright.sync_api import expect

from loupe.history.recorder import messages_and_images
from loupe.history.store import HistoryStore, utcnow
from loupe.inference import ChatRequest, Finished, Message, SamplingParams, Started, TextDelta, TextPart
from loupe.protocol.grounding import answer_boxes
from loupe.protocol.images import read_image
from loupe.protocol.responses import CompletionMeta, stream_frames
from loupe.settings import Settings
from tests.e2e.page_actions import chat_requests, open_settings, wait_until_ready
from tests.support.live_server import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a browser, and a real gunicorn server

FIND = 'Locate every instance that belongs to the following categories: "sun". Report bbox coordinates in JSON format.'
# photo.jpg (1600x1200, tests/e2e/conftest.py) has a yellow disc at (500, 300)-(1100, 900) and a green
# band at (100, 950)-(1500, 1100); in Qwen3-VL's 0-1000 coordinates:
ANSWER = """```json
[
  {"bbox_2d": [312, 250, 688, 750], "label": "sun"},
  {"bbox_2d": [62, 792, 938, 917], "label": "grass"},
  {"point_2d": [500, 500], "label": "centre"}
]
```"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e-boxes") / "data"


@pytest.fixture(scope="module")
def server(tiny_model_dir, data_dir):
    live = LiveServer(
        {
            "MODEL_ID": str(tiny_model_dir),
            "MAX_NEW_TOKENS": "8",
            "IMAGE_MAX_EDGE": "256",
            "DATA_DIR": str(data_dir),
        },
        data_dir.parent / "server.log",
    )
    live.start("ok")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def stored(server, data_dir, images) -> dict:
    """A record with boxes, stored in the running server's history as the recorder stores one."""
    settings = Settings.from_mapping({"DATA_DIR": str(data_dir), "IMAGE_MAX_EDGE": "256"})
    chat = ChatRequest(
        (Message("user", (read_image((images / "photo.jpg").read_bytes(), settings), TextPart(FIND))),),
        SamplingParams(max_tokens=8, temperature=0.0, top_p=1.0, top_k=0, presence_penalty=0.0),
    )
    messages, new_images = messages_and_images(chat)
    record = {
        "id": str(uuid.uuid4()),
        "created_at": utcnow(),
        "finished_at": utcnow(),
        "status": "completed",
        "client": "127.0.0.1",
        "model": "written by tests/e2e/test_boxes.py",
        "messages": messages,
        "sampling": {"max_tokens": 8},
        "stream": True,
        "answer": ANSWER,
        "boxes": answer_boxes(ANSWER, chat.image_sizes()),
        "finish_reason": "stop",
        "usage": None,
        "timings": None,
        "error": None,
    }
    store = HistoryStore.open(settings)
    try:
        store.add(record, new_images)
    finally:
        store.close()
    return fetch_json(server, f"/inferences/{record['id']}")


def fetch_json(server, path: str) -> dict:
    with urllib.request.urlopen(server.url + path) as response:
        return json.load(response)


def open_stored(page, stored: dict):
    page.get_by_role("button", name="History").click()
    item = page.locator(f'.history-item[data-id="{stored["id"]}"]')
    expect(item.locator(".history-meta")).to_contain_text("3 found")
    item.locator(".history-open").click()
    expect(page.get_by_role("dialog", name="History")).to_be_hidden()


def assert_marks_on_their_objects(page, boxes: list[dict], size=(1600, 1200)):
    """Each mark sits where its box is, in the image as shown (scaled from its `size` to fit the page)."""
    figure = page.locator(".turn.assistant .boxes").last
    image = figure.locator(".boxes-frame img")
    expect(image).to_have_js_property("complete", True)
    shown = image.bounding_box()
    scale_x, scale_y = shown["width"] / size[0], shown["height"] / size[1]
    assert abs(scale_x - scale_y) < 0.01  # the aspect ratio kept
    for index, region in enumerate(boxes):
        mark = figure.locator(f'.box-mark[data-index="{index}"]').bounding_box()
        if "bbox" in region:
            x1, y1, x2, y2 = region["bbox"]
            expected = (x1 * scale_x, y1 * scale_y, (x2 - x1) * scale_x, (y2 - y1) * scale_y)
            got = (mark["x"] - shown["x"], mark["y"] - shown["y"], mark["width"], mark["height"])
        else:
            x, y = region["point"]
            expected = (x * scale_x, y * scale_y)
            got = (mark["x"] + mark["width"] / 2 - shown["x"], mark["y"] + mark["height"] / 2 - shown["y"])
        assert all(abs(a - b) <= 1.5 for a, b in zip(got, expected, strict=True)), (region, got, expected)


def test_a_stored_answer_draws_its_labelled_boxes_over_the_image(server, stored, open_page, screenshot):
    assert stored["boxes"] == [
        {"label": "sun", "image": 0, "bbox": [499.2, 300.0, 1100.8, 900.0]},
        {"label": "grass", "image": 0, "bbox": [99.2, 950.4, 1500.8, 1100.4]},
        {"label": "centre", "image": 0, "point": [800.0, 600.0]},
    ]
    page = open_page(server.url).page
    wait_until_ready(page)
    open_stored(page, stored)
    figure = page.locator(".turn.assistant .boxes")
    expect(figure.locator(".box-mark")).to_have_count(3)
    expect(figure.locator(".box-label")).to_have_text(["sun", "grass", "centre"])
    expect(figure.locator(".boxes-summary")).to_have_text("Found 2 boxes and 1 point:")
    assert_marks_on_their_objects(page, stored["boxes"])
    figure.scroll_into_view_if_needed()
    screenshot(page, "desktop-boxes")

    # Hovering an entry picks its box out; the toggle hides them all and shows them again.
    figure.get_by_role("button", name="grass").hover()
    expect(figure.locator('.box-mark[data-index="1"]')).to_have_class("box-mark box active")
    expect(figure.locator('.box-mark[data-index="0"]')).not_to_have_class("box-mark box active")
    expect(figure).to_have_class("boxes highlighting")
    figure.locator('.box-mark[data-index="0"]').hover()
    expect(figure.locator('.box-mark[data-index="0"]')).to_have_class("box-mark box active")
    page.mouse.move(0, 0)
    expect(figure).to_have_class("boxes")
    toggle = figure.locator(".boxes-toggle")
    figure.get_by_role("button", name="Hide boxes").click()
    expect(figure.locator(".box-mark").first).to_be_hidden()
    expect(toggle).to_have_attribute("aria-pressed", "false")
    figure.get_by_role("button", name="Show boxes").click()
    expect(figure.locator(".box-mark").first).to_be_visible()
    expect(toggle).to_have_attribute("aria-pressed", "true")


def test_boxes_stay_on_their_objects_on_a_phone(server, stored, open_page, screenshot, fits_a_phone):
    page = open_page(server.url, device="phone").page
    wait_until_ready(page)
    open_stored(page, stored)
    expect(page.locator(".turn.assistant .box-mark")).to_have_count(3)
    assert_marks_on_their_objects(page, stored["boxes"])
    fits_a_phone(page, buttons=("Hide boxes",))
    page.locator(".turn.assistant .boxes").scroll_into_view_if_needed()
    screenshot(page, "phone-boxes")


def test_find_asks_qwens_grounding_question_and_shows_what_the_server_found(server, open_page, images):
    page = open_page(server.url).page
    sent = chat_requests(page)
    wait_until_ready(page)
    open_settings(page)
    page.get_by_label("Image detail").select_option("low")
    page.keyboard.press("Escape")

    page.get_by_role("button", name="Find").click()  # nothing typed: says what to do
    expect(page.locator("#attach-notice")).to_contain_text("Type what to find")
    page.set_input_files("#file-input", str(images / "photo.jpg"))
    expect(page.locator("#attachments .attachment")).to_have_count(1)
    page.get_by_label("Message").fill("  sun ")
    page.get_by_role("button", name="Find").click()
    expect(page.locator(".turn.assistant")).to_have_attribute("data-state", "done")
    [body] = sent
    assert body["detail"] == "low"
    assert body["messages"][-1]["content"][-1] == {"type": "text", "text": FIND}
    expect(page.locator(".turn.user .bubble")).to_have_text(FIND)

    # Random weights rarely write a box: the page draws exactly what the server found, which the history kept.
    newest = fetch_json(server, "/inferences?limit=1")["data"][0]
    record = fetch_json(server, f"/inferences/{newest['id']}")
    assert record["messages"][-1]["content"][0]["detail"] == "low"
    expect(page.locator(".turn.assistant .box-mark")).to_have_count(len(record["boxes"]))


def test_a_streamed_answer_with_boxes_is_drawn_over_the_image_it_sent(server, open_page, images):
    """The page's stream path with a known answer: the chat route answers with frames the server's own
    protocol code makes from that answer (as the server would for a model that wrote it)."""
    sent_size = (256, 192)  # photo.jpg as the page sends it: scaled to the server's IMAGE_MAX_EDGE
    events = [Started(), TextDelta(ANSWER), Finished("stop", prompt_tokens=70, completion_tokens=60)]
    frames = stream_frames(events, CompletionMeta(model="known answer"), True, [sent_size])
    body = "".join(frames)
    boxes = answer_boxes(ANSWER, [sent_size])
    page = open_page(server.url).page
    wait_until_ready(page)
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body),
    )
    page.set_input_files("#file-input", str(images / "photo.jpg"))
    expect(page.locator("#attachments .attachment-caption")).to_have_text("256×192")
    page.get_by_label("Message").fill("sun")
    page.get_by_role("button", name="Find").click()
    expect(page.locator(".turn.assistant")).to_have_attribute("data-state", "done")
    expect(page.locator(".turn.assistant .box-mark")).to_have_count(3)
    assert_marks_on_their_objects(page, boxes, sent_size)
