"""Loading Qwen3-VL for serving: tokenizer, image processor, weights, and the kernels that compute them."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from loupe.runtime import native_kernel, prepared
from loupe.runtime.attention import use_native_attention
from loupe.runtime.backend import QwenBackend
from loupe.runtime.kernels import default_bfloat16_layers, kernel_counts, use_linear_kernel
from loupe.runtime.memory import map_large_allocations
from loupe.runtime.native_kernel import variant_of
from loupe.runtime.weights import load_advice, load_model, local_directory, weight_files
from loupe.settings import Settings

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to do about it."""


def _weights(directory: Path, settings: Settings) -> torch.nn.Module:
    """The model on its kernels: mapped from prepared weights where there are some, else read and prepared."""
    dtype = getattr(torch, settings.dtype)
    name = None
    if settings.prepared_weights and settings.linear_kernel == "native" and settings.device == "cpu":
        variant, _ = native_kernel.choose(settings.kernel_cache_dir)  # None: use_linear_kernel says why
        files = weight_files(directory)
        if variant is not None and files:
            name = prepared.key(directory, files, dtype, variant)
            mapped = prepared.load(directory, dtype, settings.kernel_cache_dir, name)
            if mapped is not None:
                return mapped
    model = load_model(directory, dtype).to(settings.device).eval()
    use_linear_kernel(model, settings.linear_kernel, settings.kernel_cache_dir)
    if name is not None and variant_of(model) is not None:
        prepared.save(model, settings.kernel_cache_dir, name)
    return model


def load(settings: Settings) -> QwenBackend:
    """Load tokenizer, image processor and weights (straight into their final dtype, one copy)."""
    map_large_allocations()  # before the weights: the load's own transient blocks go back too
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    source = settings.model_id
    try:
        directory = local_directory(source)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        if tokenizer.chat_template is None:  # before the weights: refused in a second, not after the load
            raise ModelLoadError(f"The tokenizer of {source!r} has no chat template.")
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(directory)
        model = _weights(directory, settings)
        generation_config = GenerationConfig.from_pretrained(directory)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(load_advice(source, exc)) from exc
    variant, counts = variant_of(model), kernel_counts(model)
    if variant is not None:
        use_native_attention(model, variant)
    log.info(
        "model %s loaded in %s; linear layers: %s; one-token attention: %s",
        source,
        settings.dtype,
        ", ".join(f"{count} {kernel}" for kernel, count in counts.items()) or "torch's default kernel",
        f"native ({variant})" if variant else "sdpa",
    )
    if slow := default_bfloat16_layers(model):
        log.warning(
            "%d bfloat16 linear layers run on torch's default kernel, which can be several times slower than "
            "float32 on a CPU without bfloat16 arithmetic: DTYPE=float32 may answer sooner here",
            slow,
        )
    kernels = f"native {variant}" if variant else (counts.most_common(1)[0][0] if counts else "torch")
    eos = generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    name = Path(source).name if Path(source).is_dir() else source
    return QwenBackend(model, tokenizer, image_processor, eos_ids, name, settings, kernels)
