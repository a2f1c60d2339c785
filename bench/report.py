"""Turn raw measurements into the benchmark's figures, and the figures into a table."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

GB = 1e9

# (key, label, unit, better): the table's rows, in order; "better" says which way a ratio should go.
ROWS = (
    ("first_start_s", "first start: to /health ok, preparing the weights (server)", "s", "lower"),
    ("load_s", "load time to /health ok (server: a later start)", "s", "lower"),
    ("peak_rss_gb", "peak RSS", "GB", "lower"),
    ("rest_rss_gb", "RSS at rest after the run", "GB", "lower"),
    ("prefix_cache_tokens", "prefix cache after the run (server /metrics)", "tokens", ""),
    ("image_tokens", "image tokens (first turn)", "", ""),
    ("prompt_tokens", "prompt tokens (first turn)", "", ""),
    ("ttft_s", "first turn: TTFT (client)", "s", "lower"),
    ("server_ttft_s", "first turn: TTFT (server timings)", "s", "lower"),
    ("decode_tps", "first turn: decode tokens/s (server timings)", "tok/s", "higher"),
    ("client_decode_tps", "first turn: decode tokens/s (client)", "tok/s", "higher"),
    ("decode_efficiency", "decode efficiency (tok/s x bytes/token / the run's best bandwidth)", "", "higher"),
    (
        "paired_efficiency",
        "decode efficiency, paired (one client / bandwidth sampled just before and after; median)",
        "",
        "higher",
    ),
    ("follow_up_prompt_tokens", "follow-up: prompt tokens", "", ""),
    ("follow_up_ttft_s", "follow-up: TTFT (client)", "s", "lower"),
    ("follow_up_ttft_ratio", "follow-up TTFT / first-turn TTFT", "", "lower"),
    ("concurrent_batched_decode_tps", "4 clients: aggregate decode tokens/s while all four decode", "tok/s", "higher"),
    ("concurrent_speedup", "4 clients: that / one client's decode tokens/s", "", "higher"),
    (
        "batch_speedup",
        "4 clients / one, paired: all four decoding at once / one client just before; median",
        "",
        "higher",
    ),
    ("concurrent_decode_tps", "4 clients: aggregate decode tokens/s, prefill stalls included", "tok/s", "higher"),
    ("step_tps_1", "decode passes of 1 sequence: tokens/s (server /metrics)", "tok/s", "higher"),
    ("step_tps_n", "decode passes of all 4 sequences: tokens/s (server /metrics)", "tok/s", "higher"),
    ("step_speedup", "decode passes: 4 sequences' tokens/s / 1 sequence's", "", "higher"),
    ("concurrent_throughput_tps", "4 clients: tokens / wall time (prefill included)", "tok/s", "higher"),
    ("concurrent_ttft_best_s", "4 clients: TTFT, first served", "s", "lower"),
    ("concurrent_ttft_median_s", "4 clients: TTFT, median", "s", "lower"),
    ("concurrent_ttft_worst_s", "4 clients: TTFT, last served", "s", "lower"),
    ("concurrent_wall_s", "4 clients: wall time until the last finishes", "s", "lower"),
)


def union_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def concurrent_figures(clients: list[dict], wall_s: float) -> dict:
    """Aggregate decode rate over the time any client was decoding, and each client's TTFT."""
    done = [c for c in clients if c.get("ttft_s") is not None and c.get("finished_s") is not None]
    tokens_after_first = sum(max(c["completion_tokens"] - 1, 0) for c in done)
    decoding = union_seconds((c["ttft_s"], c["finished_s"]) for c in done)
    ttfts = sorted(c["ttft_s"] for c in done)
    return {
        "concurrent_decode_tps": tokens_after_first / decoding if decoding > 0 else None,
        **batched_window(done),
        "concurrent_throughput_tps": sum(c["completion_tokens"] for c in done) / wall_s if wall_s else None,
        "concurrent_ttfts_s": [c.get("ttft_s") for c in clients],
        "concurrent_ttft_best_s": ttfts[0] if ttfts else None,
        "concurrent_ttft_median_s": statistics.median(ttfts) if ttfts else None,
        "concurrent_ttft_worst_s": ttfts[-1] if ttfts else None,
        "concurrent_wall_s": wall_s,
        "concurrent_failures": len(clients) - len(done),
    }


def batched_window(clients: list[dict]) -> dict:
    """Decode rate from the last client's first token to the first client's end: all rows in one batch.

    Outside that window a joining client's prefill holds everyone's decoding (there is no chunked
    prefill), so the rate over any client's decoding mixes batching with those stalls. Counts chunks
    with content, which can be fewer than tokens (bytes of a character are held back): a lower bound.
    """
    if len(clients) < 2 or any(not c.get("content_s") for c in clients):
        return {"concurrent_batched_decode_tps": None, "concurrent_batched_window_s": None}
    begin = max(c["ttft_s"] for c in clients)
    end = min(c["finished_s"] for c in clients)
    chunks = sum(1 for c in clients for t in c["content_s"] if begin < t <= end)
    rate = chunks / (end - begin) if end > begin and chunks else None
    return {"concurrent_batched_decode_tps": rate, "concurrent_batched_window_s": end - begin}


