"""The real gunicorn server on the tiny model: the openai client, the documentation's examples, disconnects."""

import base64
import http.client
import json
import re
import shutil
import subprocess
import sys
import urllib.request

import jsonschema
import pytest
from openai import OpenAI
from PIL import Image

from tests.support.live_server import ROOT, LiveServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow  # real gunicorn servers

LONG = 100_000


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    # LONG tokens take the tiny model far longer than the hang-up tests wait (it makes about 2,000 a second).
    live = LiveServer(
        {
            "MODEL_ID": str(tiny_model_dir),
            "MAX_NEW_TOKENS": "8",
            "THREADS": "4",
            "MAX_NEW_TOKENS_LIMIT": str(LONG),
            "MAX_CONTEXT_TOKENS": str(LONG + 100),
            # A dropped stream's generation waits this long for its client to resume (test_resume_server.py).
            "STREAM_RESUME_SECONDS": "1",
        },
        tmp_path_factory.mktemp("server") / "server.log",
    )
    yield live.start()
    live.stop()


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.effect_noise((120, 90), 60).convert("RGB").save(path, "JPEG")
    return path


def image_message(path):
    url = "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "What is in this picture?"},
            ],
        }
    ]


def test_openai_client_text_image_and_stream(server, photo):
    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == [server.health()["model"]]
    text = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert text.choices[0].message.role == "assistant" and text.usage.completion_tokens <= 4
    image = client.chat.completions.create(model="x", messages=image_message(photo), max_tokens=3)
    assert image.usage.prompt_tokens > text.usage.prompt_tokens
    stream = client.chat.completions.create(
        model="x",
        messages=image_message(photo),
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 5


def test_openai_client_sees_errors_as_exceptions(server):
    import openai

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], temperature=9)
    assert caught.value.body["param"] == "temperature"


def doc_blocks(language, text):
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_readme_curl_examples_work_as_written(server, photo, docs_text):
    examples = [b for b in doc_blocks("bash", docs_text) if "localhost:8000/v1/chat/completions" in b]
    examples = [b for b in examples if "schema" not in b]  # JSON answers: the next test
    assert len(examples) == 8  # the last resumes a stream; test_resume_server.py checks it more closely
    for example in examples:
        command = example.replace("localhost:8000", server.url.removeprefix("http://"))
        result = subprocess.run(["bash", "-c", command], cwd=photo.parent, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        if "stream=true" in example:
            assert result.stdout.rstrip().endswith("data: [DONE]")
            continue
        body = json.loads(result.stdout)
        assert body["object"] == "chat.completion", body
        # The image budget examples: the photo is seen within the bounds they set.
        if '"detail": "low"' in example:
            assert 0 < body["timings"]["image_tokens"] <= 65536 // 1024
        if "max_pixels=200704" in example:
            assert 0 < body["timings"]["image_tokens"] <= 200704 // 1024
        # Whatever random weights write, boxes, if any, are in the photo's pixels (120x90).
        for box in body["choices"][0]["message"].get("boxes", []):
            x1, y1, x2, y2 = box["bbox"] if "bbox" in box else box["point"] * 2
            assert box["image"] == 0 and 0 <= x1 <= x2 <= 120 and 0 <= y1 <= y2 <= 90


def test_readme_openapi_example_works_as_written(server, docs_text):
    [example] = [b for b in doc_blocks("bash", docs_text) if "localhost:8000/openapi.json" in b]
    command = example.replace("localhost:8000", server.url.removeprefix("http://"))
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert {"/v1/chat/completions", "/inferences", "/health"} <= set(result.stdout.split())


def test_readme_json_answer_examples_work_as_written(server, photo, docs_text):
    examples = [b for b in doc_blocks("bash", docs_text) if "localhost:8000/v1/chat/completions" in b and "schema" in b]
    assert len(examples) == 2
    shutil.copytree(ROOT / "static" / "schemas", photo.parent / "static" / "schemas")  # run from the project folder
    for example in examples:
        command = example.replace("localhost:8000", server.url.removeprefix("http://"))
        result = subprocess.run(["bash", "-c", command], cwd=photo.parent, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        body = json.loads(result.stdout)
        assert body["choices"][0]["finish_reason"] == "stop", body
        if "schema=@" in example:
            schema = json.loads((ROOT / re.search(r"schema=@(\S+)", example).group(1)).read_text())
        else:
            schema = json.loads(re.search(r"-d '(.*)'", example, re.S).group(1))["response_format"]["json_schema"]
            schema = schema["schema"]
        jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), schema)


