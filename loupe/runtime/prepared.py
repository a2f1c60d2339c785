"""Prepared weights: the model's tensors as the native kernels want them, kept in one file and mapped back.

Reading a bfloat16 checkpoint, converting it to float32 and rearranging every linear layer into the
kernel's blocks is most of a start (bench/README.md has the figures). Once done, the result is written
to KERNEL_CACHE_DIR as one raw file of every parameter and buffer plus a JSON index; later starts build
the model's modules without weights (on the meta device) and point each tensor into a private
memory map of that file (torch.from_file): nothing is read or converted at start, pages come in from
the page cache as the first request reads them, and the kernel's memory is the file's. The file's
name is a hash of everything its bytes depend on (the checkpoint's files, dtype, kernel variant, the
kernels' layout, torch and transformers), so a change anywhere means a new file, never a stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, Qwen3VLForConditionalGeneration

from loupe.runtime import native_build
from loupe.runtime.native_kernel import BlockedEmbedding, NativeLinear

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what is written changes
_ALIGN = 64  # each tensor starts on a cache line: the kernels' vector loads stay aligned
KEPT = 2  # prepared models are as large as the weights: keep the newest two, not every one ever


def key(directory: Path, files: list[Path], dtype: torch.dtype, variant: str) -> str:
    """A name for the prepared weights of this checkpoint, dtype and kernel variant with this software."""
    parts = [f"format {FORMAT}", str(dtype), variant, torch.__version__, transformers.__version__]
    parts += [f"{p.name} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in sorted(files)]
    parts.append((directory / "config.json").read_text())
    sources = b"".join(path.read_bytes() for path in [*native_build.SOURCES, *native_build.HEADERS])
    digest = hashlib.sha256("\n".join(parts).encode() + sources)
    return digest.hexdigest()[:20]


def paths(cache_dir: str, name: str) -> tuple[Path, Path]:
    """The data file and its index."""
    folder = Path(cache_dir).expanduser()
    return folder / f"weights-{name}.bin", folder / f"weights-{name}.json"


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (persistent or not) by its first name; a tied tensor once."""
    seen: dict[int, str] = {}
    tensors = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if id(tensor) not in seen:
            seen[id(tensor)] = name
            tensors[name] = tensor.detach()
    return tensors


def save(model: torch.nn.Module, cache_dir: str, name: str) -> None:
    """Write the prepared model, atomically; skipped (and said) where the disk lacks room."""
    data, index = paths(cache_dir, name)
    tensors = _tensors(model)
    if any(t.is_mkldnn or not t.is_contiguous() for t in tensors.values()):
        log.info("prepared weights are not kept: some tensors are not plain (packed layers)")
        return
    size = sum(-(-t.numel() * t.element_size() // _ALIGN) * _ALIGN for t in tensors.values())
    data.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(data.parent).free
    if free < size * 1.1:
        log.warning(
            "prepared weights not kept: %s has %.1f GB free of %.1f needed", data.parent, free / 1e9, size / 1e9
        )
        return
    begin = time.perf_counter()
    entries, offset = {}, 0
    scratch = data.with_suffix(f".{os.getpid()}.tmp")
    with scratch.open("wb") as out:
        for tensor_name, tensor in tensors.items():
            raw = tensor.reshape(-1).view(torch.uint8).numpy()  # bytes: numpy has no bfloat16
            out.write(memoryview(raw))
            padded = -(-raw.size // _ALIGN) * _ALIGN
            out.write(b"\0" * (padded - raw.size))
            dtype = str(tensor.dtype).removeprefix("torch.")
            entries[tensor_name] = {"dtype": dtype, "shape": list(tensor.shape), "offset": offset}
            offset += padded
    described = {
        "size": offset,
        "tensors": entries,
        "native": {n: m.variant for n, m in model.named_modules() if isinstance(m, NativeLinear)},
        "blocked_embeddings": [n for n, m in model.named_modules() if isinstance(m, BlockedEmbedding)],
        "ties": _ties(model),
    }
    index.with_suffix(".tmp").write_text(json.dumps(described))
    os.replace(scratch, data)  # the data first: an index is only ever beside its whole file
    os.replace(index.with_suffix(".tmp"), index)
    log.info("prepared weights kept in %s (%.1f GB, %.1f s)", data, offset / 1e9, time.perf_counter() - begin)
    _prune(data.parent)


def _ties(model: torch.nn.Module) -> dict[str, str]:
    """Every other name of a tied tensor → the name it is saved under."""
    first: dict[int, str] = {}
    ties = {}
    for name, tensor in model.named_parameters(remove_duplicate=False):
        if id(tensor) in first:
            ties[name] = first[id(tensor)]
        else:
            first[id(tensor)] = name
    return ties


def load(directory: Path, dtype: torch.dtype, cache_dir: str, name: str) -> torch.nn.Module | None:
    """The prepared model mapped from its file, or None where there is none (or it does not fit the model)."""
    data, index = paths(cache_dir, name)
    if not (index.is_file() and data.is_file()):
        return None
    begin = time.perf_counter()
    described = json.loads(index.read_text())
    if data.stat().st_size != described["size"]:
        log.warning("prepared weights %s are incomplete; preparing them again", data)
        return None
    with torch.device("meta"):  # modules without memory: every tensor comes from the file
        model = Qwen3VLForConditionalGeneration._from_config(AutoConfig.from_pretrained(directory), dtype=dtype)
    for module_name, variant in described["native"].items():
        module = model.get_submodule(module_name)
        module.__class__ = NativeLinear
        module.variant = variant
    for module_name in described["blocked_embeddings"]:
        model.get_submodule(module_name).__class__ = BlockedEmbedding
    mapped = torch.from_file(
        str(data), shared=False, size=described["size"], dtype=torch.uint8
    )  # private: copy on write
    for tensor_name, entry in described["tensors"].items():
        kind = getattr(torch, entry["dtype"])
        length = _elements(entry["shape"]) * kind.itemsize
        _assign(model, tensor_name, mapped[entry["offset"] : entry["offset"] + length].view(kind).view(entry["shape"]))
    for alias, source in described["ties"].items():
        _assign(model, alias, model.get_parameter(source))
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        log.warning("prepared weights %s lack %s; preparing them again", data, ", ".join(missing[:3]))
        return None
    log.info("weights mapped from %s in %.1f s", data, time.perf_counter() - begin)
    return model.eval()


def _elements(shape: list[int]) -> int:
    """How many elements a tensor of this shape holds."""
    count = 1
    for size in shape:
        count *= size
    return count


def _assign(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put `tensor` in place of the parameter or buffer `name` (a given Parameter as it is: a tie)."""
    path, _, attribute = name.rpartition(".")
    module = model.get_submodule(path)
    if attribute in module._parameters:
        parameter = (
            tensor if isinstance(tensor, torch.nn.Parameter) else torch.nn.Parameter(tensor, requires_grad=False)
        )
        module._parameters[attribute] = parameter
    else:
        module._buffers[attribute] = tensor


def _prune(folder: Path, keep: int = KEPT) -> None:
    """Delete all but the `keep` newest prepared models (a process that mapped one keeps its pages)."""
    for stale in native_build.all_but_newest(folder.glob("weights-*.bin"), keep):
        stale.with_suffix(".json").unlink(missing_ok=True)
        stale.unlink(missing_ok=True)
