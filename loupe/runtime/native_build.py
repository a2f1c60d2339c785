"""Compiling Loupe's C++ kernels (csrc/) for this CPU, once per variant, into KERNEL_CACHE_DIR.

The same sources are compiled once per instruction set (a `Variant`): the vector width and the op
namespace are -D flags (csrc/loupe_build.h), so every variant a CPU runs can be loaded into one
process side by side, under torch.ops.loupe_<variant>. The system's C++ compiler builds one in
under a minute (the three sources side by side); the library is named by a hash of the sources, flags and
torch version, so a build is found, not redone, by every later start.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [CSRC / name for name in ("blocked_linear.cpp", "decode_attention.cpp", "decode_step.cpp")]
HEADERS = [CSRC / "loupe_build.h"]
SOURCE_NAMES = ", ".join(source.name for source in SOURCES[:-1]) + f" and {SOURCES[-1].name}"
COMPILERS = ("c++", "g++", "clang++")
# Not -march=native: a cached build must run on any CPU of its variant that later finds it (a shared
# volume). OpenMP: without it at::parallel_for runs on one thread; the process already has torch's libgomp.
_CFLAGS = ("-O3", "-fopenmp", "-fPIC", "-std=c++17")
_COMPILE_TIMEOUT_S = 300
KEPT_BUILDS = 3  # per variant: other checkouts or versions may share the folder, but not every build ever


@dataclass(frozen=True)
class Variant:
    """One build of the kernels: the instruction set it is compiled for."""

    name: str
    flags: tuple[str, ...]
    vector_bytes: int  # a block of the linear kernel is four vectors of vector_bytes / 4 float32 columns
    bf16_dot: bool = False  # bfloat16 weights through AVX512-BF16's dot products, not widened to float32

    @property
    def namespace(self) -> str:
        """Where its ops are: torch.ops.<namespace>."""
        return f"loupe_{self.name}"

    @property
    def block(self) -> int:
        """Columns per block of a weight laid out for it (kBlock in blocked_linear.cpp)."""
        return self.vector_bytes

    def defines(self) -> list[str]:
        """The -D flags that make the sources this variant."""
        bf16 = int(self.bf16_dot)
        return [f"-DLOUPE_NS={self.namespace}", f"-DLOUPE_VECTOR_BYTES={self.vector_bytes}", f"-DLOUPE_BF16_DOT={bf16}"]


# Fastest first. AVX2 machines: AMD Zen 2/3, Intel client CPUs since Alder Lake, older Xeons.
VARIANTS = {
    v.name: v
    for v in (
        Variant("avx512_bf16", ("-mavx512f", "-mavx512bw", "-mavx512bf16", "-mfma"), 64, bf16_dot=True),
        Variant("avx512", ("-mavx512f", "-mfma"), 64),
        Variant("avx2", ("-mavx2", "-mfma"), 32),
    )
}


def variants_here() -> list[str]:
    """The variants this CPU runs, fastest first: what torch detected (ATEN_CPU_CAPABILITY can lower it)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX2" means AVX2 and FMA
    here = []
    if capability == "AVX512":
        if torch.cpu._is_avx512_bf16_supported():
            here.append("avx512_bf16")
        here.append("avx512")
    if capability in ("AVX512", "AVX2"):
        here.append("avx2")
    return here


def no_variant_reason() -> str:
    """Why this CPU runs no variant, in a log line's words."""
    machine = platform.machine()
    if machine.lower() not in ("x86_64", "amd64"):
        return f"they are written for x86-64 CPUs with AVX2 or AVX-512, and this one is {machine}"
    return f"this CPU has neither AVX2 with FMA nor AVX-512 (torch reports {torch.backends.cpu.get_cpu_capability()})"