def test_readme_openai_example_works_as_written(server, photo, docs_text):
    [example] = doc_blocks("python", docs_text)
    script = example.replace("http://localhost:8000/v1", server.url + "/v1")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=photo.parent, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def cancelled_generations(server) -> list[int]:
    """Tokens made by each generation the server's log says was cancelled, in order."""
    return [int(n) for n in re.findall(r"generation cancelled after (\d+) tokens", server.log())]


def next_cancelled_generation(server, before: list[int], timeout: float = 30) -> int:
    """Wait for one more cancelled generation than `before`; returns how many tokens it had made."""
    cancelled = wait_until(
        lambda: cancelled_generations(server)[len(before) :],
        timeout,
        interval=0.1,
        message="a generation to be cancelled",
    )
    return cancelled[0]


def generating(server) -> bool:
    """Whether the server is running a generation, by its /metrics."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        return re.search(rb"^loupe_generations_in_progress [1-9]", response.read(), re.M) is not None


def test_a_client_disconnect_stops_the_generation(server):
    body = json.dumps(
        {"messages": [{"role": "user", "content": "Go on"}], "max_tokens": LONG, "ignore_eos": True, "stream": True}
    )
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    while b"assistant" not in response.fp.readline():  # the role chunk: the model is generating
        pass
    before = cancelled_generations(server)
    connection.sock.close()
    connection.close()
    assert next_cancelled_generation(server, before) < LONG
    assert server.health()["status"] == "ok"


def test_a_client_that_hangs_up_on_a_whole_answer_stops_the_generation(server):
    """Non-streamed, nothing is written until the end: the server must notice the closed socket itself."""
    before = cancelled_generations(server)
    body = json.dumps({"messages": [{"role": "user", "content": "Go on"}], "max_tokens": LONG, "ignore_eos": True})
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    wait_until(lambda: generating(server), message="the model to be generating")  # (and far from LONG tokens)
    connection.sock.close()
    connection.close()
    assert next_cancelled_generation(server, before) < LONG
    assert "the client closed its connection before the answer was ready" in server.log()
    # The access line is written when the request ends, which can be a moment after the engine's own line.
    wait_until(
        lambda: re.search(r"route=/v1/chat/completions status=499 .*outcome=cancelled", server.log()),
        message="the cancelled request's access line",
    )
    history = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    history.request("GET", "/inferences?limit=1")
    assert json.load(history.getresponse())["data"][0]["status"] == "cancelled"
    assert server.health()["status"] == "ok"


def test_without_network_or_a_local_copy_the_server_still_serves_and_says_why(live_server, tmp_path):
    server = live_server(ready_status="error", MODEL_ID="Qwen/Qwen3-VL-2B-Instruct", HF_HOME=str(tmp_path / "hf"))
    health = server.health()
    assert "set MODEL_ID to that directory" in health["error"]
    request = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    request.request(
        "POST",
        "/v1/chat/completions",
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        {"Content-Type": "application/json"},
    )
    response = request.getresponse()
    assert response.status == 503
    assert json.load(response)["error"]["type"] == "unavailable_error"


def test_concurrent_streams_each_get_their_whole_answer(server):
    import concurrent.futures

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")

    def ask(n):
        stream = client.chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": f"Question {n}"}],
            max_tokens=20 + n,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        return list(stream)[-1].usage.completion_tokens

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(ask, range(4))) == [20, 21, 22, 23]
