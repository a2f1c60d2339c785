"""Soak test: the real gunicorn server on the tiny model, hammered for a fixed time by concurrent clients.

    python -m bench.soak --duration 120 --clients 8

Each client loops over a mix of good and bad requests: whole answers with and without an image,
complete streams, streams cancelled after the first frame, malformed bodies, bad fields, missing API
keys, unsupported content types, probes and /metrics. Only loopback traffic; bounded in time and
count. The report gives requests by kind and status, the errors that should not happen (any 5xx,
connection failures, ERROR lines in the server log) and the worker's RSS at start and end. Exits 1
if any such error occurred.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import io
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from tests.support.live_server import LiveServer

KEY = "soak-key"
EXPECTED = {200, 400, 401, 415, 429}  # 429: the queue is full, which concurrent clients will cause
MAX_DURATION, MAX_CLIENTS = 1800, 32


def image_url(seed: int) -> str:
    """A small noisy PNG as a data URL."""
    buffer = io.BytesIO()
    Image.effect_noise((96 + seed % 64, 72), 50).convert("RGB").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat(text: str, image: str | None = None, **fields) -> bytes:
    """A chat completion JSON body."""
    content = [{"type": "text", "text": text}]
    if image:
        content.insert(0, {"type": "image_url", "image_url": {"url": image}})
    return json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": 12, **fields}).encode()


class Client(threading.Thread):
    """One simulated client: picks a request kind at random, sends it, records the outcome."""

    def __init__(self, port: int, seed: int, stop_at: float, budget: threading.Semaphore, results: list):
        super().__init__(daemon=True)
        self.port, self.random, self.stop_at = port, random.Random(seed), stop_at
        self.budget, self.results = budget, results
        self.images = [image_url(seed * 10 + i) for i in range(3)]
        self.kinds = [
            (self.text, 4),
            (self.image, 3),
            (self.stream, 3),
            (self.cancelled_stream, 2),
            (self.malformed, 1),
            (self.bad_field, 1),
            (self.no_key, 1),
            (self.wrong_type, 1),
            (self.probe, 1),
        ]

    def run(self) -> None:
        functions, weights = zip(*self.kinds, strict=True)
        while time.monotonic() < self.stop_at and self.budget.acquire(blocking=False):
            kind = self.random.choices(functions, weights)[0]
            began = time.monotonic()
            try:
                status, note = kind()
            except (OSError, http.client.HTTPException) as error:
                status, note = "connection-error", repr(error)
            self.results.append((kind.__name__, status, time.monotonic() - began, note))
            # Like a polite client: back off when the server is busy, and pause a little between requests.
            time.sleep(self.random.uniform(0.3, 0.8) if status == 429 else self.random.uniform(0, 0.05))

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, key: bool = True
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        sent = {"Content-Type": "application/json", **(headers or {})}
        if key:
            sent["Authorization"] = f"Bearer {KEY}"
        connection.request(method, path, body, sent)
        return connection, connection.getresponse()

    def whole(self, body: bytes, **kwargs) -> tuple[int, str]:
        connection, response = self.request("POST", "/v1/chat/completions", body, **kwargs)
        data = response.read()
        connection.close()
        note = "" if response.status in EXPECTED else data[:200].decode(errors="replace")
        return response.status, note

    def text(self):
        return self.whole(chat("Say something.", temperature=self.random.choice([0, 0.7])))

    def image(self):
        return self.whole(chat("What is in this picture?", self.random.choice(self.images)))

    def stream(self):
        connection, response = self.request("POST", "/v1/chat/completions", chat("Go on.", stream=True))
        data = response.read().decode(errors="replace")
        connection.close()
        if response.status == 200 and not data.rstrip().endswith("data: [DONE]"):
            return "stream-without-done", data[-200:]
        return response.status, ""

    def cancelled_stream(self):
        body = chat("Go on.", stream=True, max_tokens=200, ignore_eos=True)
        connection, response = self.request("POST", "/v1/chat/completions", body)
        if response.status == 200:
            response.readline()  # the first frame, then the client goes away
        connection.sock.close()
        connection.close()
        return response.status, ""

    def malformed(self):
        return self.whole(b"{not json")

    def bad_field(self):
        return self.whole(chat("Hi", temperature=7))

    def no_key(self):
        return self.whole(chat("Hi"), key=False)

    def wrong_type(self):
        return self.whole(b"hello", headers={"Content-Type": "text/plain"})

    def probe(self):
        path = self.random.choice(["/health", "/live", "/metrics", "/v1/models"])
        connection, response = self.request("GET", path)
        response.read()
        connection.close()
        return response.status, ""


def worker_pid(master_pid: int) -> int:
    """gunicorn's one worker: the master's child."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return int(children[0])


