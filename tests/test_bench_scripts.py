"""bench/ is a package run from the project folder (`python -m bench.run`): nothing there shadows an installed one."""

import json
import os
import re
import subprocess
import sys

import pytest

from loupe.runtime.native_build import no_variant_reason
from tests.support.cpu import VARIANTS_HERE
from tests.support.live_server import KERNEL_CACHE_DIR, ROOT

# Which of the project's files a process running from its folder has imported once transformers' Qwen3-VL is.
IMPORTED = """
import sys
from transformers.models.qwen3_vl import modeling_qwen3_vl
files = {name: getattr(module, "__file__", None) or "" for name, module in list(sys.modules.items())}
print(sorted(name for name, file in files.items() if file.startswith(sys.argv[1])
             and not file.startswith(sys.prefix)))
"""


@pytest.mark.slow  # a fresh interpreter imports transformers' Qwen3-VL
def test_no_project_module_shadows_a_package_transformers_looks_for():
    # transformers imports an optional package (`kernels`) to read its version when it has no metadata:
    # a bench/kernels.py was once imported as that package by naive.py, run from bench/.
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED, str(ROOT)], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.slow  # a fresh interpreter loads the model
def test_the_prefill_profile_runs_and_measures_a_peak(tiny_model_dir, tmp_path):
    if not VARIANTS_HERE:
        pytest.skip(no_variant_reason())
    env = {**os.environ, "KERNEL_CACHE_DIR": str(KERNEL_CACHE_DIR)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.prefill", "--model", str(tiny_model_dir), "--repeats", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert f"kernels {VARIANTS_HERE[0]}" in done.stdout
    peak = re.search(r"peak, measured: (\d+) GFLOP/s", done.stdout)
    efficiency = re.search(r"prefill time / peak = ([\d.eE+-]+)", done.stdout)
    assert peak and int(peak.group(1)) > 0 and efficiency and 0 < float(efficiency.group(1)) < 1


@pytest.mark.slow  # PostgreSQL, nginx and three gunicorn instances, one after another
def test_the_instances_benchmark_runs_on_the_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "instances.json"
    command = [sys.executable, "-m", "bench.instances", "--model", str(tiny_model_dir), "--max-tokens", "4"]
    command += ["--threads", "1", "--kernel-cache-dir", str(KERNEL_CACHE_DIR), "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "| follow-up ÷ first turn (target ≤ 0.15) |" in done.stdout
    result = json.loads(out.read_text())
    for name, instances in (("single", 1), ("several", 2)):
        figures = result["figures"][name]
        assert figures["errors"] == []
        # Every conversation's two turns went to one instance, which had its prefix: the routing works.
        assert figures["follow_ups_on_their_instance"] == figures["follow_ups_cached"] == 4
        assert figures["follow_up_ttft_ratio"] > 0 and figures["aggregate_tokens_per_second"] > 0
        upstreams = {route[0] for route in result[name]["upstreams"].values()}
        assert len(upstreams) == instances
    several = result["several"]["upstreams"].values()
    assert sorted(sum(1 for r in several if r[0] == u) for u in {r[0] for r in several}) == [2, 2]  # spread evenly


@pytest.mark.slow  # a fresh interpreter loads the model
def test_the_grammar_bench_measures_the_mask_beside_a_decode_step(tiny_model_dir):
    env = {**os.environ, "KERNEL_CACHE_DIR": str(KERNEL_CACHE_DIR)}
    arguments = ["--model", str(tiny_model_dir), "--steps", "12", "--decode-steps", "2", "--context", "24"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.structured", *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    masks = re.findall(r"mask (\w+): (\d+) steps; .* median (\d+) us", done.stdout)
    assert {name for name, _, _ in masks} == {"small", "idcard", "receipt", "invoice"}
    assert all(int(steps) > 0 for _, steps, _ in masks)
    step = re.search(r"float32 decode step, .*: ([\d.]+) ms", done.stdout)
    ratio = re.search(r"mask / decode step .* = ([\d.]+)", done.stdout)
    assert step and float(step.group(1)) > 0 and ratio and float(ratio.group(1)) >= 0
