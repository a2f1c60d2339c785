"""A decode batch: the KV caches of several sequences side by side, so one forward pass feeds them all.

Decoding on a CPU is bound by reading the weights; a batch reads them once per step for every
sequence in it. Rows are left-padded to a common length; the attention mask hides the padding and
each row carries its own (M-RoPE) positions, so padding changes nothing a row computes.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from transformers import DynamicCache

from loupe.runtime.cache import cache_from, cache_positions


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Pad the sequence axis (-2) of (batch, heads, seq, dim) on the left with zeros up to `length`."""
    missing = length - tensor.shape[-2]
    if missing == 0:
        return tensor
    padding = tensor.new_zeros(*tensor.shape[:-2], missing, tensor.shape[-1])
    return torch.cat([padding, tensor], dim=-2)


class DecodeBatch:
    """Sequences join after their own prefill, step together, and leave with their own cache back."""

    def __init__(self, config):
        self.config = config
        self.rows: list[Hashable] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (rows, length): 1 on real positions, 0 on padding

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def positions(self) -> int:
        """Token positions the batch's cache holds memory for (rows x length, padding and room included)."""
        return cache_positions(self.cache)

    def add(self, row: Hashable, cache: DynamicCache) -> None:
        """Join with a sequence's own cache (batch of one); the batch takes it over."""
        own_length = cache.get_seq_length()
        if self.cache is None:
            self.rows, self.cache = [row], cache  # alone, the batch decodes into the sequence's own cache
            self.mask = torch.ones(1, own_length, dtype=torch.long, device=cache.layers[0].keys.device)
            return
        length = max(own_length, self.mask.shape[1])
        device = self.mask.device
        # Layer by layer, releasing each old layer as its successor is made: the join costs one
        # layer's worth of memory beside the batch, not a second copy of every cache.
        for layer, own in zip(self.cache.layers, cache.layers, strict=True):
            layer.replace(
                torch.cat([_left_pad(layer.keys, length), _left_pad(own.keys, length)]),
                torch.cat([_left_pad(layer.values, length), _left_pad(own.values, length)]),
            )
            own.reset()
        own_mask = torch.cat(
            [
                torch.zeros(1, length - own_length, dtype=torch.long, device=device),
                torch.ones(1, own_length, dtype=torch.long, device=device),
            ],
            dim=1,
        )
        old_mask = torch.cat(
            [torch.zeros(len(self.rows), length - self.mask.shape[1], dtype=torch.long, device=device), self.mask],
            dim=1,
        )
        self.mask = torch.cat([old_mask, own_mask])
        self.rows.append(row)

    def remove(self, row: Hashable) -> DynamicCache:
        """Leave the batch; returns the sequence's own cache without padding."""
        index = self.rows.index(row)
        self.rows.pop(index)
        if not self.rows:  # the last row has no padding (columns padded in every row are dropped)
            own, self.cache, self.mask = self.cache, None, None
            return own
        start = int(self.mask[index].argmax())  # the first real position of a left-padded row
        states = [
            (layer.keys[index : index + 1, :, start:], layer.values[index : index + 1, :, start:])
            for layer in self.cache.layers
        ]
        own = cache_from(self.config, states, room=0)  # kept, not extended, for now
        keep = [i for i in range(len(self.rows) + 1) if i != index]
        mask = self.mask[keep]
        first = int(mask.max(dim=0).values.argmax())  # drop columns that are padding in every row left
        self.mask = mask[:, first:]
        for layer in self.cache.layers:
            layer.replace(layer.keys[keep, :, first:], layer.values[keep, :, first:])
        return own

    def forward(self, step, tokens: Sequence[int], positions: Sequence[Sequence[int]]) -> torch.Tensor:
        """Feed one token per row at the given (text, t, h, w) positions; returns (rows, vocab) logits.

        `step(input_ids, position_ids, mask, cache)` is the model's decode step (model_decode_step).
        """
        device = self.mask.device  # the cache's: tokens and positions go there, the mask grows there
        input_ids = torch.tensor(tokens, dtype=torch.long, device=device).view(-1, 1)
        position_ids = torch.tensor(positions, dtype=torch.long, device=device).T.reshape(4, -1, 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        return step(input_ids, position_ids, self.mask, self.cache)
