"""Per-client rate limits on generations (Flask-Limiter), 429 in the envelope with Retry-After."""

import threading

import pytest
import redis

from app import create_app
from loupe.errors import SERVER_BUSY_RETRY_AFTER
from loupe.settings import Settings
from loupe.web.services import services
from tests.support.chat import ask
from tests.support.fakes import ScriptedBackend, chat


def limited_client(app, limit="3/minute", engine=None):
    settings = services(app).settings.replace(rate_limit=limit)
    return create_app(settings, engine=engine or services(app).engine).test_client()


def assert_429(response) -> dict:
    """Both 429s, the limit's and the full queue's: OpenAI's envelope, rate_limit_error, Retry-After in seconds."""
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "rate_limit_error" and error["message"]
    return error


def test_past_the_limit_generations_get_429_with_retry_after(app):
    client = limited_client(app)
    for _ in range(3):
        ok = client.post("/v1/chat/completions", json=ask(max_tokens=1))
        assert ok.status_code == 200
        assert ok.headers["X-RateLimit-Limit"] == "3"
    refused = client.post("/v1/chat/completions", json=ask(max_tokens=1))
    assert "3/minute" in assert_429(refused)["message"]
    assert int(refused.headers["Retry-After"]) <= 60
    assert "X-Request-ID" in refused.headers
    # Other clients, and routes that cost no generation, are not limited.
    other = client.post("/v1/chat/completions", json=ask(max_tokens=1), environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 200
    assert all(client.get(path).status_code == 200 for path in ("/health", "/live", "/v1/models"))


@pytest.mark.parametrize(
    ("trusted", "expected"), [(0, [200, 429, 429, 429]), (1, [200, 429, 200, 429]), (2, [200, 429, 429, 200])]
)
def test_x_forwarded_for_names_the_client_only_from_trusted_proxies(app, trusted, expected):
    """Behind TRUSTED_PROXIES proxies, the client is that many entries from the end of X-Forwarded-For; what a client
    writes there itself (the first entry) never counts."""
    settings = services(app).settings.replace(rate_limit="1/minute", trusted_proxies=trusted)
    client = create_app(settings, engine=services(app).engine).test_client()
    forwarded = [
        "1.1.1.1, 192.0.2.1, 198.51.100.1",
        "2.2.2.2, 192.0.2.1, 198.51.100.1",  # another claim, the same proxies' entries: the same client
        "1.1.1.1, 192.0.2.1, 198.51.100.9",  # a new last entry: a new client behind one proxy
        "1.1.1.1, 192.0.2.9, 198.51.100.1",  # a new entry before it: a new client behind two
    ]
    statuses = [
        client.post(
            "/v1/chat/completions",
            json=ask(max_tokens=1),
            headers={"X-Forwarded-For": value},
            environ_base={"REMOTE_ADDR": "10.0.0.1"},  # the nearest proxy, as the server sees it
        ).status_code
        for value in forwarded
    ]
    assert statuses == expected


def test_a_full_queue_keeps_its_own_retry_after_under_a_rate_limit(app, engines):
    gate = threading.Event()
    backend = ScriptedBackend(["x"] * 3, gate=gate)
    engine = engines.ready(backend, queue_size=0, max_batch=1)
    client = limited_client(app, "30/minute", engine)
    running = engine.submit(chat())
    try:
        assert backend.started.wait(5)  # the one place is taken
        busy = client.post("/v1/chat/completions", json=ask())
        assert assert_429(busy)["code"] == "server_busy"
        # The client is well within its limit: the limiter's window reset must not replace the busy hint.
        assert busy.headers["X-RateLimit-Remaining"] == "29"
        assert busy.headers["Retry-After"] == str(SERVER_BUSY_RETRY_AFTER)
    finally:
        gate.set()
        list(running)


def test_the_readme_gives_the_full_queue_s_retry_after(readme_text):
    assert f"`Retry-After: {SERVER_BUSY_RETRY_AFTER}`" in readme_text


def test_instances_sharing_a_redis_share_one_limit(app, redis_uri):
    settings = services(app).settings.replace(rate_limit="3/minute", rate_limit_storage=redis_uri)
    first, second = (create_app(settings, engine=services(app).engine).test_client() for _ in range(2))
    answers = [client.post("/v1/chat/completions", json=ask(max_tokens=1)) for client in (first, second, first)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]  # one count, not two
    for client in (second, first):
        assert "3/minute" in assert_429(client.post("/v1/chat/completions", json=ask(max_tokens=1)))["message"]
    assert redis.Redis.from_url(redis_uri).dbsize() > 0  # the count is in Redis, not in a memory fallback


def test_refused_keys_do_not_use_up_the_limit(app):
    settings = services(app).settings.replace(rate_limit="1/minute", api_key="k")
    client = create_app(settings, engine=services(app).engine).test_client()
    for _ in range(3):
        assert client.post("/v1/chat/completions", json=ask(max_tokens=1)).status_code == 401
    ok = client.post("/v1/chat/completions", json=ask(max_tokens=1), headers={"Authorization": "Bearer k"})
    assert ok.status_code == 200


def test_off_means_no_limit(app):
    client = limited_client(app, "off")
    for _ in range(5):
        response = client.post("/v1/chat/completions", json=ask(max_tokens=1))
        assert response.status_code == 200 and "X-RateLimit-Limit" not in response.headers


def test_the_default_is_30_a_minute_in_memory():
    settings = Settings.from_mapping({})
    assert (settings.rate_limit, settings.rate_limit_storage) == ("30/minute", "memory://")


@pytest.mark.parametrize(
    "env, words",
    [({"RATE_LIMIT": "lots"}, "RATE_LIMIT"), ({"RATE_LIMIT_STORAGE": "postgres://db"}, "RATE_LIMIT_STORAGE")],
)
def test_bad_rate_limit_settings_are_refused(env, words):
    with pytest.raises(ValueError, match=words):
        Settings.from_mapping(env)
