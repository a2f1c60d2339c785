"""The devices the model tests run on: the CPU always, a CUDA GPU where there is one."""

import pytest
import torch

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU here: the CUDA runs of these tests need one")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
