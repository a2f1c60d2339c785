"""Several instances behind nginx against one: follow-ups on their instance, and what a second instance adds.

    python -m bench.instances --model ~/.cache/loupe-bench/qwen3-vl-2b-instruct-random \
        --out bench/results-instances.json

Starts Debian's PostgreSQL (the shared history) on loopback, then twice: `--instances` gunicorn instances
(one, then several) on a shared DATA_DIR and DATABASE_URL, with Debian's nginx and deploy/nginx's
configuration in front. Through nginx, `--clients` clients, each with its own photo and conversation key
(X-Loupe-Conversation), send their first turns at once, then their follow-ups at once. It reports the
follow-up's time to first token against the first turn's (median over clients: does the follow-up land
where its image was read and skip it?), which instance each conversation went to, and the aggregate
tokens a second of all clients, several instances against one.

Each instance gets `--threads` torch threads, the same in both runs, so several instances use that many
times the cores: on a machine with enough cores this is what more machines buy; on one 2-core machine
with `--threads 1` it is two 1-core instances against one. The conversation keys are chosen so the
clients split evenly over the instances, as many conversations do on average (with four keys,
consistent hashing puts three or four on one instance more often than not). No rate limit and no Redis:
the limit is a policy for clients, not part of what a request costs. Needs Debian's postgresql and nginx.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench import inputs
from bench.client import Measurement, stream_chat
from bench.run import as_common
from tests.support.live_server import LiveServer
from tests.support.nginx import Nginx
from tests.support.postgres import PostgresServer, postgres_bin

log = logging.getLogger("bench.instances")
LOAD_TIMEOUT = 900  # seconds for an instance to load (a first start prepares the full model's weights)


def balanced_keys(nginx: Nginx, instances: int, clients: int) -> list[str]:
    """Conversation keys that nginx spreads evenly over the instances (read back from its access log)."""
    per_instance = -(-clients // instances)
    chosen: dict[str, list[str]] = {}
    for n in range(50 * clients):
        key = f"bench-{n}"
        requests.get(nginx.url + "/v1/models", headers={"X-Loupe-Conversation": key}, timeout=30).raise_for_status()
        upstream = upstream_of(nginx, key)
        if len(chosen.setdefault(upstream, [])) < per_instance:
            chosen[upstream].append(key)
        keys = [k for group in chosen.values() for k in group]
        if len(keys) >= clients and len(chosen) >= instances:
            return keys[:clients]
    raise RuntimeError(f"could not spread {clients} keys over {instances} instances: {chosen}")


def upstream_of(nginx: Nginx, key: str) -> str:
    """The instance nginx's access log says served the conversation `key` (its line comes as the response ends)."""
    pattern = re.compile(rf"conversation={re.escape(key)} upstream=(\S+)")
    deadline = time.perf_counter() + 10
    while (match := pattern.search(nginx.access_log())) is None:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"nginx logged no request of conversation {key}")
        time.sleep(0.02)
    return match.group(1)


def chat_upstreams(nginx: Nginx, keys: list[str], turns: int) -> dict[str, list[str]]:
    """For each conversation, the instance each of its `turns` chat requests went to, from nginx's access log."""
    deadline = time.perf_counter() + 10
    while True:
        text = nginx.access_log()
        routes = {k: re.findall(rf"POST \S+ [^\n]*conversation={re.escape(k)} upstream=(\S+)", text) for k in keys}
        if all(len(r) >= turns for r in routes.values()) or time.perf_counter() > deadline:
            return routes
        time.sleep(0.05)


