"""A KV cache that appends into spare room instead of concatenating a new tensor every token.

transformers' DynamicLayer grows by `torch.cat`, which allocates and copies a layer's whole cache on
every decode step. Here each layer keeps a buffer with room to spare, and `keys`/`values` are views
of its filled part; a step writes one position. The buffer is reallocated (with new room) only when
full, or when the views were replaced by something else (a crop keeps them; a reorder does not).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

ROOM = 128  # tokens of spare room per reallocation: a copy every ROOM steps, at most ROOM tokens unused


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose update writes into spare capacity."""

    def __init__(self, room: int = ROOM, **kwargs):
        super().__init__(**kwargs)
        self.room = room
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append (batch, heads, new, dim) states; returns views of everything cached so far."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        if not self._views_are_current(key_states) or end > self._key_buffer.shape[-2]:
            self._reallocate(key_states, value_states, length, end + self.room)
        self._key_buffer[..., length:end, :].copy_(key_states)
        self._value_buffer[..., length:end, :].copy_(value_states)
        self.keys = self._key_buffer[..., :end, :]
        self.values = self._value_buffer[..., :end, :]
        return self.keys, self.values

    @property
    def capacity(self) -> int:
        """Positions its buffers hold memory for, filled or spare (0 before the first update)."""
        return self._key_buffer.shape[-2] if self._key_buffer is not None else 0

    def replace(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Hold (a copy of) these states instead, letting go of the old buffers first."""
        self.reset()
        self.update(keys, values)

    def reserve(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The buffers, with room for `count` more positions (reallocated if need be), for a writer that
        bypasses update() (a CUDA graph writes in place); `filled` then says how far they hold states."""
        length = self.get_seq_length()
        if not self._views_are_current(self.keys) or length + count > self.capacity:
            self._reallocate(self.keys, self.values, length, length + count + self.room)
            self.filled(length)
        return self._key_buffer, self._value_buffer

    def filled(self, end: int) -> None:
        """The buffers' first `end` positions hold states: `keys` and `values` are views of them."""
        self.keys = self._key_buffer[..., :end, :]
        self.values = self._value_buffer[..., :end, :]

    def fit(self) -> None:
        """Let go of the spare room: buffers exactly as long as the cache (to be kept, not extended)."""
        if self.capacity > self.get_seq_length():
            self.room = 0
            self.replace(self.keys, self.values)  # the next extension reallocates with room again

    def reset(self) -> None:
        """Empty, buffers released (DynamicLayer's reset would keep them referenced here)."""
        self._key_buffer = self._value_buffer = None
        super().reset()

    def _views_are_current(self, key_states: torch.Tensor) -> bool:
        """Are `keys`/`values` still leading views of the buffers, with the batch and heads of the new states?"""
        buffer = self._key_buffer
        return (
            buffer is not None
            and self.keys.numel() > 0
            and self.keys.data_ptr() == buffer.data_ptr()
            and self.keys.stride() == buffer.stride()
            and self.values.data_ptr() == self._value_buffer.data_ptr()
            and buffer.shape[:-2] == key_states.shape[:-2]
        )

    def _reallocate(self, key_states: torch.Tensor, value_states: torch.Tensor, length: int, capacity: int) -> None:
        """New buffers with room for `capacity` positions, holding the `length` already cached."""
        *lead, _, key_dim = key_states.shape
        # Zeros on a GPU: a graphed step attends over the whole buffer, masking the room, and a masked
        # NaN left in memory would still reach its output (0 x NaN). On a CPU zeros would cost page faults.
        make = key_states.new_empty if key_states.device.type == "cpu" else key_states.new_zeros
        keys = make(*lead, capacity, key_dim)
        values = make(*lead, capacity, value_states.shape[-1])
        if length:
            keys[..., :length, :].copy_(self.keys)
            values[..., :length, :].copy_(self.values)
        self._key_buffer, self._value_buffer = keys, values
        self.room = ROOM  # a cache made to fit grows with room once it is extended


def cache_positions(cache: DynamicCache | None) -> int:
    """Token positions a cache holds memory for, across its rows: its length, plus spare room and padding."""
    layer = cache.layers[0] if cache is not None and cache.layers else None
    if layer is None or not layer.is_initialized:
        return 0
    length = layer.capacity if isinstance(layer, GrowingLayer) else layer.keys.shape[-2]
    return layer.keys.shape[0] * length


def new_cache(config, room: int = ROOM) -> DynamicCache:
    """An empty cache for the model, one growing layer per decoder layer."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer(room) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def fit_cache(cache: DynamicCache) -> DynamicCache:
    """The same cache, each growing layer without spare room (layer by layer: one layer's copy at a time)."""
    for layer in cache.layers:
        if isinstance(layer, GrowingLayer):
            layer.fit()
    return cache


def cache_from(config, layers: Sequence[tuple[torch.Tensor, torch.Tensor]], room: int = ROOM) -> DynamicCache:
    """A cache holding (copies of) the given (keys, values) per layer, with `room` positions to spare."""
    cache = new_cache(config, room)
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache
