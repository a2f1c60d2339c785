"""The linear-layer kernels compute what torch's own linear computes, for any number of rows."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from loupe.runtime import native_kernel
from loupe.runtime.kernels import PACKED_ROWS, OneDnnLinear, PackedLinear, use_linear_kernel
from loupe.runtime.native_kernel import BlockedEmbedding, NativeLinear
from loupe.runtime.weights import load_model
from tests.support.cpu import NATIVE_DTYPES, needs_bf16_native
from tests.support.live_server import KERNEL_CACHE_DIR, ROOT


def linears(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def plain_weights(model):
    return {name: (m.weight.detach().clone(), m.bias) for name, m in linears(model).items()}


BLOCKS = {torch.float32: (40, 64), torch.bfloat16: (20, 64, 2)}  # a block of 40 inputs, for each dtype


def assert_linear(out, x, weight, bias):
    """`out` is F.linear(x, weight, bias): float32 to 1e-5, bfloat16 as float32 arithmetic rounded once."""
    # The native bfloat16 kernel multiplies bfloat16 pairs exactly and adds in float32, as oneDNN does:
    # its results are float32 arithmetic rounded to bfloat16 once (8 bits: a relative step of 2**-8).
    if out.dtype == torch.float32:
        assert torch.allclose(out, F.linear(x, weight, bias), atol=1e-5)
        return
    exact = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    torch.testing.assert_close(out.float(), exact, rtol=2**-8, atol=1e-3)


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512", reason="written for AVX-512 only")
def test_the_native_kernel_builds_where_it_is_written_for():
    assert native_kernel.unavailable(str(KERNEL_CACHE_DIR)) is None  # CI installs g++


@pytest.mark.parametrize("kernel", ["native", "packed"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (PACKED_ROWS,), (2, 7), (1, 9), (1, 600)])
def test_native_and_packed_layers_compute_what_torch_computes(request, tiny_model_dir, kernel, shape):
    if kernel == "native":
        request.getfixturevalue("native")
    model = load_model(tiny_model_dir, torch.float32)
    plain = plain_weights(model)
    moved = use_linear_kernel(model, kernel, str(KERNEL_CACHE_DIR))
    # packed leaves the tied lm_head plain, for the embedding; native blocks it for both
    assert moved == ({"native": len(plain)} if kernel == "native" else {"packed": len(plain) - 1, "onednn": 1})
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
    moved = use_linear_kernel(model, "packed", str(KERNEL_CACHE_DIR))
    assert moved == {"packed": len(plain) - 1}  # the tied lm_head: torch's own
    name, layer = next((n, m) for n, m in linears(model).items() if type(m) is PackedLinear)
    x = torch.randn(3, layer.in_features, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.allclose(layer(x).float(), F.linear(x, *plain[name]).float(), atol=1e-2)


@needs_bf16_native
@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (2, 7), (1, 600)])
def test_native_bfloat16_layers_compute_float32_arithmetic_rounded_once(native, tiny_model_dir, shape):
    model = load_model(tiny_model_dir, torch.bfloat16)
    plain = plain_weights(model)
    assert use_linear_kernel(model, "native", str(KERNEL_CACHE_DIR)) == {"native": len(plain)}
    for name, layer in linears(model).items():
        assert layer.weight.dtype == torch.bfloat16 and layer.weight.dim() == 4, name
        x = torch.randn(*shape, layer.in_features, dtype=torch.bfloat16)
        with torch.inference_mode():
            out = layer(x)
        assert out.shape == (*shape, layer.out_features) and out.dtype == torch.bfloat16
        assert_linear(out, x, *plain[name])


@needs_bf16_native
def test_bfloat16_layers_with_an_odd_number_of_inputs_are_packed(native):
    layers = torch.nn.Sequential(torch.nn.Linear(7, 64), torch.nn.Linear(64, 7)).to(torch.bfloat16)
    assert use_linear_kernel(layers, "native", str(KERNEL_CACHE_DIR)) == {"packed": 1, "native": 1}
    assert type(layers[0]) is PackedLinear and type(layers[1]) is NativeLinear


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


@pytest.mark.parametrize("dtype", NATIVE_DTYPES)
def test_native_ties_the_lm_head_and_the_embedding_to_one_blocked_copy(native, tiny_model_dir, dtype):
    model = load_model(tiny_model_dir, dtype)
    embedding = model.model.language_model.embed_tokens
    rows = embedding.weight.detach().clone()
    use_linear_kernel(model, "native", str(KERNEL_CACHE_DIR))
    assert type(model.lm_head) is NativeLinear and type(embedding) is BlockedEmbedding
    assert model.lm_head.weight is embedding.weight and embedding.weight.dim() == (3 if dtype == torch.float32 else 4)
    ids = torch.tensor([[0, 1, 63, 64], [65, len(rows) - 1, 5, 5]])
    with torch.inference_mode():
        assert torch.equal(embedding(ids), rows[ids])


@pytest.mark.parametrize("dtype", NATIVE_DTYPES)
def test_a_native_model_computes_the_plain_models_logits(native, tiny_model_dir, dtype):
    plain, blocked = load_model(tiny_model_dir, dtype), load_model(tiny_model_dir, dtype)
    use_linear_kernel(blocked, "native", str(KERNEL_CACHE_DIR))
    ids = torch.randint(0, plain.config.text_config.vocab_size, (2, 9))
    with torch.inference_mode():
        ours, theirs = blocked(input_ids=ids).logits.float(), plain(input_ids=ids).logits.float()
    assert torch.allclose(ours, theirs, atol=1e-4 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("dtype", NATIVE_DTYPES)
@pytest.mark.parametrize("rows", [1, 5, 6, 7, 13])
def test_native_layers_pad_odd_widths_and_add_the_bias(native, rows, dtype):
    layer = torch.nn.Linear(40, 100, dtype=dtype)  # 100 columns: the second block of 64 is partly padding
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    native_kernel.to_native(layer)
    assert type(layer) is NativeLinear and layer.weight.shape == (2, *BLOCKS[dtype])
    x = torch.randn(rows, 40, dtype=dtype)
    with torch.inference_mode():
        assert_linear(layer(x), x, weight, bias)


@pytest.mark.parametrize("dtype", NATIVE_DTYPES)
def test_native_rearranges_a_whole_number_of_blocks_in_its_own_memory(native, dtype):
    layer = torch.nn.Linear(40, 64 * 37, bias=False, dtype=dtype)  # 37 blocks: more than one batch of them
    weight, memory = layer.weight.detach().clone(), layer.weight.data_ptr()
    native_kernel.to_native(layer)
    assert layer.weight.shape == (37, *BLOCKS[dtype]) and layer.weight.data_ptr() == memory
    x = torch.randn(3, 40, dtype=dtype)
    with torch.inference_mode():
        assert_linear(layer(x), x, weight, None)


def test_a_new_build_leaves_the_three_newest_builds_and_nothing_else_is_touched(tmp_path):
    for age, name in enumerate(
        [
            "loupe_kernels-new.so",
            "loupe_kernels-b.so",
            "loupe_kernels-c.so",
            "loupe_kernels-d.so",
            "loupe_kernels-e.so",
            "notes.txt",
        ]
    ):
        (tmp_path / name).write_text(name)
        os.utime(tmp_path / name, ns=(10**18 - age * 10**9,) * 2)  # listed newest first
    native_kernel._prune(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "loupe_kernels-b.so",
        "loupe_kernels-c.so",
        "loupe_kernels-new.so",
        "notes.txt",
    ]


def test_a_built_kernel_is_found_not_rebuilt(native):
    compiler = next(filter(None, map(shutil.which, native_kernel._COMPILERS)))
    library = native_kernel._build(compiler, KERNEL_CACHE_DIR)
    built = library.stat().st_mtime_ns
    assert native_kernel._build(compiler, KERNEL_CACHE_DIR) == library
    assert library.stat().st_mtime_ns == built


FALLBACK = textwrap.dedent("""
    import logging, sys, torch
    from loupe.runtime.kernels import use_linear_kernel
    if len(sys.argv) > 2:
        # Claim the CPU the test asks for: on another, the CPU check would answer before the one under test.
        # Nothing is compiled or run here that needs it (the compiler is missing or failing).
        torch.backends.cpu.get_cpu_capability = lambda: sys.argv[2]
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 8))
    print(dict(use_linear_kernel(model, "native", sys.argv[1])))