def rss_mib(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def run(duration: float, clients: int, max_requests: int, model_dir: Path, log_path: Path) -> dict:
    """Start the server, run the clients, stop the server; return the figures."""
    env = {
        "MODEL_ID": str(model_dir),
        "API_KEY": KEY,
        "QUEUE_SIZE": "4",
        "THREADS": str(clients + 8),
        "MAX_NEW_TOKENS": "12",
        "RATE_LIMIT": "100000/minute",
        "REQUEST_TIMEOUT": "120",
    }
    server = LiveServer(env, log_path).start()
    try:
        worker = worker_pid(server.process.pid)
        rss_start = rss_mib(worker)
        results: list = []
        budget = threading.Semaphore(max_requests)
        stop_at = time.monotonic() + duration
        threads = [Client(server.port, seed, stop_at, budget, results) for seed in range(clients)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        peak = rss_start
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_mib(worker))
            time.sleep(1)
        elapsed = time.monotonic() - began
        time.sleep(1)  # let the last cancelled generation stop
        rss_end = rss_mib(worker)
        health = server.health()
    finally:
        server.stop()
    return summarise(results, elapsed, clients, rss_start, rss_end, peak, health, server.log())


def summarise(results, elapsed, clients, rss_start, rss_end, peak, health, log_text) -> dict:
    """Counts by kind and status, and everything that should not have happened."""
    by_kind = collections.Counter((kind, str(status)) for kind, status, _, _ in results)
    by_status = collections.Counter(str(status) for _, status, _, _ in results)
    unexpected = [(kind, status, note) for kind, status, _, note in results if status not in EXPECTED]
    server_errors = [line for line in log_text.splitlines() if " ERROR " in line or "Traceback" in line]
    return {
        "seconds": round(elapsed, 1),
        "clients": clients,
        "requests": len(results),
        "requests_per_second": round(len(results) / elapsed, 2),
        "by_status": dict(sorted(by_status.items())),
        "by_kind": {f"{k} {s}": n for (k, s), n in sorted(by_kind.items())},
        "unexpected": unexpected[:20],
        "unexpected_count": len(unexpected),
        "server_log_errors": server_errors[:20],
        "server_log_error_count": len(server_errors),
        "health_at_end": health.get("status"),
        "queue_depth_at_end": health.get("queue_depth"),
        "worker_rss_mib": {"start": round(rss_start, 1), "end": round(rss_end, 1), "peak": round(peak, 1)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60, help=f"seconds of load (at most {MAX_DURATION})")
    parser.add_argument("--clients", type=int, default=6, help=f"concurrent clients (at most {MAX_CLIENTS})")
    parser.add_argument("--max-requests", type=int, default=20000, help="stop after this many requests")
    parser.add_argument("--model-dir", type=Path, help="a model folder (default: build the tiny test model)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    duration, clients = min(args.duration, MAX_DURATION), min(args.clients, MAX_CLIENTS)
    with tempfile.TemporaryDirectory(prefix="loupe-soak-") as scratch:
        model_dir = args.model_dir
        if model_dir is None:
            from tests.support.tiny_model import build_tiny_model

            model_dir = build_tiny_model(Path(scratch) / "tiny-model")
        figures = run(duration, clients, args.max_requests, model_dir, Path(scratch) / "server.log")
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    healthy = figures["health_at_end"] == "ok" and figures["queue_depth_at_end"] == 0
    return 0 if healthy and not figures["unexpected_count"] and not figures["server_log_error_count"] else 1


if __name__ == "__main__":
    sys.exit(main())
