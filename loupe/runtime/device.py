"""Where the model runs: checking that DEVICE exists before loading, and what to say when a GPU is short of memory.

Loupe's own kernels are for the CPU; on a CUDA GPU the model runs on torch's own (cuBLAS, SDPA), so the
loader asks `on_cpu` before routing layers to them.
"""

from __future__ import annotations

import gc

import torch

GiB = 1024**3


def on_cpu(device: torch.device | str) -> bool:
    """Whether a device is the CPU (where Loupe's native kernels, oneDNN and glibc's allocator apply)."""
    return torch.device(device).type == "cpu"


def unavailable(name: str) -> str | None:
    """Why DEVICE cannot run the model on this machine, in words an operator can act on; None when it can."""
    device = torch.device(name)
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"DEVICE={name!r} is not supported: use cpu or cuda (cuda:N for the Nth GPU)."
    if torch.version.cuda is None:
        return (
            f"DEVICE={name} but this torch ({torch.__version__}) is a CPU-only build: install a CUDA build of "
            "torch (requirements.txt pins the CPU one), or set DEVICE=cpu."
        )
    if not torch.cuda.is_available():
        return (
            f"DEVICE={name} but no CUDA GPU is visible to this process: check that `nvidia-smi` lists one, that "
            "the NVIDIA driver matches this torch's CUDA and that CUDA_VISIBLE_DEVICES does not hide it; or set "
            "DEVICE=cpu."
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        return f"DEVICE={name} but this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}."
    return None


def configure(name: str) -> None:
    """Settings of torch's for DEVICE, set before the model first runs there.

    On CUDA, SDPA leaves cuDNN's attention out: cuDNN builds (and compiles) a plan for each new kind of
    call, which cost 0.35-1 s inside requests on an H200 (a follow-up's first prefill on a cached
    conversation: 990 ms against 113 ms; a batch's first steps at two rows: 348 ms a step against 7),
    where flash and memory-efficient attention have their kernels built in.
    """
    if torch.device(name).type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


def out_of_memory_advice(name: str, dtype: str) -> str:
    """What to do when the weights did not fit on the GPU (after its memory was handed back)."""
    gc.collect()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(torch.device(name))
    smaller = " or set DTYPE=bfloat16 (half the memory)," if dtype == "float32" else ""
    return (
        f"The model in {dtype} does not fit in the memory of {name} ({free / GiB:.1f} GiB free of "
        f"{total / GiB:.1f} GiB): stop what else uses the GPU (`nvidia-smi` lists it),{smaller} or set DEVICE=cpu."
    )


def dtype_advice(name: str, dtype: str) -> str | None:
    """A note for the start-up log when DTYPE is a poor choice for this device; None when it is fine."""
    if not on_cpu(name) and dtype == "float32":
        return (
            f"DTYPE=float32 on {name}: bfloat16 is recommended on a GPU (half the memory and the weight reads, "
            "and the GPU's matrix units); float32 works, more slowly"
        )
    return None
