"""Loupe's benchmark: the real server against a naive transformers baseline, on a full-size random model.

    python -m bench.run --source ../shared/models/qwen3-vl-2b-instruct --dtype float32 bfloat16 --out bench/results.json

Builds the random-weight checkpoint once (bench/build_checkpoint.py), then for each dtype: measures
memory bandwidth, starts gunicorn on it and measures load, first turn, follow-up and four
concurrent clients through HTTP, stops it, and runs bench/naive.py on the same inputs in its own
process. Prints a Markdown table (server, naive, server/naive) and writes everything as JSON.

The read bandwidth of a shared virtual machine moves over minutes (30 to 56 GB/s on the 2-core
machine this was written on), so it is sampled several times per dtype: before the server starts,
after its first turn, after the four clients, and after the baseline (and quickly around each
paired decode, below). Decode efficiency is given two ways:
- the first turn's decode against the highest sample: the machine's best, so it errs low;
- paired: one client decodes `--paired-tokens` tokens between two quick samples taken just before
  and after it (the server idle), `--paired-rounds` times; each round's decode is against the mean
  of its two samples, and the figure is the median round. Phases last seconds to minutes, so short
  rounds put each decode and its bandwidth in the same phase far more often than not.
The four clients' batching gain is paired the same way: one client's decode, then four clients at
once, `--batch-rounds` times, each a branch of the first conversation (its image's prefix cached, so
prompts are short); each round's aggregate rate while all four decode is against its own one-client
rate, and the figure is the median round. The four first turns above mix a slow prefill per client
with decoding at whatever speed the memory had by then.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import hardware, inputs, report, sweep
from bench.build_checkpoint import build_checkpoint
from bench.client import Measurement, concurrent_chats, decode_steps, settled_gauge, stream_chat
from bench.server import ROOT, Server

log = logging.getLogger("bench.run")
BENCH = Path(__file__).resolve().parent
GPU_PREFIX_CACHE_TOKENS = 131072  # 14 GiB in bfloat16: room for the sweep's 64 running conversations and more


@dataclass(frozen=True)
class Pairing:
    """Paired decodes: `rounds` one-client requests of `tokens` tokens, each between two `sample()`s;
    then `batch_rounds` of one client followed by all clients at once, `batch_tokens` each."""

    rounds: int
    tokens: int
    sample: Callable[[], float]
    batch_rounds: int = 0
    batch_tokens: int = 32


def server_scenarios(
    url: str, image_url: str, max_tokens: int, clients: int, idle: Callable[[], None], pairing: Pairing | None = None
) -> dict:
    """First turn, follow-up on the same conversation, `clients` concurrent first turns (each its own
    photo), then the paired decodes, if any.

    `idle` runs after the first turn and after the clients, while the server has nothing to do.
    """
    log.info("first turn")
    first = stream_chat(url, inputs.first_turn(image_url), max_tokens)
    idle()
    log.info("follow-up")
    follow = stream_chat(url, inputs.follow_up(image_url, first.text), max_tokens)
    log.info("%d concurrent clients", clients)
    conversations = [
        inputs.first_turn(inputs.data_url(inputs.jpeg_bytes(inputs.photo(variant=i + 1))), q)
        for i, q in enumerate(inputs.CLIENT_QUESTIONS[:clients])
    ]
    runs, wall = concurrent_chats(url, conversations, max_tokens)
    idle()
    steps = decode_steps(url)  # before the paired decodes: the histogram is the scenarios' own
    paired = paired_decodes(url, image_url, pairing) if pairing else []
    batches = paired_batches(url, image_url, clients, pairing) if pairing else []
    return {
        "first_turn": as_common(first),
        "follow_up": as_common(follow),
        "concurrent": {"clients": [as_common(r) for r in runs], "wall_s": wall},
        "decode_steps": steps,
        "paired_decodes": paired,
        "paired_batches": batches,
        "prefix_cache_tokens": settled_gauge(url, "loupe_prefix_cache_tokens"),
    }


def paired_decodes(url: str, image_url: str, pairing: Pairing) -> list[dict]:
    """One client's decode between two bandwidth samples, `rounds` times (the image's prefix is cached)."""
    log.info("%d paired decodes of %d tokens", pairing.rounds, pairing.tokens)
    out, before = [], pairing.sample()
    for _ in range(pairing.rounds):
        run = as_common(stream_chat(url, inputs.first_turn(image_url, inputs.PAIRED_QUESTION), pairing.tokens))
        after = pairing.sample()
        out.append(
            {
                "decode_tps": run["decode_tps"],
                "error": run["error"],
                "bandwidth_before": before,
                "bandwidth_after": after,
            }
        )
        before = after
    return out


def paired_batches(url: str, image_url: str, clients: int, pairing: Pairing) -> list[dict]:
    """One client's decode, then `clients` decoding at once, `batch_rounds` times (the image's prefix is cached)."""
    log.info(
        "%d paired batches: 1 client, then %d at once, %d tokens each",
        pairing.batch_rounds,
        clients,
        pairing.batch_tokens,
    )
    questions = inputs.CLIENT_QUESTIONS[:clients]
    out = []
    for _ in range(pairing.batch_rounds):
        one = as_common(stream_chat(url, inputs.first_turn(image_url, inputs.PAIRED_QUESTION), pairing.batch_tokens))
        runs, _ = concurrent_chats(url, [inputs.first_turn(image_url, q) for q in questions], pairing.batch_tokens)
        many = [as_common(r) for r in runs]
        errors = [m["error"] for m in [one, *many] if m["error"]]
        out.append(
            {"one_decode_tps": one["decode_tps"], **report.batched_window(many), "error": errors[0] if errors else None}
        )
    return out


def as_common(m: Measurement) -> dict:
    """A streamed measurement in the shape report.figures reads (naive.py writes the same shape)."""
    t = m.timings
    server_ttft = t.get("ttft_ms")
    return {
        **m.to_dict(),
        "image_tokens": t.get("image_tokens"),
        "prompt_tokens": t.get("prompt_tokens"),
        "server_ttft_s": server_ttft / 1000 if server_ttft is not None else None,
        "decode_tps": t.get("decode_tokens_per_second"),
    }


def run_server(
    model_dir: Path,
    dtype: str,
    args: argparse.Namespace,
    image_url: str,
    env: dict,
    idle: Callable[[], None] = lambda: None,
    pairing: Pairing | None = None,
) -> dict:
    """Start the server with this dtype, measure every scenario (`idle` between some), stop it.

    A first start before it prepares the weights (PREPARED_WEIGHTS) where they are not yet kept; its time is
    `first_start_s`, and the measured server's `load_s` is then a later start's, as users restart.
    """
    log_path = args.log_dir / f"server-{dtype}.log"
    with Server(server_env(model_dir, dtype, args, env), log_path, args.root) as first:
        first_start_s = first.start()
    with Server(server_env(model_dir, dtype, args, env), log_path, args.root) as server:
        load_s = server.start()
        master, workers = server.pids()
        ours = [master, *workers, os.getpid()]
        before, meter = hardware.process_jiffies(ours), hardware.CpuMeter()
        raw = server_scenarios(server.url, image_url, args.max_tokens, args.clients, idle, pairing)
        raw["sweep"] = sweep.sweep(server.url, image_url, args.sweep, args.sweep_tokens) if args.sweep else []
        cpu = meter.result(hardware.process_jiffies(ours) - before)
        raw.update(
            load_s=load_s,
            first_start_s=first_start_s,
            kernels=server.health.get("kernels"),
            memory=server.memory(),
            cpu=cpu,
        )
    return raw


def server_env(model_dir: Path, dtype: str, args: argparse.Namespace, extra: dict) -> dict[str, str]:
    """The server's settings; its history (if it keeps one) goes to the log folder, not the project.

    No rate limit: the benchmark is one client sending about 40 requests a minute in bfloat16, past the
    default 30, and the limit is a policy for clients, not part of what a request costs. On a GPU, the
    settings the README gives for one: a batch for the sweep's largest size, threads for its streams.
    """
    env = {
        "MODEL_ID": str(model_dir),
        "DTYPE": dtype,
        "DEVICE": args.device,
        "TORCH_THREADS": str(args.threads),
        "DATA_DIR": str(args.log_dir / "server-data"),
        "RATE_LIMIT": "off",
    }
    if args.device != "cpu":
        batch = max([64, *args.sweep])
        env.update(MAX_BATCH=str(batch), QUEUE_SIZE=str(batch), THREADS=str(2 * batch + 16))
        env.update(PREFIX_CACHE_TOKENS=str(GPU_PREFIX_CACHE_TOKENS))
    return {**env, **extra}


def run_naive(model_dir: Path, dtype: str, args: argparse.Namespace, image_path: Path) -> dict:
    """bench/naive.py in its own process (never beside a server: one model copy at a time)."""
    out = args.log_dir / f"naive-{dtype}.json"
    command = [
        sys.executable,
        "-m",
        "bench.naive",
        "--model",
        str(model_dir),
        "--dtype",
        dtype,
        "--image",
        str(image_path),
        "--max-tokens",
        str(args.max_tokens),
        "--clients",
        str(args.clients),
        "--measured-clients",
        str(args.clients if args.naive_measured_clients is None else args.naive_measured_clients),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--launched-at",
        repr(time.time()),
        "--out",
        str(out),
    ]
    log.info("naive baseline, %s", dtype)
    before, meter = children_jiffies(), hardware.CpuMeter()
    with open(args.log_dir / f"naive-{dtype}.log", "ab") as sink:
        subprocess.run(command, check=True, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
    return {**json.loads(out.read_text()), "cpu": meter.result(children_jiffies() - before)}


def children_jiffies() -> int:
    """CPU jiffies used by this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((usage.ru_utime + usage.ru_stime) * os.sysconf("SC_CLK_TCK"))


