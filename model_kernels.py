"""Which CPU kernels compute the model's linear layers.

torch multiplies float32 matrices with its BLAS (MKL). On the AMD EPYC this project is benchmarked
on, MKL read a decode step's weights at about half the machine's bandwidth, and slower per row as
rows were added, so batching bought little; oneDNN's inner product read them 1.4-1.7x faster for one
row and 2.8-2.9x for four (`python bench/kernels.py` measures both on any machine).
`torch.ops.mkldnn._linear_pointwise` is torch's own (private) op for this, the one inductor uses.
bfloat16 already goes to oneDNN.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class OneDnnLinear(torch.nn.Linear):
    """nn.Linear computed by oneDNN; same parameters, same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def use_linear_kernel(model: torch.nn.Module, kernel: str) -> int:
    """Route the model's float32 CPU linear layers to `kernel` ("onednn" or "blas"); returns how many moved."""
    if kernel != "onednn":
        return 0
    if not torch.backends.mkldnn.is_available():
        log.warning("LINEAR_KERNEL=onednn, but this torch has no oneDNN: using torch's default")
        return 0
    moved = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32 \
                and module.weight.device.type == "cpu":
            module.__class__ = OneDnnLinear  # a subclass with the same state: only forward differs
            moved += 1
    return moved
