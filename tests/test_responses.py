"""Response objects and SSE frames built from engine events."""

import json

from loupe.errors import InvalidRequest
from loupe.inference import Finished, Started, TextDelta, Timings
from loupe.protocol.responses import (
    SSE_ACCEPTED,
    SSE_DONE,
    CompletionMeta,
    collect,
    completion_body,
    sse_frame,
    stream_frames,
)

META = CompletionMeta(model="tiny", id="chatcmpl-1", created=123)
FINISHED = Finished(
    "length",
    prompt_tokens=10,
    completion_tokens=3,
    timings=Timings(image_tokens=4, prompt_tokens=10, prompt_ms=50, ttft_ms=60, decode_ms=100, completion_tokens=3),
)


def parse(frames):
    return [json.loads(f[len("data: ") :]) for f in frames if f not in (SSE_DONE, SSE_ACCEPTED)]


def test_completion_body_is_an_openai_chat_completion():
    body = completion_body(META, "hello", FINISHED)
    assert body["object"] == "chat.completion" and body["model"] == "tiny" and body["id"] == "chatcmpl-1"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "total_tokens": 13,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert body["timings"]["image_tokens"] == 4
    assert body["timings"]["decode_tokens_per_second"] == 20.0  # 2 decoded tokens in 0.1 s


def test_collect_joins_text_until_finished():
    assert collect([Started(), TextDelta("a"), TextDelta("b"), FINISHED]) == ("ab", FINISHED)


def test_stream_frames_role_first_finish_last_then_done():
    frames = list(stream_frames([Started(), TextDelta("hi"), FINISHED], META, include_usage=False))
    assert frames[0] == SSE_ACCEPTED and frames[-1] == SSE_DONE
    chunks = parse(frames)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": "hi"}
    assert chunks[2]["choices"][0]["finish_reason"] == "length"
    assert chunks[2]["timings"]["prompt_ms"] == 50
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-1" for c in chunks)


def test_include_usage_adds_a_usage_chunk_with_no_choices():
    chunks = parse(stream_frames([Started(), FINISHED], META, include_usage=True))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 13


def test_an_error_after_the_start_becomes_an_error_frame():
    def events():
        yield Started()
        raise InvalidRequest("nope", param="x")

    frames = list(stream_frames(events(), META, include_usage=False))
    assert parse(frames)[-1] == {
        "error": {"message": "nope", "type": "invalid_request_error", "param": "x", "code": None}
    }


def test_an_unexpected_error_says_nothing_of_its_cause():
    def events():
        yield Started()
        raise RuntimeError("secret path /etc/x")

    frames = list(stream_frames(events(), META, include_usage=False))
    assert "secret" not in "".join(frames)
    assert parse(frames)[-1]["error"]["type"] == "server_error"


def test_frames_are_single_json_lines_even_with_newlines_in_text():
    frame = sse_frame({"content": "line one\n\ndata: fake"})
    assert frame.count("\n") == 2 and frame.endswith("\n\n")
    assert json.loads(frame[len("data: ") :]) == {"content": "line one\n\ndata: fake"}
