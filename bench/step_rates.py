"""Decode-step rates of the service's backend on its device, by batch size, and where a step's time goes.

    python -m bench.step_rates --model DIR --device cuda --dtype bfloat16 --rows 1 4 16 64 --context 480

Loads the model through Loupe's loader (as the server does), starts `rows` sequences of about
`--context` text tokens each, and times `backend.advance()` (one forward pass for every row, then every
row's next token picked, with one copy to the host) over `--steps` steps: with the service's decode
step, then with transformers' forward in its place. Then a torch.profiler table of a few passes of
the largest batch: where the time of a step goes, on the host and on the device. Last, a first
question's way to its first token on the server's side: the image read as a request's is (decoded,
scaled to IMAGE_MAX_EDGE), the prompt built (`prepare`), the prompt read (`start`), each timed, and a
profile of one reading.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time

import torch

from bench import inputs
from loupe.inference import Message, SamplingParams, TextPart
from loupe.protocol.images import read_image
from loupe.runtime.decode_step import TransformersDecodeStep
from loupe.runtime.loader import load
from loupe.settings import Settings

# The service's defaults for a text question, greedy: the penalties' bookkeeping is part of a step.
SAMPLING = SamplingParams(max_tokens=4096, temperature=0.0, top_p=1.0, top_k=0, presence_penalty=2.0, ignore_eos=True)


def step_seconds(backend, rows: int, context: int, steps: int, around=contextlib.nullcontext) -> float:
    """Mean seconds of one `advance()` over `steps` passes of `rows` sequences, inside `around()` (after
    two passes outside it)."""
    words = " ".join(f"word{i}" for i in range(context // 3))
    sequences = [
        backend.start(backend.prepare([Message("user", (TextPart(f"{row} {words}"),))], steps + 8), SAMPLING)
        for row in range(rows)
    ]

    def advance() -> None:
        for sequence in sequences:
            backend.sample(sequence)
        backend.advance()  # ends with the copy of the picked tokens to the host: the device is done

    try:
        advance()
        advance()
        with around():
            begin = time.perf_counter()
            for _ in range(steps):
                advance()
            return (time.perf_counter() - begin) / steps
    finally:
        for sequence in sequences:
            backend.finish(sequence)


def first_question(backend, settings: Settings, activities: list) -> None:
    """Time the server's side of a first question up to its first token (median of 5), then profile the prefill."""
    jpeg = inputs.jpeg_bytes(inputs.photo())
    times: dict[str, list[float]] = {"image": [], "prepare": [], "start": []}
    for _ in range(5):
        begin = time.perf_counter()
        part = read_image(jpeg, settings)
        image_done = time.perf_counter()
        prompt = backend.prepare([Message("user", (part, TextPart(inputs.FIRST_QUESTION)))], 32)
        prepared = time.perf_counter()
        backend.finish(backend.start(prompt, SAMPLING))  # start ends with the first token on the host
        times["image"].append(image_done - begin)
        times["prepare"].append(prepared - image_done)
        times["start"].append(time.perf_counter() - prepared)
    medians = ", ".join(f"{name} {sorted(values)[2] * 1000:.1f} ms" for name, values in times.items())
    print(f"first question ({prompt.prompt_tokens} tokens, {prompt.image_tokens} of the image): {medians}")
    with torch.profiler.profile(activities=activities) as profiler:
        backend.finish(backend.start(prompt, SAMPLING))
    print("one prompt read (start):")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48))


def main() -> None:
    """Time each batch size with both steps, print a table, then the profile of the largest batch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (Hugging Face format)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--context", type=int, default=480, help="about how many prompt tokens each row has")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env = {"MODEL_ID": args.model, "DEVICE": args.device, "DTYPE": args.dtype, "PREFIX_CACHE_TOKENS": "0"}
    settings = Settings.from_mapping(env)
    backend = load(settings)
    steps = {"service": backend.decode_step, "transformers": TransformersDecodeStep(backend.model)}
    print(f"| rows | {' | '.join(f'{name} ms/step | {name} tok/s' for name in steps)} |")
    print("|---|" + "---|---|" * len(steps))
    for rows in args.rows:
        cells = []
        for step in steps.values():
            backend.decode_step = step
            seconds = step_seconds(backend, rows, args.context, args.steps)
            cells += [f"{seconds * 1000:.2f}", f"{rows / seconds:.0f}"]
        print(f"| {rows} | {' | '.join(cells)} |", flush=True)
    backend.decode_step = steps["service"]
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)
    step_seconds(backend, max(args.rows), args.context, 3, around=lambda: profiler)
    print(f"three passes of {max(args.rows)} rows:")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=48))
    first_question(backend, settings, activities)


if __name__ == "__main__":
    main()
