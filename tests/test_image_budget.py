"""The image budget: `detail` and `min_pixels`/`max_pixels`, per image or per request, within the server's limits."""

import base64
import io

import pytest
from PIL import Image

from loupe.errors import InvalidRequest
from loupe.protocol.chat_requests import parse_form_request, parse_json_request
from loupe.settings import Settings

SETTINGS = Settings.from_mapping({"IMAGE_MAX_EDGE": "512", "IMAGE_LOW_PIXELS": "50000"})
URL = "data:image/png;base64,AAAA"


def image(**budget):
    return {"type": "image_url", "image_url": {"url": URL, **budget}}


def bounds(body, settings=SETTINGS):
    request = parse_json_request({"messages": [{"role": "user", "content": body}]}, settings)
    return [(p.detail, p.min_pixels, p.max_pixels) for p in request.image_parts()]


def test_high_is_the_servers_ceiling_low_its_low_pixels_and_auto_the_servers_choice():
    assert bounds([image(), image(detail="high"), image(detail="low"), image(detail="auto")]) == [
        ("high", None, None),
        ("high", None, None),
        ("low", None, 50000),
        ("high", None, None),
    ]
    low_server = SETTINGS.replace(image_detail="low")
    assert bounds([image(), image(detail="auto"), image(detail="high")], low_server) == [
        ("low", None, 50000),
        ("low", None, 50000),
        ("high", None, None),
    ]


def test_explicit_pixels_win_and_are_lowered_to_the_image_max_edge_square():
    assert bounds([image(detail="low", max_pixels=100_000), image(min_pixels=4096, max_pixels=10**9)]) == [
        ("low", None, 100_000),
        ("high", 4096, 512 * 512),
    ]


def test_the_requests_own_fields_apply_to_images_without_theirs():
    body = {
        "messages": [{"role": "user", "content": [image(), image(detail="high", max_pixels=90_000)]}],
        "detail": "low",
        "min_pixels": 2048,
    }
    parts = parse_json_request(body, SETTINGS).image_parts()
    assert [(p.detail, p.min_pixels, p.max_pixels) for p in parts] == [("low", 2048, 50000), ("high", 2048, 90_000)]


def test_form_data_fields_set_every_images_budget():
    form = {"prompt": "Read it.", "detail": "low", "min_pixels": "", "max_pixels": "30000"}
    parts = parse_form_request(form, [b"a", b"b"], SETTINGS).image_parts()
    assert [(p.detail, p.min_pixels, p.max_pixels) for p in parts] == [("low", None, 30000)] * 2


@pytest.mark.parametrize(
    "budget, param",
    [
        ({"detail": "ultra"}, "messages[0].content[0].image_url.detail"),
        ({"detail": ""}, "messages[0].content[0].image_url.detail"),
        ({"max_pixels": ""}, "messages[0].content[0].image_url.max_pixels"),
        ({"max_pixels": 100}, "messages[0].content[0].image_url.max_pixels"),
        ({"min_pixels": "4096"}, "messages[0].content[0].image_url.min_pixels"),
        ({"max_pixels": 5000.5}, "messages[0].content[0].image_url.max_pixels"),
        ({"max_pixels": True}, "messages[0].content[0].image_url.max_pixels"),
        ({"min_pixels": 20000, "max_pixels": 10000}, "image[0]"),
        ({"detail": "low", "min_pixels": 60000}, "image[0]"),
    ],
)
def test_a_bad_budget_is_a_400_that_names_the_field(budget, param):
    with pytest.raises(InvalidRequest) as raised:
        bounds([image(**budget)])
    assert raised.value.param == param


@pytest.mark.parametrize("text", ["lots", "²", "-4096", "4096.0"])
def test_a_bad_form_budget_names_the_field(text):
    with pytest.raises(InvalidRequest) as raised:  # "²" is a digit to str.isdigit, not to int(): no 500
        parse_form_request({"max_pixels": text}, [b"a"], SETTINGS)
    assert raised.value.param == "max_pixels"


def test_the_budget_sets_the_image_tokens_the_model_reads(client):
    """On the tiny model: a 1600x1200 photo at each budget, through the API, counted in `timings`."""
    buffer = io.BytesIO()
    Image.new("RGB", (1600, 1200), (90, 140, 200)).save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    def image_tokens(**budget) -> int:
        content = [{"type": "image_url", "image_url": {"url": url, **budget}}, {"type": "text", "text": "Hi"}]
        response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})
        assert response.status_code == 200, response.get_json()
        return response.get_json()["timings"]["image_tokens"]

    assert image_tokens() == image_tokens(detail="high") == (768 // 32) * (576 // 32)  # IMAGE_MAX_EDGE 768
    assert image_tokens(detail="low") == 54  # 65536 pixels at most: 288x192, 9x6 tokens
    assert image_tokens(max_pixels=32 * 32 * 12) == 12  # 4x3 tokens
