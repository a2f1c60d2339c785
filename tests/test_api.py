"""The HTTP API through Flask's test client, on the tiny model: shapes, streaming, every error status."""

import io
import threading

import pytest
from PIL import Image

from app import create_app
from loupe.errors import SERVER_BUSY_RETRY_AFTER
from loupe.web.services import services
from tests.support.chat import ask, data_url, png, sse_chunks
from tests.support.cpu import VARIANTS_HERE
from tests.support.engines import wait_ready
from tests.support.fakes import ScriptedBackend
from tests.support.waiting import wait_until


def test_text_completion(client, backend):
    response = client.post("/v1/chat/completions", json=ask(max_tokens=5, ignore_eos=True))
    assert response.status_code == 200
    body = response.get_json()
    assert body["object"] == "chat.completion" and body["model"] == backend.name
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 5
    assert body["timings"]["image_tokens"] == 0


def test_image_data_url_completion_reports_image_tokens(client):
    response = client.post("/v1/chat/completions", json=ask("What is it?", data_url(png()), max_tokens=3))
    assert response.status_code == 200
    timings = response.get_json()["timings"]
    assert timings["image_tokens"] > 0 and timings["ttft_ms"] >= timings["prompt_ms"] > 0


def test_form_data_with_two_images(client):
    response = client.post(
        "/v1/chat/completions",
        content_type="multipart/form-data",
        data={
            "image": [(io.BytesIO(png()), "a.png"), (io.BytesIO(png(fmt="JPEG")), "b.jpg")],
            "prompt": "Compare",
            "max_tokens": "2",
            "temperature": "0",
        },
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize("content_type", ["multipart/form-data", "application/x-www-form-urlencoded"])
def test_an_image_field_that_is_not_a_file_is_refused(client, content_type):
    # curl -F image=photo.jpg (without @) sends the file's name as text: answering without the image misleads.
    response = client.post(
        "/v1/chat/completions", content_type=content_type, data={"image": "photo.jpg", "prompt": "What is it?"}
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "image"


def test_streaming_sends_openai_chunks(client):
    response = client.post(
        "/v1/chat/completions",
        json=ask(
            image=data_url(png()), max_tokens=4, ignore_eos=True, stream=True, stream_options={"include_usage": True}
        ),
    )
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache" and response.headers["X-Accel-Buffering"] == "no"
    chunks = sse_chunks(response)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "length"
    assert finish[0]["timings"]["image_tokens"] > 0
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert len({c["id"] for c in chunks}) == 1


def test_a_stream_and_a_whole_answer_agree_under_greedy_decoding(client):
    fields = dict(max_tokens=6, temperature=0, ignore_eos=True)
    whole = client.post("/v1/chat/completions", json=ask(**fields)).get_json()
    streamed = sse_chunks(client.post("/v1/chat/completions", json=ask(stream=True, **fields)))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in streamed if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]


def test_health_and_models(client, backend):
    health = client.get("/health")
    assert health.status_code == 200
    assert health.get_json() | {"queue_depth": 0} == {
        "status": "ok",
        "backend": "local",
        "model": backend.name,
        "device": "cpu",
        "dtype": "float32",
        "kernels": f"native {VARIANTS_HERE[0]}" if VARIANTS_HERE else "packed",
        "queue_depth": 0,
    }
    models = client.get("/v1/models").get_json()
    assert models["object"] == "list" and models["data"][0]["id"] == backend.name


def bmp():
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40)).save(buffer, "BMP")
    return buffer.getvalue()


BAD_REQUESTS = [
    ("malformed json", dict(data="{nope", content_type="application/json"), 400, "invalid_request_error"),
    ("json not an object", dict(json=[1, 2]), 400, "invalid_request_error"),
    ("no messages", dict(json={"messages": []}), 400, "invalid_request_error"),
    ("bad temperature", dict(json=ask(temperature=-1)), 400, "invalid_request_error"),
    ("max_tokens over the ceiling", dict(json=ask(max_tokens=10**6)), 400, "invalid_request_error"),
    ("undecodable image", dict(json=ask(image=data_url(b"garbage"))), 400, "invalid_request_error"),
    ("truncated image", dict(json=ask(image=data_url(png(300, 300)[:2000]))), 400, "invalid_request_error"),
    ("bad base64", dict(json=ask(image="data:image/png;base64,!!!")), 400, "invalid_request_error"),
    ("remote image url", dict(json=ask(image="http://127.0.0.1/x.png")), 400, "invalid_request_error"),
    (
        "too many images",
        dict(
            json={"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": data_url(png())}] * 4}]}
        ),
        400,
        "invalid_request_error",
    ),
    ("special tokens in text", dict(json=ask("<|im_end|>")), 400, "invalid_request_error"),
    ("prompt beyond the context", dict(json=ask("word " * 9000)), 400, "invalid_request_error"),
    (
        "image too large",
        dict(content_type="multipart/form-data", data={"image": (io.BytesIO(b"\0" * (3 * 1024 * 1024)), "big.png")}),
        413,
        "invalid_request_error",
    ),
    (
        "body too large",
        dict(data=b"x" * (5 * 1024 * 1024), content_type="application/json"),
        413,
        "invalid_request_error",
    ),
    ("unsupported body type", dict(data="hello", content_type="text/plain"), 415, "invalid_request_error"),
    ("unsupported image format", dict(json=ask(image=data_url(bmp(), "image/bmp"))), 415, "invalid_request_error"),
    ("form without prompt or image", dict(data={"temperature": "0"}), 400, "invalid_request_error"),
]


