"""The growing KV cache: the same contents as transformers' DynamicLayer, without a copy per token."""

import copy

import torch
from transformers.cache_utils import DynamicLayer

from loupe.runtime.cache import ROOM, GrowingLayer


def states(length, seed, batch=1):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 2, length, 4, generator=generator),
        torch.randn(batch, 2, length, 4, generator=generator),
    )


def test_updates_return_what_a_dynamic_layer_returns():
    ours, theirs = GrowingLayer(), DynamicLayer()
    for step, length in enumerate([5, 1, 1, ROOM, 1]):  # the fourth update overflows the room
        keys, values = states(length, step)
        for got, expected in zip(ours.update(keys, values), theirs.update(keys, values), strict=True):
            assert torch.equal(got, expected)
    assert ours.get_seq_length() == theirs.get_seq_length() == 8 + ROOM


def test_a_decode_step_writes_in_place():
    layer = GrowingLayer()
    layer.update(*states(10, 0))
    buffer = layer.keys.data_ptr()
    for step in range(ROOM):
        layer.update(*states(1, step + 1))
    assert layer.keys.data_ptr() == buffer  # no reallocation while there was room
    layer.update(*states(1, 999))
    assert layer.keys.data_ptr() != buffer and layer.get_seq_length() == 11 + ROOM


def test_a_crop_keeps_the_buffer_and_the_next_update_overwrites_the_dropped_positions():
    layer, reference = GrowingLayer(), DynamicLayer()
    for target in (layer, reference):
        target.update(*states(6, 0))
        target.crop(-2)
        target.update(*states(3, 1))
    assert torch.equal(layer.keys, reference.keys) and torch.equal(layer.values, reference.values)


def test_copies_and_reordered_batches_stay_independent():
    layer = GrowingLayer()
    layer.update(*states(4, 0, batch=2))
    branch = copy.deepcopy(layer)
    branch.update(*states(1, 1, batch=2))
    assert layer.get_seq_length() == 4 and branch.get_seq_length() == 5
    expected = torch.cat([layer.keys[1:], states(1, 2)[0]], dim=-2)
    layer.batch_select_indices(torch.tensor([1]))  # a new tensor, not a view: the layer must reallocate
    keys, _ = layer.update(*states(1, 2))
    assert torch.equal(keys, expected)


def test_a_cache_made_to_fit_gets_room_once_extended():
    layer = GrowingLayer(room=0)
    layer.update(*states(6, 0))
    assert layer._key_buffer.shape[-2] == 6  # kept for later (the prefix cache): no spare room
    layer.update(*states(1, 1))
    assert layer._key_buffer.shape[-2] == 7 + ROOM


def test_fitting_drops_the_spare_room_and_keeps_the_states():
    layer = GrowingLayer()
    keys, values = states(5, 0)
    layer.update(keys, values)
    layer.fit()
    assert layer._key_buffer.shape[-2] == layer._value_buffer.shape[-2] == 5
    assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    layer.update(*states(1, 1))
    assert layer._key_buffer.shape[-2] == 6 + ROOM


def test_a_caches_positions_count_its_rows_room_and_nothing_before_it_holds_states():
    from transformers import DynamicCache

    from loupe.runtime.cache import cache_positions

    cache = DynamicCache()
    cache.layers = [GrowingLayer(), GrowingLayer()]
    assert cache_positions(cache) == cache_positions(None) == 0
    for index in range(2):
        cache.update(*states(6, index, batch=3), index)
    assert cache_positions(cache) == 3 * (6 + ROOM)
    plain = DynamicCache()
    plain.layers = [DynamicLayer()]
    plain.update(*states(6, 0, batch=2), 0)
    assert cache_positions(plain) == 2 * 6
