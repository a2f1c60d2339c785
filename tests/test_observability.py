"""Request ids, one log line per request, JSON logs; no prompt text in the log."""

import json
import logging

from loupe.web.observability import JsonFormatter, RequestIdFilter
from tests.support.chat import ask, sse_chunks


def request_lines(caplog):
    return [r for r in caplog.records if r.name == "loupe.requests"]


def test_a_request_id_is_generated_and_names_the_completion(client):
    response = client.post("/v1/chat/completions", json=ask(max_tokens=2))
    rid = response.headers["X-Request-ID"]
    assert len(rid) == 32 and int(rid, 16) >= 0
    assert response.get_json()["id"] == f"chatcmpl-{rid}"
    assert client.get("/health").headers["X-Request-ID"] != rid


def test_a_callers_request_id_is_honoured_in_header_body_and_stream(client):
    headers = {"X-Request-ID": "trace-42.a:b"}
    whole = client.post("/v1/chat/completions", json=ask(max_tokens=2), headers=headers)
    assert whole.headers["X-Request-ID"] == "trace-42.a:b"
    assert whole.get_json()["id"] == "chatcmpl-trace-42.a:b"
    stream = client.post("/v1/chat/completions", json=ask(max_tokens=2, stream=True), headers=headers)
    assert {c["id"] for c in sse_chunks(stream)} == {"chatcmpl-trace-42.a:b"}


def test_an_unsafe_request_id_is_replaced(client):
    for bad in ("has space", "x" * 129, "<script>", "é"):
        response = client.get("/health", headers={"X-Request-ID": bad})
        assert response.headers["X-Request-ID"] != bad
        assert len(response.headers["X-Request-ID"]) == 32


def test_the_conversation_key_comes_back_and_goes_in_the_log_line(client, caplog):
    caplog.set_level(logging.INFO, logger="loupe.requests")
    headers = {"X-Loupe-Conversation": "trip-photo.1"}
    response = client.post("/v1/chat/completions", json=ask(max_tokens=2), headers=headers, buffered=True)
    assert response.headers["X-Loupe-Conversation"] == "trip-photo.1"
    stream = client.post("/v1/chat/completions", json=ask(max_tokens=2, stream=True), headers=headers)
    assert stream.headers["X-Loupe-Conversation"] == "trip-photo.1"
    b"".join(stream.response)
    stream.close()
    assert [line.fields["conversation"] for line in request_lines(caplog)] == ["trip-photo.1"] * 2
    assert "conversation=trip-photo.1" in request_lines(caplog)[0].getMessage()
    # An unsafe key is not echoed into a header or the log; a request without one has none.
    unsafe = client.post("/v1/chat/completions", json=ask(max_tokens=1), headers={"X-Loupe-Conversation": "a b"})
    assert "X-Loupe-Conversation" not in unsafe.headers
    assert "X-Loupe-Conversation" not in client.post("/v1/chat/completions", json=ask(max_tokens=1)).headers


def test_one_log_line_per_request_with_route_status_duration_and_tokens(client, caplog):
    caplog.set_level(logging.INFO, logger="loupe.requests")
    secret = "PRIVATE-QUESTION-TEXT"
    response = client.post(
        "/v1/chat/completions",
        json=ask(secret, max_tokens=3, ignore_eos=True),
        headers={"X-Request-ID": "abc123"},
        buffered=True,
    )  # buffered: closed at once
    assert response.status_code == 200
    [line] = request_lines(caplog)
    fields = line.fields
    assert fields["request_id"] == "abc123" and fields["route"] == "/v1/chat/completions"
    assert (fields["method"], fields["status"], fields["outcome"]) == ("POST", 200, "length")
    assert fields["completion_tokens"] == 3 and fields["prompt_tokens"] > 0 and fields["duration_ms"] > 0
    assert "request_id=abc123" in line.getMessage() and "status=200" in line.getMessage()
    assert secret not in caplog.text


def test_a_stream_is_logged_when_it_ends_with_its_token_counts(client, caplog):
    caplog.set_level(logging.INFO, logger="loupe.requests")
    response = client.post("/v1/chat/completions", json=ask(max_tokens=4, ignore_eos=True, stream=True), buffered=False)
    assert request_lines(caplog) == []  # still streaming
    b"".join(response.response)
    response.close()
    [line] = request_lines(caplog)
    assert line.fields["completion_tokens"] == 4 and line.fields["outcome"] == "length"


def test_errors_and_unknown_routes_are_logged_too(client, caplog):
    caplog.set_level(logging.INFO, logger="loupe.requests")
    client.post("/v1/chat/completions", json=ask(temperature=9), buffered=True)
    client.get("/nowhere", buffered=True)
    bad, missing = (line.fields for line in request_lines(caplog))
    assert (bad["status"], bad["route"]) == (400, "/v1/chat/completions")
    assert (missing["status"], missing["route"]) == (404, "/nowhere")


def test_json_formatter_writes_one_object_with_the_fields():
    record = logging.LogRecord("loupe.requests", logging.INFO, __file__, 1, "request %s", ("x",), None)
    record.fields = {"status": 200, "route": "/health"}
    record.request_id = "r1"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "request x" and entry["level"] == "INFO" and entry["time"].endswith("Z")
    assert (entry["request_id"], entry["status"], entry["route"]) == ("r1", 200, "/health")


def test_log_records_made_during_a_request_carry_its_id(app):
    record = logging.LogRecord("api", logging.INFO, __file__, 1, "inside", (), None)
    with app.test_request_context("/health", headers={"X-Request-ID": "inside-1"}):
        app.preprocess_request()
        RequestIdFilter().filter(record)
    assert record.request_id == "inside-1"
