"""Two Loupe instances behind Debian's nginx (deploy/nginx), sharing PostgreSQL, a DATA_DIR and Redis.

Everything real and on loopback: history written through either instance is read through both, the rate
limit is one, a follow-up goes where its image was read, and an instance killed mid-run loses no record.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

from loupe.history.image_store import ImageStore
from loupe.history.schema import make_engine
from loupe.history.store import HistoryStore
from tests.support.chat import data_url, png
from tests.support.live_server import LiveServer
from tests.support.nginx import Nginx
from tests.support.redis_server import running_redis
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

RATE_LIMIT = 10
CHAT = "/v1/chat/completions"


@dataclass
class Cluster:
    """The instances, nginx in front, and what they share."""

    instances: list[LiveServer]
    nginx: Nginx
    database_url: str
    data_dir: Path
    redis_uri: str

    def served_by(self, request_id: str) -> int:
        """Which instance logged the request with this id (its line is written when the response closes)."""
        found: list[int] = []

        def logged() -> bool:
            found[:] = [n for n, i in enumerate(self.instances) if f"request_id={request_id} " in i.log()]
            return bool(found)

        wait_until(logged, 10, interval=0.05, message=f"an instance to log request {request_id}")
        assert len(found) == 1, f"request {request_id} was logged by instances {found}"
        return found[0]

    def instance_of(self, key: str) -> int:
        """The instance nginx sends conversation `key` to, found with a request that costs no generation."""
        rid = uuid.uuid4().hex
        response = requests.get(
            self.nginx.url + "/v1/models", headers={"X-Loupe-Conversation": key, "X-Request-ID": rid}, timeout=10
        )
        assert response.status_code == 200
        return self.served_by(rid)

    def keys(self) -> tuple[str, str]:
        """Two conversation keys, the first routed to instance 0, the second to instance 1."""
        found: dict[int, str] = {}
        for n in range(40):
            found.setdefault(self.instance_of(f"conversation-{n}"), f"conversation-{n}")
            if len(found) == 2:
                return found[0], found[1]
        raise AssertionError(f"40 keys all went to one instance:\n{self.nginx.access_log()}")

    def store(self) -> HistoryStore:
        """The shared history, opened from the test as a third reader."""
        return HistoryStore(make_engine(self.database_url), ImageStore(self.data_dir / "images"))


@pytest.fixture(scope="module")
def cluster(postgres_server, tiny_model_dir, tmp_path_factory) -> Iterator[Cluster]:
    """PostgreSQL (a fresh database), Redis, two gunicorn instances of the tiny model and nginx in front."""
    database = f"instances{uuid.uuid4().hex[:8]}"
    postgres_server.sql(f"CREATE DATABASE {database}", database="postgres")
    database_url = postgres_server.url.rsplit("/", 1)[0] + f"/{database}"
    data_dir = tmp_path_factory.mktemp("shared-data")
    logs = tmp_path_factory.mktemp("instance-logs")
    with running_redis(tmp_path_factory.mktemp("redis")) as redis_uri:
        env = {
            "MODEL_ID": str(tiny_model_dir),
            "DATABASE_URL": database_url,
            "DATA_DIR": str(data_dir),
            "RATE_LIMIT": f"{RATE_LIMIT}/minute",
            "RATE_LIMIT_STORAGE": redis_uri,
            "MAX_NEW_TOKENS": "64",
            "MAX_NEW_TOKENS_LIMIT": "2000",
            "TRUSTED_PROXIES": "1",  # nginx: the rate limit counts the client, here every test request's 127.0.0.1
        }
        instances = [LiveServer(env, logs / f"instance{n}.log") for n in range(2)]
        nginx = None
        try:
            for instance in instances:
                instance.start()
            nginx = Nginx(tmp_path_factory.mktemp("nginx"), [f"127.0.0.1:{i.port}" for i in instances]).start()
            yield Cluster(instances, nginx, database_url, data_dir, redis_uri)
        finally:
            if nginx is not None:
                nginx.stop()
            for instance in instances:
                instance.stop()


@pytest.fixture(autouse=True)
def fresh_limits(cluster) -> None:
    """Each test starts with the shared rate-limit counters empty (they live in Redis alone)."""
    redis.Redis.from_url(cluster.redis_uri).flushdb()


def ask(text: str, image: bytes | None = None, **fields) -> dict:
    content: list[dict] = [{"type": "text", "text": text}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": data_url(image)}})
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, **fields}


def post(cluster: Cluster, path: str, body: dict, key: str, **kwargs) -> tuple[requests.Response, str]:
    """POST through nginx with a conversation key and a fresh request id; the response and that id."""
    rid = uuid.uuid4().hex
    headers = {"X-Loupe-Conversation": key, "X-Request-ID": rid}
    return requests.post(cluster.nginx.url + path, json=body, headers=headers, timeout=120, **kwargs), rid


def test_history_written_through_either_instance_is_read_through_both(cluster):
    records = []
    for key, image in zip(cluster.keys(), (png(60, 40), png(50, 70)), strict=True):
        response, rid = post(cluster, "/inferences", ask("What is it?", image, max_tokens=2), key)
        assert response.status_code == 201, response.text
        records.append((cluster.served_by(rid), response.json()["id"], image))
    assert sorted(n for n, _, _ in records) == [0, 1]
    for instance in cluster.instances:  # each instance reads both records, and both images, directly
        for _, record_id, image in records:
            record = requests.get(f"{instance.url}/inferences/{record_id}", timeout=10)
            assert record.status_code == 200 and record.json()["id"] == record_id
            assert requests.get(f"{instance.url}/inferences/{record_id}/images/0", timeout=10).content == image
    listed = requests.get(cluster.nginx.url + "/inferences?limit=100", timeout=10).json()
    assert {r["id"] for r in listed["data"]} >= {record_id for _, record_id, _ in records}


def test_the_rate_limit_is_one_across_instances(cluster):
    first, second = cluster.keys()
    remaining = []
    for n in range(RATE_LIMIT):
        key = (first, second)[n % 2]  # alternate: every other request on the other instance
        response, rid = post(cluster, CHAT, ask("Hi", max_tokens=1), key)
        assert response.status_code == 200, response.text
        assert cluster.served_by(rid) == n % 2
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert remaining == list(range(RATE_LIMIT - 1, -1, -1))  # one count, not one per instance
    for key in (first, second):
        refused, _ = post(cluster, CHAT, ask("Hi", max_tokens=1), key)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert refused.json()["error"]["type"] == "rate_limit_error"


def test_a_follow_up_goes_to_the_instance_that_read_its_image(cluster):
    home, elsewhere = cluster.keys()
    image = png(160, 120)
    first, first_rid = post(cluster, CHAT, ask("Describe this image.", image, max_tokens=4), home)
    assert first.status_code == 200, first.text
    assert first.headers["X-Loupe-Conversation"] == home
    answer = first.json()["choices"][0]["message"]["content"]
    assert first.json()["timings"]["cached_tokens"] == 0
    follow_up = ask("Describe this image.", image, max_tokens=4)
    follow_up["messages"] += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And the colours?"}]

    again, again_rid = post(cluster, CHAT, follow_up, home)
    assert again.status_code == 200, again.text
    assert cluster.served_by(again_rid) == cluster.served_by(first_rid) == 0
    timings = again.json()["timings"]
    assert timings["cached_tokens"] >= timings["image_tokens"] > 0  # the image was not read again

    # The same follow-up under a key that routes to the other instance: answered, but read from scratch.
    moved, moved_rid = post(cluster, CHAT, follow_up, elsewhere)
    assert moved.status_code == 200 and cluster.served_by(moved_rid) == 1
    assert moved.json()["timings"]["cached_tokens"] == 0


def test_without_a_key_nginx_makes_one_and_loupe_hands_it_back(cluster):
    rid = uuid.uuid4().hex
    response = requests.post(
        cluster.nginx.url + CHAT, json=ask("Hi", max_tokens=1), headers={"X-Request-ID": rid}, timeout=60
    )
    assert response.status_code == 200
    key = response.headers["X-Loupe-Conversation"]
    assert len(key) == 32 and key != rid  # nginx's own $request_id
    # nginx writes its access line once the response is over, which can be just after the client has it.
    wait_until(lambda: f"conversation={key} " in cluster.nginx.access_log(), 10, message="nginx's access line")
    home = cluster.served_by(rid)
    again, again_rid = post(cluster, CHAT, ask("Hi", max_tokens=1), key)  # sent back: the same instance
    assert again.status_code == 200 and cluster.served_by(again_rid) == home


def stream(cluster: Cluster, key: str, text: str, tokens: int, started: threading.Event, results: list) -> None:
    """One streamed answer through nginx: records (key, request id, finished whole?) in `results`."""
    body = ask(text, png(64, 48), max_tokens=tokens, ignore_eos=True, stream=True)
    rid, done = uuid.uuid4().hex, False
    try:
        response, rid = post(cluster, CHAT, body, key, stream=True)
        for line in response.iter_lines():
            started.set()
            if line == b"data: [DONE]":
                done = True
            elif line.startswith(b"data: ") and "error" in json.loads(line[6:]):
                break
    except requests.RequestException:
        pass  # the instance died under it: the stream breaks, which is the point
    finally:
        started.set()
        results.append((key, rid, done))


def test_killing_an_instance_mid_run_loses_no_record_and_the_next_requests_succeed(cluster):
    survivor, doomed = cluster.keys()
    before, rid = post(cluster, "/inferences", ask("Before", png(30, 30), max_tokens=2), doomed)
    assert before.status_code == 201 and cluster.served_by(rid) == 1
    results: list = []
    marker = f"Describe this image ({uuid.uuid4().hex})."
    started = [threading.Event() for _ in range(4)]
    # The doomed instance's answers are long enough to be cut by the kill; the survivor's end soon after.
    runs = ((doomed, 2000), (doomed, 2000), (survivor, 48), (survivor, 48))
    threads = [
        threading.Thread(target=stream, args=(cluster, key, marker, tokens, event, results))
        for (key, tokens), event in zip(runs, started, strict=True)
    ]
    for thread in threads:
        thread.start()
    try:
        assert all(event.wait(60) for event in started)
        cluster.instances[1].kill()
        for thread in threads:
            thread.join(120)
        # The survivor's answers all came whole, the doomed one's were cut; each whole answer has its record.
        assert sorted((key == survivor, done) for key, _, done in results) == [(False, False)] * 2 + [(True, True)] * 2
        store = cluster.store()
        completed = [
            r for r in store.page(limit=1000, status="completed").records if marker in json.dumps(r["messages"])
        ]
        assert len(completed) == 2
        assert store.get(before.json()["id"]) is not None  # written before the kill, still there
        assert store.missing_images() == []
        # The doomed instance's conversations now go to the survivor: slower (read again), still answered.
        for _ in range(3):
            after, after_rid = post(cluster, CHAT, ask("After", png(30, 30), max_tokens=2), doomed)
            assert after.status_code == 200, after.text
            assert cluster.served_by(after_rid) == 0
        recorded = requests.get(f"{cluster.instances[0].url}/inferences/{before.json()['id']}", timeout=10)
        assert recorded.status_code == 200
        store.close()
    finally:
        cluster.instances[1].start()  # the other tests of the module want both
