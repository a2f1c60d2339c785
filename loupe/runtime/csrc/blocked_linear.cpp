// loupe::blocked_linear: y = x @ W^T + b with W stored in 64-column blocks, W_blocked[n / 64][k][n % 64].
//
// A decode step multiplies a few rows by every weight, so it is bound by how fast the weights stream
// from memory. In this layout each block is one contiguous run of memory, read once per call from
// start to end, which keeps the hardware prefetchers ahead and both cores reading at the full
// bandwidth. Within a block, tiles of up to kTile rows keep kTile x 4 accumulator vectors in registers;
// for a long prompt the block (512 KB for K = 2048) stays in L2 while every tile of rows passes over it.
// Built with -mavx512f by native_kernel.py; the float32 tiles use plain GCC vector types, the
// bfloat16 ones (below) AVX512-BF16 intrinsics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t kBlock = 64;  // columns per block: four 16-float vectors
typedef float vec16 __attribute__((vector_size(64)));
constexpr int kVectors = kBlock / 16;

constexpr int kTile = 6;  // rows per tile: 24 accumulators + 4 weight vectors of the 32 AVX-512 registers

// One block of 64 columns for `Rows` rows of x, plus the bias if there is one. The bias is added after
// the loop: starting the accumulators from it made GCC 12 keep them in memory instead of registers.
template <int Rows>
void tile(const float* x, int64_t K, const float* w, const float* bias, float* y, int64_t N) {
  vec16 acc[Rows][kVectors];
  for (int m = 0; m < Rows; ++m)
    for (int v = 0; v < kVectors; ++v) acc[m][v] = vec16{};
  for (int64_t k = 0; k < K; ++k) {
    vec16 wk[kVectors];
    for (int v = 0; v < kVectors; ++v) std::memcpy(&wk[v], w + k * kBlock + v * 16, sizeof wk[v]);
    for (int m = 0; m < Rows; ++m) {
      const float xm = x[m * K + k];
      for (int v = 0; v < kVectors; ++v) acc[m][v] += xm * wk[v];
    }
  }
  for (int m = 0; m < Rows; ++m) {
    for (int v = 0; v < kVectors; ++v) std::memcpy(y + m * N + v * 16, &acc[m][v], sizeof acc[m][v]);
    if (bias) {
      for (int j = 0; j < kBlock; ++j) y[m * N + j] += bias[j];
    }
  }
}

// tile<rows> for a run-time row count of 1 to kTile.
template <int Rows = kTile>
void tile_rows(int rows, const float* x, int64_t K, const float* w, const float* bias, float* y, int64_t N) {
  if constexpr (Rows > 1) {
    if (rows < Rows) return tile_rows<Rows - 1>(rows, x, K, w, bias, y, N);
  }
  tile<Rows>(x, K, w, bias, y, N);
}

// Every block of 64 columns (K x 64 weights, either layout) to the threads; each block's rows in tiles.
template <typename T, typename Tile>
void for_each_tile(int64_t M, int64_t K, int64_t blocks, const T* x, const T* w, const T* bias, T* y, Tile tile) {
  const int64_t N = blocks * kBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t m = 0; m < M; m += kTile) {
        tile(static_cast<int>(std::min<int64_t>(kTile, M - m)), x + m * K, K, w + b * K * kBlock,
             bias ? bias + b * kBlock : nullptr, y + m * N + b * kBlock, N);
      }
    }
  });
}

// bfloat16: the same blocks, each holding pairs of k, W_blocked[n / 64][k / 2][n % 64][k % 2], because
// vdpbf16ps multiplies pairs of bfloat16 and adds both products to one float32 lane. These two functions
// are compiled for AVX512-BF16 only (not the whole file): native_kernel.fits checks the CPU has it.
// x and the result are bfloat16, the accumulators float32, as in oneDNN's bfloat16 inner product.
#define LOUPE_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))

