"""Loading onto the kernels: prepared weights (kept by the first load, mapped by later ones, the same model) and
the warning for bfloat16 left to torch."""

import logging
import os
import shutil

import pytest
import torch

from loupe.inference import Message, SamplingParams, TextPart
from loupe.runtime import native_build
from loupe.runtime.loader import load
from loupe.runtime.native_kernel import BlockedEmbedding, NativeLinear
from tests.support.cpu import VARIANTS_HERE
from tests.support.live_server import KERNEL_CACHE_DIR

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, top_p=1.0, top_k=0, presence_penalty=0.0, ignore_eos=True)


@pytest.fixture
def cache_dir(tmp_path):
    """An empty cache folder but for the compiled kernels (copied: compiling again takes a while)."""
    if not VARIANTS_HERE:  # weights are prepared for the native kernels only
        pytest.skip(native_build.no_variant_reason())
    assert native_build.unavailable(str(KERNEL_CACHE_DIR), VARIANTS_HERE[0]) is None
    folder = tmp_path / "cache"
    folder.mkdir()
    for library in KERNEL_CACHE_DIR.glob("loupe_kernels-*.so"):
        shutil.copy2(library, folder)
    return folder


def loaded(settings, cache_dir, dtype="float32", **changes):
    return load(settings.replace(kernel_cache_dir=str(cache_dir), dtype=dtype, **changes))


def answer(backend) -> list[int]:
    prompt = backend.prepare([Message("user", (TextPart("Say something."),))], GREEDY.max_tokens)
    return [t.id for t in backend.generate(prompt, GREEDY, lambda: False)]


def prepared_files(cache_dir):
    return sorted(p.suffix for p in cache_dir.glob("weights-*"))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_second_load_maps_the_prepared_weights_and_answers_the_same(settings, cache_dir, caplog, dtype):
    first = loaded(settings, cache_dir, dtype)
    assert prepared_files(cache_dir) == [".bin", ".json"]
    with caplog.at_level(logging.INFO, logger="loupe.runtime.prepared"):
        second = loaded(settings, cache_dir, dtype)
    assert "weights mapped from" in caplog.text
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.inference_mode():
        assert torch.equal(second.model(input_ids=ids).logits, first.model(input_ids=ids).logits)
    assert answer(second) == answer(first)
    tensors = [*second.model.parameters(), *second.model.buffers()]
    assert not any(t.is_meta for t in tensors) and {t.dtype for t in second.model.parameters()} == {
        getattr(torch, dtype)
    }
    text = second.model.model.language_model
    assert type(text.embed_tokens) is BlockedEmbedding and text.embed_tokens.weight is second.model.lm_head.weight
    assert all(type(m) is NativeLinear for m in second.model.modules() if isinstance(m, torch.nn.Linear))


def test_with_prepared_weights_off_nothing_is_kept(settings, cache_dir):
    loaded(settings, cache_dir, prepared_weights=False)
    assert prepared_files(cache_dir) == []


def test_an_incomplete_file_is_prepared_again(settings, cache_dir, caplog):
    loaded(settings, cache_dir)
    data = next(cache_dir.glob("weights-*.bin"))
    size = data.stat().st_size
    os.truncate(data, size // 2)
    with caplog.at_level(logging.WARNING, logger="loupe.runtime.prepared"):
        backend = loaded(settings, cache_dir)
    assert "are incomplete; preparing them again" in caplog.text
    assert data.stat().st_size == size and answer(backend)


def test_a_changed_checkpoint_gets_new_prepared_weights(settings, cache_dir, tiny_model_dir, tmp_path):
    loaded(settings, cache_dir)
    changed = tmp_path / "changed"
    shutil.copytree(tiny_model_dir, changed)
    weights = changed / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    load(settings.replace(model_id=str(changed), kernel_cache_dir=str(cache_dir)))
    assert prepared_files(cache_dir) == [".bin", ".bin", ".json", ".json"]


def test_bfloat16_on_torchs_default_kernel_is_warned_about(settings, cache_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="loupe.runtime.loader"):
        loaded(settings, cache_dir, "bfloat16", linear_kernel="blas")
    assert "bfloat16 linear layers run on torch's default kernel" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="loupe.runtime.loader"):
        loaded(settings, cache_dir, "bfloat16")  # native: nothing to warn about
    assert "torch's default kernel" not in caplog.text
