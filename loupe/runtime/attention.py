"""The text decoder's attention: Loupe's own kernel for one new token per sequence, torch's SDPA otherwise.

A decode step's attention reads every cached key and value once. torch's CPU flash attention, given
one query token, read them at about a third of the machine's bandwidth (its work is split per query
head, so two query heads sharing a key-value head read it twice). On the benchmark machine, for 28
layers of a 480-token float32 cache read from memory, it took 11.6 ms where loupe::decode_attention
(csrc/decode_attention.cpp, built with the linear kernels) took 4.9 ms; 50 against 18 ms for four
sequences. A whole decode step was 5-13% quicker for one sequence, 2-11% for four (in one process,
interleaved). It is registered with transformers' AttentionInterface under `name(variant)`, with
SDPA's masks, so prompts (and any call the kernel does not take) still go to SDPA.
"""

from __future__ import annotations

import functools

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from loupe.runtime import native_kernel

PREFIX = "loupe_decode_"


def name(variant: str) -> str:
    """The attention implementation's name for one variant of the kernels."""
    return PREFIX + variant


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    *,
    variant: str,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: (batch, heads, tokens, dim) in, (batch, tokens, heads, dim) out."""
    if _one_token(module, query, key, value, attention_mask) and not dropout:
        # sdpa_mask's (batch, 1, 1, keys) bool mask, True where a row may look; None when all may
        mask = None if attention_mask is None else attention_mask[:, 0, 0, :].contiguous()
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        return native_kernel.ops(variant).decode_attention(query, key, value, mask, scale), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _one_token(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> bool:
    """Whether the kernel takes this call: one query token per row, on the CPU, in shapes it was written for."""
    mask_fits = attention_mask is None or (
        attention_mask.dtype == torch.bool
        and attention_mask.dim() == 4
        and attention_mask.shape[1:3] == (1, 1)
        and attention_mask.shape[-1] == key.shape[-2]
    )
    return (
        query.shape[2] == 1
        and not module.training
        and query.device.type == "cpu"
        and mask_fits
        and query.dtype in (torch.float32, torch.bfloat16)
        and query.shape[-1] % 16 == 0
        and query.shape[1] % key.shape[1] == 0
        and query.stride(-1) == key.stride(-1) == value.stride(-1) == 1
    )


def use_native_attention(model: torch.nn.Module, variant: str) -> None:
    """Route the text decoder's attention through one loaded variant's kernel (prompts still go to SDPA)."""
    AttentionInterface.register(name(variant), functools.partial(attention_forward, variant=variant))
    AttentionMaskInterface.register(name(variant), sdpa_mask)  # the same masks as SDPA: prompts go to it
    model.set_attn_implementation({"text_config": name(variant)})  # the vision encoder never decodes
