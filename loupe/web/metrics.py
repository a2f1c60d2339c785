"""Prometheus metrics with prometheus_client: requests, the queue, generation speed, the model."""

from __future__ import annotations

import functools
import time

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from loupe.engine.engine import Engine
from loupe.engine.resumable import ResumableStreams
from loupe.inference import Timings

bp = Blueprint("metrics", __name__)

UNMATCHED_ROUTE = "<unmatched>"  # every unknown path under one label, so scanners cannot bloat the series
MODEL_STATES = ("loading", "ok", "error")
SECOND_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
RATE_BUCKETS = (0.5, 1, 2, 3, 5, 8, 12, 20, 30, 50, 100, 200, 500)
IMAGE_TOKEN_BUCKETS = (0, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 4096, 8192)
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)


class Metrics:
    """One app's metrics in their own registry (gunicorn runs one worker, so one process holds them all)."""

    def __init__(self, engine: Engine, streams: ResumableStreams | None = None):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "loupe_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "loupe_http_request_duration_seconds",
            "Time from request to the end of the response (streams included).",
            ["route"],
            buckets=SECOND_BUCKETS,
            registry=registry,
        )
        self.generations = Counter(
            "loupe_generations",
            "Generations by outcome: stop, length, cancelled, error.",
            ["outcome"],
            registry=registry,
        )
        self.ttft = Histogram(
            "loupe_time_to_first_token_seconds",
            "Request (queue included) to first token.",
            buckets=SECOND_BUCKETS,
            registry=registry,
        )
        self.decode_rate = Histogram(
            "loupe_decode_tokens_per_second",
            "Decode speed of finished generations.",
            buckets=RATE_BUCKETS,
            registry=registry,
        )
        self.decode_step = Histogram(
            "loupe_decode_step_seconds",
            "One decode forward pass, feeding one token to each of batch_size sequences.",
            ["batch_size"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.image_tokens = Histogram(
            "loupe_image_tokens", "Image tokens per generation.", buckets=IMAGE_TOKEN_BUCKETS, registry=registry
        )
        self.prompt_tokens = Counter("loupe_prompt_tokens", "Prompt tokens read.", registry=registry)
        self.completion_tokens = Counter("loupe_completion_tokens", "Tokens generated.", registry=registry)
        self._engine_gauges(engine, registry)
        if streams is not None:
            self._stream_metrics(streams, registry)
        engine.add_observer(self.observe_generation)
        engine.add_step_observer(lambda size, seconds: self.decode_step.labels(str(size)).observe(seconds))

    @staticmethod
    def _engine_gauges(engine: Engine, registry: CollectorRegistry) -> None:
        """Gauges read from the engine when scraped, so they are never stale."""
        Gauge("loupe_queue_depth", "Requests waiting for their turn.", registry=registry).set_function(
            lambda: engine.queue_depth
        )
        Gauge(
            "loupe_generations_in_progress", "Generations being decoded now (at most MAX_BATCH).", registry=registry
        ).set_function(lambda: engine.running)
        Gauge(
            "loupe_prefix_cache_tokens",
            "Tokens of earlier conversations whose model state is kept for follow-ups (at most PREFIX_CACHE_TOKENS).",
            registry=registry,
        ).set_function(lambda: engine.cached_tokens)
        state = Gauge("loupe_model_state", "1 for the model's current state.", ["state"], registry=registry)
        for name in MODEL_STATES:
            state.labels(name).set_function(functools.partial(_is_state, engine, name))
        Gauge(
            "loupe_model_load_seconds", "How long loading the model took (0 until loaded).", registry=registry
        ).set_function(lambda: engine.load_seconds or 0)
        Gauge("loupe_shutting_down", "1 once SIGTERM began the graceful stop.", registry=registry).set_function(
            lambda: 1 if engine.draining else 0
        )

    @staticmethod
    def _stream_metrics(streams: ResumableStreams, registry: CollectorRegistry) -> None:
        """What happens to resumable streams, and what they hold in memory."""
        events = Counter(
            "loupe_resumable_stream_events",
            "Resumable streams: opened, resumed, not_found, abandoned, cancelled, evicted.",
            ["event"],
            registry=registry,
        )
        streams.add_observer(lambda event: events.labels(event).inc())
        Gauge(
            "loupe_resumable_streams", "Streams whose events are kept, running or ended.", registry=registry
        ).set_function(lambda: streams.count)
        Gauge(
            "loupe_resumable_stream_bytes",
            "Bytes of stream events kept for reconnecting clients (ended ones within STREAM_REPLAY_BYTES).",
            registry=registry,
        ).set_function(lambda: streams.bytes)

    def observe_generation(self, outcome: str, timings: Timings | None) -> None:
        """Count a generation and, if it finished, its speed and tokens (the engine calls this)."""
        self.generations.labels(outcome).inc()
        if timings is None:
            return
        self.ttft.observe(timings.ttft_ms / 1000)
        self.image_tokens.observe(timings.image_tokens)
        self.prompt_tokens.inc(timings.prompt_tokens)
        self.completion_tokens.inc(timings.completion_tokens)
        rate = timings.to_dict()["decode_tokens_per_second"]
        if rate > 0:
            self.decode_rate.observe(rate)

    def observe_request(self, route: str, method: str, status: int, started: float) -> None:
        """Count one finished HTTP request and its duration."""
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route).observe(time.perf_counter() - started)


def _is_state(engine: Engine, name: str) -> int:
    """1 while the engine's model is in state `name`, else 0."""
    return 1 if engine.status == name else 0


def init_metrics(app: Flask, engine: Engine, streams: ResumableStreams | None = None) -> Metrics:
    """Serve GET /metrics and count every request when its response closes."""
    metrics = Metrics(engine, streams)
    app.extensions["loupe_metrics"] = metrics
    app.register_blueprint(bp)

    @app.after_request
    def _count(response: Response) -> Response:
        record = g.get("loupe_request")  # set by observability's before_request
        started = record.started if record is not None else time.perf_counter()
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        status, method = response.status_code, request.method
        response.call_on_close(lambda: metrics.observe_request(route, method, status, started))
        return response

    return metrics


@bp.get("/metrics")
def metrics_endpoint():
    """The Prometheus text exposition of this process's metrics."""
    registry = current_app.extensions["loupe_metrics"].registry
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
