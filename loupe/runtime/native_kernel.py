"""Loupe's own kernels (csrc/), compiled for this machine on first use: linear layers and decode-step ops.

oneDNN's packed layout read a decode step's float32 weights at 0.76-0.83 of the machine's bandwidth
on the benchmark machine; this kernel reads the same bytes, laid out in 64-column blocks, at
0.89-1.0 for one to four rows and computes a long prompt as fast as oneDNN
(`python -m bench.kernel_rates`). Its bfloat16 twin (AVX512-BF16 dot products) reads bfloat16
weights at 0.91-0.95. attention.py says what decode_attention.cpp is for, decode_step.py
what decode_step.cpp is for. The system's C++ compiler builds them once (about 25 s) into
KERNEL_CACHE_DIR, named by a hash of their sources, flags and torch version. Where they cannot be
built, or the CPU has no AVX-512 (the only instruction set they are written and measured for),
`unavailable()` says why and the caller uses another kernel; `fits(weight)` says whether this CPU
runs the one for a weight.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SOURCES = [
    Path(__file__).resolve().parent / "csrc" / name
    for name in ("blocked_linear.cpp", "decode_attention.cpp", "decode_step.cpp")
]
_NAMES = ", ".join(source.name for source in SOURCES[:-1]) + f" and {SOURCES[-1].name}"
BLOCK = 64  # columns per block: kBlock in the C++ source
# Not -march=native: a cached build must run on any AVX-512 CPU that later finds it (a shared volume).
# OpenMP: without it at::parallel_for runs on one thread; the process already has torch's libgomp.
_CFLAGS = ["-O3", "-mavx512f", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
_COMPILERS = ("c++", "g++", "clang++")
_COMPILE_TIMEOUT_S = 300
_KEPT_BUILDS = 3  # other checkouts or versions may share the folder: keep a few builds, not every one ever
_BLOCKS_AT_A_TIME = 16  # scratch for rearranging a weight in place: 8 MB for K = 2048


@functools.cache
def unavailable(cache_dir: str) -> str | None:
    """Build (or find) and load the kernels once per process: None when they are ready, else why not."""
    if _loaded():
        return None
    if not cache_dir:
        return "KERNEL_CACHE_DIR is empty"
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return "this CPU has no AVX-512"
    compiler = next(filter(None, map(shutil.which, _COMPILERS)), None)
    if compiler is None:
        return f"no C++ compiler was found ({', '.join(_COMPILERS)})"
    try:
        torch.ops.load_library(_build(compiler, Path(cache_dir).expanduser()))
    except subprocess.CalledProcessError as exc:
        log.debug("compiler output:\n%s", exc.stderr)
        return f"{compiler} could not compile {_NAMES}: {_first_error(exc.stderr, exc.returncode)}"
    except subprocess.TimeoutExpired:
        return f"{compiler} did not finish compiling {_NAMES} in {_COMPILE_TIMEOUT_S} s"
    except OSError as exc:
        return f"it could not be built or loaded: {exc}"
    return None


def fits(weight: torch.Tensor) -> bool:
    """Whether a kernel here computes this weight (once `unavailable()` has said they are ready).

    float32; or bfloat16 with an even number of inputs (read in pairs) on a CPU with AVX512-BF16
    (vdpbf16ps: AMD Zen 4, Intel Cooper Lake and later).
    """
    if weight.dtype == torch.bfloat16:
        return weight.shape[-1] % 2 == 0 and bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    return weight.dtype == torch.float32


def _first_error(output: str, status: int) -> str:
    """The compiler's first error line (its output starts with "In file included from" lines)."""
    lines = output.strip().splitlines()
    return next((line for line in lines if "error" in line.lower()), lines[0] if lines else f"exit status {status}")


def _loaded() -> bool:
    """Whether loupe::blocked_linear is registered in this process (its library loads only once)."""
    return hasattr(torch.ops.loupe, "blocked_linear")


