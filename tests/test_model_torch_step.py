"""The GPU's decode step (torch_step.py) computes what transformers' forward computes, on any device."""

import pytest
import torch

from loupe.runtime.cache import new_cache
from loupe.runtime.decode_step import TransformersDecodeStep, decode_step
from loupe.runtime.graphed_step import GraphedDecodeStep
from loupe.runtime.torch_step import TorchDecodeStep, fuse
from loupe.runtime.weights import load_model
from tests.support.devices import DEVICES, needs_cuda


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_batch_decodes_the_same_logits_and_caches_as_transformers(tiny_model_dir, device, dtype):
    model = load_model(tiny_model_dir, dtype).to(device).eval()
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(0, vocab, (2, 9), device=device)
    mask = torch.ones(2, 9, dtype=torch.long, device=device)
    mask[0, :3] = 0  # a left-padded row, as in a decode batch
    steps = {"torch": TorchDecodeStep(model), "transformers": TransformersDecodeStep(model)}
    logits, caches = {}, {}
    with torch.inference_mode():
        for name, step in steps.items():
            cache = new_cache(model.config)
            model(input_ids=ids, attention_mask=mask, cache=cache)
            keep = mask
            for position, tokens in enumerate([[5, 7], [11, 3], [2, 9]]):
                keep = torch.cat([keep, keep.new_ones(2, 1)], dim=1)
                at = torch.tensor([6 + position, 9 + position], device=device)  # each row's prompt goes on
                logits[name, position] = step(
                    torch.tensor(tokens, device=device).view(2, 1), at.expand(4, 2).reshape(4, 2, 1), keep, cache
                )
            caches[name] = cache
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    for position in range(3):
        assert logits["torch", position].shape == (2, vocab)
        torch.testing.assert_close(logits["torch", position], logits["transformers", position], **tolerance)
    for ours, theirs in zip(caches["torch"].layers, caches["transformers"].layers, strict=True):
        assert ours.keys.shape == theirs.keys.shape == (2, 2, 12, 16)
        torch.testing.assert_close(ours.keys, theirs.keys, **tolerance)
        torch.testing.assert_close(ours.values, theirs.values, **tolerance)


def test_fused_weights_are_the_layers_own_and_add_no_memory(tiny_model_dir):
    model = load_model(tiny_model_dir, torch.float32)
    attention = model.model.language_model.layers[0].self_attn
    before = [attention.q_proj.weight.clone(), attention.k_proj.weight.clone()]
    fused = fuse(attention.q_proj, attention.k_proj)
    assert torch.equal(fused, torch.cat(before))
    for linear, weight in zip((attention.q_proj, attention.k_proj), before, strict=True):
        assert torch.equal(linear.weight, weight)
        assert linear.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()


def test_a_plain_model_on_the_cpu_decodes_through_transformers(tiny_model_dir):
    assert isinstance(decode_step(load_model(tiny_model_dir, torch.float32)), TransformersDecodeStep)


@needs_cuda
def test_a_model_on_a_gpu_decodes_with_the_graphed_torch_step(tiny_model_dir):
    assert isinstance(decode_step(load_model(tiny_model_dir, torch.float32).to("cuda")), GraphedDecodeStep)


@needs_cuda
def test_the_graphed_step_replays_what_the_eager_step_computes_across_reallocations(tiny_model_dir):
    from loupe.runtime.cache import ROOM

    model = load_model(tiny_model_dir, torch.float32).to("cuda").eval()
    graphed = GraphedDecodeStep(model)
    eager = graphed.eager  # the same fused weights
    ids = torch.randint(0, model.config.text_config.vocab_size, (2, 9), device="cuda")
    mask = torch.ones(2, 9, dtype=torch.long, device="cuda")
    mask[1, :4] = 0  # a left-padded row
    caches, keys = {}, set()
    with torch.inference_mode():
        for name in ("graphed", "eager"):
            caches[name] = new_cache(model.config)
            model(input_ids=ids, attention_mask=mask, cache=caches[name])
        for step in range(ROOM + 20):  # past the buffers' room: they are reallocated, the graph captured anew
            mask = torch.cat([mask, mask.new_ones(2, 1)], dim=1)
            tokens = torch.randint(0, 100, (2, 1), device="cuda")
            at = torch.tensor([9 + step, 5 + step], device="cuda").expand(4, 2).reshape(4, 2, 1)
            ours = graphed(tokens, at, mask, caches["graphed"]).clone()
            theirs = eager(tokens, at, mask, caches["eager"])
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
            keys.add(graphed.key)
    assert not graphed.broken and graphed.graph is not None
    assert len(keys - {None}) == 2  # one graph per buffer, each replayed for over a hundred steps
    for ours, theirs in zip(caches["graphed"].layers, caches["eager"].layers, strict=True):
        assert ours.keys.shape == theirs.keys.shape == (2, 2, 9 + ROOM + 20, 16)
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-4, rtol=1e-4)
