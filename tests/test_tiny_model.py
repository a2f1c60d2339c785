"""The tiny test model loads and runs exactly like the real Qwen3-VL directory, with transformers' own pipeline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoTokenizer, GenerationConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from tests.support.tiny_model import CHAT_TEMPLATE, build_tiny_model

IMAGE_MESSAGE = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]}]


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor with no video processor: without torchvision transformers cannot resolve that class."""

    def check_argument_for_proper_class(self, argument_name: str, argument: object) -> object:
        """Accept a missing video processor; check everything else as transformers does."""
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def _random_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A deterministic random RGB image."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


def test_model_loads_with_no_missing_or_unexpected_keys(tiny_model_dir: Path) -> None:
    model, info = Qwen3VLForConditionalGeneration.from_pretrained(
        tiny_model_dir, dtype=torch.float32, output_loading_info=True
    )
    assert {key: list(value) for key, value in info.items() if value} == {}
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_tokenizer_and_chat_template(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tokenizer.apply_chat_template(IMAGE_MESSAGE, tokenize=False, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert json.loads((tiny_model_dir / "chat_template.json").read_text())["chat_template"] == CHAT_TEMPLATE
    ids = tokenizer(text)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|image_pad|>")) == 1
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer("Ünïcode 漢字 ok?")["input_ids"]) == "Ünïcode 漢字 ok?"
    assert 300 <= len(tokenizer) <= 512


def test_config_ids_match_the_tokenizer(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = Qwen3VLForConditionalGeneration.config_class.from_pretrained(tiny_model_dir)
    generation = GenerationConfig.from_pretrained(tiny_model_dir)
    ids = tokenizer.convert_tokens_to_ids
    assert config.image_token_id == ids("<|image_pad|>")
    assert config.video_token_id == ids("<|video_pad|>")
    assert config.vision_start_token_id == ids("<|vision_start|>")
    assert config.vision_end_token_id == ids("<|vision_end|>")
    assert config.text_config.vocab_size >= len(tokenizer)
    assert config.text_config.eos_token_id == tokenizer.eos_token_id == ids("<|im_end|>")
    assert config.text_config.bos_token_id == tokenizer.pad_token_id == ids("<|endoftext|>")
    assert generation.eos_token_id == [ids("<|im_end|>"), ids("<|endoftext|>")]
    assert (generation.temperature, generation.top_p, generation.top_k) == (0.7, 0.8, 20)
    rope = config.text_config.rope_parameters
    assert sum(rope["mrope_section"]) == config.text_config.head_dim // 2 and rope["mrope_interleaved"]


def test_reference_processor_forward_and_generate(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    processor = ImageOnlyQwen3VLProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(tiny_model_dir),
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=CHAT_TEMPLATE,
    )
    text = tokenizer.apply_chat_template(IMAGE_MESSAGE, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[_random_image()], return_tensors="pt")
    assert set(inputs) >= {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
    assert inputs["image_grid_thw"].tolist() == [[1, 14, 20]]  # 64x48 upscaled to >= 65536 px: 320x224
    image_tokens = int((inputs["input_ids"] == tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert image_tokens == 14 * 20 // 4 == int(inputs["mm_token_type_ids"].sum())
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = model(**inputs).logits
        output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    assert output.shape[1] - inputs["input_ids"].shape[1] in range(1, 6)
    assert torch.equal(output[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_build_is_fast_small_and_deterministic(tmp_path: Path) -> None:
    torch.manual_seed(1)  # the weights must not depend on the caller's RNG state, nor change it
    rng_state = torch.get_rng_state()
    start = time.perf_counter()
    first = build_tiny_model(tmp_path / "first")
    elapsed = time.perf_counter() - start
    assert torch.equal(torch.get_rng_state(), rng_state)
    torch.manual_seed(2)
    second = build_tiny_model(tmp_path / "second")
    assert elapsed < 5.0
    files = sorted(path.name for path in first.iterdir())
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.json",
        "preprocessor_config.json",
        "generation_config.json",
    } <= set(files)
    assert sum(path.stat().st_size for path in first.iterdir()) < 5_000_000
    assert all((first / name).read_bytes() == (second / name).read_bytes() for name in files)
