"""BACKEND=openai in front of a real third-party engine: llama.cpp's server (PyPI's llama-cpp-python) on a tiny GGUF.

Skipped where llama-cpp-python[server] is not installed: it builds llama.cpp from source, which takes
longer than CI's budget allows on every run (see the README, "In front of an existing engine").
"""

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.support.live_server import LiveServer, free_port
from tests.support.waiting import wait_until

pytest.importorskip(
    "llama_cpp.server", reason="llama-cpp-python[server] is not installed (pip install 'llama-cpp-python[server]')"
)
pytest.importorskip("gguf", reason="the gguf package, which writes the tiny model, is not installed")

from tests.support.tiny_gguf import build_tiny_gguf  # after the skip: it needs gguf

pytestmark = pytest.mark.slow  # real servers: llama.cpp's and gunicorn


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """llama.cpp's server, through llama-cpp-python, serving a tiny random GGUF on a loopback port: its URL."""
    folder = tmp_path_factory.mktemp("llama-cpp")
    model = build_tiny_gguf(folder / "tiny.gguf")
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "tiny-llama"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--verbose", "False"]
    log = (folder / "llama.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"llama.cpp's server exited:\n{(folder / 'llama.log').read_text()}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2):
                return True
        except OSError:
            return False

    try:
        wait_until(up, 120, interval=0.3, message="llama.cpp's server to answer")
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def front(llama, tmp_path_factory):
    live = LiveServer(
        {"BACKEND": "openai", "BACKEND_URL": llama + "/v1", "THREADS": "4"},
        tmp_path_factory.mktemp("front-of-llama") / "front.log",
    )
    yield live.start()
    live.stop()


JSON = {"Content-Type": "application/json"}
# Greedy, and nothing else to tell apart: the same answer whoever asks.
GREEDY = {"temperature": 0, "top_p": 1, "presence_penalty": 0, "max_tokens": 12}


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def test_loupe_in_front_of_llama_cpp_gives_its_answer(llama, front):
    body = {"messages": [{"role": "user", "content": "Hello there, what is the weather?"}], **GREEDY}
    direct, through = post(llama, body), post(front.url, body)
    answer = direct["choices"][0]["message"]["content"]
    assert answer and through["choices"][0]["message"]["content"] == answer
    assert through["model"] == "tiny-llama" and front.health()["model"] == "tiny-llama"
    assert through["usage"]["completion_tokens"] == direct["usage"]["completion_tokens"]  # one piece a token
    # Loupe cannot count a prompt's tokens without the model: it reports the engine's stream's usage, where the
    # engine sends one (llama-cpp-python's server does not, whatever stream_options say), else 0.
    reported = streamed_usage(llama, body)
    assert through["usage"]["prompt_tokens"] == (reported["prompt_tokens"] if reported else 0)


def streamed_usage(url: str, body: dict) -> dict | None:
    """The usage the engine's own stream reports when asked for it, as Loupe asks; None if it reports none."""
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    request = urllib.request.Request(url + "/v1/chat/completions", json.dumps(streamed).encode(), JSON)
    with urllib.request.urlopen(request, timeout=120) as response:
        frames = [json.loads(line[6:]) for line in response.read().decode().split("\n") if line.startswith("data: {")]
    return next((frame["usage"] for frame in frames if frame.get("usage")), None)


def test_llama_cpps_stream_passes_through_piece_by_piece(llama, front):
    body = {"messages": [{"role": "user", "content": "Tell me a story"}], **GREEDY}
    direct = post(llama, body)["choices"][0]["message"]["content"]
    request = urllib.request.Request(
        front.url + "/v1/chat/completions",
        json.dumps({**body, "stream": True}).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        frames = [line[6:] for line in response.read().decode().split("\n") if line.startswith("data: {")]
    pieces = [json.loads(f)["choices"][0]["delta"].get("content") or "" for f in frames]
    assert "".join(pieces) == direct and sum(1 for piece in pieces if piece) > 1


def test_a_request_past_llama_cpps_context_is_a_502_that_says_what_to_try(llama, front):
    # llama-cpp-python's server refuses it with a 400 when not streaming, but a stream, which Loupe always
    # asks for, it opens with 200 and closes empty (the reason only in its log): Loupe can say only that.
    body = {"messages": [{"role": "user", "content": "word " * 2000}], **GREEDY}
    with pytest.raises(urllib.error.HTTPError) as direct:
        post(llama, body)
    assert direct.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as through:
        post(front.url, body)
    error = json.load(through.value)["error"]
    assert through.value.code == 502 and error["code"] == "bad_gateway"
    assert "closed it without a word" in error["message"] and "shorten the conversation" in error["message"]
