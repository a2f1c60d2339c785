"""The concurrency sweep: 1, 4, 16, 64 ... clients at once, what a GPU's large batches are for.

Each client asks its own question about the first turn's image, whose conversation the server has
cached, so a join costs a copy of that prefix and a few tokens' prefill, and the clients soon decode
together. Per size: the aggregate decode rate while all of them decode (report.batched_window: content
chunks from the last client's first token to the first client's end), the rate over all their
decoding with the joins' stalls included, tokens over wall time, and the clients' TTFTs. The naive
baseline serves one request at a time, so its aggregate for any number of clients is one client's.
"""

from __future__ import annotations

import logging
import statistics

from bench import inputs, report
from bench.client import concurrent_chats

log = logging.getLogger("bench.sweep")


def questions(count: int) -> list[str]:
    """`count` different questions: the four clients' questions, numbered past the first four."""
    base = inputs.CLIENT_QUESTIONS
    return [base[i % len(base)] + ("" if i < len(base) else f" (viewer {i + 1})") for i in range(count)]


def sweep(url: str, image_url: str, sizes: list[int], max_tokens: int) -> list[dict]:
    """Each size's clients at once, `max_tokens` tokens each; one dict of figures per size."""
    out = []
    for size in sizes:
        log.info("sweep: %d clients at once, %d tokens each", size, max_tokens)
        conversations = [inputs.first_turn(image_url, q) for q in questions(size)]
        runs, wall = concurrent_chats(url, conversations, max_tokens)
        clients = [{**r.to_dict(), "ttft_s": r.ttft_s, "finished_s": r.finished_s} for r in runs]
        out.append(size_figures(size, clients, wall))
    return out


def size_figures(size: int, clients: list[dict], wall_s: float) -> dict:
    """One size's figures from its clients' measurements (the shape client.Measurement.to_dict gives)."""
    done = [c for c in clients if not c.get("error") and c.get("finished_s") is not None]
    figures = report.concurrent_figures(done, wall_s)
    if size == 1 and done:  # one client: its own decode rate is the batch's
        figures["concurrent_batched_decode_tps"] = done[0].get("client_decode_tps")
    ttfts = [c["ttft_s"] for c in done if c.get("ttft_s") is not None]
    return {
        "clients": size,
        "failures": size - len(done),
        "errors": sorted({c["error"] for c in clients if c.get("error")})[:3],
        "batched_decode_tps": figures["concurrent_batched_decode_tps"],
        "batched_window_s": figures.get("concurrent_batched_window_s"),
        "decode_tps_with_stalls": figures["concurrent_decode_tps"],
        "throughput_tps": figures["concurrent_throughput_tps"],
        "ttft_median_s": statistics.median(ttfts) if ttfts else None,
        "ttft_worst_s": max(ttfts) if ttfts else None,
        "wall_s": wall_s,
    }


def table(rows: list[dict], naive: dict | None) -> str:
    """A Markdown table of the sweep: per size, the server's rates, its gain over one client, the baseline's."""
    one = next((r["batched_decode_tps"] for r in rows if r["clients"] == 1), None)
    naive_tps = (naive or {}).get("decode_tps")
    lines = [
        "| clients at once | aggregate decode tok/s while all decode | ÷ one client | with the joins' stalls | "
        "tokens ÷ wall time | TTFT median / worst (s) | naive aggregate tok/s (one at a time) | server ÷ naive |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = r["batched_decode_tps"]
        gain = rate / one if rate and one else None
        ratio = rate / naive_tps if rate and naive_tps else None
        lines.append(
            f"| {r['clients']} | {report.fmt(rate)} | {report.fmt(gain)}x | {report.fmt(r['decode_tps_with_stalls'])} "
            f"| {report.fmt(r['throughput_tps'])} | {report.fmt(r['ttft_median_s'])} / {report.fmt(r['ttft_worst_s'])} "
            f"| {report.fmt(naive_tps)} | {report.fmt(ratio)}x |"
        )
    return "\n".join(lines)
