"""GET /metrics in Prometheus format: requests, queue, generations, speed, image tokens, the model."""

import threading

from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from loupe.web.services import services
from tests.support.chat import ask, data_url, png
from tests.support.engines import wait_ready
from tests.support.fakes import ScriptedBackend
from tests.support.waiting import wait_until


def scrape(client):
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def fresh_client(app, **changes):
    """An app with its own metrics registry (and settings changed), sharing the loaded engine."""
    loupe = services(app)
    return create_app(loupe.settings.replace(**changes), engine=loupe.engine).test_client()


def test_requests_are_counted_by_route_method_and_status(app):
    client = fresh_client(app)
    client.post("/v1/chat/completions", json=ask(max_tokens=2), buffered=True)
    client.post("/v1/chat/completions", json=ask(temperature=9), buffered=True)
    client.get("/nowhere/secret-path", buffered=True)
    samples = scrape(client)
    route = "/v1/chat/completions"
    assert value(samples, "loupe_http_requests_total", route=route, method="POST", status="200") == 1
    assert value(samples, "loupe_http_requests_total", route=route, method="POST", status="400") == 1
    assert value(samples, "loupe_http_requests_total", route="<unmatched>", method="GET", status="404") == 1
    assert value(samples, "loupe_http_request_duration_seconds_count", route=route) == 2
    assert not any("secret-path" in str(key) for key in samples)


def test_generations_speed_and_tokens(app):
    client = fresh_client(app, stream_resume_seconds=0.2)
    before = scrape(client)
    image = client.post("/v1/chat/completions", json=ask(image=data_url(png()), max_tokens=4, ignore_eos=True))
    timings = image.get_json()["timings"]
    steps = value(scrape(client), "loupe_decode_step_seconds_count", batch_size="1") - value(
        before, "loupe_decode_step_seconds_count", batch_size="1"
    )
    assert steps == 3  # four tokens: the first comes from the prefill, each later one from a pass
    stream = client.post(
        "/v1/chat/completions", json=ask(max_tokens=2000, ignore_eos=True, stream=True), buffered=False
    )
    next(iter(stream.response))
    stream.close()  # a cancelled stream, once STREAM_RESUME_SECONDS pass without a reconnection
    wait_until(
        lambda: value(scrape(client), "loupe_generations_total", outcome="cancelled") >= 1,
        message="the cancelled stream to be counted",
    )
    after = scrape(client)
    assert (
        value(after, "loupe_generations_total", outcome="length")
        - value(before, "loupe_generations_total", outcome="length")
        == 1
    )
    assert value(after, "loupe_time_to_first_token_seconds_count") == 1
    assert value(after, "loupe_decode_tokens_per_second_count") == 1
    assert value(after, "loupe_image_tokens_sum") == timings["image_tokens"] > 0
    assert value(after, "loupe_completion_tokens_total") == 4
    assert value(after, "loupe_prompt_tokens_total") == timings["prompt_tokens"]


def test_queue_in_progress_and_model_gauges(settings, engines):
    release, gate = threading.Event(), threading.Event()

    def load():
        release.wait(10)
        return ScriptedBackend(["a"] * 50, gate=gate)

    engine = engines.start(load, queue_size=2)
    client = create_app(settings, engine=engine).test_client()
    loading = scrape(client)
    assert value(loading, "loupe_model_state", state="loading") == 1
    assert value(loading, "loupe_model_state", state="ok") == 0
    release.set()
    wait_ready(engine)
    # The test client returns a stream once its first frame (the model started on it) is out.
    stream = client.post("/v1/chat/completions", json=ask(stream=True, max_tokens=50), buffered=False)
    waiter = threading.Thread(target=client.post, args=("/v1/chat/completions",), kwargs={"json": ask()})
    waiter.start()
    # Both requests can be waiting at first: wait until the engine has taken the stream and the other waits.
    wait_until(lambda: (engine.running, engine.queue_depth) == (1, 1), message="one running and one queued")
    busy = scrape(client)
    assert value(busy, "loupe_model_state", state="ok") == 1
    assert value(busy, "loupe_model_load_seconds") > 0
    assert value(busy, "loupe_generations_in_progress") == 1
    assert value(busy, "loupe_queue_depth") == 1
    stream.close()
    gate.set()
    waiter.join(10)


def test_the_prefix_cache_gauge_counts_the_tokens_kept_for_follow_ups(app):
    client = fresh_client(app)
    assert client.post("/v1/chat/completions", json=ask(max_tokens=3)).status_code == 200
    backend = services(app).engine.backend
    kept = value(scrape(client), "loupe_prefix_cache_tokens")
    assert kept == backend.prefix_cache.tokens > 0
