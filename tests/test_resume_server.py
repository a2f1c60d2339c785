"""Resuming streams on the real gunicorn server: a client drops its socket mid-answer and reconnects."""

import http.client
import json
import re
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.support.chat import sse_events, stream_text
from tests.support.live_server import LiveServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow  # a real gunicorn server

LONG = 100_000
ANSWER = 400  # tokens: long enough to drop mid-answer, even where the tiny model makes 2,000 a second
RESUME_SECONDS = 3


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    live = LiveServer(
        {
            "MODEL_ID": str(tiny_model_dir),
            "MAX_NEW_TOKENS": "8",
            "STREAM_RESUME_SECONDS": str(RESUME_SECONDS),
            "PREFIX_CACHE_TOKENS": "0",  # each request reads its prompt afresh: the greedy answers are comparable
            "MAX_NEW_TOKENS_LIMIT": str(LONG),
            "MAX_CONTEXT_TOKENS": str(LONG + 100),
            "THREADS": "4",
        },
        tmp_path_factory.mktemp("resume-server") / "server.log",
    )
    yield live.start()
    live.stop()


def body(max_tokens):
    return {
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }


def metric(server, name) -> float:
    """The sum of a metric's samples in /metrics (0 when absent)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def whole_stream(server, max_tokens) -> list[tuple[str, str]]:
    """An uninterrupted stream's events."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    connection.request(
        "POST", "/v1/chat/completions", json.dumps(body(max_tokens)), {"Content-Type": "application/json"}
    )
    return sse_events(connection.getresponse().read().decode())


def drop_after(server, max_tokens, events) -> tuple[str, list[tuple[str, str]]]:
    """POST a stream on a raw socket, read `events` events, and drop the connection: (stream id, events read)."""
    payload = json.dumps(body(max_tokens)).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: loupe\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    raw = b""
    # Frames are whole chunks of the chunked body: the regex finds them between the chunk-size lines.
    frame = re.compile(rb"id: (\S+)\ndata: ([^\n]*)\n\n")
    while len(frame.findall(raw)) < events:
        received = sock.recv(65536)
        assert received, "the server closed the stream early"
        raw += received
    sock.close()  # no goodbye: the client is gone
    stream_id = re.search(rb"(?i)^x-stream-id: (\w+)\r$", raw, re.M)[1].decode()
    read = [(i.decode(), d.decode()) for i, d in frame.findall(raw)][:events]
    return stream_id, read


def resume(server, stream_id, last_event_id) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    connection.request("GET", f"/v1/chat/completions/streams/{stream_id}", headers={"Last-Event-ID": last_event_id})
    response = connection.getresponse()
    return response.status, response.read().decode()


def text_of(events):
    return stream_text([json.loads(data) for _, data in events if data != "[DONE]"])


def test_a_dropped_stream_resumes_with_the_rest_of_the_answer_generated_once(server):
    whole = whole_stream(server, ANSWER)
    assert json.loads(whole[-2][1])["choices"][0]["finish_reason"] == "length"
    generations, tokens = metric(server, "loupe_generations_total"), metric(server, "loupe_completion_tokens_total")
    cancelled_before = server.log().count("generation cancelled after")
    records_before = len(history(server))

    stream_id, first = drop_after(server, ANSWER, 3)
    assert metric(server, "loupe_generations_in_progress") == 1  # it goes on without its client
    time.sleep(1)  # the client is away for a moment (less than STREAM_RESUME_SECONDS)
    status, rest = resume(server, stream_id, first[-1][0])
    assert status == 200
    resumed = first + sse_events(rest)

    numbers = [int(event_id.split(":")[1]) for event_id, _ in resumed]
    assert numbers == list(range(1, len(resumed) + 1))  # nothing missed, nothing twice
    assert resumed[-1][1] == "[DONE]"
    assert text_of(resumed) == text_of(whole) and len(resumed) == len(whole)
    # Generated once: one more generation and ANSWER more tokens, nothing cancelled, one history record.
    assert metric(server, "loupe_generations_total") == generations + 1
    assert metric(server, "loupe_completion_tokens_total") == tokens + ANSWER
    assert metric(server, 'loupe_resumable_stream_events_total{event="resumed"}') >= 1
    assert server.log().count("generation cancelled after") == cancelled_before
    records = history(server)
    assert len(records) == records_before + 1
    assert (
        records[0]["status"] == "completed"
        and records[0]["answer_preview"] == text_of(whole)[: len(records[0]["answer_preview"])]
    )
    wait_until(
        lambda: re.search(r"route=/v1/chat/completions status=200 .*outcome=detached", server.log()),
        message="the dropped connection's access line",
    )
    assert re.search(r"route=/v1/chat/completions/streams/<stream_id> status=200 .*outcome=length", server.log())


def test_a_client_that_does_not_come_back_has_its_generation_stopped(server):
    stream_id, first = drop_after(server, LONG, 3)
    wait_until(
        lambda: "nobody reconnected within" in server.log(), RESUME_SECONDS + 30, message="the stream to be given up"
    )
    made = int(re.findall(r"generation cancelled after (\d+) tokens", wait_until(lambda: _cancelled_log(server)))[-1])
    assert made < LONG
    status, rest = resume(server, stream_id, first[-1][0])  # too late: the rest ends with why it stopped
    last = json.loads(sse_events(rest)[-1][1])
    assert status == 200 and last["error"]["code"] == "client_closed_request"
    assert "STREAM_RESUME_SECONDS" in last["error"]["message"]
    wait_until(lambda: history(server)[0]["status"] == "cancelled", message="the cancelled record")
    assert server.health()["status"] == "ok"


def _cancelled_log(server):
    log = server.log()
    return log if "generation cancelled after" in log else None


def test_an_unknown_stream_is_a_404_in_the_envelope(server):
    status, text = resume(server, "0" * 32, "0" * 32 + ":3")
    error = json.loads(text)["error"]
    assert status == 404 and error["code"] == "stream_not_found" and error["type"] == "invalid_request_error"


def history(server) -> list[dict]:
    with urllib.request.urlopen(server.url + "/inferences?limit=100", timeout=10) as response:
        return json.load(response)["data"]


def test_the_readmes_resume_example_works_as_written(server, readme_text, tmp_path):
    [example] = [b for b in re.findall(r"```bash\n(.*?)```", readme_text, re.S) if "Last-Event-ID" in b]
    command = example.replace("localhost:8000", server.url.removeprefix("http://"))
    result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    first = sse_events((tmp_path / "first.txt").read_text())
    rest = sse_events(result.stdout)
    assert len(first) == 2 and rest[-1][1] == "[DONE]"
    numbers = [int(event_id.split(":")[1]) for event_id, _ in first + rest]
    assert numbers == list(range(1, len(numbers) + 1))