template <int Rows>
LOUPE_BF16 void tile_bf16(const uint16_t* x, int64_t K, const uint16_t* w, const uint16_t* bias, uint16_t* y,
                          int64_t N) {
  __m512 acc[Rows][kVectors];
  for (int m = 0; m < Rows; ++m)
    for (int v = 0; v < kVectors; ++v) acc[m][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 2) {
    __m512bh wk[kVectors];  // 16 columns x 2 values of k each
    for (int v = 0; v < kVectors; ++v) wk[v] = (__m512bh)_mm512_loadu_si512(w + k * kBlock + v * 32);
    for (int m = 0; m < Rows; ++m) {
      int32_t pair;  // x[m][k] and x[m][k + 1], side by side as in every lane of wk
      std::memcpy(&pair, x + m * K + k, sizeof pair);
      const __m512bh xm = (__m512bh)_mm512_set1_epi32(pair);
      for (int v = 0; v < kVectors; ++v) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], wk[v], xm);
    }
  }
  for (int m = 0; m < Rows; ++m) {
    for (int v = 0; v < kVectors; ++v) {
      __m512 sum = acc[m][v];
      if (bias) {  // bfloat16 to float32 is a 16-bit shift
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias + v * 16));
        sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16)));
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + m * N + v * 16), (__m256i)_mm512_cvtneps_pbh(sum));
    }
  }
}

template <int Rows = kTile>
LOUPE_BF16 void tile_rows_bf16(int rows, const uint16_t* x, int64_t K, const uint16_t* w, const uint16_t* bias,
                               uint16_t* y, int64_t N) {
  if constexpr (Rows > 1) {
    if (rows < Rows) return tile_rows_bf16<Rows - 1>(rows, x, K, w, bias, y, N);
  }
  tile_bf16<Rows>(x, K, w, bias, y, N);
}

// The checks, output and threading both dtypes share; `tile` computes one tile on raw elements.
template <typename T, typename Tile>
at::Tensor run_blocks(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, Tile tile) {
  const int64_t M = x.size(0), K = x.size(1), blocks = weight.size(0), N = blocks * kBlock;
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == blocks * K * kBlock, "weight must be contiguous");
  TORCH_CHECK(!bias.has_value() || (bias->numel() == N && bias->scalar_type() == x.scalar_type() && bias->is_contiguous()),
              "bias must be a contiguous tensor of N elements, of x's dtype");
  const at::Tensor rows = x.contiguous();
  at::Tensor y = at::empty({M, N}, x.options());
  auto elements = [](const at::Tensor& t) { return static_cast<T*>(t.data_ptr()); };
  for_each_tile<T>(M, K, blocks, elements(rows), elements(weight), bias.has_value() ? elements(*bias) : nullptr,
                   elements(y), tile);
  return y;
}

// x [M, K] float32 with weight [N / 64, K, 64], or x bfloat16 with weight [N / 64, K / 2, 64, 2].
at::Tensor blocked_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && weight.scalar_type() == x.scalar_type(), "x must be 2-D, of the weight's dtype");
  if (x.scalar_type() == at::kFloat) {
    TORCH_CHECK(weight.dim() == 3 && weight.size(1) == x.size(1) && weight.size(2) == kBlock,
                "a float32 weight must be [N / 64, K, 64] with K = x.size(1)");
    return run_blocks<float>(x, weight, bias, &tile_rows<kTile>);
  }
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && weight.dim() == 4 && weight.size(1) * 2 == x.size(1) &&
                  weight.size(2) == kBlock && weight.size(3) == 2,
              "x must be float32 or bfloat16; a bfloat16 weight [N / 64, K / 2, 64, 2] with K = x.size(1)");
  return run_blocks<uint16_t>(x, weight, bias, &tile_rows_bf16<kTile>);
}

}  // namespace

TORCH_LIBRARY(loupe, m) { m.def("blocked_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor"); }

TORCH_LIBRARY_IMPL(loupe, CPU, m) { m.impl("blocked_linear", &blocked_linear); }
