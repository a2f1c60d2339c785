"""deploy/nginx in front of a real Loupe: bodies buffered, streams passed on as written, errors in OpenAI's envelope,
clients known by their own address; and the configuration agrees with Loupe's settings."""

import http.client
import json
import re
import socket
import time
import urllib.request

import pytest

from loupe.settings import Settings
from loupe.web.observability import VALID_REQUEST_ID
from tests.support.live_server import LiveServer, free_port
from tests.support.nginx import DEPLOY, Nginx, check, render
from tests.support.waiting import wait_until

LONG = 100_000  # tokens the tiny model needs far longer for than any test here waits (about 2,000 a second)
STALLED = 40


def nginx_value(directive: str) -> str:
    """The value of a directive that deploy/nginx/loupe/proxy.conf sets once."""
    values = re.findall(rf"^{directive} (\S+);", (DEPLOY / "loupe" / "proxy.conf").read_text(), re.M)
    assert len(values) == 1, directive
    return values[0]


def seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def test_the_deploy_configuration_passes_nginx_t(tmp_path):
    checked = check(render(tmp_path, 8080, ["127.0.0.1:8000", "127.0.0.1:8001"]))  # upstream.conf hashes itself
    assert checked.returncode == 0, checked.stderr


def test_the_limits_and_timeouts_agree_with_loupes_defaults():
    defaults = Settings()
    size = nginx_value("client_max_body_size")
    assert size.endswith("m") and int(size[:-1]) * 1024 * 1024 == defaults.max_request_bytes
    # nginx waits for an answer longer than Loupe lets a request take, so Loupe's own 504 arrives first.
    assert seconds(nginx_value("proxy_read_timeout")) > max(defaults.request_timeout, defaults.generation_timeout)
    assert nginx_value("proxy_request_buffering") == "on"
    assert "413" in (DEPLOY / "loupe" / "errors.conf").read_text()


def test_nginx_honours_the_request_ids_loupe_honours():
    http_conf = (DEPLOY / "loupe" / "http.conf").read_text()
    pattern = re.search(r'"~\^(.+)\$" \$http_x_request_id;', http_conf)
    assert pattern is not None and pattern.group(1) == VALID_REQUEST_ID.pattern


def test_every_error_nginx_makes_is_an_openai_envelope():
    errors = (DEPLOY / "loupe" / "errors.conf").read_text()
    pages = dict(re.findall(r"^error_page ([\d ]+) (@\w+);$", errors, re.M))
    assert {"413", "502", "504"} <= {status for statuses in pages for status in statuses.split()}
    for statuses, name in pages.items():
        block = re.search(rf"location {name} {{(.*?)\n}}", errors, re.S)
        assert block is not None, name
        status, body = re.search(r"return (\d+) '(.*)';", block.group(1)).groups()
        assert status == statuses.split()[0]
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["type"]
        assert "default_type application/json;" in block.group(1)


def test_with_no_instance_answering_nginx_says_502_in_the_envelope(tmp_path):
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    nginx = Nginx(tmp_path, [nobody]).start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10)
        connection.request("GET", "/health", headers={"X-Request-ID": "front-502"})
        response = connection.getresponse()
        assert response.status == 502 and response.headers["Content-Type"] == "application/json"
        assert response.headers["X-Request-ID"] == "front-502" and response.headers["Retry-After"] == "5"
        error = json.load(response)["error"]
        assert error["code"] == "bad_gateway" and "No Loupe instance answered" in error["message"]
    finally:
        nginx.stop()


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """One Loupe (one generation at a time, 4 threads, 3 requests a minute per client) behind nginx."""
    live = LiveServer(
        {
            "MODEL_ID": str(tiny_model_dir),
            "MAX_NEW_TOKENS": "8",
            "THREADS": "4",
            "MAX_BATCH": "1",
            "MAX_NEW_TOKENS_LIMIT": str(LONG),
            "MAX_CONTEXT_TOKENS": str(LONG + 100),
            "RATE_LIMIT": "3/minute",
            "TRUSTED_PROXIES": "1",
        },
        tmp_path_factory.mktemp("server") / "server.log",
    )
    yield live.start()
    live.stop()


@pytest.fixture(scope="module")
def front(server, tmp_path_factory):
    nginx = Nginx(tmp_path_factory.mktemp("nginx"), [f"127.0.0.1:{server.port}"]).start()
    yield nginx
    nginx.stop()


