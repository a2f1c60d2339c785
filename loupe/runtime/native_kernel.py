"""Loupe's own kernels (csrc/, built by native_build.py) as torch modules: linear layers and the tied embedding.

oneDNN's packed layout read a decode step's float32 weights at 0.76-0.83 of the machine's bandwidth
on the benchmark machine; the blocked kernel reads the same bytes, laid out in blocks of four vector
registers' width, at 0.89-1.0 for one to four rows and computes a long prompt as fast as oneDNN
(`python -m bench.kernel_rates`, which also gives the figures of each variant on your machine).
bfloat16 weights go through AVX512-BF16 dot products where the CPU has them and are widened to
float32 in registers elsewhere: half the bytes to read either way. attention.py says what
decode_attention.cpp is for, decode_step.py what decode_step.cpp is for. `choose()` picks the
fastest variant this CPU runs and says why when there is none; `fits(weight)` says whether the
linear kernel computes a weight.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from loupe.runtime import native_build
from loupe.runtime.native_build import VARIANTS

_BLOCKS_AT_A_TIME = 16  # scratch for rearranging a weight in place: 8 MB for K = 2048


def choose(cache_dir: str, variant: str | None = None) -> tuple[str | None, str | None]:
    """(`variant`, or else the fastest this CPU runs, built and loaded; None), or (None, why it cannot be)."""
    if variant is None:
        here = native_build.variants_here()
        if not here:
            return None, native_build.no_variant_reason()
        variant = here[0]
    problem = native_build.unavailable(cache_dir, variant)
    return (None, problem) if problem else (variant, None)


@functools.cache
def ops(variant: str) -> torch._ops._OpNamespace:
    """The ops of a loaded variant: blocked_linear, decode_attention, rms_norm, head_norm_rope."""
    return getattr(torch.ops, VARIANTS[variant].namespace)


def fits(weight: torch.Tensor) -> bool:
    """Whether the linear kernel computes this weight: float32, or bfloat16 with an even number of inputs
    (the kernel reads them in pairs)."""
    if weight.dtype == torch.bfloat16:
        return weight.shape[-1] % 2 == 0
    return weight.dtype == torch.float32


def variant_of(model: torch.nn.Module) -> str | None:
    """The variant the model's native layers run, or None if it has none."""
    return next((m.variant for m in model.modules() if isinstance(m, NativeLinear)), None)


class NativeLinear(torch.nn.Linear):
    """nn.Linear whose weight is stored in blocks and computed by one variant's blocked_linear."""

    variant: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.out_features)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] -> [M, out_features]: forward without reshaping (model_decode_step calls it directly)."""
        out = ops(self.variant).blocked_linear(x, self.weight, self.bias)
        return out if out.shape[1] == self.out_features else out[:, : self.out_features]  # a padded last block


class BlockedEmbedding(torch.nn.Embedding):
    """nn.Embedding whose rows are read out of the blocked weight of the lm_head tied to it."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        block = self.weight.shape[2]
        rows = self.weight[ids // block, :, ids % block]  # (*ids.shape, K) or, for bfloat16, (*, K / 2, 2)
        return rows.flatten(ids.dim()) if self.weight.dim() == 4 else rows


def tie_to_native(linear: torch.nn.Linear, embedding: torch.nn.Embedding, variant: str) -> None:
    """Move an lm_head to the native kernel with the embedding tied to it: one blocked copy for both."""
    to_native(linear, variant)
    embedding.weight = linear.weight
    embedding.__class__ = BlockedEmbedding


def to_native(module: torch.nn.Linear, variant: str) -> None:
    """Rearrange an nn.Linear's weight (and bias) into one variant's blocks, in place where its width allows.

    float32, or bfloat16 with an even number of inputs (the kernel reads them in pairs).
    """
    block = VARIANTS[variant].block
    pad = -module.out_features % block
    with torch.no_grad():
        weight = module.weight.detach().contiguous()  # loaded weights are; else this is the one copy
        if pad:  # a padded copy: small or odd layers only
            weight = F.pad(weight, (0, 0, 0, pad))
        blocks = _blocked_in_place(weight, block)
        module.weight = torch.nn.Parameter(blocks, requires_grad=False)
        if module.bias is not None:
            module.bias = torch.nn.Parameter(F.pad(module.bias, (0, pad)).contiguous(), requires_grad=False)
    module.__class__ = NativeLinear
    module.variant = variant


def _blocked_in_place(weight: torch.Tensor, block: int) -> torch.Tensor:
    """A contiguous [N, K] weight's own memory rearranged into blocks of B columns, a few at a time.

    float32: [N / B, K, B]; bfloat16: [N / B, K / 2, B, 2], pairs of k side by side. Each block of B
    rows occupies the same bytes in both layouts, so only a few blocks' worth of scratch is needed: a
    full copy of the 1.2 GB embedding would raise the process's peak by as much.
    """
    rows = weight.view(-1, block, weight.shape[1])
    for start in range(0, rows.shape[0], _BLOCKS_AT_A_TIME):
        chunk = rows[start : start + _BLOCKS_AT_A_TIME]
        chunk.view(-1).copy_(_blocks(chunk).contiguous().view(-1))
    return rows.view(-1).view(_blocks(rows).shape)


def _blocks(rows: torch.Tensor) -> torch.Tensor:
    """[blocks, B, K] rows as the kernel's blocks (a strided view, of the same elements)."""
    if rows.dtype == torch.bfloat16:
        return rows.unflatten(2, (-1, 2)).transpose(1, 2)
    return rows.transpose(1, 2)
