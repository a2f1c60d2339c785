"""Where a first question's time goes: the prompt's prefill (vision encoder and text decoder), against the CPU's peak.

    python -m bench.prefill --model DIR [--dtype float32] [--repeats 2]

Loads the model as the server does (LINEAR_KERNEL=native, the fastest variant this CPU runs, or the
one ATEN_CPU_CAPABILITY allows), reads the benchmark's photo at the server's 768 px budget with the
first question, and reports:
- the prefill's seconds (best of `--repeats`, after one to warm up);
- the linear layers' arithmetic, counted exactly (2 x rows x inputs x outputs per call), and its rate;
- the CPU's float32 multiply-add peak, measured by the same build's `fma_peak` (independent chains of
  fused multiply-adds in registers on every thread: the rate nothing that reads memory can pass);
- the prefill's time by kind (torch's profiler): Loupe's linear kernel, attention, everything else.
Efficiency is the linear layers' arithmetic over the whole prefill's time and the measured peak:
attention's arithmetic is left out, so it errs low.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
from torch.profiler import profile

from bench import inputs
from loupe.inference import ImagePart, Message, SamplingParams, TextPart
from loupe.protocol.images import fit_to_edges
from loupe.runtime.loader import load
from loupe.runtime.native_kernel import NativeLinear, ops, variant_of
from loupe.settings import Settings

ONE_TOKEN = SamplingParams(max_tokens=1, temperature=0.0, top_p=1.0, top_k=0, presence_penalty=0.0, ignore_eos=True)


def prefill_seconds(backend, prompt) -> float:
    """One prefill of `prompt` (its first token sampled), nothing cached."""
    begin = time.perf_counter()
    sequence = backend.start(prompt, ONE_TOKEN)
    seconds = time.perf_counter() - begin
    backend.finish(sequence)  # out of the batch (PREFIX_CACHE_TOKENS=0: nothing kept)
    return seconds


def count_linear_flops(model: torch.nn.Module) -> Counter[str]:
    """Hooks that add each native linear call's arithmetic to the returned counter (key "flops")."""
    counted: Counter[str] = Counter()

    def hook(module, args, _output) -> None:
        rows = args[0].numel() // module.in_features
        counted["flops"] += 2 * rows * module.in_features * module.out_features

    for module in model.modules():
        if isinstance(module, NativeLinear):
            module.register_forward_hook(hook)
    return counted


def by_kind(backend, prompt) -> dict[str, float]:
    """Seconds of one prefill in the linear kernel, attention and everything else (torch's profiler)."""
    with profile() as recorded:
        prefill_seconds(backend, prompt)
    kinds: Counter[str] = Counter()
    for event in recorded.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        if event.key.endswith("::blocked_linear"):
            kinds["linear"] += seconds
        elif "attention" in event.key:
            kinds["attention"] += seconds
        else:
            kinds["other"] += seconds
    return dict(kinds)


def main() -> None:
    """Print the prefill's figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    settings = Settings.from_mapping({"MODEL_ID": args.model, "DTYPE": args.dtype, "PREFIX_CACHE_TOKENS": "0"})
    backend = load(settings)
    variant = variant_of(backend.model)
    if variant is None:
        raise SystemExit("the native kernels are not in use here (see the log)")
    image = fit_to_edges(inputs.photo(), settings.image_max_edge)
    messages = [Message("user", (ImagePart(image=image), TextPart(inputs.FIRST_QUESTION)))]
    prompt = backend.prepare(messages, 1)
    prefill_seconds(backend, prompt)  # warm: first calls allocate and fault in pages
    counted = count_linear_flops(backend.model)
    seconds = min(prefill_seconds(backend, prompt) for _ in range(args.repeats))
    flops = counted["flops"] / args.repeats
    peak = max(ops(variant).fma_peak(20_000_000) for _ in range(3))
    kinds = by_kind(backend, prompt)
    total = sum(kinds.values())
    print(f"kernels {variant}, {torch.get_num_threads()} threads, {args.dtype}, {len(prompt.keys)} prompt tokens")
    print(f"prefill {seconds:.2f} s; linear layers {flops / 1e12:.2f} TFLOP")
    print(f"float32 FMA peak, measured: {peak:.0f} GFLOP/s")
    # Two significant digits: a tiny model's efficiency would print as 0.00.
    print(f"efficiency: linear arithmetic / prefill time / peak = {flops / seconds / 1e9 / peak:.2g}")
    print(
        "time by kind (profiled run): "
        + ", ".join(f"{kind} {s:.2f} s ({s / total:.0%})" for kind, s in sorted(kinds.items(), key=lambda kv: -kv[1]))
    )
    rate = flops / kinds["linear"] / 1e9
    print(f"the linear kernel alone: {rate:.0f} GFLOP/s = {rate / peak:.2f} of peak")


if __name__ == "__main__":
    main()