def summarise(raw: dict, peak_rss: int, bytes_per_token: int, bandwidth: float) -> dict:
    """report.figures over one system's raw measurements."""
    out = report.figures(
        raw["first_turn"],
        raw["follow_up"],
        raw["concurrent"]["clients"],
        raw["concurrent"]["wall_s"],
        load_s=raw["load_s"],
        peak_rss_bytes=peak_rss,
        bytes_per_token=bytes_per_token,
        bandwidth=bandwidth,
    )
    out.update(report.step_figures(raw.get("decode_steps", {}), len(raw["concurrent"]["clients"])))
    out.update(report.paired_figures(raw.get("paired_decodes", []), bytes_per_token))
    out.update(report.paired_batch_figures(raw.get("paired_batches", [])))
    memory = raw.get("memory")  # the server's (the baseline has none): what it holds at rest after the run
    out["rest_rss_gb"] = (memory["worker_rss_bytes"] + memory["master_rss_bytes"]) / report.GB if memory else None
    out["prefix_cache_tokens"] = raw.get("prefix_cache_tokens")
    out["first_start_s"] = raw.get("first_start_s")
    return out


def bench_dtype(model_dir: Path, dtype: str, args: argparse.Namespace, image: tuple[str, Path], params: dict) -> dict:
    """Bandwidth samples, server and (unless skipped) naive baseline for one dtype."""
    samples: list[dict] = []
    on_cpu = args.device == "cpu"  # the CPU's memory bandwidth says nothing about a GPU's decoding

    def sample() -> None:
        if on_cpu:
            samples.append(hardware.read_bandwidth(threads=args.threads))

    sample()
    bytes_per_token = params["per_token"] * hardware.DTYPE_BYTES[dtype]
    result: dict = {"bytes_per_token": bytes_per_token, "raw": {}}
    meter = hardware.ReadMeter(threads=args.threads) if args.paired_rounds and on_cpu else None
    pairing = (
        Pairing(args.paired_rounds, args.paired_tokens, meter.sample, args.batch_rounds, args.batch_tokens)
        if meter
        else None
    )
    result["raw"]["server"] = run_server(model_dir, dtype, args, image[0], {}, idle=sample, pairing=pairing)
    del pairing, meter  # 1.5 GiB: gone before the baseline loads its model
    if not args.skip_naive:
        result["raw"]["naive"] = run_naive(model_dir, dtype, args, image[1])
        sample()
    best = max((s["read_bytes_per_s"] for s in samples), default=None)
    result["bandwidth"] = {"read_bytes_per_s": best, "samples": samples}
    for system, raw in result["raw"].items():
        peak = raw["memory"]["peak_rss_bytes"] if system == "server" else raw["peak_rss_bytes"]
        result[system] = summarise(raw, peak, bytes_per_token, best)
    return result