def _build(compiler: str, cache_dir: Path) -> Path:
    """The shared library for these sources, flags and torch: compiled unless already in `cache_dir`."""
    torch_dir = Path(torch.__file__).resolve().parent
    command = [
        compiler,
        *_CFLAGS,
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-I{torch_dir / 'include'}",
        f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
        *map(str, SOURCES),
        f"-L{torch_dir / 'lib'}",
        "-lc10",
        "-ltorch_cpu",
    ]
    text = b"".join(source.read_bytes() for source in SOURCES)
    key = hashlib.sha256(text + " ".join([torch.__version__, *_CFLAGS]).encode()).hexdigest()
    library = cache_dir / f"loupe_kernels-{key[:16]}.so"
    if library.is_file():
        return library
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("compiling the native kernels into %s (once; about 25 s)", cache_dir)
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:  # then renamed: builders may race
        built = Path(scratch) / library.name
        subprocess.run(
            [*command, "-o", str(built)], check=True, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S
        )
        os.replace(built, library)
    log.info("native kernels compiled in %.1f s", time.perf_counter() - begin)
    _prune(cache_dir)
    return library


def _prune(cache_dir: Path, keep: int = _KEPT_BUILDS) -> None:
    """Delete all but the `keep` newest builds in `cache_dir` (a process that loaded one keeps its copy)."""

    def modified(path: Path) -> int:
        try:
            return path.stat().st_mtime_ns
        except FileNotFoundError:  # another process pruned it meanwhile
            return 0

    builds = sorted(cache_dir.glob("loupe_kernels-*.so"), key=modified, reverse=True)
    for stale in builds[keep:]:
        stale.unlink(missing_ok=True)


class NativeLinear(torch.nn.Linear):
    """nn.Linear whose weight is stored in 64-column blocks and computed by loupe::blocked_linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.out_features)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] -> [M, out_features]: forward without reshaping (model_decode_step calls it directly)."""
        out = torch.ops.loupe.blocked_linear(x, self.weight, self.bias)
        return out if out.shape[1] == self.out_features else out[:, : self.out_features]  # a padded last block


class BlockedEmbedding(torch.nn.Embedding):
    """nn.Embedding whose rows are read out of the blocked weight of the lm_head tied to it."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight[ids // BLOCK, :, ids % BLOCK]  # (*ids.shape, K) or, for bfloat16, (*, K / 2, 2)
        return rows.flatten(ids.dim()) if self.weight.dim() == 4 else rows


def tie_to_native(linear: torch.nn.Linear, embedding: torch.nn.Embedding) -> None:
    """Move an lm_head to the native kernel with the embedding tied to it: one blocked copy for both."""
    to_native(linear)
    embedding.weight = linear.weight
    embedding.__class__ = BlockedEmbedding


def to_native(module: torch.nn.Linear) -> None:
    """Rearrange an nn.Linear's weight (and bias) into blocks, in place where its width allows.

    float32, or bfloat16 with an even number of inputs (the kernel reads them in pairs).
    """
    pad = -module.out_features % BLOCK
    with torch.no_grad():
        weight = module.weight.detach().contiguous()  # loaded weights are; else this is the one copy
        if pad:  # a padded copy: small or odd layers only
            weight = F.pad(weight, (0, 0, 0, pad))
        blocks = _blocked_in_place(weight)
        module.weight = torch.nn.Parameter(blocks, requires_grad=False)
        if module.bias is not None:
            module.bias = torch.nn.Parameter(F.pad(module.bias, (0, pad)).contiguous(), requires_grad=False)
    module.__class__ = NativeLinear


def _blocked_in_place(weight: torch.Tensor) -> torch.Tensor:
    """A contiguous [N, K] weight's own memory rearranged into blocks, a few at a time.

    float32: [N / 64, K, 64]; bfloat16: [N / 64, K / 2, 64, 2], pairs of k side by side. Each block of
    64 rows occupies the same bytes in both layouts, so only a block's worth of scratch is needed: a
    full copy of the 1.2 GB embedding would raise the process's peak by as much.
    """
    rows = weight.view(-1, BLOCK, weight.shape[1])
    for start in range(0, rows.shape[0], _BLOCKS_AT_A_TIME):
        chunk = rows[start : start + _BLOCKS_AT_A_TIME]
        chunk.view(-1).copy_(_blocks(chunk).contiguous().view(-1))
    return rows.view(-1).view(_blocks(rows).shape)


def _blocks(rows: torch.Tensor) -> torch.Tensor:
    """[blocks, 64, K] rows as the kernel's blocks (a strided view, of the same elements)."""
    if rows.dtype == torch.bfloat16:
        return rows.unflatten(2, (-1, 2)).transpose(1, 2)
    return rows.transpose(1, 2)
