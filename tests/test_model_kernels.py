"""The linear-layer kernels compute what torch's own linear computes, for any number of rows."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from loupe.runtime import native_build, native_kernel
from loupe.runtime.kernels import PACKED_ROWS, OneDnnLinear, PackedLinear, use_linear_kernel
from loupe.runtime.native_build import VARIANTS
from loupe.runtime.native_kernel import BlockedEmbedding, NativeLinear
from loupe.runtime.weights import load_model
from tests.support.cpu import NATIVE_DTYPES, VARIANTS_HERE
from tests.support.live_server import KERNEL_CACHE_DIR, ROOT


def linears(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def plain_weights(model):
    return {name: (m.weight.detach().clone(), m.bias) for name, m in linears(model).items()}


def block_shape(dtype: torch.dtype, variant: str, inputs: int = 40) -> tuple[int, ...]:
    """One block of a layer with `inputs` inputs, as the variant lays it out for the dtype."""
    width = VARIANTS[variant].block
    return (inputs, width) if dtype == torch.float32 else (inputs // 2, width, 2)


def assert_linear(out, x, weight, bias):
    """`out` is F.linear(x, weight, bias): float32 to 1e-5, bfloat16 as float32 arithmetic rounded once."""
    # The native bfloat16 kernels multiply bfloat16 values exactly (in pairs with AVX512-BF16, widened
    # to float32 elsewhere) and add in float32, as oneDNN does: their results are float32 arithmetic
    # rounded to bfloat16 once (8 bits: a relative step of 2**-8).
    if out.dtype == torch.float32:
        assert torch.allclose(out, F.linear(x, weight, bias), atol=1e-5)
        return
    exact = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    torch.testing.assert_close(out.float(), exact, rtol=2**-8, atol=1e-3)


def test_each_variant_this_cpu_runs_builds_with_its_own_block_width(native):
    assert native_kernel.ops(native).block_width() == VARIANTS[native].block  # CI installs g++


@pytest.mark.parametrize(
    "machine,capability,bf16,expected",
    [
        ("x86_64", "AVX512", True, ["avx512_bf16", "avx512", "avx2"]),
        ("x86_64", "AVX512", False, ["avx512", "avx2"]),
        ("x86_64", "AVX2", False, ["avx2"]),
        ("x86_64", "DEFAULT", False, []),
        ("aarch64", "SVE256", False, []),
    ],
)
def test_the_variants_follow_what_the_cpu_has(monkeypatch, machine, capability, bf16, expected):
    monkeypatch.setattr(native_build.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
    assert native_build.variants_here() == expected
    if not expected:
        assert native_kernel.choose(str(KERNEL_CACHE_DIR)) == (None, native_build.no_variant_reason())
        assert (machine in native_build.no_variant_reason()) == (machine == "aarch64")


SHAPES = [(1, 1), (1, 3), (PACKED_ROWS,), (2, 7), (1, 9), (1, 600)]


def assert_layers_compute_what_torch_computes(directory, shape, kernel: str, variant: str | None = None) -> None:
    """Every linear layer of the tiny model on `kernel` gives F.linear's output for inputs of `shape`."""
    model = load_model(directory, torch.float32)
    plain = plain_weights(model)
    moved = use_linear_kernel(model, kernel, str(KERNEL_CACHE_DIR), variant)
    # packed leaves the tied lm_head plain, for the embedding; native blocks it for both
    assert moved == ({"native": len(plain)} if kernel == "native" else {"packed": len(plain) - 1, "onednn": 1})
    for name, layer in linears(model).items():
        weight, bias = plain[name]
        x = torch.randn(*shape, layer.in_features)
        with torch.inference_mode():
            out = layer(x)
        assert out.shape == (*shape, layer.out_features)
        assert torch.allclose(out, F.linear(x, weight, bias), atol=1e-5), name


@pytest.mark.parametrize("shape", SHAPES)
def test_native_layers_compute_what_torch_computes(native, tiny_model_dir, shape):
    assert_layers_compute_what_torch_computes(tiny_model_dir, shape, "native", native)


@pytest.mark.parametrize("shape", SHAPES)
def test_packed_layers_compute_what_torch_computes(tiny_model_dir, shape):
    assert_layers_compute_what_torch_computes(tiny_model_dir, shape, "packed")


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