""")


def fall_back(tmp_path, cpu: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """use_linear_kernel(..., "native") in a fresh process, with `env` and an empty kernel cache; `cpu`, when
    given, is the capability torch reports there (e.g. "AVX512", whatever this machine has)."""
    command = [sys.executable, "-c", FALLBACK, str(tmp_path / "kernels"), *([cpu] if cpu else [])]
    return subprocess.run(
        command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, check=True, timeout=120
    )


@pytest.mark.slow  # a fresh interpreter with torch
def test_without_a_compiler_native_falls_back_to_packed_and_says_why(tmp_path):
    done = fall_back(tmp_path, cpu="AVX512", PATH=str(tmp_path))  # no c++, g++ or clang++ on this PATH
    assert done.stdout.strip() == "{'packed': 2}"
    assert "LINEAR_KERNEL=native, but no C++ compiler was found" in done.stderr


@pytest.mark.slow  # a fresh interpreter with torch
def test_a_failing_compiler_falls_back_to_packed_with_its_first_error_line(tmp_path):
    compiler = tmp_path / "c++"
    compiler.write_text(
        "#!/bin/sh\necho 'In file included from x.h:1,' >&2\necho 'x.h:2: fatal error: no such thing' >&2\nexit 1\n"
    )
    compiler.chmod(0o755)
    done = fall_back(tmp_path, cpu="AVX512", PATH=str(tmp_path))
    assert done.stdout.strip() == "{'packed': 2}"
    assert (
        f"{compiler} could not compile blocked_linear.cpp, decode_attention.cpp and decode_step.cpp: "
        "x.h:2: fatal error: no such thing"
    ) in done.stderr


@pytest.mark.slow  # a fresh interpreter with torch
def test_a_cpu_without_avx512_gets_packed(tmp_path):
    done = fall_back(tmp_path, ATEN_CPU_CAPABILITY="avx2")
    assert done.stdout.strip() == "{'packed': 2}"
    assert "LINEAR_KERNEL=native, but this CPU has no AVX-512" in done.stderr


def test_the_service_uses_the_native_kernel_by_default(native, backend):
    assert any(type(m) is NativeLinear for m in backend.model.modules())
