"""OpenAI request parsing: JSON and form-data into ChatRequest, with presets and validation."""

import json

import pytest

from loupe.errors import InvalidRequest
from loupe.inference import ImagePart, TextPart
from loupe.protocol.chat_requests import DEFAULT_IMAGE_PROMPT, parse_form_request, parse_json_request
from loupe.settings import Settings

SETTINGS = Settings.from_mapping({"MAX_IMAGES": "2", "MAX_NEW_TOKENS": "64", "MAX_NEW_TOKENS_LIMIT": "128"})
IMAGE_URL = "data:image/png;base64,AAAA"


def user(content):
    return {"messages": [{"role": "user", "content": content}]}


def test_string_content_is_one_text_part_with_text_preset():
    request = parse_json_request(user("hello"), SETTINGS)
    assert request.messages[0].parts == (TextPart("hello"),)
    assert (request.sampling.temperature, request.sampling.top_p, request.sampling.top_k) == (1.0, 1.0, 40)
    assert request.sampling.presence_penalty == 2.0
    assert request.sampling.max_tokens == 64
    assert request.stream is False


def test_image_parts_in_either_url_shape_and_vision_preset():
    request = parse_json_request(
        user(
            [
                {"type": "image_url", "image_url": {"url": IMAGE_URL}},
                {"type": "image_url", "image_url": IMAGE_URL},
                {"type": "text", "text": "compare"},
            ]
        ),
        SETTINGS,
    )
    seen = ImagePart(url=IMAGE_URL, detail="high")  # the server's budget when the request names none
    assert request.messages[0].parts == (seen, seen, TextPart("compare"))
    sampling = request.sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.presence_penalty) == (0.7, 0.8, 20, 1.5)


def test_explicit_fields_override_the_preset():
    body = user("hi") | {
        "temperature": 0,
        "top_p": 0.5,
        "top_k": 3,
        "presence_penalty": 0,
        "seed": 7,
        "repetition_penalty": 1.1,
        "max_completion_tokens": 9,
        "stop": "END",
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    request = parse_json_request(body, SETTINGS)
    s = request.sampling
    assert (s.temperature, s.top_p, s.top_k, s.presence_penalty, s.seed) == (0, 0.5, 3, 0, 7)
    assert (s.repetition_penalty, s.max_tokens, s.stop, s.ignore_eos) == (1.1, 9, ("END",), True)
    assert request.stream and request.include_usage


def test_max_tokens_wins_over_max_completion_tokens_when_both_given():
    request = parse_json_request(user("hi") | {"max_tokens": 5, "max_completion_tokens": 9}, SETTINGS)
    assert request.sampling.max_tokens == 5


@pytest.mark.parametrize(
    "body, param",
    [
        ([], None),
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": IMAGE_URL}]}]},
            "messages[0].content",
        ),
        (user([{"type": "image_url", "image_url": IMAGE_URL}] * 3), "messages"),
        (user("hi") | {"temperature": 3}, "temperature"),
        (user("hi") | {"temperature": "hot"}, "temperature"),
        (user("hi") | {"temperature": float("nan")}, "temperature"),
        (user("hi") | {"top_p": 1.5}, "top_p"),
        (user("hi") | {"top_k": 2.5}, "top_k"),
        (user("hi") | {"max_tokens": 0}, "max_tokens"),
        (user("hi") | {"max_tokens": 129}, "max_tokens"),
        (user("hi") | {"max_tokens": True}, "max_tokens"),
        (user("hi") | {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        (user("hi") | {"stop": [""]}, "stop"),
        (user("hi") | {"stream": "yes please"}, "stream"),
        (user("hi") | {"stream_options": []}, "stream_options"),
        (user("hi") | {"n": 2}, "n"),
        (user("hi") | {"n": True}, "n"),
        (user("hi") | {"temperature": ""}, "temperature"),  # "" is "not given" in a form only
        (user("hi") | {"max_tokens": ""}, "max_tokens"),
        (user("hi") | {"stop": ""}, "stop"),
    ],
)
def test_bad_json_requests_name_the_field(body, param):
    with pytest.raises(InvalidRequest) as caught:
        parse_json_request(body, SETTINGS)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_form_with_image_and_no_prompt_asks_for_a_description():
    request = parse_form_request({}, [b"png-bytes"], SETTINGS)
    assert request.messages[-1].parts == (ImagePart(data=b"png-bytes", detail="high"), TextPart(DEFAULT_IMAGE_PROMPT))
    assert request.sampling.temperature == 0.7


def test_form_fields_are_converted_from_text():
    form = {
        "prompt": "What is written here?",
        "system": "Be brief.",
        "temperature": "0",
        "max_tokens": "12",
        "stream": "true",
        "stop": '["x", "y"]',
        "seed": "3",
    }
    request = parse_form_request(form, [b"a", b"b"], SETTINGS)
    assert [m.role for m in request.messages] == ["system", "user"]
    assert len(request.messages[1].images()) == 2
    assert (request.sampling.temperature, request.sampling.max_tokens, request.sampling.seed) == (0.0, 12, 3)
    assert request.sampling.stop == ("x", "y") and request.stream


def test_form_messages_carry_earlier_turns():
    history = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": IMAGE_URL}, {"type": "text", "text": "What is it?"}],
        },
        {"role": "assistant", "content": "A cat."},
    ]
    request = parse_form_request({"messages": json.dumps(history), "prompt": "What colour?"}, [], SETTINGS)
    assert [m.role for m in request.messages] == ["user", "assistant", "user"]
    assert request.sampling.temperature == 0.7  # an image anywhere in the conversation: vision preset


@pytest.mark.parametrize(
    "form, param",
    [
        ({}, "prompt"),
        ({"messages": "not json"}, "messages"),
        (
            {"messages": json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])},
            "prompt",
        ),
        ({"prompt": "hi", "temperature": "warm"}, "temperature"),
        ({"prompt": "hi", "max_tokens": "1.5"}, "max_tokens"),
        ({"prompt": "hi", "stream": "maybe"}, "stream"),
    ],
)
def test_bad_form_requests_name_the_field(form, param):
    with pytest.raises(InvalidRequest) as caught:
        parse_form_request(form, [], SETTINGS)
    assert caught.value.param == param