@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (2, 7), (1, 9), (1, 600)])
def test_native_bfloat16_layers_compute_float32_arithmetic_rounded_once(native, tiny_model_dir, shape):
    model = load_model(tiny_model_dir, torch.bfloat16)
    plain = plain_weights(model)
    assert use_linear_kernel(model, "native", str(KERNEL_CACHE_DIR), native) == {"native": len(plain)}
    for name, layer in linears(model).items():
        assert layer.weight.dtype == torch.bfloat16 and layer.weight.dim() == 4, name
        x = torch.randn(*shape, layer.in_features, dtype=torch.bfloat16)
        with torch.inference_mode():
            out = layer(x)
        assert out.shape == (*shape, layer.out_features) and out.dtype == torch.bfloat16
        assert_linear(out, x, *plain[name])


def test_bfloat16_layers_with_an_odd_number_of_inputs_are_packed_where_onednn_computes_bfloat16(native):
    layers = torch.nn.Sequential(torch.nn.Linear(7, 64), torch.nn.Linear(64, 7)).to(torch.bfloat16)
    moved = use_linear_kernel(layers, "native", str(KERNEL_CACHE_DIR), native)
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert moved == {"packed": 1, "native": 1} and type(layers[0]) is PackedLinear
    else:  # torch's own kernel
        assert moved == {"native": 1} and type(layers[0]) is torch.nn.Linear
    assert type(layers[1]) is NativeLinear


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
    use_linear_kernel(model, "native", str(KERNEL_CACHE_DIR), native)
    assert type(model.lm_head) is NativeLinear and type(embedding) is BlockedEmbedding
    assert model.lm_head.weight is embedding.weight and embedding.weight.dim() == (3 if dtype == torch.float32 else 4)
    ids = torch.tensor([[0, 1, 31, 32], [63, 64, 65, len(rows) - 1]])  # either side of a block's edge
    with torch.inference_mode():
        assert torch.equal(embedding(ids), rows[ids])


@pytest.mark.parametrize("dtype", NATIVE_DTYPES)
def test_a_native_model_computes_the_plain_models_logits(native, tiny_model_dir, dtype):
    plain, blocked = load_model(tiny_model_dir, dtype), load_model(tiny_model_dir, dtype)
    use_linear_kernel(blocked, "native", str(KERNEL_CACHE_DIR), native)
    ids = torch.randint(0, plain.config.text_config.vocab_size, (2, 9))
    with torch.inference_mode():
        ours, theirs = blocked(input_ids=ids).logits.float(), plain(input_ids=ids).logits.float()
    assert torch.allclose(ours, theirs, atol=1e-4 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("dtype", NATIVE_DTYPES)
@pytest.mark.parametrize("rows", [1, 5, 6, 7, 13])
def test_native_layers_pad_odd_widths_and_add_the_bias(native, rows, dtype):
    layer = torch.nn.Linear(40, 100, dtype=dtype)  # 100 columns: the last block is partly padding
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    native_kernel.to_native(layer, native)
    blocks = -(-100 // VARIANTS[native].block)
    assert type(layer) is NativeLinear and layer.weight.shape == (blocks, *block_shape(dtype, native))
    x = torch.randn(rows, 40, dtype=dtype)
    with torch.inference_mode():
        assert_linear(layer(x), x, weight, bias)


@pytest.mark.parametrize("dtype", NATIVE_DTYPES)
def test_native_rearranges_a_whole_number_of_blocks_in_its_own_memory(native, dtype):
    layer = torch.nn.Linear(40, VARIANTS[native].block * 37, bias=False, dtype=dtype)  # more than one batch of blocks
    weight, memory = layer.weight.detach().clone(), layer.weight.data_ptr()
    native_kernel.to_native(layer, native)
    assert layer.weight.shape == (37, *block_shape(dtype, native)) and layer.weight.data_ptr() == memory
    x = torch.randn(3, 40, dtype=dtype)
    with torch.inference_mode():
        assert_linear(layer(x), x, weight, None)


def test_a_new_build_leaves_the_three_newest_builds_of_its_variant_and_nothing_else_is_touched(tmp_path):
    names = [f"loupe_kernels-avx2-{key}.so" for key in ("new", "b", "c", "d", "e")]
    names += ["loupe_kernels-avx512-old.so", "loupe_kernels-avx512_bf16-old.so", "notes.txt"]
    for age, name in enumerate(names):
        (tmp_path / name).write_text(name)
        os.utime(tmp_path / name, ns=(10**18 - age * 10**9,) * 2)  # listed newest first
    native_build.prune(tmp_path, "avx2")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "loupe_kernels-avx2-b.so",
        "loupe_kernels-avx2-c.so",
        "loupe_kernels-avx2-new.so",
        "loupe_kernels-avx512-old.so",
        "loupe_kernels-avx512_bf16-old.so",
        "notes.txt",
    ]


def test_a_built_kernel_is_found_not_rebuilt(native):
    compiler = next(filter(None, map(shutil.which, native_build.COMPILERS)))
    library = native_build.build(compiler, KERNEL_CACHE_DIR, VARIANTS[native])
    built = library.stat().st_mtime_ns
    assert native_build.build(compiler, KERNEL_CACHE_DIR, VARIANTS[native]) == library
    assert library.stat().st_mtime_ns == built


FALLBACK = textwrap.dedent("""
    import logging, platform, sys, torch
    from loupe.runtime.kernels import use_linear_kernel
    # The CPU the test asks for, whatever this one is: nothing is compiled or run here that needs it.
    platform.machine = lambda: sys.argv[2]
    torch.backends.cpu.get_cpu_capability = lambda: sys.argv[3]
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 8))
    print(dict(use_linear_kernel(model, "native", sys.argv[1])))
""")


def fall_back(tmp_path, machine: str = "x86_64", capability: str = "AVX2", **env: str) -> subprocess.CompletedProcess:
    """use_linear_kernel(..., "native") in a fresh process, with `env` and an empty kernel cache, on a CPU that
    claims to be `machine` with torch's `capability`."""
    command = [sys.executable, "-c", FALLBACK, str(tmp_path / "kernels"), machine, capability]
    return subprocess.run(
        command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, check=True, timeout=120
    )


@pytest.mark.slow  # a fresh interpreter with torch
def test_without_a_compiler_native_falls_back_to_packed_and_says_why(tmp_path):
    done = fall_back(tmp_path, PATH=str(tmp_path))  # no c++, g++ or clang++ on this PATH
    assert done.stdout.strip() == "{'packed': 2}"
    assert "LINEAR_KERNEL=native, but no C++ compiler was found" in done.stderr


@pytest.mark.slow  # a fresh interpreter with torch
def test_a_failing_compiler_falls_back_to_packed_with_its_first_error_line(tmp_path):
    compiler = tmp_path / "c++"
    compiler.write_text(
        "#!/bin/sh\necho 'In file included from x.h:1,' >&2\necho 'x.h:2: fatal error: no such thing' >&2\nexit 1\n"
    )
    compiler.chmod(0o755)
    done = fall_back(tmp_path, PATH=str(tmp_path))
    assert done.stdout.strip() == "{'packed': 2}"
    assert (
        f"{compiler} could not compile blocked_linear.cpp, decode_attention.cpp and decode_step.cpp: "
        "x.h:2: fatal error: no such thing"
    ) in done.stderr


@pytest.mark.slow  # a fresh interpreter with torch
@pytest.mark.parametrize(
    "machine,capability,why",
    [
        ("x86_64", "DEFAULT", "this CPU has neither AVX2 with FMA nor AVX-512 (torch reports DEFAULT)"),
        ("aarch64", "NEON", "they are written for x86-64 CPUs with AVX2 or AVX-512, and this one is aarch64"),
    ],
)
def test_a_cpu_the_kernels_are_not_written_for_gets_packed(tmp_path, machine, capability, why):
    done = fall_back(tmp_path, machine, capability)
    assert done.stdout.strip() == "{'packed': 2}"
    assert f"LINEAR_KERNEL=native, but {why}; using packed" in done.stderr


def test_the_service_uses_the_fastest_native_variant_by_default(backend):
    if not VARIANTS_HERE:
        pytest.skip(native_build.no_variant_reason())
    assert all(m.variant == VARIANTS_HERE[0] for m in backend.model.modules() if type(m) is NativeLinear)
    assert sum(type(m) is NativeLinear for m in backend.model.modules()) == len(
        [m for m in backend.model.modules() if isinstance(m, torch.nn.Linear)]
    )
