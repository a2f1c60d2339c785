"""The history over HTTP (Flask test client, tiny model): recording, listing, images, delete, POST /inferences."""

import base64
import io
import threading
import uuid
from pathlib import Path

import pytest

from app import create_app
from loupe.history.image_store import sha256_of
from loupe.web.services import services
from tests.support.chat import ask, data_url, png, sse_chunks
from tests.support.fakes import ScriptedBackend
from tests.support.waiting import wait_until


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def history_client(app, settings, data_dir):
    """A client of an app with its own empty history, sharing the session's loaded engine."""
    application = create_app(settings.replace(data_dir=str(data_dir)), engine=services(app).engine)
    yield application.test_client()
    services(application).history.close()


def only_record(client):
    listing = client.get("/inferences").get_json()
    assert len(listing["data"]) == 1, listing
    return client.get(listing["data"][0]["url"]).get_json()


def test_a_chat_with_an_image_is_recorded_with_its_original_bytes(history_client, data_dir):
    image = png(70, 50)
    response = history_client.post(
        "/v1/chat/completions", json=ask("What is it?", data_url(image), max_tokens=3, temperature=0, seed=4)
    )
    assert response.status_code == 200
    answer = response.get_json()
    summary = history_client.get("/inferences").get_json()["data"][0]
    assert summary["status"] == "completed" and summary["question"] == "What is it?"
    assert summary["image_count"] == 1 and summary["thumbnail_url"] == f"/inferences/{summary['id']}/images/0"
    record = history_client.get(summary["url"]).get_json()
    assert record["answer"] == answer["choices"][0]["message"]["content"]
    assert record["usage"] == answer["usage"] and record["timings"] == answer["timings"]
    assert record["finish_reason"] == answer["choices"][0]["finish_reason"] and record["error"] is None
    assert record["client"] == "127.0.0.1" and record["stream"] is False
    assert record["sampling"]["temperature"] == 0 and record["sampling"]["seed"] == 4
    assert record["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": 0, "detail": "high", "url": f"/inferences/{record['id']}/images/0"},
                {"type": "text", "text": "What is it?"},
            ],
        }
    ]
    assert record["images"] == [
        {
            "index": 0,
            "sha256": sha256_of(image),
            "mime": "image/png",
            "bytes": len(image),
            "width": 70,
            "height": 50,
            "url": f"/inferences/{record['id']}/images/0",
        }
    ]
    for url in (record["images"][0]["url"], f"/inferences/{record['id']}/image"):
        fetched = history_client.get(url)
        assert fetched.status_code == 200 and fetched.data == image and fetched.mimetype == "image/png"
        assert fetched.headers["X-Content-Type-Options"] == "nosniff"
        assert "private" in fetched.headers["Cache-Control"] and fetched.headers["ETag"] == f'"{sha256_of(image)}"'
    again = history_client.get(record["images"][0]["url"], headers={"If-None-Match": sha256_of(image)})
    assert again.status_code == 304
    database = (data_dir / "history.db").read_bytes() + (data_dir / "history.db-wal").read_bytes()
    assert base64.b64encode(image)[:40] not in database  # images are files, never base64 in the database


def test_urls_in_records_carry_the_mount_prefix(history_client):
    """Behind a proxy that mounts the app under a prefix (SCRIPT_NAME), the URLs it hands out work there."""
    mounted = {"base_url": "http://localhost/loupe/"}
    response = history_client.post(
        "/inferences",
        data={"prompt": "Hi", "max_tokens": "2", "image": (io.BytesIO(png(30, 30)), "p.png")},
        content_type="multipart/form-data",
        **mounted,
    )
    record = response.get_json()
    assert response.headers["Location"] == f"/loupe/inferences/{record['id']}"
    assert record["images"][0]["url"] == f"/loupe/inferences/{record['id']}/images/0"
    summary = history_client.get("/inferences", **mounted).get_json()["data"][0]
    assert summary["url"] == f"/loupe/inferences/{record['id']}"
    assert summary["thumbnail_url"] == f"/loupe/inferences/{record['id']}/images/0"
    assert history_client.get(summary["url"].removeprefix("/loupe"), **mounted).get_json() == record


def test_the_same_image_twice_is_stored_once(history_client, data_dir):
    image = png()
    response = history_client.post(
        "/v1/chat/completions",
        content_type="multipart/form-data",
        data={
            "image": [(io.BytesIO(image), "a.png"), (io.BytesIO(image), "b.png")],
            "prompt": "Same?",
            "max_tokens": "2",
        },
    )
    assert response.status_code == 200
    record = only_record(history_client)
    assert [i["sha256"] for i in record["images"]] == [sha256_of(image)] * 2
    assert [p.name for p in (data_dir / "images").glob("*/*")] == [sha256_of(image)]