@functools.cache
def unavailable(cache_dir: str, name: str) -> str | None:
    """Build (or find) and load one variant once per process: None when it is ready, else why not."""
    variant = VARIANTS[name]
    if hasattr(getattr(torch.ops, variant.namespace), "blocked_linear"):
        return None
    if name not in variants_here():
        return f"this CPU cannot run the {name} kernels"
    if not cache_dir:
        return "KERNEL_CACHE_DIR is empty"
    compiler = next(filter(None, map(shutil.which, COMPILERS)), None)
    if compiler is None:
        return f"no C++ compiler was found ({', '.join(COMPILERS)})"
    try:
        torch.ops.load_library(build(compiler, Path(cache_dir).expanduser(), variant))
    except subprocess.CalledProcessError as exc:
        log.debug("compiler output:\n%s", exc.stderr)
        return f"{compiler} could not compile {SOURCE_NAMES}: {first_error(exc.stderr, exc.returncode)}"
    except subprocess.TimeoutExpired:
        return f"{compiler} did not finish compiling {SOURCE_NAMES} in {_COMPILE_TIMEOUT_S} s"
    except OSError as exc:
        return f"they could not be built or loaded: {exc}"
    return None


def first_error(output: str, status: int) -> str:
    """The compiler's first error line (its output starts with "In file included from" lines)."""
    lines = output.strip().splitlines()
    return next((line for line in lines if "error" in line.lower()), lines[0] if lines else f"exit status {status}")


def build(compiler: str, cache_dir: Path, variant: Variant) -> Path:
    """The shared library of one variant for these sources and torch: compiled unless already in `cache_dir`."""
    torch_dir = Path(torch.__file__).resolve().parent
    flags = [*_CFLAGS, *variant.flags, *variant.defines()]
    text = b"".join(path.read_bytes() for path in [*SOURCES, *HEADERS])
    key = hashlib.sha256(text + " ".join([torch.__version__, *flags]).encode()).hexdigest()
    library = cache_dir / f"loupe_kernels-{variant.name}-{key[:16]}.so"
    if library.is_file():
        return library
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("compiling the %s kernels into %s (once; under a minute)", variant.name, cache_dir)
    begin = time.perf_counter()
    includes = [f"-I{torch_dir / 'include'}", f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}"]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:  # then renamed: builders may race
        objects = [Path(scratch) / f"{source.stem}.o" for source in SOURCES]
        compile_one = [compiler, *flags, abi, *includes, "-c"]
        _run_all([[*compile_one, str(s), "-o", str(o)] for s, o in zip(SOURCES, objects, strict=True)])
        built = Path(scratch) / library.name
        link = [compiler, "-shared", "-fopenmp", *map(str, objects), f"-L{torch_dir / 'lib'}", "-lc10", "-ltorch_cpu"]
        _run_all([[*link, "-o", str(built)]])
        os.replace(built, library)
    log.info("%s kernels compiled in %.1f s", variant.name, time.perf_counter() - begin)
    prune(cache_dir, variant.name)
    return library


def _run_all(commands: list[list[str]]) -> None:
    """Run the commands side by side; raise CalledProcessError for the first that fails."""
    running = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for command in commands
    ]
    deadline = time.monotonic() + _COMPILE_TIMEOUT_S
    failures = []
    for process, command in zip(running, commands, strict=True):
        try:
            _, errors = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in running:
                other.kill()
            raise
        if process.returncode:
            failures.append(subprocess.CalledProcessError(process.returncode, command, stderr=errors))
    if failures:
        raise failures[0]


def prune(cache_dir: Path, name: str, keep: int = KEPT_BUILDS) -> None:
    """Delete all but the `keep` newest builds of one variant (a process that loaded one keeps its copy)."""
    for stale in all_but_newest(cache_dir.glob(f"loupe_kernels-{name}-*.so"), keep):
        stale.unlink(missing_ok=True)


def all_but_newest(paths: Iterable[Path], keep: int) -> list[Path]:
    """The files of `paths` beyond the `keep` most recently modified: what a cache folder prunes."""

    def modified(path: Path) -> int:
        try:
            return path.stat().st_mtime_ns
        except FileNotFoundError:  # another process pruned it meanwhile
            return 0

    return sorted(paths, key=modified, reverse=True)[keep:]
