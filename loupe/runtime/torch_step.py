"""A decode step of Qwen3-VL's text decoder in a few torch operations per layer: what a GPU runs.

On a GPU a one-token step is bound by launching work, not by doing it: the weights stream in about
a millisecond, and transformers' forward launches several times as many small kernels per layer as
needed, from Python (module calls, its RMSNorm's six operations, the rotary embedding's slices, the
4D mask it builds each step). This step computes the same function with about 20: one matrix
product for q, k and v and one for gate and up (each layer's weights laid side by side once, the
modules keeping views of them, so no memory is added), one norm for all query and key heads, one
rotary embedding for both, and SDPA with the query heads that share a key-value head folded into
its query axis (grouped-query attention without copying the cache). Prompts still run through
transformers; graphed_step.py replays this step from CUDA graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

# write(layer index, new keys, new values) -> (keys, values) to attend to, each (rows, kv_heads, keys, head_dim)
Write = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's weights, as this step uses them."""

    input_norm: torch.Tensor
    qkv: torch.Tensor  # q, k and v projections' weights, stacked: (heads + 2 * kv_heads) * head_dim rows
    head_norms: torch.Tensor  # (heads + kv_heads, head_dim): q_norm's weight per query head, then k_norm's
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # gate and up projections' weights, stacked
    down: torch.Tensor


class TorchDecodeStep:
    """Feeds one token per row through the text decoder and lm_head; returns (rows, vocab) logits."""

    def __init__(self, model: torch.nn.Module):
        text = model.model.language_model
        config = text.config
        self.eps = config.rms_norm_eps
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = text.layers[0].self_attn.head_dim
        self.scale = text.layers[0].self_attn.scaling
        self.embed, self.rotary, self.lm_head = text.embed_tokens, text.rotary_emb, model.lm_head
        self.norm = text.norm.weight
        self.layers = [self._layer(layer) for layer in text.layers]

    def _layer(self, layer: torch.nn.Module) -> _Layer:
        """A decoder layer's weights, the projections that read one input fused."""
        attention, mlp = layer.self_attn, layer.mlp
        head_norms = torch.cat(
            [
                attention.q_norm.weight.expand(self.heads, -1),
                attention.k_norm.weight.expand(self.kv_heads, -1),
            ]
        )
        return _Layer(
            layer.input_layernorm.weight,
            fuse(attention.q_proj, attention.k_proj, attention.v_proj),
            head_norms,
            attention.o_proj.weight,
            layer.post_attention_layernorm.weight,
            fuse(mlp.gate_proj, mlp.up_proj),
            mlp.down_proj.weight,
        )

    @torch.inference_mode()
    def __call__(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        """input_ids (rows, 1); position_ids (4, rows, 1): text, then M-RoPE's t, h, w; mask (rows, keys)."""
        return self.run(input_ids, position_ids, mask.bool(), lambda index, k, v: cache.layers[index].update(k, v))

    def run(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor, write: Write
    ) -> torch.Tensor:
        """The step, with `write(layer, k, v)` storing a layer's new keys and values and returning what to
        attend to; `keep` (rows, keys) is True where a row may look. Launches work only: a CUDA graph records it."""
        rows, heads, kv_heads, dim = input_ids.shape[0], self.heads, self.kv_heads, self.head_dim
        h = self.embed(input_ids).view(rows, -1)
        cos, sin = (t.view(rows, 1, dim) for t in self.rotary(h, position_ids[1:]))
        keep = keep[:, None, None, :]  # (rows, 1, 1, keys): broadcast over heads and queries
        for index, layer in enumerate(self.layers):
            x = F.rms_norm(h, (h.shape[-1],), layer.input_norm, self.eps)
            qkv = F.linear(x, layer.qkv).view(rows, heads + 2 * kv_heads, dim)
            qk = F.rms_norm(qkv[:, : heads + kv_heads], (dim,), None, self.eps) * layer.head_norms
            qk = qk * cos + _rotate_half(qk) * sin
            q = qk[:, :heads].reshape(rows, kv_heads, heads // kv_heads, dim)  # a key-value head's queries
            keys, values = write(index, qk[:, heads:].unsqueeze(2), qkv[:, heads + kv_heads :].unsqueeze(2))
            attended = F.scaled_dot_product_attention(q, keys, values, attn_mask=keep, scale=self.scale)
            h = h + F.linear(attended.reshape(rows, -1), layer.o)
            x = F.rms_norm(h, (h.shape[-1],), layer.post_norm, self.eps)
            gate, up = F.linear(x, layer.gate_up).chunk(2, dim=-1)
            h = h + F.linear(F.silu(gate) * up, layer.down)
        return self.lm_head(F.rms_norm(h, (h.shape[-1],), self.norm, self.eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """transformers' rotate_half: (-second half, first half) of the last axis."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def fuse(*linears: torch.nn.Linear) -> torch.Tensor:
    """One weight for linear layers that read the same input; each layer keeps a view of its own rows."""
    with torch.no_grad():
        fused = torch.cat([linear.weight for linear in linears])
        offset = 0
        for linear in linears:  # the separate weights are freed: the layers (and prompts) read the fused one
            rows = linear.weight.shape[0]
            linear.weight = torch.nn.Parameter(fused[offset : offset + rows], requires_grad=False)
            offset += rows
    return fused


def unfit(model: torch.nn.Module) -> str | None:
    """Why this step cannot compute the model's text decoder, or None."""
    text = getattr(getattr(model, "model", None), "language_model", None)
    if text is None or type(text).__name__ != "Qwen3VLTextModel":
        return "not a Qwen3-VL text decoder"
    if text.config.hidden_act != "silu":
        return f"activation {text.config.hidden_act!r}"
    for layer in text.layers:
        linears = [getattr(layer.self_attn, f"{name}_proj") for name in "qkvo"]
        linears += [getattr(layer.mlp, f"{name}_proj") for name in ("gate", "up", "down")]
        if not all(type(m) is torch.nn.Linear and m.bias is None for m in linears):
            return "its linear layers are not torch's own, without bias"
    return None
