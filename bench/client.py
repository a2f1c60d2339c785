"""Measure one chat completion through HTTP, streamed, from the client's side of the socket."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field

import requests
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("bench.client")

REQUEST_TIMEOUT = 1800  # seconds; a float32 generation on 2 cores with three others queued ahead


@dataclass
class Measurement:
    """What one streamed request showed: client-side clock plus the server's own `timings`."""

    started: float = 0.0  # perf_counter at send
    ttft_s: float | None = None  # to the first chunk with non-empty content
    role_s: float | None = None  # to the role chunk (the engine took the request)
    finished_s: float | None = None  # to the finish_reason chunk
    content_s: list[float] = field(default_factory=list)  # to each chunk with content (about a token each)
    completion_tokens: int = 0
    text: str = ""
    finish_reason: str | None = None
    timings: dict = field(default_factory=dict)
    usage: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def client_decode_tps(self) -> float | None:
        """Tokens after the first, per second, between the first content chunk and the finish chunk."""
        if self.ttft_s is None or self.finished_s is None or self.completion_tokens < 2:
            return None
        span = self.finished_s - self.ttft_s
        return (self.completion_tokens - 1) / span if span > 0 else None

    def to_dict(self) -> dict:
        """JSON-ready form, with the derived rate and without the raw start clock."""
        data = asdict(self)
        data.pop("started")
        data["client_decode_tps"] = self.client_decode_tps
        return data


def chat_payload(messages: list[dict], max_tokens: int) -> dict:
    """The request body: greedy, fixed length (ignore_eos), streamed with usage."""
    return {
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def stream_chat(
    base_url: str, messages: list[dict], max_tokens: int, start: float | None = None, headers: dict | None = None
) -> Measurement:
    """Send one streamed request and time its chunks; `start` lets concurrent clients share a clock."""
    result = Measurement(started=time.perf_counter() if start is None else start)
    try:
        with requests.post(
            f"{base_url}/v1/chat/completions",
            json=chat_payload(messages, max_tokens),
            headers=headers,
            stream=True,
            timeout=REQUEST_TIMEOUT,
        ) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {response.text[:300]}"
                return result
            _read_stream(response, result)
    except requests.RequestException as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    if result.error:
        log.warning("request failed: %s", result.error)
    return result


def _read_stream(response: requests.Response, result: Measurement) -> None:
    """Consume SSE frames, stamping the role, first content and finish chunks."""
    pieces = []
    for line in response.iter_lines(chunk_size=None, decode_unicode=True):
        if not line or not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            break
        now = time.perf_counter() - result.started
        chunk = json.loads(data)
        if "error" in chunk:
            result.error = json.dumps(chunk["error"])[:300]
            return
        if chunk.get("usage"):
            result.usage = chunk["usage"]
            result.completion_tokens = chunk["usage"].get("completion_tokens", 0)
        for choice in chunk.get("choices", []):
            delta = choice.get("delta") or {}
            if "role" in delta and result.role_s is None:
                result.role_s = now
            if delta.get("content"):
                pieces.append(delta["content"])
                result.content_s.append(now)
                if result.ttft_s is None:
                    result.ttft_s = now
            if choice.get("finish_reason"):
                result.finish_reason = choice["finish_reason"]
                result.finished_s = now
        if chunk.get("timings"):
            result.timings = chunk["timings"]
    result.text = "".join(pieces)


def concurrent_chats(
    base_url: str, conversations: list[list[dict]], max_tokens: int, headers: list[dict] | None = None
) -> tuple[list[Measurement], float]:
    """Send the conversations at once, one thread each (with its own `headers`, if given); (measurements, wall
    seconds until the last ends)."""
    results: list[Measurement | None] = [None] * len(conversations)
    start = time.perf_counter()

    def client(index: int) -> None:
        sent = headers[index] if headers else None
        results[index] = stream_chat(base_url, conversations[index], max_tokens, start=start, headers=sent)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(conversations))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in results if r is not None], time.perf_counter() - start


def decode_steps(base_url: str) -> dict[str, dict[str, float]]:
    """The server's decode forward passes so far, by batch size: {"4": {"count": n, "sum": seconds}}."""
    text = requests.get(f"{base_url}/metrics", timeout=30).text
    steps: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "loupe_decode_step_seconds":
            continue
        for sample in family.samples:
            kind = sample.name.removeprefix("loupe_decode_step_seconds_")
            if kind in ("count", "sum"):
                steps.setdefault(sample.labels["batch_size"], {})[kind] = sample.value
    return steps


def metric_value(text: str, name: str) -> float | None:
    """The first sample called `name` in a Prometheus text exposition, if there is one."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


def settled_gauge(base_url: str, name: str, timeout: float = 30.0) -> float | None:
    """A gauge of the server once no generation is in progress (a stream's last chunk can reach
    the client before the server has put its conversation away)."""
    deadline = time.perf_counter() + timeout
    while True:
        text = requests.get(f"{base_url}/metrics", timeout=30).text
        if metric_value(text, "loupe_generations_in_progress") == 0 or time.perf_counter() > deadline:
            return metric_value(text, name)
        time.sleep(0.1)


def health(base_url: str) -> tuple[int, dict]:
    """GET /health: (status code, body); (0, {}) when nothing answers yet."""
    try:
        response = requests.get(f"{base_url}/health", timeout=5)
        return response.status_code, response.json()
    except (requests.RequestException, ValueError):
        return 0, {}
