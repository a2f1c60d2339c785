"""BACKEND=openai against a scripted engine (a real HTTP server on loopback): what goes up, comes back, fails."""

import base64
import io
import json
import time

import pytest
from PIL import Image

from loupe.history.store import HistoryStore
from loupe.protocol.images import read_image
from loupe.settings import Settings
from loupe.web.services import services
from tests.support.chat import ask, data_url, png, sse_chunks, sse_events
from tests.support.engines import wait_ready
from tests.support.fake_upstream import FakeUpstream, Garbage, Silent, Status, Stream
from tests.support.live_server import free_port
from tests.support.waiting import wait_until


@pytest.fixture
def fake():
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def front(settings, tmp_path, fake):
    """Loupe's settings in front of the fake engine, with a history of its own."""
    return settings.replace(
        backend="openai",
        backend_url=fake.url,
        backend_api_key="upstream-secret",
        backend_timeout=2.0,
        max_batch=2,
        data_dir=str(tmp_path),
    )


def ready_app(engines, settings):
    """An app in front of the engine at settings.backend_url, once its backend is set up (no model to load)."""
    app = engines.app(settings)
    wait_ready(services(app).engine)
    return app


@pytest.fixture
def client(engines, front):
    return ready_app(engines, front).test_client()


def test_an_answer_comes_from_the_engine_with_its_usage(client, fake):
    response = client.post("/v1/chat/completions", json=ask("Hi", max_tokens=5))
    assert response.status_code == 200, response.json
    body = response.json
    assert body["choices"][0]["message"]["content"] == "Hello, world"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["model"] == "fake-model"  # the engine's model, learnt from its /models
    assert body["usage"]["prompt_tokens"] == 11 and body["usage"]["completion_tokens"] == 3
    (sent,) = fake.requests
    assert sent["model"] == "fake-model" and sent["stream"] is True and sent["max_tokens"] == 5
    assert sent["messages"] == [{"role": "user", "content": "Hi"}]
    assert fake.headers[0]["Authorization"] == "Bearer upstream-secret"


def test_sampling_parameters_pass_through(client, fake):
    fields = dict(temperature=0.3, top_p=0.9, top_k=7, presence_penalty=0.5, repetition_penalty=1.1, seed=42)
    response = client.post("/v1/chat/completions", json=ask("Hi", max_tokens=9, stop=["STOP"], **fields))
    assert response.status_code == 200
    (sent,) = fake.requests
    assert {name: sent[name] for name in fields} == fields
    assert sent["stop"] == ["STOP"] and sent["max_tokens"] == 9


def test_a_response_format_goes_to_the_engine(client, fake):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "count", "schema": schema, "strict": True}}
    response = client.post("/v1/chat/completions", json=ask("Count", max_tokens=20, response_format=response_format))
    assert response.status_code == 200
    (sent,) = fake.requests
    assert sent["response_format"] == response_format


