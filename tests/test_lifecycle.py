"""Liveness vs readiness, and the graceful stop on SIGTERM (through the test client and real gunicorn)."""

import http.client
import json
import signal
import threading
import time

import pytest

from app import create_app
from loupe.web.lifecycle import begin_shutdown
from loupe.web.services import services
from tests.support.chat import ask
from tests.support.engines import wait_ready
from tests.support.fakes import ScriptedBackend
from tests.support.waiting import wait_until


def test_live_answers_while_the_model_loads(settings, engines):
    release = threading.Event()

    def slow_load():
        release.wait(10)
        raise RuntimeError("test over")

    client = create_app(settings, engine=engines.start(slow_load, queue_size=1)).test_client()
    try:
        assert client.get("/health").status_code == 503
        live = client.get("/live")
        assert live.status_code == 200 and live.get_json() == {"status": "alive"}
    finally:
        release.set()


def test_after_shutdown_begins_health_and_new_generations_are_503_but_live_is_200(settings, backend, engines):
    app = engines.app(settings)
    wait_ready(services(app).engine)
    client = app.test_client()
    assert client.post("/v1/chat/completions", json=ask(max_tokens=1)).status_code == 200
    begin_shutdown(app)
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json() == {"status": "shutting_down"}
    refused = client.post("/v1/chat/completions", json=ask(max_tokens=1))
    assert refused.status_code == 503
    assert refused.get_json()["error"]["code"] == "shutting_down"
    assert client.get("/live").status_code == 200


def post_stream(server, max_tokens):
    """Start a streamed generation and return the connection and response once the model is on it."""
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": "Go on"}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
            "temperature": 0,
        }
    )
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b":")  # accepted
    response.readline()
    assert response.readline().startswith(b"id: ")  # the event's id, for resuming
    assert b"assistant" in response.readline()  # the role chunk: the engine has started on it
    return connection, response


@pytest.mark.slow  # a real server
def test_sigterm_lets_the_running_stream_finish_refuses_new_work_and_exits(live_server):
    server = live_server(SHUTDOWN_GRACE="30", LOG_FORMAT="json")
    kept_alive = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    kept_alive.request("GET", "/live")
    assert kept_alive.getresponse().read()
    connection, stream = post_stream(server, max_tokens=60)
    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: '"shutting down: ' in server.log(), message="the worker to log that it is shutting down")
    # A request on a connection opened before SIGTERM is still answered, with 503.
    kept_alive.request(
        "POST", "/v1/chat/completions", json.dumps(ask(max_tokens=1)), {"Content-Type": "application/json"}
    )
    refused = kept_alive.getresponse()
    assert refused.status == 503 and json.load(refused)["error"]["code"] == "shutting_down"
    rest = stream.read().decode()
    assert rest.rstrip().endswith("data: [DONE]") and '"finish_reason":"length"' in rest
    connection.close()  # else the worker keeps the idle connection open a little longer before exiting
    assert server.process.wait(30) == 0
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    assert any(m.startswith("shutting down: 1 generation(s) running") for m in messages)
    assert "stopped with no unfinished work" in messages
    finished = [line for line in lines if line.get("route") == "/v1/chat/completions" and line["status"] == 200]
    assert finished[-1]["completion_tokens"] == 60  # the stream's own log line, with its tokens


@pytest.mark.slow  # a real server
def test_a_generation_longer_than_the_grace_period_ends_with_a_clear_error(live_server):
    # Far more tokens than the tiny model makes in the grace period (it makes about 2,000 a second).
    server = live_server(SHUTDOWN_GRACE="1", MAX_NEW_TOKENS_LIMIT="100000", MAX_CONTEXT_TOKENS="100100")
    _, stream = post_stream(server, max_tokens=100000)
    began = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    rest = stream.read().decode()
    assert '"code":"shutting_down"' in rest.replace(" ", "") and "[DONE]" not in rest
    assert server.process.wait(20) == 0
    assert time.monotonic() - began < 10
    assert "grace period over: ended 1 unfinished generation(s)" in server.log()
    assert "stopped with no unfinished work" in server.log()


def test_the_grace_timer_ends_queued_and_running_generations(settings, engines):
    gate = threading.Event()  # never opened until the end: the running generation makes no progress
    engine = engines.ready(ScriptedBackend(["a"] * 100, gate=gate), queue_size=2)
    app = create_app(settings.replace(shutdown_grace=0), engine=engine)
    client = app.test_client()
    running = client.post("/v1/chat/completions", json=ask(max_tokens=2000, stream=True), buffered=False)
    frames = iter(running.response)
    assert next(frames).startswith(b":")  # accepted
    assert b"assistant" in next(frames)
    results = []
    waiter = threading.Thread(target=lambda: results.append(client.post("/v1/chat/completions", json=ask())))
    waiter.start()
    wait_until(lambda: engine.queue_depth, message="the other request to be queued")
    begin_shutdown(app).join(5)
    waiter.join(5)
    assert results[0].status_code == 503 and results[0].get_json()["error"]["code"] == "shutting_down"
    assert b"shutting_down" in b"".join(running.response)
    gate.set()
