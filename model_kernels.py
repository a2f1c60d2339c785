"""Which CPU kernels compute the model's linear layers.

A decode step multiplies a few rows (one per sequence) by every weight matrix, so its speed is how
fast the kernel streams the weights. On the AMD EPYC this project is benchmarked on
(`python bench/kernels.py`, tables in bench/README.md):
- torch's default float32 kernel (MKL) read them at about half the machine's bandwidth for one row and
  slower per row as rows were added, so batching bought little;
- oneDNN's inner product on the plain weights read them 1.4-1.7x faster for one row, but it too slowed
  down with two to four rows, as it rearranges the weights on every call;
- oneDNN on weights rearranged once, at load, into its own blocked layout (`packed`) kept its rate
  for four rows and more, for float32 and bfloat16 alike. With fewer than four rows it was slower, so
  smaller inputs are padded to four rows: the zeros cost arithmetic, which a decode step has to spare.
`torch.ops.mkldnn._reorder_linear_weight` and `_linear_pointwise` are torch's own (private) ops for
this, the ones inductor uses for frozen CPU models.
"""
from __future__ import annotations

import logging
from collections import Counter

import torch
import torch.nn.functional as F

from model_memory import return_free_memory

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


def use_linear_kernel(model: torch.nn.Module, kernel: str) -> Counter[str]:
    """Route the model's CPU linear layers to `kernel` (config.LINEAR_KERNELS); returns how many went where.

    Layers left to torch's default are not counted: with `blas`, all of them.
    """
    moved: Counter[str] = Counter()
    if kernel == "blas":
        return moved
    if not torch.backends.mkldnn.is_available():
        log.warning("LINEAR_KERNEL=%s, but this torch has no oneDNN: using torch's default", kernel)
        return moved
    shared = _shared_weights(model)
    for module in model.modules():
        if type(module) is not torch.nn.Linear or module.weight.device.type != "cpu":
            continue
        if kernel == "packed" and _packable(module.weight.dtype) and id(module.weight) not in shared:
            module.weight = _packed(module.weight)
            module.__class__ = PackedLinear
            return_free_memory()  # the plain copy: else every layer's stays in the heap until load ends
            moved["packed"] += 1
        elif module.weight.dtype == torch.float32:  # also a tied lm_head: the embedding needs plain rows
            module.__class__ = OneDnnLinear  # a subclass with the same state: only forward differs
            moved["onednn"] += 1
    return moved


def _packable(dtype: torch.dtype) -> bool:
    """Whether oneDNN computes this dtype natively here (bfloat16 needs the CPU's support)."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _shared_weights(model: torch.nn.Module) -> set[int]:
    """Parameters used by more than one module, e.g. an lm_head tied to the embedding: they stay plain."""
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    return {key for key, count in uses.items() if count > 1}


def _packed(weight: torch.nn.Parameter) -> torch.nn.Parameter:
    """The weight in oneDNN's layout for PACKED_ROWS rows; the plain copy is freed when the caller drops it."""
    with torch.no_grad():
        return torch.nn.Parameter(torch.ops.mkldnn._reorder_linear_weight(weight, PACKED_ROWS),
                                  requires_grad=False)