def test_images_go_up_as_lossless_data_urls_of_what_the_intake_made(client, fake, front):
    original = png(1200, 900, fmt="JPEG")  # larger than IMAGE_MAX_EDGE: the intake downscales it
    image = data_url(original, "image/jpeg")
    response = client.post("/v1/chat/completions", json=ask("What is it?", image, max_tokens=3))
    assert response.status_code == 200
    content = fake.requests[0]["messages"][0]["content"]
    assert [part["type"] for part in content] == ["image_url", "text"]
    url = content[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    expected = read_image(original, front).image
    assert sent.size == expected.size and max(sent.size) == front.image_max_edge
    assert sent.convert("RGB").tobytes() == expected.tobytes()  # the very pixels the local model would see


def test_the_form_api_sends_its_upload_up(client, fake):
    form = {"prompt": "Describe it", "max_tokens": "4", "image": (io.BytesIO(png()), "photo.png")}
    response = client.post("/v1/chat/completions", data=form, content_type="multipart/form-data")
    assert response.status_code == 200, response.json
    (message,) = fake.requests[0]["messages"]
    assert message["role"] == "user" and [part["type"] for part in message["content"]] == ["image_url", "text"]
    assert message["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert message["content"][1]["text"] == "Describe it"


def test_a_stream_passes_through_piece_by_piece(client, fake):
    fake.reply = Stream(pieces=("one", " two", " three"))
    body = ask("Count", stream=True, stream_options={"include_usage": True})
    response = client.post("/v1/chat/completions", json=body)
    chunks = sse_chunks(response)
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert contents == ["", "one", " two", " three", None]  # the role chunk, each piece, the finish chunk
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_pieces_arrive_as_the_engine_sends_them(engines, front, fake):
    # Each piece must reach the client before the engine sends the next one: nothing waits for the end.
    fake.reply = Stream(pieces=("a", "b", "c"), delay=0.4)
    app = ready_app(engines, front)
    with app.test_client() as client:
        response = client.post("/v1/chat/completions", json=ask("Go", stream=True), buffered=False)
        arrivals = []
        for frame in response.response:
            if b'"content":"' in frame and b'"content":""' not in frame:
                arrivals.append(time.monotonic())
        response.close()
    assert len(arrivals) == 3
    assert arrivals[1] - arrivals[0] > 0.25 and arrivals[2] - arrivals[1] > 0.25


def test_loupes_history_records_what_the_engine_said(client, front):
    response = client.post("/v1/chat/completions", json=ask("Hi"))
    assert response.status_code == 200
    store = HistoryStore.open(front)
    wait_until(lambda: [r["status"] for r in store.page(5).records] == ["completed"], 10, message="the record")
    (record,) = store.page(5).records
    assert record["answer"] == "Hello, world" and record["model"] == "fake-model"


def test_health_reflects_the_engine(client, fake):
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json["status"] == "ok" and health.json["model"] == "fake-model"
    assert health.json["backend"] == "openai" and fake.url in health.json["kernels"]


def test_health_says_when_the_engine_is_unreachable(engines, front):
    down = ready_app(engines, front.replace(backend_url=f"http://127.0.0.1:{free_port()}/v1")).test_client()
    health = down.get("/health")
    assert health.status_code == 503 and health.json["status"] == "error"
    assert "could not be reached" in health.json["error"] and "127.0.0.1" in health.json["error"]


def test_health_says_when_the_engine_serves_another_model(engines, front):
    wrong = ready_app(engines, front.replace(backend_model="not-served")).test_client()
    health = wrong.get("/health")
    assert health.status_code == 503
    assert "BACKEND_MODEL='not-served'" in health.json["error"] and "fake-model" in health.json["error"]


def error_of(response) -> dict:
    body = response.json
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("reply", "status", "code", "words"),
    [
        (Status(500), 502, "bad_gateway", "failed (500: scripted failure)"),
        (Status(503, "overloaded"), 502, "bad_gateway", "failed (503: overloaded)"),
        (Status(401, '{"error": {"message": "bad key"}}'), 502, "bad_gateway", "BACKEND_API_KEY"),
        (Status(404, '{"error": {"message": "model x not found"}}'), 502, "bad_gateway", "BACKEND_MODEL"),
        (Status(429, '{"error": {"message": "too many"}}'), 502, "bad_gateway", "busy"),
        (Garbage(), 502, "bad_gateway", "not JSON"),
        (Stream(finish=None, usage=None, done=False), 502, "bad_gateway", "without a finish_reason"),
        (Stream(pieces=(), finish=None, usage=None, done=False), 502, "bad_gateway", "without a word"),
        (Stream(error_after="out of memory"), 502, "bad_gateway", "out of memory"),
        (Silent(5), 504, "upstream_timeout", "BACKEND_TIMEOUT"),
    ],
)
def test_an_engine_failure_is_a_502_or_504_with_words(client, fake, reply, status, code, words):
    fake.reply = reply
    response = client.post("/v1/chat/completions", json=ask("Hi"))
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code and words in error["message"]


def test_a_request_the_engine_refuses_as_invalid_is_the_clients_400(client, fake):
    fake.reply = Status(400, '{"error": {"message": "This model\'s maximum context length is 4096 tokens"}}')
    response = client.post("/v1/chat/completions", json=ask("Hi"))
    assert response.status_code == 400
    assert "maximum context length is 4096" in error_of(response)["message"]


def test_an_unreachable_engine_is_a_502_that_says_so(engines, front):
    down = ready_app(engines, front.replace(backend_url=f"http://127.0.0.1:{free_port()}/v1", backend_model="m"))
    response = down.test_client().post("/v1/chat/completions", json=ask("Hi"))
    assert response.status_code == 502
    assert "could not be reached" in error_of(response)["message"]


def test_a_failure_after_the_stream_began_is_an_error_frame(client, fake):
    fake.reply = Stream(pieces=("partial",), error_after="the engine crashed")
    response = client.post("/v1/chat/completions", json=ask("Hi", stream=True))
    datas = [data for _, data in sse_events(response.get_data(as_text=True))]
    last = json.loads(datas[-1])
    assert last["error"]["code"] == "bad_gateway" and "the engine crashed" in last["error"]["message"]


def test_backend_openai_needs_a_url():
    with pytest.raises(ValueError, match="BACKEND_URL"):
        Settings.from_mapping({"BACKEND": "openai"})
    with pytest.raises(ValueError, match="BACKEND must be"):
        Settings.from_mapping({"BACKEND": "vllm"})
