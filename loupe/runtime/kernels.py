"""Which CPU kernels compute the model's linear layers.

A decode step multiplies a few rows (one per sequence) by every weight matrix, so its speed is how
fast the kernel streams the weights. On the AMD EPYC this project is benchmarked on
(`python -m bench.kernel_rates`, tables in bench/README.md):
- torch's default float32 kernel (MKL) read them at about half the machine's bandwidth for one row and
  slower per row as rows were added, so batching bought little;
- oneDNN's inner product on the plain weights read them 1.4-1.7x faster for one row, but it too slowed
  down with two to four rows, as it rearranges the weights on every call;
- oneDNN on weights rearranged once, at load, into its own blocked layout (`packed`) kept its rate
  for four rows and more, for float32 and bfloat16 alike. With fewer than four rows it was slower, so
  smaller inputs are padded to four rows: the zeros cost arithmetic, which a decode step has to spare.
  `torch.ops.mkldnn._reorder_linear_weight` and `_linear_pointwise` are torch's own (private) ops for
  this, the ones inductor uses for frozen CPU models;
- Loupe's own kernel (`native`, native_kernel.py) read float32 weights at 0.89-1.0 of the
  bandwidth for one to four rows in two runs, 1.07-1.51x as fast as `packed`, and bfloat16 weights
  at 0.91-0.95, 1.46-1.90x oneDNN's packed bfloat16. It is the default where it can be compiled,
  for float32 and bfloat16 alike, in the fastest variant the CPU runs (AVX-512 or AVX2;
  native_build.py); where none can be, `packed`, and the log says why.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
import torch.nn.functional as F

from loupe.runtime import native_kernel
from loupe.runtime.memory import return_free_memory
from loupe.runtime.native_kernel import NativeLinear

log = logging.getLogger(__name__)

# The batch size oneDNN lays the weights out for, and the fewest rows sent to it: measured best.
PACKED_ROWS = 4


class OneDnnLinear(torch.nn.Linear):
    """nn.Linear computed by oneDNN on its plain weights; same parameters, same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


class PackedLinear(torch.nn.Linear):
    """nn.Linear whose weight oneDNN has rearranged into its blocked layout (an opaque tensor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        count = rows.shape[0]
        if count < PACKED_ROWS:
            rows = F.pad(rows, (0, 0, 0, PACKED_ROWS - count))
        out = torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, "none", [], "")
        return out[:count].reshape(*x.shape[:-1], self.out_features)


def use_linear_kernel(
    model: torch.nn.Module, kernel: str, cache_dir: str = "", variant: str | None = None
) -> Counter[str]:
    """Route the model's CPU linear layers to `kernel` (settings.LINEAR_KERNELS); returns how many went where.

    `native` is built into (or found in) `cache_dir`, in `variant` or else the fastest one this CPU runs.
    Layers left to torch's default are not counted: with `blas`, all of them.
    """
    moved: Counter[str] = Counter()
    if kernel == "native":
        variant, problem = native_kernel.choose(cache_dir, variant)
        if variant is None:
            log.warning("LINEAR_KERNEL=native, but %s; using packed", problem)
            kernel = "packed"
    if kernel == "blas":
        return moved
    if not torch.backends.mkldnn.is_available():
        log.warning("LINEAR_KERNEL=%s, but this torch has no oneDNN: using torch's default", kernel)
        return moved
    shared = _shared_weights(model)
    if variant is not None:  # an lm_head tied to the embedding: both can read the one blocked copy
        for linear, embedding in _tied_embeddings(model, shared):
            native_kernel.tie_to_native(linear, embedding, variant)
            return_free_memory()
            moved["native"] += 1
    for module in model.modules():
        if type(module) is not torch.nn.Linear or module.weight.device.type != "cpu":
            continue
        target = _layer_kernel(kernel, module.weight, shared)
        if target == "native" and variant is not None:
            native_kernel.to_native(module, variant)
        elif target == "packed":
            module.weight = _packed(module.weight)
            module.__class__ = PackedLinear
        elif target == "onednn":  # also a tied lm_head outside `native`: the embedding needs plain rows
            module.__class__ = OneDnnLinear  # a subclass with the same state: only forward differs
        if target in ("native", "packed"):
            # packed's plain copy, native's scratch: else they stay in the heap until load ends (the
            # load peaked at 11.4 GB instead of 8.8 with packed, 9.4 instead of 8.8 with native)
            return_free_memory()
        if target:
            moved[target] += 1
    return moved


def default_bfloat16_layers(model: torch.nn.Module) -> int:
    """bfloat16 linear layers left to torch's default CPU kernel: slow on CPUs without bfloat16 arithmetic."""
    return sum(
        type(m) is torch.nn.Linear and m.weight.dtype == torch.bfloat16 and m.weight.device.type == "cpu"
        for m in model.modules()
    )


def kernel_counts(model: torch.nn.Module) -> Counter[str]:
    """How many linear layers each kernel computes (torch's default ones are not counted)."""
    names = {NativeLinear: "native", PackedLinear: "packed", OneDnnLinear: "onednn"}
    return Counter(names[type(m)] for m in model.modules() if type(m) in names)


def _layer_kernel(kernel: str, weight: torch.nn.Parameter, shared: set[int]) -> str | None:
    """The kernel one layer goes to: the one asked for where it applies, else the nearest that does."""
    if id(weight) not in shared:
        if kernel == "native" and native_kernel.fits(weight):
            return "native"
        if kernel in ("native", "packed") and _packable(weight.dtype):
            return "packed"
    return "onednn" if weight.dtype == torch.float32 else None


def _packable(dtype: torch.dtype) -> bool:
    """Whether oneDNN computes this dtype natively here (bfloat16 needs the CPU's support)."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _tied_embeddings(model: torch.nn.Module, shared: set[int]) -> list[tuple[torch.nn.Linear, torch.nn.Embedding]]:
    """Linear layers native fits whose weight is shared with exactly one embedding (a tied lm_head), and it."""
    users: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and id(weight) in shared:
            users.setdefault(id(weight), []).append(module)
    pairs = []
    for modules in users.values():
        linears = [m for m in modules if type(m) is torch.nn.Linear]
        embeddings = [m for m in modules if type(m) is torch.nn.Embedding]
        weight = modules[0].weight
        if (
            len(modules) == len(linears) + len(embeddings) == 2
            and linears
            and embeddings
            and native_kernel.fits(weight)
            and weight.device.type == "cpu"
        ):
            pairs.append((linears[0], embeddings[0]))
    return pairs


def _shared_weights(model: torch.nn.Module) -> set[int]:
    """Parameters used by more than one module, e.g. an lm_head tied to the embedding: plain, but for `native`."""
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    return {key for key, count in uses.items() if count > 1}


def _packed(weight: torch.nn.Parameter) -> torch.nn.Parameter:
    """The weight in oneDNN's layout for PACKED_ROWS rows; the plain copy is freed when the caller drops it."""
    with torch.no_grad():
        return torch.nn.Parameter(torch.ops.mkldnn._reorder_linear_weight(weight, PACKED_ROWS), requires_grad=False)
