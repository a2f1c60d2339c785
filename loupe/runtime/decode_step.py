"""A decode step of Qwen3-VL's text decoder in a few native calls per layer, on transformers' KV cache.

A decode step streams every weight from memory, and the stream flushes the CPU's caches between
layers. The small operations around the matrix products (norms, rotary embeddings, residual adds, and
Python and torch's dispatcher between them) then run cold. On the benchmark machine, transformers'
modules spent 12 ms of a one-sequence float32 step outside the matrix products with the weight reads
taken away, but 22-29 ms between them. This step does the same arithmetic in fewer, larger calls
(loupe::rms_norm and loupe::head_norm_rope, csrc/decode_step.cpp, beside the linear and attention
kernels): 6 ms alone, 11 ms between the reads, and the whole step 136-143 ms against 150-160 in one
process, interleaved. Prompts still run through transformers; `decode_step` picks this step where it
computes the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from loupe.runtime import native_kernel, torch_step
from loupe.runtime.attention import name
from loupe.runtime.graphed_step import GraphedDecodeStep
from loupe.runtime.native_kernel import NativeLinear
from loupe.runtime.torch_step import TorchDecodeStep

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's parameters, as the kernels take them."""

    input_norm: torch.Tensor
    q: NativeLinear
    k: NativeLinear
    v: NativeLinear
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    o: NativeLinear
    post_norm: torch.Tensor
    gate: NativeLinear
    up: NativeLinear
    down: NativeLinear


class NativeDecodeStep:
    """Feeds one token per row through the text decoder and lm_head; returns (rows, vocab) logits."""

    def __init__(self, model: torch.nn.Module):
        text = model.model.language_model
        config = text.config
        self.eps = config.rms_norm_eps
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.scale = text.layers[0].self_attn.scaling
        self.embed, self.rotary, self.lm_head = text.embed_tokens, text.rotary_emb, model.lm_head
        self.norm = text.norm.weight
        self.ops = native_kernel.ops(model.lm_head.variant)
        self.layers = [_layer(layer) for layer in text.layers]

    @torch.inference_mode()
    def __call__(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        """input_ids (rows, 1); position_ids (4, rows, 1): text, then M-RoPE's t, h, w; mask (rows, keys)."""
        ops = self.ops
        rows = input_ids.shape[0]
        h = self.embed(input_ids).view(rows, -1)
        cos, sin = (t.view(rows, -1) for t in self.rotary(h, position_ids[1:]))
        keep = mask.bool()
        for layer, cached in zip(self.layers, cache.layers, strict=True):
            x = ops.rms_norm(h, layer.input_norm, self.eps)
            q = ops.head_norm_rope(layer.q.rows(x).view(rows, self.heads, -1), layer.q_norm, cos, sin, self.eps)
            k = ops.head_norm_rope(layer.k.rows(x).view(rows, self.kv_heads, -1), layer.k_norm, cos, sin, self.eps)
            keys, values = cached.update(k, layer.v.rows(x).view(rows, self.kv_heads, 1, -1))
            attended = ops.decode_attention(q, keys, values, keep, self.scale)
            h = h + layer.o.rows(attended.view(rows, -1))
            x = ops.rms_norm(h, layer.post_norm, self.eps)
            h = h + layer.down.rows(F.silu(layer.gate.rows(x)) * layer.up.rows(x))
        return self.lm_head(ops.rms_norm(h, self.norm, self.eps))


def _layer(layer: torch.nn.Module) -> _Layer:
    """A decoder layer's parameters."""
    attention, mlp = layer.self_attn, layer.mlp
    return _Layer(
        layer.input_layernorm.weight,
        attention.q_proj,
        attention.k_proj,
        attention.v_proj,
        attention.q_norm.weight,
        attention.k_norm.weight,
        attention.o_proj,
        layer.post_attention_layernorm.weight,
        mlp.gate_proj,
        mlp.up_proj,
        mlp.down_proj,
    )


class TransformersDecodeStep:
    """The same step through the model's own forward: any model, any kernels."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @torch.inference_mode()
    def __call__(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        """As NativeDecodeStep.__call__."""
        output = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=True
        )
        return output.logits[:, -1]


def decode_step(
    model: torch.nn.Module,
) -> NativeDecodeStep | GraphedDecodeStep | TorchDecodeStep | TransformersDecodeStep:
    """The native step where it computes this model's decoder on a CPU, torch's few operations on a GPU
    (replayed from CUDA graphs on CUDA), else (saying why) transformers' forward."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        problem = torch_step.unfit(model)
        if problem is None:
            return GraphedDecodeStep(model) if device.type == "cuda" else TorchDecodeStep(model)
    else:
        problem = _unfit(model)
        if problem is None:
            return NativeDecodeStep(model)
    log.info("decode steps run through transformers: %s", problem)
    return TransformersDecodeStep(model)


def _unfit(model: torch.nn.Module) -> str | None:
    """Why the native step cannot compute this model's decoder, or None."""
    text = getattr(getattr(model, "model", None), "language_model", None)
    if text is None or type(text).__name__ != "Qwen3VLTextModel":
        return "not a Qwen3-VL text decoder"
    config = text.config
    variant = getattr(model.lm_head, "variant", None)
    if variant is None:
        return "the lm_head is not native"
    if config._attn_implementation != name(variant):
        return "one-token attention is not the native kernel"
    if config.hidden_act != "silu":
        return f"activation {config.hidden_act!r}"
    for layer in text.layers:
        linears = [getattr(layer.self_attn, f"{name}_proj") for name in "qkvo"]
        linears += [getattr(layer.mlp, f"{name}_proj") for name in ("gate", "up", "down")]
        if not all(type(m) is NativeLinear for m in linears):
            return "not every linear layer of the decoder is native"
    return None
