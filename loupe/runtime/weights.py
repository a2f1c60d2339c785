"""Finding a checkpoint and reading its weights into memory once, in the dtype they will run in.

transformers memory-maps safetensors files. Converting a bfloat16 checkpoint to float32 then keeps
every page of the file resident beside the float32 copies: 1.5x the weights at peak. Reading each
tensor with pread instead means only one tensor of the file is in memory at a time.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors import safe_open
from transformers import AutoConfig, Qwen3VLForConditionalGeneration
from transformers.utils import logging as transformers_logging

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
# What loading needs from a model repository: configs, tokenizer, chat template, weights.
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]


def local_directory(source: str) -> Path:
    """The model's directory: `source` itself, or its snapshot in the Hugging Face cache (downloaded if missing)."""
    if Path(source).is_dir():
        return Path(source)
    return Path(snapshot_download(source, allow_patterns=CHECKPOINT_FILES))


def load_advice(source: str, exc: Exception) -> str:
    """A failure to load `source` in words an operator can act on."""
    if not Path(source).is_dir():
        return (
            f"Could not load model {source!r}: it is not a local directory and could not be "
            "downloaded (no network, or no such model). Download it where there is network "
            f"(e.g. `hf download {source} --local-dir DIR`) and set MODEL_ID to that directory."
        )
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"Could not load the model in directory {source!r}: {first_line}"


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint's safetensors files (one file, or the shards its index names)."""
    index = directory / INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / shard for shard in shards]
    single = directory / "model.safetensors"
    return [single] if single.is_file() else []


def load_model(directory: Path, dtype: torch.dtype) -> Qwen3VLForConditionalGeneration:
    """The model with its weights read tensor by tensor (no memory map) and converted as they arrive."""
    transformers_logging.disable_progress_bar()  # a server log wants one line, not a bar per tensor
    files = weight_files(directory)
    if not files:  # e.g. a pytorch_model.bin checkpoint: transformers' own loader handles it
        return Qwen3VLForConditionalGeneration.from_pretrained(directory, dtype=dtype)
    config = AutoConfig.from_pretrained(directory)
    with ExitStack() as stack:
        handles = [
            stack.enter_context(safe_open(path, framework="pt", device="cpu", backend="pread")) for path in files
        ]
        # Lazy slices: transformers reads each one when it loads that tensor, then drops it.
        state_dict = {name: handle.get_slice(name) for handle in handles for name in handle.keys()}  # noqa: SIM118 - safetensors' handle has keys() but no __iter__
        return Qwen3VLForConditionalGeneration.from_pretrained(None, config=config, state_dict=state_dict, dtype=dtype)