def bench_variant(model_dir: Path, spec: str, args: argparse.Namespace, image_url: str) -> dict:
    """A settings variant (e.g. IMAGE_MAX_EDGE=512) on the first dtype: load and first turn only."""
    name, _, value = spec.partition("=")
    env = {name: value}
    threads = int(value) if name == "TORCH_THREADS" else args.threads
    dtype = args.dtype[0]
    with Server(
        server_env(model_dir, dtype, args, env), args.log_dir / f"server-{name}-{value}.log", args.root
    ) as server:
        load_s = server.start()
        first = as_common(stream_chat(server.url, inputs.first_turn(image_url), args.max_tokens))
        memory = server.memory()
    return {
        "dtype": dtype,
        "env": env,
        "kernels": server.health.get("kernels"),
        "threads": threads,
        "load_s": load_s,
        "peak_rss_gb": memory["peak_rss_bytes"] / 1e9,
        **{
            k: first.get(k)
            for k in (
                "image_tokens",
                "prompt_tokens",
                "ttft_s",
                "server_ttft_s",
                "decode_tps",
                "client_decode_tps",
                "error",
            )
        },
    }


def git_state(root: Path) -> dict:
    """The server code's commit and whether the tree had uncommitted changes."""

    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    digest = hashlib.sha256()
    for path in sorted(root.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return {
        "root": str(root),
        "commit": git("rev-parse", "HEAD"),
        "python_files_sha256": digest.hexdigest(),
        "changed_files": git("status", "--porcelain", "--untracked-files=no").splitlines(),
    }


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="real model folder: config, tokenizer, processor")
    parser.add_argument("--checkpoint", type=Path, help="where the random checkpoint is (built if missing)")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument(
        "--paired-rounds",
        type=int,
        default=12,
        help="one-client decodes, each between two quick bandwidth samples (0: none)",
    )
    parser.add_argument("--paired-tokens", type=int, default=16, help="tokens generated per paired decode")
    parser.add_argument(
        "--batch-rounds",
        type=int,
        default=6,
        help="one client's decode, then all --clients at once on the cached image (0: none)",
    )
    parser.add_argument("--batch-tokens", type=int, default=32, help="tokens generated per client in those rounds")
    parser.add_argument("--threads", type=int, default=0, help="TORCH_THREADS for server, baseline, bandwidth")
    parser.add_argument(
        "--device",
        default="cpu",
        help="DEVICE for server and baseline, e.g. cuda; off the CPU there are no bandwidth samples or paired rounds",
    )
    parser.add_argument(
        "--sweep",
        type=int,
        nargs="*",
        default=[],
        help="clients at once on the cached image, one size after another, e.g. 1 4 16 64 (bench/sweep.py)",
    )
    parser.add_argument("--sweep-tokens", type=int, default=256, help="tokens generated per client in the sweep")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        help="extra server settings measured on the first dtype, first turn only: "
        "e.g. IMAGE_MAX_EDGE=512 TORCH_THREADS=1",
    )
    parser.add_argument(
        "--naive-measured-clients",
        type=int,
        help="of the baseline's sequential clients, how many to run (default: all); the "
        "rest are derived from its first turn (it serves one request at a time)",
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="the project folder gunicorn runs in")
    parser.add_argument("--skip-naive", action="store_true", help="measure the server only")
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=Path.home() / ".cache" / "loupe-bench" / "logs",
        help="server and baseline logs, the baseline's raw JSON and the image sent",
    )
    parser.add_argument("--label", default="", help="a note stored with the results, e.g. which server code")
    args = parser.parse_args()
    return args


