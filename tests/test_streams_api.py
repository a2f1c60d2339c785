"""Resumable streams through the test client: ids, resuming after the end, 404s, keys, the rate limit, DELETE."""

import re
import time

import pytest

from app import create_app
from loupe.web.services import services
from tests.support.chat import ask, sse_chunks, sse_events, stream_text
from tests.support.waiting import wait_until

STREAMS = "/v1/chat/completions/streams/"


def client_of(app, **changes):
    """A client of an app with changed settings, sharing the session's loaded engine."""
    return create_app(services(app).settings.replace(**changes), engine=services(app).engine).test_client()


def streamed(client, headers=None, **fields):
    """A whole stream: (its id, [(event id, data)...])."""
    response = client.post("/v1/chat/completions", json=ask(stream=True, **fields), headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.headers["X-Stream-ID"], sse_events(response.get_data(as_text=True))


def test_every_event_has_an_id_of_its_stream_numbered_from_one(client):
    stream_id, events = streamed(client, max_tokens=4, ignore_eos=True)
    assert re.fullmatch(r"[0-9a-f]{32}", stream_id)
    assert [event_id for event_id, _ in events] == [f"{stream_id}:{n}" for n in range(1, len(events) + 1)]
    assert events[-1][1] == "[DONE]"


def test_resuming_after_the_end_replays_only_the_rest_and_done(client):
    stream_id, events = streamed(client, max_tokens=5, ignore_eos=True, stream_options={"include_usage": True})
    finish_id = events[-3][0]  # the finish_reason chunk; then the usage chunk and [DONE]
    rest = client.get(STREAMS + stream_id, headers={"Last-Event-ID": finish_id})
    assert rest.status_code == 200 and rest.mimetype == "text/event-stream"
    assert sse_events(rest.get_data(as_text=True)) == events[-2:]
    assert [c.get("usage", {}).get("completion_tokens") for c in sse_chunks(rest)] == [5]
    # Without Last-Event-ID: the whole stream again, the same events.
    assert sse_events(client.get(STREAMS + stream_id).get_data(as_text=True)) == events
    nothing = client.get(STREAMS + stream_id, headers={"Last-Event-ID": events[-1][0]})
    assert nothing.status_code == 200 and nothing.get_data(as_text=True) == ""


def test_a_dropped_stream_resumed_from_its_last_event_gets_the_rest_of_the_same_answer(client):
    fields = {"max_tokens": 40, "ignore_eos": True, "temperature": 0}
    _, whole = streamed(client, **fields)
    response = client.post("/v1/chat/completions", json=ask(stream=True, **fields), buffered=False)
    stream_id = response.headers["X-Stream-ID"]
    frames = iter(response.response)
    received = "".join(next(frames).decode() for _ in range(6))  # the comment, the role and four more
    response.close()  # the connection drops
    first = sse_events(received)
    rest = client.get(STREAMS + stream_id, headers={"Last-Event-ID": first[-1][0]})
    resumed = first + sse_events(rest.get_data(as_text=True))
    assert [int(event_id.split(":")[1]) for event_id, _ in resumed] == list(range(1, len(resumed) + 1))
    as_chunks = [data for _, data in resumed]
    assert text_of(as_chunks) == text_of([data for _, data in whole])


def text_of(datas):
    import json

    return stream_text([json.loads(d) for d in datas if d != "[DONE]"])


@pytest.mark.parametrize("stream_id", ["0" * 32, "not-a-stream"], ids=["unknown", "malformed"])
def test_an_unknown_stream_is_404_in_the_envelope(client, stream_id):
    for method in (client.get, client.delete):
        response = method(STREAMS + stream_id)
        assert response.status_code == 404
        error = response.get_json()["error"]
        assert error["code"] == "stream_not_found" and error["type"] == "invalid_request_error"
        assert "STREAM_REPLAY_SECONDS" in error["message"]


def test_an_expired_stream_is_404(app):
    client = client_of(app, stream_replay_seconds=0.3)
    stream_id, _ = streamed(client, max_tokens=2)
    assert client.get(STREAMS + stream_id).status_code == 200
    time.sleep(0.5)
    response = client.get(STREAMS + stream_id)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "stream_not_found"


@pytest.mark.parametrize("last_event_id", ["junk", "0" * 32 + ":1", "{stream}:99", "{stream}:-1"])
def test_a_last_event_id_not_of_this_stream_is_400(client, last_event_id):
    stream_id, _ = streamed(client, max_tokens=2)
    response = client.get(STREAMS + stream_id, headers={"Last-Event-ID": last_event_id.format(stream=stream_id)})
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "Last-Event-ID"


def test_only_the_api_key_that_started_a_stream_may_resume_it(app):
    client = client_of(app, api_key="key-a,key-b")
    stream_id, events = streamed(client, headers={"Authorization": "Bearer key-a"}, max_tokens=3)
    assert client.get(STREAMS + stream_id).status_code == 401
    other = client.get(STREAMS + stream_id, headers={"Authorization": "Bearer key-b"})
    assert other.status_code == 404 and other.get_json()["error"]["code"] == "stream_not_found"
    assert client.delete(STREAMS + stream_id, headers={"Authorization": "Bearer key-b"}).status_code == 404
    same = client.get(STREAMS + stream_id, headers={"Authorization": "Bearer key-a"})
    assert sse_events(same.get_data(as_text=True)) == events


def test_resuming_is_not_a_generation_for_the_rate_limit(app):
    client = client_of(app, rate_limit="1/minute")
    stream_id, events = streamed(client, max_tokens=2)
    for _ in range(3):
        assert client.get(STREAMS + stream_id, headers={"Last-Event-ID": events[0][0]}).status_code == 200
    assert client.post("/v1/chat/completions", json=ask(max_tokens=1)).status_code == 429


def test_delete_stops_the_generation_and_the_stream_ends_with_the_reason(app, caplog):
    client = client_of(app, max_new_tokens_limit=8000)
    caplog.set_level("INFO", logger="loupe.engine.engine")
    response = client.post(
        "/v1/chat/completions", json=ask(max_tokens=8000, ignore_eos=True, stream=True), buffered=False
    )
    stream_id = response.headers["X-Stream-ID"]
    frames = iter(response.response)
    next(frames), next(frames)  # accepted, and the role: it is generating
    deleted = client.delete(STREAMS + stream_id)
    assert deleted.status_code == 200
    assert deleted.get_json() == {"id": stream_id, "object": "chat.completion.stream", "cancelled": True}
    rest = "".join(frame.decode() for frame in frames)  # the connection ends: no hang
    assert "client_closed_request" in rest and "[DONE]" not in rest
    # The stream ends when DELETE fails the generation; the engine lets it go at its next step, a moment later.
    wait_until(
        lambda: any(r.getMessage().startswith("generation cancelled after") for r in caplog.records),
        message="the engine to let the generation go",
    )


def test_with_resuming_off_events_have_no_ids_and_there_is_nothing_to_resume(app):
    client = client_of(app, stream_resume_seconds=0)
    response = client.post("/v1/chat/completions", json=ask(max_tokens=2, stream=True))
    assert "X-Stream-ID" not in response.headers
    assert all(event_id is None for event_id, _ in sse_events(response.get_data(as_text=True)))
    assert client.get(STREAMS + "0" * 32).get_json()["error"]["code"] == "stream_not_found"
