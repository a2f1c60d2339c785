"""Boxes through the HTTP API and into the history: a scripted backend writes a known grounding answer.

The scripted backend stands in for the model only to give the web layer a known answer with boxes
(random weights write none); the parsing and the pixel mapping under test are the real ones.
"""

import io

import pytest
from PIL import Image

from app import create_app
from loupe.web.services import services
from tests.support.chat import ask, data_url, png, sse_chunks
from tests.support.fakes import ScriptedBackend

# Cut where the model's tokens might fall: inside keys, numbers and the fence.
ANSWER = [
    "```js",
    'on\n[{"bbox',
    '_2d": [250, 500, 7',
    '50, 1000], "label": "cat"},\n {"point_2d": [100, 100], "label": "eye"}]\n``',
    "`",
]
CAT = {"label": "cat", "image": 1, "bbox": [400.0, 600.0, 1200.0, 1200.0]}
EYE = {"label": "eye", "image": 1, "point": [160.0, 120.0]}


@pytest.fixture
def client(settings, engines, tmp_path):
    engine = engines.ready(ScriptedBackend(ANSWER))
    application = create_app(settings.replace(data_dir=str(tmp_path / "data")), engine=engine)
    yield application.test_client()
    services(application).history.close()


def flat(width, height):
    """A plain PNG: large in pixels, small in bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def two_images():
    """A small first image and a 1600x1200 last one: boxes are for the last, in its own pixels."""
    first = {"type": "image_url", "image_url": {"url": data_url(png(64, 64))}}
    last = {"type": "image_url", "image_url": {"url": data_url(flat(1600, 1200))}}
    text = {"type": "text", "text": "Find every cat."}
    return {"messages": [{"role": "user", "content": [first, last, text]}]}


def test_a_whole_answer_has_its_boxes_in_the_last_images_pixels_and_the_history_keeps_them(client):
    body = client.post("/v1/chat/completions", json=two_images()).get_json()
    message = body["choices"][0]["message"]
    assert message["content"] == "".join(ANSWER)
    assert message["boxes"] == [CAT, EYE]
    [summary] = client.get("/inferences").get_json()["data"]
    assert summary["box_count"] == 2
    assert client.get(summary["url"]).get_json()["boxes"] == [CAT, EYE]


def test_a_stream_sends_the_boxes_in_the_last_chunks_delta(client):
    chunks = sse_chunks(client.post("/v1/chat/completions", json={**two_images(), "stream": True}))
    final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["delta"] for c in final] == [{"boxes": [CAT, EYE]}]
    assert all("boxes" not in c["choices"][0]["delta"] for c in chunks if c not in final)


def test_no_image_no_boxes(client):
    body = client.post("/v1/chat/completions", json=ask("Where is it?")).get_json()
    assert "boxes" not in body["choices"][0]["message"]
    assert client.get(client.get("/inferences").get_json()["data"][0]["url"]).get_json()["boxes"] == []


def test_a_turned_photo_gets_boxes_in_its_displayed_pixels(client):
    # Stored 200x100 with EXIF orientation 6 (turn 90°): shown, and seen by the model, as 100x200.
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.effect_noise((200, 100), 40).convert("RGB").save(buffer, "JPEG", exif=exif)
    form = {"image": (io.BytesIO(buffer.getvalue()), "turned.jpg"), "prompt": "Find every cat."}
    body = client.post("/v1/chat/completions", data=form, content_type="multipart/form-data").get_json()
    assert body["choices"][0]["message"]["boxes"][0] == {"label": "cat", "image": 0, "bbox": [25.0, 100.0, 75.0, 200.0]}
    record = client.get(client.get("/inferences").get_json()["data"][0]["url"]).get_json()
    assert (record["images"][0]["width"], record["images"][0]["height"]) == (100, 200)
