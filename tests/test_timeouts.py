"""REQUEST_TIMEOUT: a request that waits or runs too long ends with a clear 504 and frees its slot."""

import threading
import time

from app import create_app
from tests.support.chat import ask
from tests.support.fakes import ScriptedBackend
from tests.support.waiting import wait_until


def started_app(settings, engines, backend, timeout):
    """A ready engine on `backend` with REQUEST_TIMEOUT `timeout`, and a client of an app on it."""
    engine = engines.ready(backend, queue_size=1, request_timeout=timeout)
    return engine, create_app(settings.replace(request_timeout=timeout), engine=engine).test_client()


def test_a_running_generation_past_the_timeout_is_504_and_stops(settings, engines):
    gate = threading.Event()  # closed: the backend makes no progress
    backend = ScriptedBackend(["a"] * 100, gate=gate)
    engine, client = started_app(settings, engines, backend, timeout=0.5)
    began = time.monotonic()
    response = client.post("/v1/chat/completions", json=ask(max_tokens=100))
    assert 0.5 <= time.monotonic() - began < 3
    assert response.status_code == 504
    error = response.get_json()["error"]
    assert (error["type"], error["code"]) == ("timeout_error", "request_timeout")
    assert "REQUEST_TIMEOUT" in error["message"]
    gate.set()
    wait_until(lambda: not engine.running, timeout=5, message="the generation to stop")
    assert backend.tokens_made < 100  # the generation stopped


def test_a_queued_request_past_the_timeout_frees_its_slot_at_once(settings, engines):
    gate = threading.Event()
    backend = ScriptedBackend(["a"] * 100, gate=gate)
    engine, client = started_app(settings, engines, backend, timeout=1.0)
    stream = client.post("/v1/chat/completions", json=ask(max_tokens=100, stream=True), buffered=False)
    wait_until(lambda: engine.running, timeout=5, message="the engine to run the stream")  # else both could wait
    results = []
    waiter = threading.Thread(target=lambda: results.append(client.post("/v1/chat/completions", json=ask())))
    waiter.start()
    wait_until(lambda: engine.queue_depth, timeout=5, message="the other request to be queued")
    assert engine.queue_depth == 1
    waiter.join(5)
    assert results[0].status_code == 504
    assert engine.queue_depth == 0 and engine.running  # the slot is free though the first still runs
    rest = b"".join(stream.response)  # the running stream times out too, with an error frame
    assert b"request_timeout" in rest and b"[DONE]" not in rest
    gate.set()


def test_timeouts_are_counted_in_metrics(settings, engines):
    gate = threading.Event()
    _, client = started_app(settings, engines, ScriptedBackend(["a"] * 10, gate=gate), timeout=0.3)
    assert client.post("/v1/chat/completions", json=ask(max_tokens=10)).status_code == 504
    gate.set()
    counted = 'loupe_generations_total{outcome="timeout"} 1.0'
    wait_until(
        lambda: counted in client.get("/metrics").get_data(as_text=True),
        timeout=5,
        interval=0.05,
        message="the timeout to be counted in /metrics",
    )


def test_zero_means_no_timeout(settings, engines):
    _, client = started_app(settings, engines, ScriptedBackend(["a", "b"]), timeout=0)
    assert client.post("/v1/chat/completions", json=ask()).status_code == 200
