"""The GPU's decode step (torch_step.py) computes what transformers' forward computes, on any device."""

import pytest
import torch

from loupe.runtime.cache import new_cache
from loupe.runtime.decode_step import TransformersDecodeStep, decode_step
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
def test_a_model_on_a_gpu_decodes_with_the_torch_step(tiny_model_dir):
    assert isinstance(decode_step(load_model(tiny_model_dir, torch.float32).to("cuda")), TorchDecodeStep)