def conversations(url: str, keys: list[str], max_tokens: int) -> dict:
    """Each client's first turn (all at once), then each one's follow-up (all at once), under its own key."""
    images = [inputs.data_url(inputs.jpeg_bytes(inputs.photo(variant=n + 1))) for n in range(len(keys))]
    firsts: list[Measurement] = [Measurement()] * len(keys)
    follows: list[Measurement] = [Measurement()] * len(keys)

    def together(turn) -> float:
        start = time.perf_counter()
        threads = [threading.Thread(target=turn, args=(n, start)) for n in range(len(keys))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - start

    def first(n: int, start: float) -> None:
        headers = {"X-Loupe-Conversation": keys[n]}
        firsts[n] = stream_chat(url, inputs.first_turn(images[n]), max_tokens, start=start, headers=headers)

    def follow(n: int, start: float) -> None:
        messages = inputs.follow_up(images[n], firsts[n].text)
        follows[n] = stream_chat(url, messages, max_tokens, start=start, headers={"X-Loupe-Conversation": keys[n]})

    log.info("%d first turns at once", len(keys))
    first_wall = together(first)
    log.info("%d follow-ups at once", len(keys))
    follow_wall = together(follow)
    return {
        "first_turns": [as_common(m) for m in firsts],
        "follow_ups": [as_common(m) | {"cached_tokens": m.timings.get("cached_tokens")} for m in follows],
        "first_wall_s": first_wall,
        "follow_up_wall_s": follow_wall,
    }


def run_cluster(args: argparse.Namespace, count: int, database_url: str, log_dir: Path) -> dict:
    """Start `count` instances sharing the database and DATA_DIR, nginx in front; measure; stop them."""
    env = {
        "MODEL_ID": str(args.model),
        "DTYPE": args.dtype,
        "TORCH_THREADS": str(args.threads),
        "DATABASE_URL": database_url,
        "DATA_DIR": str(log_dir / f"data-{count}"),
        "RATE_LIMIT": "off",
        **({"KERNEL_CACHE_DIR": args.kernel_cache_dir} if args.kernel_cache_dir else {}),
    }
    instances = [LiveServer(env, log_dir / f"instances-{count}-{n}.log") for n in range(count)]
    nginx = None
    try:
        for instance in instances:  # one after another: a first start prepares the weights others reuse
            instance.start(timeout=LOAD_TIMEOUT)
        nginx = Nginx(log_dir / f"nginx-{count}", [f"127.0.0.1:{i.port}" for i in instances]).start()
        keys = balanced_keys(nginx, count, args.clients)
        result = conversations(nginx.url, keys, args.max_tokens)
        return result | {"instances": count, "keys": keys, "upstreams": chat_upstreams(nginx, keys, turns=2)}
    finally:
        if nginx is not None:
            nginx.stop()
        for instance in instances:
            instance.stop()


def figures(run: dict) -> dict:
    """Follow-up TTFT ÷ first (medians over clients), tokens a second of all clients, errors."""
    firsts, follows = run["first_turns"], run["follow_ups"]
    errors = [m["error"] for m in firsts + follows if m["error"]]
    tokens = sum(m["completion_tokens"] for m in firsts + follows)
    wall = run["first_wall_s"] + run["follow_up_wall_s"]
    first_ttft, follow_ttft = median_ttft(firsts), median_ttft(follows)
    return {
        "first_ttft_s": first_ttft,
        "follow_up_ttft_s": follow_ttft,
        "follow_up_ttft_ratio": follow_ttft / first_ttft if first_ttft and follow_ttft else None,
        "follow_ups_on_their_instance": sum(1 for r in run["upstreams"].values() if len(set(r)) == 1),
        "follow_ups_cached": sum(1 for m in follows if (m.get("cached_tokens") or 0) > 0),
        "aggregate_tokens_per_second": tokens / wall if wall > 0 else None,
        "errors": errors,
    }


def median_ttft(runs: list[dict]) -> float | None:
    """The median time to first token of the runs that got one."""
    times = [m["ttft_s"] for m in runs if m["ttft_s"] is not None]
    return statistics.median(times) if times else None


def table(single: dict, several: dict, count: int) -> str:
    """The figures as a Markdown table, one instance against several."""

    def cell(value) -> str:
        return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)

    rows = [
        ("first turn: time to first token, s (median)", "first_ttft_s"),
        ("follow-up: time to first token, s (median)", "follow_up_ttft_s"),
        ("follow-up ÷ first turn (target ≤ 0.15)", "follow_up_ttft_ratio"),
        ("conversations whose turns all went to one instance", "follow_ups_on_their_instance"),
        ("follow-ups that reused their cached prefix", "follow_ups_cached"),
        ("all clients: tokens a second", "aggregate_tokens_per_second"),
    ]
    lines = [f"| | 1 instance | {count} instances |", "| --- | --- | --- |"]
    lines += [f"| {label} | {cell(single[key])} | {cell(several[key])} |" for label, key in rows]
    gain = several["aggregate_tokens_per_second"] / single["aggregate_tokens_per_second"]
    lines.append(f"| tokens a second, {count} instances ÷ 1 | | {gain:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the model folder (MODEL_ID)")
    parser.add_argument("--instances", type=int, default=2, help="instances in the second run")
    parser.add_argument("--clients", type=int, default=4, help="clients, each with its own photo and conversation")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per turn")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="TORCH_THREADS each")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--kernel-cache-dir", help="KERNEL_CACHE_DIR for the instances (default: the tests')")
    parser.add_argument("--out", type=Path, help="write the runs and figures as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    bin_dir = postgres_bin()
    if bin_dir is None:
        parser.error("PostgreSQL is not installed (apt-get install postgresql)")
    database = PostgresServer(bin_dir).start()
    try:
        with tempfile.TemporaryDirectory(prefix="loupe-bench-instances-") as folder:
            single = run_cluster(args, 1, database.url, Path(folder))
            several = run_cluster(args, args.instances, database.url, Path(folder))
    finally:
        database.stop()
    result = {"single": single, "several": several, "figures": {"single": figures(single), "several": figures(several)}}
    print(table(result["figures"]["single"], result["figures"]["several"], args.instances))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    errors = result["figures"]["single"]["errors"] + result["figures"]["several"]["errors"]
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