def post(port: int, body: dict, client: str, headers: dict | None = None, timeout: float = 30):
    """POST a chat from the loopback address `client` (all of 127.0.0.0/8 is this machine); the response."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(client, 0))
    connection.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json", **(headers or {})}
    )
    return connection, connection.getresponse()


def hello(tokens: int = 1) -> dict:
    return {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": tokens}


def stall_uploads(port: int) -> list[socket.socket]:
    """STALLED clients, each from its own address, that send a chat's headers and a first byte of its body only."""
    sockets = []
    for n in range(STALLED):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(f"127.0.1.{n + 1}", 0))
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: loupe\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n{"
        )
        sock.sendall(head.encode())
        sockets.append(sock)
    return sockets


def health_within(url: str, timeout: float) -> bool:
    """Whether /health answers within `timeout` seconds."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def generating(server) -> bool:
    """Whether the server is running a generation, by its /metrics."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        return re.search(rb"^loupe_generations_in_progress [1-9]", response.read(), re.M) is not None


@pytest.mark.slow  # real gunicorn and nginx
def test_stalled_uploads_hold_nginx_not_loupe(server, front):
    sockets = stall_uploads(front.port)
    try:
        time.sleep(1)  # time for nginx to pass on anything it would
        assert health_within(front.url, 5)
        _, response = post(front.port, hello(), "127.0.0.10")
        assert response.status == 200 and json.load(response)["usage"]["completion_tokens"] == 1
    finally:
        for sock in sockets:
            sock.close()
    # The same clients sent straight to gunicorn take every thread it has: what nginx spares it.
    sockets = stall_uploads(server.port)
    try:
        time.sleep(1)
        assert not health_within(server.url, 3)
    finally:
        for sock in sockets:
            sock.close()
    wait_until(lambda: health_within(server.url, 1), timeout=30, message="gunicorn to serve again")


@pytest.mark.slow  # real gunicorn and nginx
def test_a_stream_comes_through_as_it_is_written(server, front):
    # A long answer holds the one batch place, so the stream below waits in the queue: Loupe has written only its
    # first frame (": accepted"), which must reach the client now, not with the rest at the end.
    blocker = http.client.HTTPConnection("127.0.0.1", front.port, timeout=60, source_address=("127.0.0.20", 0))
    long_body = {"messages": [{"role": "user", "content": "Go on"}], "max_tokens": LONG, "ignore_eos": True}
    blocker.request("POST", "/v1/chat/completions", json.dumps(long_body), {"Content-Type": "application/json"})
    wait_until(lambda: generating(server), message="the long answer to be generating")
    stream_body = {**hello(5), "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    connection, response = post(front.port, stream_body, "127.0.0.21", {"X-Request-ID": "front-stream-1"})
    assert response.status == 200 and response.headers["X-Request-ID"] == "front-stream-1"
    assert response.readline() == b": accepted\n"
    assert generating(server) and server.health()["queue_depth"] == 1, "the stream must still be waiting"
    blocker.sock.close()  # nginx closes its connection to Loupe, which stops the long answer
    blocker.close()
    events = [line for line in response.read().decode().splitlines() if line.startswith("data: ")]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert events[-1] == "data: [DONE]"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 5
    connection.close()
    # nginx's line and Loupe's line name the same request (each is written once the request has ended).
    wait_until(lambda: "request_id=front-stream-1" in front.access_log(), message="nginx's access line")
    wait_until(lambda: "request_id=front-stream-1" in server.log(), message="Loupe's access line")


@pytest.mark.slow  # real gunicorn and nginx
def test_nginx_refuses_a_body_over_loupes_limit_in_the_envelope(front):
    connection = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
    connection.putrequest("POST", "/v1/chat/completions")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(Settings().max_request_bytes + 1))
    connection.endheaders()  # no body: nginx answers from the length alone
    response = connection.getresponse()
    assert response.status == 413 and response.headers["Content-Type"] == "application/json"
    assert json.load(response)["error"]["code"] == "payload_too_large"
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


@pytest.mark.slow  # real gunicorn and nginx
def test_the_rate_limit_counts_each_client_by_its_own_address(server, front):
    for _ in range(3):
        _, response = post(front.port, hello(), "127.0.0.30")
        assert response.status == 200
    _, refused = post(front.port, hello(), "127.0.0.30", {"X-Forwarded-For": "10.9.9.9"})  # a forged address
    assert refused.status == 429 and refused.headers["Retry-After"]
    assert json.load(refused)["error"]["type"] == "rate_limit_error"
    _, other = post(front.port, hello(), "127.0.0.31")  # another client through the same nginx
    assert other.status == 200
    with urllib.request.urlopen(front.url + "/inferences?limit=1", timeout=10) as response:
        latest = json.load(response)["data"][0]["id"]
    with urllib.request.urlopen(f"{front.url}/inferences/{latest}", timeout=10) as response:
        assert json.load(response)["client"] == "127.0.0.31"  # the history too knows the client, not nginx
