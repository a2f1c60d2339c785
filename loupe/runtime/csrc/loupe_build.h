// What one build of Loupe's kernels is compiled for. native_kernel.py compiles the same sources once
// per variant the CPU runs, setting these with -D (its VARIANTS):
//   LOUPE_NS            the op namespace, torch.ops.<LOUPE_NS>: one per variant, so that every variant a
//                       CPU runs can be loaded into one process side by side (the tests run them all);
//   LOUPE_VECTOR_BYTES  the width of a vector register: 64 (AVX-512), 32 (AVX2), 16 (SSE or NEON);
//   LOUPE_BF16_DOT      1 where the CPU has AVX512-BF16's dot products (vdpbf16ps), else 0.
#pragma once

#include <torch/library.h>

#ifndef LOUPE_NS
#define LOUPE_NS loupe
#endif
#ifndef LOUPE_VECTOR_BYTES
#define LOUPE_VECTOR_BYTES 32
#endif
#ifndef LOUPE_BF16_DOT
#define LOUPE_BF16_DOT 0
#endif

// TORCH_LIBRARY_* paste their namespace argument into names, which stops a macro in it from expanding:
// passing it through one more macro expands LOUPE_NS first.
#define LOUPE_LIBRARY_FRAGMENT(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)
#define LOUPE_LIBRARY_IMPL(ns, m) TORCH_LIBRARY_IMPL(ns, CPU, m)
