"""How fast each CPU kernel reads a linear layer's weights, against the machine's read bandwidth.

    python -m bench.kernel_rates [--threads 2] [--rows 1 2 4]

A decode step multiplies a few rows (one per sequence in the batch) by every weight matrix once, so
it is bound by how fast the kernel streams the weights. This cycles through twelve 2048x6144 layers
(600 MB in float32, far beyond any L3 cache) with each LINEAR_KERNEL: torch's default (`blas`), oneDNN
on the plain weights (`onednn`), the service's PackedLinear (`packed`: oneDNN on weights rearranged
once into its blocked layout) and its NativeLinear in every variant this CPU runs (`avx512_bf16`,
`avx512`, `avx2`: Loupe's own kernel, built into KERNEL_CACHE_DIR), interleaving them so noise hits all
alike, and prints the best effective GB/s of each beside torch.sum over the same bytes. `--rows 600`
shows a prompt's rate as GFLOP/s instead.

`--attention 1 4` measures one-token attention instead, for that many sequences: torch's SDPA (as
transformers calls it) against each variant's decode_attention over 28 layers of a 480-token KV cache of
Qwen3-VL-2B's shape (16 query heads, 8 key-value heads of 128), each pass after flushing the caches.
"""

from __future__ import annotations

import argparse
import logging
import time
from functools import partial

import torch
import torch.nn.functional as F

from loupe.runtime import native_build, native_kernel
from loupe.runtime.kernels import use_linear_kernel
from loupe.settings import Settings

log = logging.getLogger("bench.kernel_rates")
IN_FEATURES, OUT_FEATURES, LAYERS = 2048, 6144, 12
PROMPT_ROWS = 64  # from this many rows on, a kernel's rate is given in GFLOP/s


def variants() -> list[str]:
    """The native variants this CPU runs that are built (or build) here."""
    cache_dir = Settings().kernel_cache_dir
    return [v for v in native_build.variants_here() if native_build.unavailable(cache_dir, v) is None]