def test_a_completed_stream_is_recorded_with_the_streamed_text(history_client):
    chunks = sse_chunks(
        history_client.post("/v1/chat/completions", json=ask(max_tokens=4, ignore_eos=True, stream=True))
    )
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    record = only_record(history_client)
    assert (record["status"], record["stream"], record["answer"]) == ("completed", True, text)
    assert record["usage"]["completion_tokens"] == 4


def test_a_stream_the_client_closes_and_does_not_resume_is_recorded_as_cancelled(app, settings, data_dir):
    # Once STREAM_RESUME_SECONDS pass with nobody reading it, the generation stops and its record is written.
    settings = settings.replace(data_dir=str(data_dir), stream_resume_seconds=0.3)
    application = create_app(settings, engine=services(app).engine)
    history_client = application.test_client()
    stream = history_client.post(
        "/v1/chat/completions", json=ask(max_tokens=2000, ignore_eos=True, stream=True), buffered=False
    )
    frames = iter(stream.response)
    assert next(frames).startswith(b":")  # accepted
    assert b"assistant" in next(frames)
    next(frames)
    stream.close()  # the client goes away
    wait_until(lambda: history_client.get("/inferences").get_json()["data"], message="the record")
    record = only_record(history_client)
    assert record["status"] == "cancelled" and record["finish_reason"] is None and record["usage"] is None
    services(application).history.close()


def test_a_failed_generation_is_recorded_with_the_error_the_client_saw(settings, data_dir, engines):
    engine = engines.ready(ScriptedBackend(["a", "b"], fail_after=1), queue_size=1)
    client = create_app(settings.replace(data_dir=str(data_dir)), engine=engine).test_client()
    response = client.post("/v1/chat/completions", json=ask())
    assert response.status_code == 500
    record = only_record(client)
    assert record["status"] == "failed" and record["answer"] == "a"
    assert record["error"] == {**response.get_json()["error"], "status": 500}


def test_a_refused_request_is_recorded_as_failed(settings, data_dir, engines):
    release = threading.Event()

    def slow_load():
        release.wait(10)
        raise RuntimeError("test over")

    client = create_app(
        settings.replace(data_dir=str(data_dir)), engine=engines.start(slow_load, queue_size=1)
    ).test_client()
    try:
        assert client.post("/v1/chat/completions", json=ask("Too early")).status_code == 503
        record = only_record(client)
        assert record["status"] == "failed" and record["error"]["code"] == "model_not_ready"
        assert record["error"]["status"] == 503
    finally:
        release.set()


def test_a_json_answer_is_recorded_with_its_schema(history_client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "check", "schema": schema, "strict": True}}
    answer = history_client.post(
        "/v1/chat/completions", json=ask(max_tokens=30, temperature=0, response_format=response_format)
    ).get_json()
    record = only_record(history_client)
    assert record["response_format"] == record["sampling"]["response_format"] == response_format
    assert record["answer"] == answer["choices"][0]["message"]["content"]
    free = history_client.post("/inferences", data={"prompt": "Hi", "max_tokens": "2"}).get_json()
    assert free["response_format"] is None


def test_post_inferences_answers_with_the_stored_record(history_client):
    image = png(40, 40)
    response = history_client.post(
        "/inferences",
        content_type="multipart/form-data",
        data={"image": (io.BytesIO(image), "p.png"), "prompt": "Colour?", "max_tokens": "3", "temperature": "0"},
    )
    assert response.status_code == 201
    record = response.get_json()
    assert response.headers["Location"] == f"/inferences/{record['id']}"
    assert record["object"] == "inference" and record["status"] == "completed"
    assert record["messages"][-1]["content"][-1] == {"type": "text", "text": "Colour?"}
    assert history_client.get(record["images"][0]["url"]).data == image
    assert history_client.get(f"/inferences/{record['id']}").get_json() == record
    streamed = history_client.post("/inferences", data={"prompt": "Hi", "stream": "true"})
    assert streamed.status_code == 400 and streamed.get_json()["error"]["param"] == "stream"


