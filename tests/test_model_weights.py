"""Reading the checkpoint tensor by tensor gives exactly the weights transformers' own loader gives."""

import shutil

import pytest
import torch
from transformers import Qwen3VLForConditionalGeneration

from loupe.runtime.weights import load_model, local_directory, weight_files


def assert_same_weights(model, expected):
    ours, theirs = model.state_dict(), expected.state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype, name
        assert torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_equal_transformers_own_loader(tiny_model_dir, dtype):
    model = load_model(tiny_model_dir, dtype)
    assert_same_weights(model, Qwen3VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=dtype))
    # The checkpoint stores no lm_head (tied, as in the real model): it must share the embedding.
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()


def test_a_sharded_checkpoint_loads_every_shard(tiny_model_dir, tmp_path):
    original = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_model_dir, sharded, ignore=shutil.ignore_patterns("*.safetensors"))
    original.save_pretrained(sharded, max_shard_size="200KB")
    assert len(weight_files(sharded)) > 1
    assert_same_weights(load_model(sharded, torch.float32), original)


def test_a_local_directory_is_used_as_it_is(tiny_model_dir):
    assert local_directory(str(tiny_model_dir)) == tiny_model_dir
    assert weight_files(tiny_model_dir) == [tiny_model_dir / "model.safetensors"]