def step_figures(steps: dict[str, dict[str, float]], clients: int) -> dict:
    """Aggregate decode rates from the server's forward-pass histogram: batch size / mean pass time."""

    def rate(size: int) -> float | None:
        step = steps.get(str(size), {})
        return size * step["count"] / step["sum"] if step.get("count") and step.get("sum") else None

    one, many = rate(1), rate(clients)
    return {"step_tps_1": one, "step_tps_n": many, "step_speedup": many / one if one and many else None}


def paired_figures(rounds: list[dict], bytes_per_token: int) -> dict:
    """Each paired round's decode efficiency against the mean of its two bandwidth samples, and their median."""
    each = [
        r["decode_tps"] * bytes_per_token * 2 / (r["bandwidth_before"] + r["bandwidth_after"])
        for r in rounds
        if r.get("decode_tps") and r.get("bandwidth_before") and r.get("bandwidth_after")
    ]
    return {"paired_efficiencies": each, "paired_efficiency": statistics.median(each) if each else None}


def paired_batch_figures(rounds: list[dict]) -> dict:
    """Each round's rate while all clients decode against its own one-client rate, and their median."""
    each = [
        r["concurrent_batched_decode_tps"] / r["one_decode_tps"]
        for r in rounds
        if r.get("concurrent_batched_decode_tps") and r.get("one_decode_tps")
    ]
    return {"batch_speedups": each, "batch_speedup": statistics.median(each) if each else None}


def figures(
    first: dict,
    follow: dict,
    clients: list[dict],
    wall_s: float,
    *,
    load_s: float,
    peak_rss_bytes: int,
    bytes_per_token: int,
    bandwidth: float | None,
) -> dict:
    """Every figure of one system (server or naive) from its measurements in the common shape."""
    decode = first.get("decode_tps")
    out = {
        "load_s": load_s,
        "peak_rss_gb": peak_rss_bytes / GB if peak_rss_bytes else None,
        "image_tokens": first.get("image_tokens"),
        "prompt_tokens": first.get("prompt_tokens"),
        "ttft_s": first.get("ttft_s"),
        "server_ttft_s": first.get("server_ttft_s"),
        "decode_tps": decode,
        "client_decode_tps": first.get("client_decode_tps"),
        "decode_efficiency": decode * bytes_per_token / bandwidth if decode and bandwidth else None,
        "follow_up_prompt_tokens": follow.get("prompt_tokens"),
        "follow_up_ttft_s": follow.get("ttft_s"),
    }
    if out["ttft_s"] and out["follow_up_ttft_s"]:
        out["follow_up_ttft_ratio"] = out["follow_up_ttft_s"] / out["ttft_s"]
    out.update(concurrent_figures(clients, wall_s))
    if decode and out["concurrent_batched_decode_tps"]:
        out["concurrent_speedup"] = out["concurrent_batched_decode_tps"] / decode
    return out


def ratio(server: float | None, naive: float | None) -> float | None:
    """server / naive, when both exist."""
    if server is None or naive is None or naive == 0:
        return None
    return server / naive


def fmt(value, digits: int = 3) -> str:
    """A number for the table: 3 significant digits, or '-'."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def table(results: dict[str, dict]) -> str:
    """A Markdown table: per dtype, the server, the naive baseline and server/naive."""
    dtypes = list(results)
    header = ["figure", "unit"]
    for dtype in dtypes:
        header += [f"{dtype} server", f"{dtype} naive", "server/naive"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, label, unit, better in ROWS:
        cells = [label + (f" ({better} is better)" if better else ""), unit]
        for dtype in dtypes:
            server = results[dtype].get("server", {}).get(key)
            naive = results[dtype].get("naive", {}).get(key)
            r = ratio(server, naive)
            cells += [fmt(server), fmt(naive), f"{r:.2f}x" if r is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def client_ttft_lines(results: dict[str, dict]) -> str:
    """Each of the four clients' TTFT, per dtype and system."""
    lines = []
    for dtype, systems in results.items():
        for name in ("server", "naive"):
            ttfts = systems.get(name, {}).get("concurrent_ttfts_s")
            if ttfts:
                lines.append(f"{dtype} {name}: 4 clients' TTFT (s): " + ", ".join(fmt(t) for t in ttfts))
    return "\n".join(lines)


def error_lines(results: dict[str, dict]) -> list[str]:
    """Every failed request, so a '-' in the table has its reason beside it."""
    lines = []
    for dtype, result in results.items():
        for system, raw in result.get("raw", {}).items():
            requests = [("first turn", raw["first_turn"]), ("follow-up", raw["follow_up"])]
            requests += [(f"client {i + 1}", c) for i, c in enumerate(raw["concurrent"]["clients"])]
            requests += [(f"paired decode {i + 1}", r) for i, r in enumerate(raw.get("paired_decodes", []))]
            requests += [(f"paired batch {i + 1}", r) for i, r in enumerate(raw.get("paired_batches", []))]
            lines += [f"ERROR {dtype} {system} {name}: {r['error']}" for name, r in requests if r.get("error")]
    return lines
