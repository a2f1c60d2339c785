"""The allocator returns large freed blocks at once, once the loader has fixed glibc's mmap threshold."""

import subprocess
import sys

import pytest

from tests.support.live_server import ROOT

pytestmark = pytest.mark.slow  # each test starts a fresh interpreter with torch (one loads the model too)


# Frees a 16 MiB tensor (which raises glibc's default threshold to 16 MiB), then prints how many
# MiB of resident memory freeing an 8 MiB tensor gave back.
PROBE = """
import torch
{setup}
def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
big = torch.ones(16 << 18)
del big
block = torch.ones(8 << 18)
holding = rss_mib()
del block
print(holding - rss_mib())
"""


def returned_mib(setup: str) -> float:
    """MiB given back by freeing an 8 MiB tensor in a fresh interpreter after `setup` ran."""
    script = PROBE.format(setup=setup)
    return float(
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=ROOT).stdout
    )


def test_by_default_glibc_keeps_a_freed_block_after_a_larger_one_was_freed():
    assert returned_mib("") < 1  # the situation the fix is for: without it, the block stays resident


def test_with_the_threshold_fixed_a_freed_block_goes_back():
    assert returned_mib("from loupe.runtime import memory; memory.map_large_allocations()") > 7


def test_loading_the_model_fixes_the_threshold(tiny_model_dir):
    setup = (
        f"from loupe.settings import Settings; from model_loader import load_backend; "
        f"load_backend(Settings(model_id={str(tiny_model_dir)!r}))"
    )
    assert returned_mib(setup) > 7
