"""The OpenAPI document describes each feature's fields as the server sends them: boxes, image budgets, the
conversation key, JSON answers, and BACKEND=openai's health and failures (real requests and responses)."""

from __future__ import annotations

import io
import json
import threading

import pytest

from app import create_app
from loupe.web.observability import CONVERSATION_HEADER
from loupe.web.services import services
from tests.support.chat import ask, data_url, png
from tests.support.engines import wait_ready
from tests.support.fake_upstream import FakeUpstream, Silent, Status, Stream
from tests.support.fakes import ScriptedBackend
from tests.support.live_server import free_port
from tests.support.openapi import Contract

CHAT = "/v1/chat/completions"
# A grounding answer with a box and a point: random weights write none, so a scripted backend writes it.
GROUNDED = [
    '```json\n[{"bbox_2d": [100, 200, 300, 400], "label": "cat"}, ',
    '{"point_2d": [500, 500], "label": ""}]\n```',
]
# A schema whose shortest answer fits in a few tokens.
FLAG = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}


@pytest.fixture(scope="module")
def contract(app):
    return Contract(app.test_client().get("/openapi.json").get_json())


@pytest.fixture
def grounding_client(settings, engines, tmp_path):
    """An app whose backend writes GROUNDED, with its own history."""
    application = create_app(
        settings.replace(data_dir=str(tmp_path / "data")), engine=engines.ready(ScriptedBackend(GROUNDED))
    )
    yield application.test_client()
    services(application).history.close()


def test_boxes_match_whole_streamed_and_recorded(grounding_client, contract):
    body = ask("Find every cat.", data_url(png()))
    response = grounding_client.post(CHAT, json=body)
    assert len(response.get_json()["choices"][0]["message"]["boxes"]) == 2
    contract.check_response(CHAT, "POST", response)
    streamed = grounding_client.post(CHAT, json={**body, "stream": True})
    assert '"boxes"' in streamed.get_data(as_text=True)
    contract.check_response(CHAT, "POST", streamed)
    listing = grounding_client.get("/inferences")
    assert [s["box_count"] for s in listing.get_json()["data"]] == [2, 2]
    contract.check_response("/inferences", "GET", listing)
    record = grounding_client.get(listing.get_json()["data"][0]["url"])
    assert len(record.get_json()["boxes"]) == 2
    contract.check_response("/inferences/{record_id}", "GET", record)


def test_image_budgets_match_asked_and_recorded(client, contract):
    image = {"type": "image_url", "image_url": {"url": data_url(png()), "detail": "low", "max_pixels": 4096}}
    body = {"messages": [{"role": "user", "content": [image, {"type": "text", "text": "Hi"}]}], "min_pixels": 1024}
    body |= {"detail": "auto", "max_tokens": 1}
    contract.check_request("/inferences", "POST", "application/json", body)
    created = client.post("/inferences", json=body)
    assert created.status_code == 201
    contract.check_response("/inferences", "POST", created)
    part = created.get_json()["messages"][0]["content"][0]
    assert (part["detail"], part["min_pixels"], part["max_pixels"]) == ("low", 1024, 4096)
    fields = {"prompt": "Hi", "detail": "high", "max_pixels": 65536, "max_tokens": 1}
    contract.check_request(CHAT, "POST", "multipart/form-data", {**fields, "image": ["<bytes>"]})
    as_text = {name: str(value) for name, value in fields.items()}
    response = client.post(
        CHAT, content_type="multipart/form-data", data={**as_text, "image": (io.BytesIO(png()), "a.png")}
    )
    assert response.status_code == 200
    contract.check_response(CHAT, "POST", response)


def test_the_conversation_key_is_handed_back_as_documented(client, contract):
    for key, echoed in [("receipt-2024/06:01", True), ("not a key", False)]:
        for path, method in [(CHAT, "POST"), ("/v1/models", "GET"), ("/inferences/not-a-uuid", "GET")]:
            response = client.open(path, method=method, json=ask(max_tokens=1), headers={CONVERSATION_HEADER: key})
            assert (response.headers.get(CONVERSATION_HEADER) == key) is echoed
            contract.check_response(path.replace("not-a-uuid", "{record_id}"), method, response)


