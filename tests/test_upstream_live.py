"""BACKEND=openai under real gunicorn: a hang-up closes the request to the engine; Loupe in front of Loupe."""

import base64
import http.client
import json
import urllib.request

import pytest
from PIL import Image

from tests.support.fake_upstream import FakeUpstream, Silent, Stream
from tests.support.live_server import LiveServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow  # real gunicorn servers


@pytest.fixture(scope="module")
def fake():
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def front(fake, tmp_path_factory):
    """Loupe in front of the scripted engine."""
    live = LiveServer(
        # A dropped stream waits STREAM_RESUME_SECONDS for its client to come back before it is stopped.
        {"BACKEND": "openai", "BACKEND_URL": fake.url, "THREADS": "4", "STREAM_RESUME_SECONDS": "1"},
        tmp_path_factory.mktemp("front") / "front.log",
    )
    yield live.start()
    live.stop()


def open_chat(server: LiveServer, **fields) -> http.client.HTTPConnection:
    """A chat request sent over its own connection, its answer not yet read."""
    body = json.dumps({"messages": [{"role": "user", "content": "Go on"}], **fields})
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    return connection


def hang_up(connection: http.client.HTTPConnection) -> None:
    connection.sock.close()
    connection.close()


def test_a_client_that_leaves_a_stream_closes_the_request_to_the_engine(front, fake):
    fake.hung_up.clear()
    fake.finished.clear()
    fake.reply = Stream(pieces=("word ",) * 300, delay=0.05)  # 15 s of answer if nobody stops it
    connection = open_chat(front, stream=True)
    response = connection.getresponse()
    assert response.status == 200
    while b'"content":"word' not in response.fp.readline():  # the engine is answering
        pass
    hang_up(connection)
    assert fake.hung_up.wait(5), "the engine was never told: Loupe kept reading its answer"
    assert not fake.finished.is_set()
    # The connection's line says it left; the generation is stopped once nobody came back for it.
    wait_until(lambda: "outcome=detached" in front.log(), message="the request's access line, detached")
    wait_until(lambda: "nobody reconnected" in front.log(), message="the stream to be abandoned")
    assert front.health()["status"] == "ok"


def test_a_client_that_hangs_up_on_a_whole_answer_closes_the_request_to_the_engine(front, fake):
    """The engine still reading the prompt (silent): the hang-up must reach it all the same."""
    fake.hung_up.clear()
    fake.reply = Silent(60)
    connection = open_chat(front)
    wait_until(lambda: len(fake.requests) and fake.requests[-1]["messages"][0]["content"] == "Go on", 10)
    hang_up(connection)
    assert fake.hung_up.wait(5), "the engine was never told"
    wait_until(lambda: "status=499" in front.log(), message="the request's access line, 499")


@pytest.fixture(scope="module")
def back(tiny_model_dir, tmp_path_factory):
    """Loupe on the tiny model: the engine another Loupe sits in front of."""
    live = LiveServer(
        {"MODEL_ID": str(tiny_model_dir), "MAX_NEW_TOKENS": "8", "THREADS": "4"},
        tmp_path_factory.mktemp("back") / "back.log",
    )
    yield live.start()
    live.stop()


@pytest.fixture(scope="module")
def loupe_on_loupe(back, tmp_path_factory):
    live = LiveServer(
        {"BACKEND": "openai", "BACKEND_URL": back.url + "/v1", "MAX_NEW_TOKENS": "8", "THREADS": "4"},
        tmp_path_factory.mktemp("front-of-loupe") / "front.log",
    )
    yield live.start()
    live.stop()


def post(server: LiveServer, body: dict) -> dict:
    request = urllib.request.Request(
        server.url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def test_loupe_in_front_of_loupe_gives_the_back_ones_greedy_answer(back, loupe_on_loupe, tmp_path):
    path = tmp_path / "photo.jpg"
    Image.effect_noise((900, 700), 60).convert("RGB").save(path, "JPEG")  # downscaled by the front's intake
    url = "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is in this picture?"}]
    body = {"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 8, "ignore_eos": True}
    direct, through = post(back, body), post(loupe_on_loupe, body)
    assert through["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert through["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]  # the same image tokens
    assert through["usage"]["completion_tokens"] == 8 and through["model"] == direct["model"]
    assert loupe_on_loupe.health()["model"] == back.health()["model"]


def test_loupe_in_front_of_loupe_streams_the_same_answer(back, loupe_on_loupe):
    body = {"messages": [{"role": "user", "content": "Hello"}], "temperature": 0, "max_tokens": 6, "ignore_eos": True}
    direct = post(back, body)["choices"][0]["message"]["content"]
    request = urllib.request.Request(
        loupe_on_loupe.url + "/v1/chat/completions",
        json.dumps({**body, "stream": True}).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        frames = [line[6:] for line in response.read().decode().split("\n") if line.startswith("data: {")]
    pieces = [json.loads(f)["choices"][0]["delta"].get("content") or "" for f in frames]
    assert "".join(pieces) == direct and sum(1 for p in pieces if p) > 1