def test_delete_removes_the_record_and_its_unshared_image(history_client, data_dir):
    kept, gone = png(33, 33), png(34, 34)
    for image in (kept, gone):
        history_client.post("/inferences", data={"image": (io.BytesIO(image), "x.png"), "max_tokens": "1"})
    history_client.post("/inferences", data={"image": (io.BytesIO(kept), "x.png"), "max_tokens": "1"})
    listing = history_client.get("/inferences").get_json()["data"]
    victim = listing[1]["id"]  # the one with `gone`
    assert history_client.get(listing[1]["thumbnail_url"]).data == gone
    response = history_client.delete(f"/inferences/{victim}")
    assert response.get_json() == {"id": victim, "object": "inference.deleted", "deleted": True}
    assert history_client.get(f"/inferences/{victim}").status_code == 404
    assert history_client.delete(f"/inferences/{victim}").status_code == 404
    assert sorted(p.name for p in (data_dir / "images").glob("*/*")) == [sha256_of(kept)]
    assert len(history_client.get("/inferences").get_json()["data"]) == 2


def test_paging_with_the_cursor_and_filters(history_client):
    for i in range(5):
        history_client.post("/inferences", data={"prompt": f"question {i}", "max_tokens": "1"})
    seen, url = [], "/inferences?limit=2"
    while url:
        page = history_client.get(url).get_json()
        seen += [r["question"] for r in page["data"]]
        assert page["has_more"] == (page["next_cursor"] is not None)
        url = f"/inferences?limit=2&cursor={page['next_cursor']}" if page["has_more"] else None
    assert seen == [f"question {i}" for i in reversed(range(5))]
    assert history_client.get("/inferences?status=failed").get_json()["data"] == []
    assert len(history_client.get("/inferences?status=completed&since=2000-01-01").get_json()["data"]) == 5
    assert history_client.get("/inferences?until=2000-01-01T00:00:00Z").get_json()["data"] == []


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=101", "limit=ten", "cursor=nonsense", "status=done", "since=yesterday", "until=2026-13-01"],
)
def test_bad_paging_parameters_are_400(history_client, query):
    response = history_client.get(f"/inferences?{query}")
    assert response.status_code == 400
    assert response.get_json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "path",
    [
        "/inferences/not-a-uuid",
        f"/inferences/{uuid.uuid4()}",
        "/inferences/..%2F..%2Fetc%2Fpasswd",
        "/inferences/../../etc/passwd",
        f"/inferences/{uuid.uuid4()}/image",
        f"/inferences/{uuid.uuid4()}/images/0",
        "/inferences/%2e%2e/images/0",
        f"/inferences/{str(uuid.uuid4()).upper()}",
    ],
)
def test_bad_ids_are_404_in_the_envelope(history_client, path):
    response = history_client.get(path)
    assert response.status_code == 404
    assert set(response.get_json()["error"]) == {"message", "type", "param", "code"}
    assert history_client.delete(path).status_code in (404, 405)


def test_an_image_index_beyond_the_record_is_404(history_client):
    record = history_client.post("/inferences", data={"prompt": "no image", "max_tokens": "1"}).get_json()
    assert record["images"] == []
    assert history_client.get(f"/inferences/{record['id']}/image").status_code == 404
    assert history_client.get(f"/inferences/{record['id']}/images/1").status_code == 404


@pytest.mark.parametrize("position", [2**31, 2**63, 2**90])
def test_an_image_index_past_what_the_database_holds_is_404_not_500(history_client, position):
    record = history_client.post("/inferences", data={"prompt": "no image", "max_tokens": "1"}).get_json()
    response = history_client.get(f"/inferences/{record['id']}/images/{position}")
    assert response.status_code == 404, response.get_json()


def test_with_history_off_nothing_is_written_and_the_routes_say_so(app, settings, data_dir):
    client = create_app(
        settings.replace(data_dir=str(data_dir), history=False), engine=services(app).engine
    ).test_client()
    assert client.post("/v1/chat/completions", json=ask(max_tokens=1)).status_code == 200
    assert not data_dir.exists()
    for response in (client.get("/inferences"), client.post("/inferences", data={"prompt": "hi"})):
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "history_disabled"


def test_a_history_fault_is_logged_and_never_breaks_the_answer(app, settings, tmp_path, caplog):
    from loupe.history.image_store import ImageStore
    from loupe.history.schema import make_engine
    from loupe.history.store import HistoryStore

    unmigrated = HistoryStore(make_engine(f"sqlite:///{tmp_path / 'empty.db'}"), ImageStore(tmp_path / "images"))
    client = create_app(settings, engine=services(app).engine, history=unmigrated).test_client()
    response = client.post("/v1/chat/completions", json=ask(max_tokens=1))
    assert response.status_code == 200
    assert "history: could not record inference" in caplog.text
    assert client.post("/inferences", data={"prompt": "hi", "max_tokens": "1"}).status_code == 500
