"""DEVICE: a GPU that is missing or too small is refused at start with what to do; on a GPU everything lives there."""

import logging

import pytest
import torch

from loupe.inference import SamplingParams
from loupe.runtime import device
from loupe.runtime.backend import QwenBackend
from loupe.runtime.graphed_step import GraphedDecodeStep
from loupe.runtime.loader import ModelLoadError, _move, load
from loupe.settings import Settings
from loupe.web.services import services
from tests.support.devices import needs_cuda
from tests.support.waiting import wait_until

PENALISED = SamplingParams(4, 0.0, 1.0, 0, presence_penalty=1.5, ignore_eos=True)


def test_device_names_are_checked_with_the_settings():
    assert Settings.from_mapping({"DEVICE": "cuda:1"}).device == "cuda:1"
    with pytest.raises(ValueError, match="DEVICE must be cpu, cuda or cuda:N"):
        Settings.from_mapping({"DEVICE": "gpu"})


def test_cuda_on_a_cpu_only_torch_is_refused_before_anything_is_read(settings, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ModelLoadError, match=r"CPU-only build.*DEVICE=cpu"):
        load(settings.replace(device="cuda", model_id="/nonexistent"))


def test_cuda_without_a_visible_gpu_says_what_to_check(settings, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match=r"no CUDA GPU is visible.*nvidia-smi.*DEVICE=cpu"):
        load(settings.replace(device="cuda", model_id="/nonexistent"))


def test_a_gpu_index_beyond_the_machines_is_refused(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert "cuda:0 to cuda:1" in device.unavailable("cuda:2")
    assert device.unavailable("cuda:1") is None and device.unavailable("cpu") is None


def test_health_says_error_with_the_reason_when_the_gpu_is_missing(engines, settings, monkeypatch):
    import model_loader

    monkeypatch.setattr(model_loader, "_BACKENDS", {})  # not the GPU backend another test may have loaded
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    app = engines.app(settings.replace(device="cuda"))
    engine = services(app).engine
    wait_until(lambda: engine.status != "loading", 60, message="the load to fail")
    response = app.test_client().get("/health")
    assert response.status_code == 503
    assert response.json["status"] == "error" and "DEVICE=cpu" in response.json["error"]


class _TooBig(torch.nn.Module):
    """A model whose move to the GPU runs out of memory; moving it back to the CPU works."""

    def to(self, target, *args, **kwargs):
        if torch.device(target).type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self


def test_out_of_memory_at_load_is_a_load_error_that_says_what_to_do(settings, monkeypatch):
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _device: (1 * device.GiB, 80 * device.GiB))
    with pytest.raises(ModelLoadError, match=r"1\.0 GiB free of 80\.0 GiB.*DTYPE=bfloat16.*DEVICE=cpu"):
        _move(_TooBig(), settings.replace(device="cuda"))


def test_float32_on_a_gpu_is_advised_against_and_bfloat16_is_not():
    assert "bfloat16 is recommended" in device.dtype_advice("cuda", "float32")
    assert device.dtype_advice("cuda:0", "bfloat16") is None and device.dtype_advice("cpu", "float32") is None


@needs_cuda
def test_the_gpu_load_logs_its_kernels_and_the_dtype_advice(settings, caplog):
    with caplog.at_level(logging.INFO, logger="loupe.runtime.loader"):
        backend = load(settings.replace(device="cuda"))
    assert "torch's own (cuBLAS, SDPA)" in caplog.text and "bfloat16 is recommended" in caplog.text
    assert "native" not in caplog.text
    assert isinstance(backend.decode_step, GraphedDecodeStep)
    assert all(type(m) is not torch.nn.Linear or m.weight.is_cuda for m in backend.model.modules())
    assert backend.model.config.text_config._attn_implementation != "loupe_decode"


@needs_cuda
def test_on_a_gpu_the_batch_its_caches_and_sampling_state_live_there(settings):
    from model_loader import load_backend
    from tests.test_model import image_turn, own_backend, photo

    backend: QwenBackend = own_backend(load_backend(settings.replace(device="cuda")), settings)
    prompt = backend.prepare([image_turn(photo(64, 64, seed=31), text="Where?")], 4)
    penalised = backend.start(prompt, PENALISED)
    backend.sample(penalised)
    backend.advance()
    assert backend.batch.mask.is_cuda and penalised.sampler.seen.is_cuda
    assert all(layer.keys.is_cuda and layer.values.is_cuda for layer in backend.batch.cache.layers)
    backend.finish(penalised)
    kept = backend.prefix_cache.get(backend.prefix_cache.find(prompt.keys))
    assert all(layer.keys.is_cuda for layer in kept.layers)
