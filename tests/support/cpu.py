"""Which of Loupe's native kernels this CPU runs, for the tests of a kernel it may lack."""

import pytest
import torch

# The native bfloat16 linear kernel's dot products (vdpbf16ps) need AVX512-BF16.
BF16_NATIVE = torch.cpu._is_avx512_bf16_supported()
needs_bf16_native = pytest.mark.skipif(not BF16_NATIVE, reason="this CPU has no AVX512-BF16")
NATIVE_DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16_native)]
