"""The history through the real gunicorn server: it survives restarts, disconnects and SIGKILL."""

import base64
import collections
import http.client
import json
import random
import re
import sqlite3
import subprocess
import threading
import time
import urllib.request

import pytest
from PIL import Image

from loupe.history.store import HistoryStore
from loupe.settings import Settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow  # each test starts real servers


def call(server, method, path, body=None, headers=None, timeout=30):
    """(status, headers, body bytes) of one request."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def chat_body(image: bytes, **fields) -> str:
    url = "data:image/jpeg;base64," + base64.b64encode(image).decode()
    return json.dumps(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": "What is this?"},
                    ],
                }
            ],
            **fields,
        }
    )


def jpeg(tmp_path, seed=0) -> bytes:
    path = tmp_path / f"photo{seed}.jpg"
    Image.effect_noise((96 + seed, 64), 50).convert("RGB").save(path, "JPEG")
    return path.read_bytes()


def test_a_record_and_its_image_survive_a_restart(live_server, tmp_path):
    # A dropped stream waits STREAM_RESUME_SECONDS for its client before it is stopped and recorded.
    env = {"DATA_DIR": str(tmp_path / "data"), "MAX_NEW_TOKENS": "4", "THREADS": "4", "STREAM_RESUME_SECONDS": "1"}
    server = live_server(**env)
    image = jpeg(tmp_path)
    status, _, body = call(
        server, "POST", "/v1/chat/completions", chat_body(image, max_tokens=3), {"Content-Type": "application/json"}
    )
    assert status == 200, body
    answer = json.loads(body)["choices"][0]["message"]["content"]
    # A stream the client drops is recorded as cancelled by the real server too.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request(
        "POST",
        "/v1/chat/completions",
        chat_body(image, max_tokens=2000, ignore_eos=True, stream=True),
        {"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    while b"assistant" not in response.fp.readline():  # until the model is generating
        pass
    connection.sock.close()
    connection.close()
    wait_until(
        lambda: len(json.loads(call(server, "GET", "/inferences")[2])["data"]) >= 2,
        timeout=30,
        interval=0.1,
        message="both records to be written",
    )
    server.stop()

    again = live_server(**env)
    status, _, body = call(again, "GET", "/inferences")
    records = json.loads(body)["data"]
    assert status == 200 and [r["status"] for r in records] == ["cancelled", "completed"]
    status, _, body = call(again, "GET", records[1]["url"])
    record = json.loads(body)
    assert record["answer"] == answer and record["images"][0]["mime"] == "image/jpeg"
    status, headers, fetched = call(again, "GET", record["images"][0]["url"])
    assert status == 200 and fetched == image and headers["Content-Type"] == "image/jpeg"


def hammer(server, images, stop: threading.Event, outcomes: list):
    """Send requests (whole, streamed, abandoned streams) until stopped or the server dies."""
    rng = random.Random()
    while not stop.is_set():
        image = rng.choice(images)
        stream = rng.random() < 0.5
        try:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            connection.request(
                "POST",
                "/v1/chat/completions",
                chat_body(image, max_tokens=rng.randint(1, 6), stream=stream),
                {"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            response.read(rng.randint(1, 400)) if stream and rng.random() < 0.5 else response.read()
            outcomes.append(response.status)
            connection.close()
        except (OSError, http.client.HTTPException):  # the server was killed under us
            outcomes.append("dead")
            return


def test_sigkill_during_requests_leaves_a_consistent_history(live_server, tmp_path):
    data_dir = tmp_path / "data"
    env = {"DATA_DIR": str(data_dir), "MAX_NEW_TOKENS": "6", "THREADS": "8", "QUEUE_SIZE": "4"}
    images = [jpeg(tmp_path, seed) for seed in range(4)]
    outcomes: list = []
    began = time.monotonic()
    for _ in range(3):  # each round is a server start (~5-10 s): three keep the test under a minute
        server = live_server(**env)
        stop = threading.Event()
        threads = [threading.Thread(target=hammer, args=(server, images, stop, outcomes)) for _ in range(6)]
        [t.start() for t in threads]
        time.sleep(random.uniform(1.0, 2.0))  # not a poll: the traffic runs a while before the kill
        server.kill()  # mid-request: workers and master at once
        stop.set()
        [t.join(15) for t in threads]
    # The kills landed among real traffic: answers (and, on a slow machine, 429s from a full queue).
    assert outcomes.count(200) >= 1 and "dead" in outcomes, collections.Counter(outcomes)
    print(f"crash test: {collections.Counter(outcomes)} in {time.monotonic() - began:.0f} s")

    with sqlite3.connect(data_dir / "history.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        linked = {sha for (sha,) in db.execute("SELECT sha256 FROM inference_images")}
        counted = db.execute("SELECT count(*) FROM inferences").fetchone()[0]
        print(f"crash test: {counted} records, {len(linked)} distinct images")
    store = HistoryStore.open(Settings.from_mapping({"DATA_DIR": str(data_dir)}))
    assert counted >= 1 and store.missing_images() == []  # traffic was recorded, and nothing is missing
    assert all(store.images.exists(sha) for sha in linked)
    store.close()

    server = live_server(**env)  # and the restarted server serves every record's images
    listing = json.load(urllib.request.urlopen(f"{server.url}/inferences?limit=100"))
    assert listing["data"]
    for summary in listing["data"][:20]:
        status, _, fetched = call(server, "GET", summary["thumbnail_url"])
        assert status == 200 and fetched in images


def test_documented_history_examples_work_as_written(live_server, tmp_path, docs_text):
    server = live_server(DATA_DIR=str(tmp_path / "data"), MAX_NEW_TOKENS="4")
    (tmp_path / "photo.jpg").write_bytes(jpeg(tmp_path))
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", docs_text, re.S) if "localhost:8000/inferences" in b]
    assert len(blocks) == 3
    outputs = []
    for block in blocks:
        command = block.replace("localhost:8000", server.url.removeprefix("http://"))
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    created = json.loads(outputs[0])
    assert created["object"] == "inference" and created["status"] == "completed"
    assert [r["id"] for r in json.loads(outputs[1])["data"]] == [created["id"]]
    record, deleted = [json.loads(line) for line in outputs[2].strip().split("\n")]
    assert record["id"] == created["id"] and deleted == {
        "id": created["id"],
        "object": "inference.deleted",
        "deleted": True,
    }
    assert call(server, "GET", f"/inferences/{created['id']}")[0] == 404
