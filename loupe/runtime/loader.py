"""Loading Qwen3-VL for serving: tokenizer, image processor, weights, and the kernels that compute them."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from loupe.runtime import device, native_kernel, prepared
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
    on_cpu = device.on_cpu(settings.device)
    if settings.prepared_weights and settings.linear_kernel == "native" and on_cpu:
        variant, _ = native_kernel.choose(settings.kernel_cache_dir)  # None: use_linear_kernel says why
        files = weight_files(directory)
        if variant is not None and files:
            name = prepared.key(directory, files, dtype, variant)
            mapped = prepared.load(directory, dtype, settings.kernel_cache_dir, name)
            if mapped is not None:
                return mapped
    model = load_model(directory, dtype)
    _move(model, settings)
    if on_cpu:
        use_linear_kernel(model, settings.linear_kernel, settings.kernel_cache_dir)
    if name is not None and variant_of(model) is not None:
        prepared.save(model, settings.kernel_cache_dir, name)
    return model


def load(settings: Settings) -> QwenBackend:
    """Load tokenizer, image processor and weights (straight into their final dtype, one copy) onto DEVICE."""
    problem = device.unavailable(settings.device)
    if problem:  # before anything is read: refused in a second, with what to do
        raise ModelLoadError(problem)
    device.configure(settings.device)
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
    words, kernels = _kernels(model, settings)
    log.info("model %s loaded in %s on %s; %s", source, settings.dtype, settings.device, words)
    if advice := device.dtype_advice(settings.device, settings.dtype):
        log.warning(advice)
    if slow := default_bfloat16_layers(model):
        log.warning(
            "%d bfloat16 linear layers run on torch's default kernel, which can be several times slower than "
            "float32 on a CPU without bfloat16 arithmetic: DTYPE=float32 may answer sooner here",
            slow,
        )
    eos = generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    name = Path(source).name if Path(source).is_dir() else source
    backend = QwenBackend(model, tokenizer, image_processor, eos_ids, name, settings, kernels)
    if not device.on_cpu(settings.device):
        backend.warm_up()
    return backend


def _move(model: torch.nn.Module, settings: Settings) -> None:
    """The model onto DEVICE, in eval mode; a GPU without room for it is a load error that says what to do."""
    try:
        model.to(settings.device).eval()
    except torch.cuda.OutOfMemoryError:
        model.to("cpu")  # what did fit goes back, so the advice sees the GPU's memory as others leave it
        raise ModelLoadError(device.out_of_memory_advice(settings.device, settings.dtype)) from None


def _kernels(model: torch.nn.Module, settings: Settings) -> tuple[str, str]:
    """Attention onto the native kernel where the linear layers are (CPUs only); (the log's words, /health's)."""
    if not device.on_cpu(settings.device):
        return "linear layers and attention: torch's own (cuBLAS, SDPA); LINEAR_KERNEL applies to CPUs only", "torch"
    variant, counts = variant_of(model), kernel_counts(model)
    if variant is not None:
        use_native_attention(model, variant)
    layers = ", ".join(f"{count} {kernel}" for kernel, count in counts.items()) or "torch's default kernel"
    words = f"linear layers: {layers}; one-token attention: {f'native ({variant})' if variant else 'sdpa'}"
    return words, f"native {variant}" if variant else (counts.most_common(1)[0][0] if counts else "torch")
