"""bench/ holds scripts, run from their folder, so each file there is importable by its bare name."""
import subprocess
import sys

from live_server import ROOT

# Which of bench/'s files a process running from bench/ has imported once transformers' Qwen3-VL is.
IMPORTED = """
import sys
from transformers.models.qwen3_vl import modeling_qwen3_vl
print(sorted(name for name, module in list(sys.modules.items())
             if (getattr(module, "__file__", None) or "").startswith(sys.argv[1])))
"""


def test_no_bench_script_shadows_a_package_transformers_looks_for():
    # transformers imports an optional package (`kernels`) to read its version when it has no metadata:
    # a bench/kernels.py was imported as that package by naive.py, and put the project on sys.path.
    bench = ROOT / "bench"
    done = subprocess.run([sys.executable, "-c", IMPORTED, str(bench)], cwd=bench, capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == "[]"
