"""Build a full-size random-weight Qwen3-VL checkpoint from a real model's config, tokenizer and processor files.

Usage: python -m bench.build_checkpoint SRC_DIR [OUT_DIR]

SRC_DIR holds the real model's small files (config.json, tokenizer, chat template, preprocessor
config); no weights are needed. OUT_DIR (default ~/.cache/loupe-bench/<name>-random) gets
safetensors weights of the same shapes, random-initialised, plus copies of the small files.
Nothing is done when OUT_DIR is already complete.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger("bench.build_checkpoint")

SMALL_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "preprocessor_config.json",
    "generation_config.json",
    "video_preprocessor_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
MARKER = "loupe-bench.json"  # written last: its presence means the folder is complete
EXPECTED_PARAMETERS = {"qwen3-vl-2b-instruct": 2_127_532_032}
SEED = 20240601
SAVE_DTYPE = "bfloat16"  # what the real checkpoint ships; the server converts with DTYPE at load


def default_out_dir(source: Path) -> Path:
    """Where the checkpoint goes when no OUT_DIR is given: outside the repository."""
    return Path.home() / ".cache" / "loupe-bench" / f"{source.name}-random"


def is_complete(out_dir: Path) -> bool:
    """Whether OUT_DIR already holds a finished build."""
    return (out_dir / MARKER).is_file() and (out_dir / "config.json").is_file()


def build_checkpoint(source: Path, out_dir: Path | None = None) -> Path:
    """Build (once) the random-weight checkpoint for SOURCE's config; returns its folder."""
    out_dir = out_dir or default_out_dir(source)
    if is_complete(out_dir):
        log.info("checkpoint already complete in %s", out_dir)
        return out_dir
    begin = time.perf_counter()
    model = random_model(source)
    parameters = count_parameters(model)
    expected = EXPECTED_PARAMETERS.get(source.name.lower())
    if expected is not None and parameters != expected:
        raise RuntimeError(f"{parameters:,} parameters, expected {expected:,}")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    del model
    copy_small_files(source, tmp)
    (tmp / MARKER).write_text(
        json.dumps(
            {
                "source": str(source.resolve()),
                "parameters": parameters,
                "dtype": SAVE_DTYPE,
                "seed": SEED,
            },
            indent=2,
        )
        + "\n"
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    log.info("built %s (%s parameters) in %.0f s", out_dir, f"{parameters:,}", time.perf_counter() - begin)
    return out_dir


def random_model(source: Path):
    """Qwen3-VL with SOURCE's config: built on the meta device, then filled with random numbers."""
    import torch
    from transformers import AutoConfig, Qwen3VLForConditionalGeneration

    config = AutoConfig.from_pretrained(source)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    model = model.to_empty(device="cpu").to(getattr(torch, SAVE_DTYPE))
    fill_random(model, config.text_config.initializer_range)
    model.tie_weights()
    return model.eval()


def fill_random(model, std: float) -> None:
    """Normal(0, std) for matrices, embeddings and biases; ones for norm scales."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.split(".")[-2] and name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, std, generator=generator)


def count_parameters(model) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def copy_small_files(source: Path, out_dir: Path) -> None:
    """Copy the tokenizer, chat template, processor and generation configs next to the weights."""
    for name in SMALL_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with the real model's config and tokenizer files")
    parser.add_argument("out_dir", type=Path, nargs="?", help="where to write (default: ~/.cache/loupe-bench/...)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(build_checkpoint(args.source, args.out_dir))


if __name__ == "__main__":
    main()