def test_json_answers_match_asked_and_recorded(client, contract):
    fmt = {"type": "json_schema", "json_schema": {"name": "flag", "schema": FLAG, "strict": True}}
    body = ask("Is it?", max_tokens=20, temperature=0, response_format=fmt)
    contract.check_request("/inferences", "POST", "application/json", body)
    created = client.post("/inferences", json=body)
    assert created.status_code == 201, created.get_json()
    contract.check_response("/inferences", "POST", created)
    record = created.get_json()
    assert record["response_format"] == record["sampling"]["response_format"] == fmt
    free = client.post("/inferences", json=ask(max_tokens=1, response_format={"type": "text"}))
    assert free.get_json()["response_format"] is None
    contract.check_response("/inferences", "POST", free)
    fields = {"schema": json.dumps(FLAG), "max_tokens": 20, "image": ["<bytes>"]}
    contract.check_request(CHAT, "POST", "multipart/form-data", fields)
    form = {"schema": (io.BytesIO(json.dumps(FLAG).encode()), "flag.json"), "image": (io.BytesIO(png()), "a.png")}
    response = client.post(CHAT, content_type="multipart/form-data", data={**form, "max_tokens": "20"})
    assert response.status_code == 200, response.get_json()
    contract.check_response(CHAT, "POST", response)


@pytest.fixture
def upstream():
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def front(settings, engines, upstream, tmp_path):
    """A client of Loupe with BACKEND=openai in front of the scripted engine."""
    own = settings.replace(backend="openai", backend_url=upstream.url, backend_timeout=0.5, data_dir=str(tmp_path))
    app = engines.app(own)
    wait_ready(services(app).engine)
    return app.test_client()


def test_an_engine_behind_matches_answering_and_failing(front, upstream, contract):
    for path in ["/health", "/v1/models"]:
        contract.check_response(path, "GET", front.get(path))
    for reply, status in [(Stream(), 200), (Status(500), 502), (Silent(2), 504), (Status(400), 400)]:
        upstream.reply = reply
        response = front.post(CHAT, json=ask("Hi"))
        assert response.status_code == status
        contract.check_response(CHAT, "POST", response)
    upstream.reply = Stream(pieces=("partial",), error_after="the engine crashed")
    streamed = front.post(CHAT, json=ask("Hi", stream=True))
    assert '"bad_gateway"' in streamed.get_data(as_text=True)
    contract.check_response(CHAT, "POST", streamed)


def test_an_engine_away_matches(settings, engines, contract, tmp_path):
    away = settings.replace(backend="openai", backend_url=f"http://127.0.0.1:{free_port()}/v1", data_dir=str(tmp_path))
    app = engines.app(away)
    wait_ready(services(app).engine)
    health = app.test_client().get("/health")
    assert health.status_code == 503 and health.get_json()["status"] == "error"
    contract.check_response("/health", "GET", health)


def test_resuming_and_stopping_a_stream_match(client, contract):
    started = client.post(CHAT, json=ask(max_tokens=3, ignore_eos=True, stream=True))
    contract.check_response(CHAT, "POST", started)
    stream_id = started.headers["X-Stream-ID"]
    first_id = started.get_data(as_text=True).split("id: ", 1)[1].split("\n", 1)[0]
    path, template = f"{CHAT}/streams/{stream_id}", CHAT + "/streams/{stream_id}"
    for headers, status in [({}, 200), ({"Last-Event-ID": first_id}, 200), ({"Last-Event-ID": "x:1"}, 400)]:
        resumed = client.get(path, headers=headers)
        assert resumed.status_code == status
        contract.check_response(template, "GET", resumed)
    stopped = client.delete(path)
    assert stopped.status_code == 200
    contract.check_response(template, "DELETE", stopped)
    for method in ("GET", "DELETE"):
        unknown = client.open(f"{CHAT}/streams/{'0' * 32}", method=method)
        assert unknown.status_code == 404 and unknown.get_json()["error"]["code"] == "stream_not_found"
        contract.check_response(template, method, unknown)


def test_a_stream_stopped_while_running_ends_as_documented(settings, engines, tmp_path, contract):
    gate = threading.Event()  # holds the generation still until the stream is stopped
    engine = engines.ready(ScriptedBackend(["a", "b"], gate=gate))
    application = create_app(settings.replace(data_dir=str(tmp_path)), engine=engine)
    client = application.test_client()
    started = client.post(CHAT, json=ask(stream=True), buffered=False)
    path = f"{CHAT}/streams/{started.headers['X-Stream-ID']}"
    assert client.delete(path).status_code == 200
    gate.set()
    for response, template, method in [
        (started, CHAT, "POST"),
        (client.get(path), CHAT + "/streams/{stream_id}", "GET"),
    ]:
        assert '"client_closed_request"' in response.get_data(as_text=True)
        contract.check_response(template, method, response)
    services(application).history.close()
