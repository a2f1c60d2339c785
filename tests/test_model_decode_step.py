"""The native decode step computes what transformers' modules compute, one op or a whole batch at a time."""

import pytest
import torch
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRMSNorm, apply_rotary_pos_emb

from loupe.runtime.attention import use_native_attention
from loupe.runtime.batch import DecodeBatch
from loupe.runtime.cache import new_cache
from loupe.runtime.decode_step import NativeDecodeStep, TransformersDecodeStep, decode_step
from loupe.runtime.kernels import use_linear_kernel
from loupe.runtime.native_build import no_variant_reason
from loupe.runtime.native_kernel import ops
from loupe.runtime.weights import load_model
from tests.support.cpu import NATIVE_DTYPES, VARIANTS_HERE
from tests.support.live_server import KERNEL_CACHE_DIR


def norm(width: int, dtype: torch.dtype) -> Qwen3VLTextRMSNorm:
    """transformers' RMSNorm with a weight that is not all ones."""
    module = Qwen3VLTextRMSNorm(width, eps=1e-6).to(dtype)
    with torch.no_grad():
        module.weight.normal_()
    return module


@pytest.mark.parametrize("dtype", NATIVE_DTYPES)
@pytest.mark.parametrize("shape", [(1, 2048), (3, 64), (2, 1, 16)])
def test_rms_norm_is_transformers_rms_norm(native, dtype, shape):
    module, x = norm(shape[-1], dtype), 3 * torch.randn(shape, dtype=dtype)
    with torch.inference_mode():
        expected, ours = module(x), ops(native).rms_norm(x, module.weight, 1e-6)
    assert ours.shape == x.shape and ours.dtype == dtype
    # Only the order of the sum of squares differs. bfloat16 rounds twice, as transformers does: each
    # rounding may land one step (2**-8 relative) on the other side.
    tolerance = {"atol": 1e-6, "rtol": 1e-6} if dtype == torch.float32 else {"atol": 0, "rtol": 2**-6}
    torch.testing.assert_close(ours, expected, **tolerance)


@pytest.mark.parametrize("dtype", NATIVE_DTYPES)
@pytest.mark.parametrize("rows,heads,width", [(1, 16, 128), (3, 2, 16)])
def test_head_norm_rope_is_q_norm_then_the_rotary_embedding(native, dtype, rows, heads, width):
    module = norm(width, dtype)
    projected = torch.randn(rows, 2 * heads * width, dtype=dtype)[:, : heads * width]  # a padded layer's output
    angles = torch.rand(rows, 1, width // 2) * 100
    cos, sin = (f(torch.cat([angles, angles], -1)).to(dtype) for f in (torch.cos, torch.sin))
    with torch.inference_mode():
        expected, _ = apply_rotary_pos_emb(
            module(projected.view(rows, 1, heads, width)).transpose(1, 2),
            torch.zeros(rows, heads, 1, width, dtype=dtype),
            cos,
            sin,
        )
        ours = ops(native).head_norm_rope(
            projected.view(rows, heads, width), module.weight, cos.view(rows, width), sin.view(rows, width), 1e-6
        )
    assert ours.shape == (rows, heads, 1, width) and ours.dtype == dtype
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2**-7, "rtol": 2**-7}
    torch.testing.assert_close(ours, expected, **tolerance)


def native_model(directory, dtype: torch.dtype, variant: str):
    """The tiny model as the service holds it: native linear layers and attention, in one variant."""
    model = load_model(directory, dtype)
    use_linear_kernel(model, "native", str(KERNEL_CACHE_DIR), variant)
    use_native_attention(model, variant)
    return model


@pytest.mark.parametrize("dtype", NATIVE_DTYPES)
def test_a_batch_decodes_the_same_logits_and_caches_as_transformers(native, tiny_model_dir, dtype):
    model = native_model(tiny_model_dir, dtype, native)
    ids = torch.randint(0, model.config.text_config.vocab_size, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0  # a left-padded row, as in a decode batch
    steps = {"native": NativeDecodeStep(model), "transformers": TransformersDecodeStep(model)}
    logits, caches = {}, {}
    with torch.inference_mode():
        for name, step in steps.items():
            cache = new_cache(model.config)
            model(input_ids=ids, attention_mask=mask, cache=cache)
            keep = mask
            for position, tokens in enumerate([[5, 7], [11, 3], [2, 9]]):
                keep = torch.cat([keep, torch.ones(2, 1, dtype=torch.long)], dim=1)
                at = torch.tensor([6 + position, 9 + position])  # positions continue from each row's prompt
                logits[name, position] = step(
                    torch.tensor(tokens).view(2, 1), at.expand(4, 2).reshape(4, 2, 1), keep, cache
                )
            caches[name] = cache
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    for position in range(3):
        assert logits["native", position].shape == (2, model.config.text_config.vocab_size)
        torch.testing.assert_close(logits["native", position], logits["transformers", position], **tolerance)
    for ours, theirs in zip(caches["native"].layers, caches["transformers"].layers, strict=True):
        assert ours.keys.shape == theirs.keys.shape == (2, 2, 12, 16)
        torch.testing.assert_close(ours.keys, theirs.keys, **tolerance)
        torch.testing.assert_close(ours.values, theirs.values, **tolerance)


def test_a_decode_batch_feeds_the_step_its_rows(native, tiny_model_dir):
    model = native_model(tiny_model_dir, torch.float32, native)
    step = NativeDecodeStep(model)
    batch = DecodeBatch(model.config)
    with torch.inference_mode():
        for row, length in (("a", 4), ("b", 6)):
            cache = new_cache(model.config)
            model(input_ids=torch.arange(1, length + 1).view(1, -1), cache=cache)
            batch.add(row, cache)
        logits = batch.forward(step, [5, 7], [[4, 4, 4, 4], [6, 6, 6, 6]])
    assert logits.shape == (2, model.config.text_config.vocab_size)
    assert batch.cache.get_seq_length() == 7 and batch.mask.tolist() == [[0, 0, 1, 1, 1, 1, 1], [1] * 7]


def test_the_native_step_is_chosen_only_for_a_native_model(native, tiny_model_dir):
    assert isinstance(decode_step(native_model(tiny_model_dir, torch.float32, native)), NativeDecodeStep)
    plain = load_model(tiny_model_dir, torch.float32)
    assert isinstance(decode_step(plain), TransformersDecodeStep)
    use_linear_kernel(plain, "native", str(KERNEL_CACHE_DIR), native)  # native layers, but SDPA for attention
    assert isinstance(decode_step(plain), TransformersDecodeStep)


def test_the_service_decodes_with_the_native_step_by_default(backend):
    if not VARIANTS_HERE:
        pytest.skip(no_variant_reason())
    assert isinstance(backend.decode_step, NativeDecodeStep)
