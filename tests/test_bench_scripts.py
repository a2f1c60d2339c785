"""bench/ is a package run from the project folder (`python -m bench.run`): nothing there shadows an installed one."""

import subprocess
import sys

import pytest

from tests.support.live_server import ROOT

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
