"""One-token attention by loupe::decode_attention computes what torch's SDPA computes; prompts stay on SDPA."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from loupe.runtime import native_kernel
from loupe.runtime.attention import name as attention_name
from loupe.runtime.attention import use_native_attention
from loupe.runtime.cache import new_cache
from loupe.runtime.native_build import no_variant_reason
from loupe.runtime.native_kernel import variant_of
from loupe.runtime.weights import load_model
from tests.support.cpu import VARIANTS_HERE


def cached(batch: int, heads: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    """Keys or values as a growing cache holds them: a view of a buffer with room to spare."""
    return torch.randn(batch, heads, length + 7, 64, dtype=dtype)[:, :, :length]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,length,padded", [(1, 1, 0), (1, 300, 0), (3, 40, 17), (2, 5, 4)])
def test_the_kernel_computes_sdpa_with_grouped_heads_and_left_padding(native, dtype, batch, length, padded):
    query = torch.randn(batch, 8, 1, 64, dtype=dtype)
    keys, values = cached(batch, 2, length, dtype), cached(batch, 2, length, dtype)  # 4 query heads per key head
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, :padded] = False  # the first row is left-padded, as a row in a decode batch is
    expected = F.scaled_dot_product_attention(
        query.float(), keys.float(), values.float(), attn_mask=mask[:, None, None], scale=0.1, enable_gqa=True
    ).transpose(1, 2)
    out = native_kernel.ops(native).decode_attention(query, keys, values, mask, 0.1)
    assert out.shape == (batch, 1, 8, 64) and out.dtype == dtype
    # float32 throughout; bfloat16 rounds the result once (a relative step of 2**-8)
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-3, "rtol": 2**-8}
    torch.testing.assert_close(out.float(), expected, **tolerance)
    if padded == 0:
        unmasked = native_kernel.ops(native).decode_attention(query, keys, values, None, 0.1)
        torch.testing.assert_close(unmasked, out, rtol=0, atol=0)


def kernel_calls(run, variant):
    """How many times `run()` called the variant's decode_attention (counted by torch's profiler), and what it
    returned."""
    with profile() as recorded:
        result = run()
    op = f"{native_kernel.VARIANTS[variant].namespace}::decode_attention"
    return sum(event.count for event in recorded.key_averages() if event.key == op), result


def test_a_model_decodes_with_the_kernel_and_reads_prompts_with_sdpa(native, tiny_model_dir):
    plain, ours = load_model(tiny_model_dir, torch.float32), load_model(tiny_model_dir, torch.float32)
    use_native_attention(ours, native)
    assert ours.config.text_config._attn_implementation == attention_name(native)
    assert ours.config.vision_config._attn_implementation == "sdpa"
    ids = torch.randint(0, plain.config.text_config.vocab_size, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0  # a left-padded row
    logits, calls = {}, {}
    with torch.inference_mode():
        for name, model in (("sdpa", plain), ("ours", ours)):
            cache = new_cache(model.config)
            step_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
            prompt_calls, prompt = kernel_calls(partial(model, input_ids=ids, attention_mask=mask, cache=cache), native)
            step_calls, step = kernel_calls(
                partial(model, input_ids=torch.tensor([[5], [7]]), cache=cache, attention_mask=step_mask), native
            )
            calls[name] = (prompt_calls, step_calls)
            logits[name, "prompt"], logits[name, "step"] = prompt.logits, step.logits
    layers = plain.config.text_config.num_hidden_layers
    assert calls == {"sdpa": (0, 0), "ours": (0, layers)}
    assert torch.equal(logits["ours", "prompt"], logits["sdpa", "prompt"])
    assert torch.allclose(logits["ours", "step"], logits["sdpa", "step"], atol=1e-5)


def test_the_service_decodes_with_the_fastest_variant_by_default(backend):
    if not VARIANTS_HERE:
        pytest.skip(no_variant_reason())
    assert variant_of(backend.model) == VARIANTS_HERE[0]
    assert backend.model.config.text_config._attn_implementation == attention_name(VARIANTS_HERE[0])
