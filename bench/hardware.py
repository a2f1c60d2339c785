"""What the machine can do: memory read bandwidth, and the bytes one decode step must read."""

from __future__ import annotations

import json
import logging
import platform
import struct
import time
from pathlib import Path

log = logging.getLogger("bench.hardware")

DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
SAFETENSORS_BYTES = {"F32": 4, "BF16": 2, "F16": 2}
TEXT_PREFIX = "model.language_model."
EMBEDDING = "model.language_model.embed_tokens.weight"


def read_bandwidth(gib: float = 1.5, repeats: int = 7, threads: int = 0) -> dict:
    """Best-of-N memory read bandwidth: torch.sum over a float32 tensor far larger than the caches."""
    import torch

    meter = ReadMeter(gib, threads)
    read = meter.sample(repeats)
    copy = copy_bandwidth(meter.data, repeats)
    result = {
        "read_bytes_per_s": read,
        "copy_bytes_per_s": copy,
        "tensor_bytes": meter.data.numel() * 4,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }
    del meter
    log.info(
        "memory read bandwidth %.1f GB/s (copy %.1f GB/s) with %d threads",
        result["read_bytes_per_s"] / 1e9,
        copy / 1e9,
        result["threads"],
    )
    return result


class ReadMeter:
    """Quick read-bandwidth samples (best of a few torch.sum) over one tensor kept allocated between them.

    For samples taken seconds apart around short measurements: read_bandwidth allocates its tensors
    afresh and measures copies too, which takes seconds of its own.
    """

    def __init__(self, gib: float = 1.5, threads: int = 0):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.data = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
        self.data.sum()  # touch every page before timing

    def sample(self, repeats: int = 3) -> float:
        """Read bytes per second, best of `repeats`."""
        best = float("inf")
        for _ in range(repeats):
            begin = time.perf_counter()
            self.data.sum()
            best = min(best, time.perf_counter() - begin)
        return self.data.numel() * 4 / best


def copy_bandwidth(data, repeats: int) -> float:
    """Best-of-N copy bandwidth (bytes read + written per second)."""
    import torch

    target = torch.empty_like(data)
    target.copy_(data)
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        target.copy_(data)
        best = min(best, time.perf_counter() - begin)
    return 2 * data.numel() * 4 / best


def tensor_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Every tensor's shape, from the safetensors headers (no weights are read)."""
    shapes: dict[str, list[int]] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        shapes.update({name: info["shape"] for name, info in header.items() if name != "__metadata__"})
    return shapes


def decode_weight_parameters(model_dir: Path) -> dict:
    """Parameters one decode step reads: the text decoder (minus the embedding lookup) and the lm_head."""
    shapes = tensor_shapes(model_dir)
    count = {name: _numel(shape) for name, shape in shapes.items()}
    decoder = sum(n for name, n in count.items() if name.startswith(TEXT_PREFIX) and name != EMBEDDING)
    lm_head = count.get("lm_head.weight", count.get(EMBEDDING, 0))  # tied: the lm_head reads the embedding
    vision = sum(n for name, n in count.items() if name.startswith("model.visual."))
    total = sum(count.values())
    return {"decoder": decoder, "lm_head": lm_head, "per_token": decoder + lm_head, "vision": vision, "total": total}


def _numel(shape: list[int]) -> int:
    """Elements in a tensor of this shape."""
    n = 1
    for dim in shape:
        n *= dim
    return n


def gpu_info() -> str:
    """The GPUs' names and memory, as nvidia-smi gives them ('' where it is missing)."""
    import subprocess

    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return "; ".join(line.strip() for line in done.stdout.splitlines() if line.strip())


# Environment variables that make torch, MKL and oneDNN use fewer of the CPU's instructions: a run
# with ATEN_CPU_CAPABILITY=avx2 (and the others) takes every software path an AVX2-only CPU takes.
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def cpu_info() -> dict:
    """The CPU model, core count, the vector features that matter for float32/bfloat16 matmuls, what torch
    uses of them, and any limits set on that."""
    import os

    import torch

    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                if model:
                    break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")
    return {
        "model": model,
        "cores": os.cpu_count(),
        "isa": [f for f in wanted if f in flags],
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "limits": {name: os.environ[name] for name in ISA_LIMITS if name in os.environ},
    }


class CpuMeter:
    """How much of the machine's CPU went to other processes while we measured (the noise)."""

    def __init__(self) -> None:
        self.busy, self.total = machine_jiffies()
        self.ours = 0

    def result(self, ours_jiffies: int) -> dict:
        """Shares of all cores' time since construction: machine busy, ours (given), everyone else's."""
        busy, total = machine_jiffies()
        span_busy, span_total = busy - self.busy, max(total - self.total, 1)
        return {
            "machine_busy_share": span_busy / span_total,
            "ours_share": ours_jiffies / span_total,
            "others_share": max(span_busy - ours_jiffies, 0) / span_total,
        }


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])
    idle = fields[3] + fields[4]
    return total - idle, total


def process_jiffies(pids: list[int]) -> int:
    """User + system CPU jiffies these processes have used (0 for those already gone)."""
    used = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        used += int(fields[11]) + int(fields[12])  # utime, stime
    return used