@pytest.mark.parametrize("name, kwargs, status, type_", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_clean_4xx_envelope(client, name, kwargs, status, type_):
    response = client.post("/v1/chat/completions", **kwargs)
    assert response.status_code == status
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == type_ and error["message"]


@pytest.mark.parametrize(
    "method, path, status", [("get", "/nowhere", 404), ("get", "/v1/chat/completions", 405), ("delete", "/health", 405)]
)
def test_unknown_routes_and_methods(client, method, path, status):
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert set(response.get_json()["error"]) == {"message", "type", "param", "code"}


def test_while_loading_health_is_503_and_chat_is_503(settings, engines):
    release = threading.Event()

    def slow_load():
        release.wait(10)
        raise RuntimeError("test over")

    client = create_app(settings, engine=engines.start(slow_load, queue_size=1)).test_client()
    try:
        assert client.get("/health").status_code == 503
        assert client.get("/health").get_json()["status"] == "loading"
        response = client.post("/v1/chat/completions", json=ask())
        assert response.status_code == 503
        assert response.get_json()["error"]["type"] == "unavailable_error"
    finally:
        release.set()


def test_a_failed_load_is_reported_by_health(settings, engines):
    def fail():
        raise RuntimeError("set MODEL_ID to a local directory")

    engine = engines.start(fail, queue_size=1)
    client = create_app(settings, engine=engine).test_client()
    wait_until(lambda: engine.status == "error", message="the load to fail")
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json() == {"status": "error", "error": "set MODEL_ID to a local directory"}
    assert client.post("/v1/chat/completions", json=ask()).status_code == 503


def test_a_server_fault_is_a_500_that_says_nothing_of_its_cause(settings, engines, caplog):
    engine = engines.ready(ScriptedBackend(["a", "b"], fail_after=1), queue_size=1)
    client = create_app(settings, engine=engine).test_client()
    response = client.post("/v1/chat/completions", json=ask())
    assert response.status_code == 500
    assert response.get_json()["error"] == {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert "backend broke" in caplog.text  # the traceback is in the log


LONG = 8000  # within the context limit the tiny model's backend was loaded with (MAX_CONTEXT_TOKENS, 8,192)


@pytest.mark.parametrize("resume_seconds", [0, 0.5], ids=["resuming-off", "after-the-resume-grace"])
def test_a_full_queue_is_429_and_a_closed_stream_stops_the_generation(
    settings, backend, engines, caplog, resume_seconds
):
    # LONG tokens take the tiny model far longer than the resume grace (it makes about 2,000 a second).
    limits = {"max_new_tokens_limit": LONG}
    app = engines.app(settings.replace(queue_size=0, max_batch=1, stream_resume_seconds=resume_seconds, **limits))
    client = app.test_client()
    engine = wait_ready(services(app).engine)
    stream = client.post(
        "/v1/chat/completions", json=ask(max_tokens=LONG, ignore_eos=True, stream=True), buffered=False
    )
    frames = iter(stream.response)
    assert next(frames).startswith(b":")  # accepted
    assert b"assistant" in next(frames)  # the engine has started on it
    busy = client.post("/v1/chat/completions", json=ask())
    assert busy.status_code == 429
    assert busy.get_json()["error"]["code"] == "server_busy"
    assert busy.headers["Retry-After"] == str(SERVER_BUSY_RETRY_AFTER)
    caplog.set_level("INFO", logger="loupe.engine.engine")
    stream.close()  # the client goes away: the generation stops and the slot frees
    wait_until(lambda: not engine.running, message="the generation to stop")
    cancelled = [r for r in caplog.records if r.getMessage().startswith("generation cancelled after")]
    assert len(cancelled) == 1 and cancelled[0].args[0] < LONG
    assert client.post("/v1/chat/completions", json=ask(max_tokens=1)).status_code == 200
