"""Which variants of Loupe's native kernels this CPU runs: every kernel test runs each of them."""

import pytest
import torch

from loupe.runtime.native_build import no_variant_reason, variants_here

# An AVX-512 machine runs its AVX2 variant too (and avx512_bf16 first, where it has AVX512-BF16).
VARIANTS_HERE = variants_here()
VARIANT_PARAMS = VARIANTS_HERE or [pytest.param(None, marks=pytest.mark.skip(reason=no_variant_reason()))]
NATIVE_DTYPES = [torch.float32, torch.bfloat16]  # every variant computes both