def main() -> None:
    """Run every measurement, print the table, write JSON."""
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    begin, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    model_dir = build_checkpoint(args.source, args.checkpoint)
    photo = inputs.photo()
    jpeg = inputs.jpeg_bytes(photo)
    image_path = args.log_dir / "photo.jpg"
    image_path.write_bytes(jpeg)
    image = (inputs.data_url(jpeg), image_path)
    params = hardware.decode_weight_parameters(model_dir)
    results = {dtype: bench_dtype(model_dir, dtype, args, image, params) for dtype in args.dtype}
    variants = [bench_variant(model_dir, spec, args, image[0]) for spec in args.variants]
    document = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "started": started,
        "duration_s": time.perf_counter() - begin,
        "cpu": hardware.cpu_info(),
        "device": args.device,
        "gpu": hardware.gpu_info() if args.device != "cpu" else None,
        "checkpoint": str(model_dir),
        "parameters": params,
        "image": {"sent": list(photo.size), "bytes": len(jpeg)},
        "max_tokens": args.max_tokens,
        "clients": args.clients,
        "threads": args.threads,
        "server_code": {**git_state(args.root), "label": args.label},
        "results": results,
        "variants": variants,
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(render(document))


def render(document: dict) -> str:
    """The human-readable summary: context, the table, the clients' TTFTs, the variants."""
    results = document["results"]
    gpu = f"; GPU {document['gpu']}" if document.get("gpu") else ""
    lines = [
        f"Loupe benchmark, {document['started']}, {document['duration_s'] / 60:.1f} min{gpu}; "
        f"CPU {document['cpu']['model']} x{document['cpu']['cores']} {' '.join(document['cpu']['isa'])} "
        f"(torch uses {document['cpu'].get('torch_capability')}; limits {document['cpu'].get('limits') or 'none'}); "
        f"{document['max_tokens']} tokens per request; image {document['image']['sent'][0]}x"
        f"{document['image']['sent'][1]} sent"
    ]
    for dtype, result in results.items():
        noise = ", ".join(
            f"{system} {raw['cpu']['others_share']:.0%}" for system, raw in result["raw"].items() if raw.get("cpu")
        )
        lines.append(f"{dtype}: other processes' share of the CPU while measuring: {noise}")
        lines.append(f"{dtype}: the server's kernels: {result['raw'].get('server', {}).get('kernels')}")
        samples = ", ".join(f"{s['read_bytes_per_s'] / 1e9:.1f}" for s in result["bandwidth"].get("samples", []))
        if samples:
            lines.append(
                f"{dtype}: read bandwidth {result['bandwidth']['read_bytes_per_s'] / 1e9:.1f} GB/s, the "
                f"highest of the run's samples ({samples}); {result['bytes_per_token'] / 1e9:.2f} GB of "
                "weights read per token"
            )
    lines += ["", report.table(results), "", report.client_ttft_lines(results)]
    for dtype, result in results.items():
        if result["raw"]["server"].get("sweep"):
            naive = result.get("naive")
            lines += ["", f"{dtype}: the concurrency sweep", "", sweep.table(result["raw"]["server"]["sweep"], naive)]
    lines += report.error_lines(results)
    for dtype, result in results.items():
        naive = result.get("raw", {}).get("naive", {}).get("concurrent", {})
        if naive and naive.get("measured_clients", 0) < len(naive.get("clients", [])):
            lines.append(
                f"{dtype} naive: {naive['measured_clients']} of {len(naive['clients'])} sequential "
                "clients run; the others take the first turn's time after those before them"
            )
    for v in document.get("variants", []):
        lines.append(
            f"variant {v['env']} ({v['dtype']}, kernels {v.get('kernels')}): image tokens {v['image_tokens']}, TTFT "
            f"{report.fmt(v['ttft_s'])} s, decode {report.fmt(v['decode_tps'])} tok/s, "
            f"peak RSS {report.fmt(v['peak_rss_gb'])} GB, load {report.fmt(v['load_s'])} s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