def served(weights: list[torch.Tensor], kernel: str, variant: str | None = None) -> torch.nn.Sequential:
    """The layers as the service holds them with LINEAR_KERNEL=`kernel` (native: in `variant`)."""
    layers = torch.nn.Sequential(*(torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta") for w in weights))
    for layer, w in zip(layers, weights, strict=True):
        # A copy each: native rearranges its weights in place, and `weights` must stay plain for blas/onednn.
        layer.weight = torch.nn.Parameter(w.clone(), requires_grad=False)
    moved = use_linear_kernel(layers, kernel, Settings().kernel_cache_dir, variant)
    if moved[kernel] != len(weights):
        raise SystemExit(f"LINEAR_KERNEL={kernel} is not available here: {dict(moved)} (see the log)")
    return layers


def kernels(x: torch.Tensor, weights: list[torch.Tensor], data: torch.Tensor) -> dict:
    """Name → one pass over every layer."""
    packed = served(weights, "packed")
    native = {v: served(weights, "native", v) for v in variants()} if native_kernel.fits(weights[0]) else {}
    return {
        "sum": lambda: data.sum(),
        "blas": lambda: [F.linear(x, w) for w in weights],
        "onednn": lambda: [torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "") for w in weights],
        "packed": lambda: [layer(x) for layer in packed],
        **{v: (lambda layers=layers: [layer(x) for layer in layers]) for v, layers in native.items()},
    }


def measure(dtype: torch.dtype, rows: int, repeats: int) -> dict[str, float]:
    """Best effective GB/s (GFLOP/s from PROMPT_ROWS rows) of each kernel over `repeats` interleaved passes."""
    weights = [torch.randn(OUT_FEATURES, IN_FEATURES).to(dtype) for _ in range(LAYERS)]
    total = sum(w.numel() * w.element_size() for w in weights)
    data = torch.ones(total // 4)
    x = torch.randn(rows, IN_FEATURES).to(dtype)
    passes = kernels(x, weights, data)
    best = dict.fromkeys(passes, float("inf"))
    with torch.inference_mode():
        for _ in range(repeats):
            for name, run in passes.items():
                begin = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - begin)
    if rows >= PROMPT_ROWS:  # compute-bound: arithmetic per second; torch.sum's figure stays GB/s
        work = dict.fromkeys(best, 2 * rows * IN_FEATURES * OUT_FEATURES * LAYERS) | {"sum": total}
    else:
        work = dict.fromkeys(best, total)
    return {name: work[name] / seconds / 1e9 for name, seconds in best.items()}


def decode_passes(ops, query: torch.Tensor, caches: list) -> list[torch.Tensor]:
    """One pass of a variant's decode_attention over every layer's cache."""
    return [ops.decode_attention(query, k, v, None, 0.088) for k, v in caches]


def attention(dtype: torch.dtype, sequences: int, repeats: int, length: int = 480) -> dict[str, float]:
    """Best effective GB/s of the KV cache read by SDPA and by each native variant's kernel, interleaved."""
    if not variants():
        raise SystemExit("the native kernels are not available here (see the log)")
    query = torch.randn(sequences, 16, 1, 128, dtype=dtype)
    caches = [
        [torch.randn(sequences, 8, length + 128, 128, dtype=dtype)[:, :, :length] for _ in range(2)] for _ in range(28)
    ]  # views of buffers with room to spare, as the service's cache holds them
    flush = torch.ones(2**26)  # 256 MB: the cache comes from memory, as in a decode step
    passes = {
        "sdpa": lambda: [F.scaled_dot_product_attention(query, k, v, scale=0.088, enable_gqa=True) for k, v in caches],
        **{name: partial(decode_passes, native_kernel.ops(name), query, caches) for name in variants()},
    }
    best = dict.fromkeys(passes, float("inf"))
    with torch.inference_mode():
        for _ in range(repeats):
            for name, run in passes.items():
                flush.sum()
                begin = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - begin)
    total = sum(k.numel() * k.element_size() * 2 for k, _ in caches)
    return {name: total / seconds / 1e9 for name, seconds in best.items()} | {"ms": best}


def main() -> None:
    """Print a Markdown table: GB/s per kernel, dtype and rows."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--attention", type=int, nargs="+", help="measure one-token attention for these batch sizes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = variants()
    if args.attention:
        log.info("| dtype | sequences | sdpa ms | %s |", " | ".join(f"{n} ms | {n}/sdpa" for n in names))
        log.info("|%s", " --- |" * (3 + 2 * len(names)))
        for dtype in (torch.float32, torch.bfloat16):
            for sequences in args.attention:
                ms = attention(dtype, sequences, args.repeats)["ms"]
                cells = [f"{ms[n] * 1e3:.1f} | {ms['sdpa'] / ms[n]:.2f}" for n in names]
                log.info(
                    "| %s | %d | %.1f | %s |",
                    str(dtype).removeprefix("torch."),
                    sequences,
                    ms["sdpa"] * 1e3,
                    " | ".join(cells),
                )
        return
    kernels = ["sum", "blas", "onednn", "packed", *names]
    log.info(
        "threads: %d; torch uses %s\n\n| dtype | rows | unit | %s | packed/onednn | best native/packed |",
        torch.get_num_threads(),
        torch.backends.cpu.get_cpu_capability(),
        " | ".join(kernels),
    )
    log.info("|%s", " --- |" * (len(kernels) + 5))
    for dtype in (torch.float32, torch.bfloat16):
        for rows in args.rows:
            r = measure(dtype, rows, args.repeats)
            cells = [str(dtype).removeprefix("torch."), str(rows), "GFLOP/s" if rows >= PROMPT_ROWS else "GB/s"]
            cells += [f"{r[name]:.1f}" if name in r else "-" for name in kernels]
            best = max((r[n] for n in names if n in r), default=None)
            cells += [f"{r['packed'] / r['onednn']:.2f}", f"{best / r['packed']:.2f}" if best else "-"]
            log.info("| %s |", " | ".join(cells))


if __name__ == "__main__":
    main()
