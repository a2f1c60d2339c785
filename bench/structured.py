"""What a JSON answer's grammar costs a decode step, beside a float32 decode step of the same model.

    python -m bench.structured --model ~/.cache/loupe-bench/qwen3-vl-2b-instruct-random
    python -m bench.structured --tokenizer ../shared/models/qwen3-vl-2b-instruct   # the mask only, no weights

Loads the model through Loupe's loader, as the server does (`--model`: the checkpoint
`bench.build_checkpoint` makes from ../shared/models/qwen3-vl-2b-instruct, with its real tokenizer
and full vocabulary). For each shipped schema (static/schemas/) and a small one, it walks an answer
token by token, picking each from random full-width logits the way the sampler does, twice per
step: free, and with the schema's grammar (the mask computed by llguidance, applied to the logits,
the token followed, the ending planned). The difference is the grammar's cost per step (median, 90th
percentile, worst). Then a decode step of one sequence (`backend.advance()`) in float32, timed as
bench/step_rates.py times it, and the ratio of the two. With `--tokenizer` instead of `--model`, only
the mask's part, from the real model folder's tokenizer and config (no weights needed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoTokenizer

from bench.step_rates import step_seconds
from loupe.inference import SamplingParams
from loupe.protocol.response_formats import parse_response_format
from loupe.runtime.grammar import Grammars
from loupe.runtime.loader import load
from loupe.runtime.sampling import Sampler, pick_tokens
from loupe.settings import Settings

SCHEMAS = Path(__file__).resolve().parent.parent / "static" / "schemas"
SMALL = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}}, "required": ["ok"]}
GREEDY = SamplingParams(max_tokens=512, temperature=0.0, top_p=1.0, top_k=0, presence_penalty=0.0)


def schemas() -> dict[str, dict]:
    """The shipped schemas and a small one, by name."""
    found = {path.stem: json.loads(path.read_text()) for path in sorted(SCHEMAS.glob("*.json"))}
    return {"small": SMALL, **found}


def walk(backend, schema: dict, steps: int, seed: int) -> list[float]:
    """Seconds the grammar adds to each step of one answer (at most `steps`), picked from random logits."""
    fmt = parse_response_format({"type": "json_schema", "json_schema": {"name": "bench", "schema": schema}})
    grammars = backend.grammars
    sampling = replace(GREEDY, max_tokens=max(GREEDY.max_tokens, (grammars.compile(fmt).shortest or 0) + 64))
    constrained = Sampler(sampling, grammars.matcher(fmt, sampling.max_tokens))
    free = Sampler(sampling)
    generator = torch.Generator().manual_seed(seed)
    device = backend.on_device
    added = []
    for _ in range(min(steps, sampling.max_tokens)):
        logits = torch.randn((1, grammars.vocab_size), generator=generator).to(device)
        begin = time.perf_counter()
        pick_tokens([free], logits)
        middle = time.perf_counter()
        pick_tokens([constrained], logits)
        added.append((time.perf_counter() - middle) - (middle - begin))
        if constrained.constraint is not None and constrained.constraint.complete:
            break
    return added


def settings_for(model: str) -> Settings:
    """The server's settings for `model` in float32, without a prefix cache (every timed step is a decode)."""
    return Settings.from_mapping({"MODEL_ID": model, "DTYPE": "float32", "PREFIX_CACHE_TOKENS": "0"})


def grammar_only(folder: str) -> SimpleNamespace:
    """What `walk` needs of a backend, from a model folder's tokenizer and config: no weights."""
    config = json.loads((Path(folder) / "config.json").read_text())
    generation = json.loads((Path(folder) / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    grammars = Grammars(tokenizer, config["text_config"]["vocab_size"], set(eos if isinstance(eos, list) else [eos]))
    return SimpleNamespace(grammars=grammars, on_device=torch.device("cpu"))


def main() -> None:
    """Print the grammar's cost per step by schema, the decode step, and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="model folder (bench.build_checkpoint's, full size)")
    where.add_argument("--tokenizer", help="a model folder whose tokenizer and config to use: the mask only")
    parser.add_argument("--steps", type=int, default=400, help="most steps of each walked answer")
    parser.add_argument("--decode-steps", type=int, default=8, help="decode steps timed")
    parser.add_argument("--context", type=int, default=256, help="prompt tokens of the timed decode")
    args = parser.parse_args()
    backend = grammar_only(args.tokenizer) if args.tokenizer else load(settings_for(args.model))
    begin = time.perf_counter()
    backend.grammars.tokenizer()
    print(
        f"vocabulary {backend.grammars.vocab_size} tokens; llguidance's tokenizer built in "
        f"{time.perf_counter() - begin:.2f} s (once per process)"
    )
    worst_median = 0.0
    for name, schema in schemas().items():
        begin = time.perf_counter()
        backend.grammars.compile(parse_response_format({"type": "json_schema", "json_schema": {"schema": schema}}))
        compiled = time.perf_counter() - begin
        added = [max(s, 0.0) * 1e6 for s in walk(backend, schema, args.steps, seed=len(name))]
        deciles = statistics.quantiles(added, n=10) if len(added) > 1 else added * 9
        median = statistics.median(added)
        worst_median = max(worst_median, median)
        print(
            f"mask {name}: {len(added)} steps; compiled in {compiled * 1000:.1f} ms; added per step "
            f"median {median:.0f} us, p90 {deciles[-1]:.0f} us, max {max(added):.0f} us"
        )
    if args.tokenizer:
        return
    step = step_seconds(backend, 1, args.context, args.decode_steps)
    print(f"float32 decode step, one sequence, {args.context} tokens of context: {step * 1000:.1f} ms")
    print(f"mask / decode step (worst schema's median) = {worst_median / 1e6 / step:.4f}")


if __name__ == "__main__":
    main()
