"""The linear-layer kernels compute what torch's own linear computes, for any number of rows."""
import pytest
import torch
import torch.nn.functional as F

from model_kernels import PACKED_ROWS, OneDnnLinear, PackedLinear, use_linear_kernel
from model_weights import load_model


def linears(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def plain_weights(model):
    return {name: (m.weight.detach().clone(), m.bias) for name, m in linears(model).items()}


@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (PACKED_ROWS,), (2, 7), (1, 9)])
def test_packed_layers_compute_what_torch_computes(tiny_model_dir, shape):
    model = load_model(tiny_model_dir, torch.float32)
    plain = plain_weights(model)
    assert use_linear_kernel(model, "packed") == {"packed": len(plain) - 1, "onednn": 1}  # the tied lm_head
    for name, layer in linears(model).items():
        weight, bias = plain[name]
        x = torch.randn(*shape, layer.in_features)
        with torch.inference_mode():
            out = layer(x)
        assert out.shape == (*shape, layer.out_features)
        assert torch.allclose(out, F.linear(x, weight, bias), atol=1e-5), name


def test_the_tied_lm_head_keeps_plain_weights_on_onednn(tiny_model_dir):
    model = load_model(tiny_model_dir, torch.float32)
    use_linear_kernel(model, "packed")
    assert type(model.lm_head) is OneDnnLinear and not model.lm_head.weight.is_mkldnn
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    packed = [m for m in linears(model).values() if type(m) is PackedLinear]
    assert packed and all(m.weight.is_mkldnn and m.weight.dtype == torch.float32 for m in packed)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no bfloat16 oneDNN")
def test_bfloat16_layers_are_packed_too(tiny_model_dir):
    model = load_model(tiny_model_dir, torch.bfloat16)
    plain = plain_weights(model)
    assert use_linear_kernel(model, "packed") == {"packed": len(plain) - 1}  # the tied lm_head: torch's own
    name, layer = next((n, m) for n, m in linears(model).items() if type(m) is PackedLinear)
    x = torch.randn(3, layer.in_features, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.allclose(layer(x).float(), F.linear(x, *plain[name]).float(), atol=1e-2)


def test_the_onednn_kernel_keeps_plain_weights(tiny_model_dir):
    model = load_model(tiny_model_dir, torch.float32)
    assert use_linear_kernel(model, "onednn") == {"onednn": len(linears(model))}
    layer = next(iter(linears(model).values()))
    assert type(layer) is OneDnnLinear and not layer.weight.is_mkldnn
    x = torch.randn(3, 5, layer.in_features)
    with torch.inference_mode():
        assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5)


def test_the_blas_kernel_leaves_the_model_alone(tiny_model_dir):
    model = load_model(tiny_model_dir, torch.float32)
    assert not use_linear_kernel(model, "blas")
    assert all(type(m) is torch.nn.Linear for m in linears(model).values())


def test_the_service_packs_by_default(backend):
    assert any(type(m) is PackedLinear for m in backend.model.modules())
