// loupe::blocked_linear: y = x @ W^T + b with W stored in blocks of kBlock columns, W_blocked[n / B][k][n % B].
//
// A decode step multiplies a few rows by every weight, so it is bound by how fast the weights stream
// from memory. In this layout each block is one contiguous run of memory, read once per call from
// start to end, which keeps the hardware prefetchers ahead and both cores reading at the full
// bandwidth. Within a block, tiles of up to kTile rows keep kTile x 4 accumulator vectors in registers;
// for a long prompt the block (K x B floats: 512 KB for K = 2048 with AVX-512) stays in L2 while every
// tile of rows passes over it.
//
// One source for every CPU: a block is four vector registers wide (LOUPE_VECTOR_BYTES, loupe_build.h),
// so 64 columns with AVX-512 and 32 with AVX2, written with GCC's vector types, which compile to
// whatever the build's -m flags allow. bfloat16 weights are stored in pairs of k,
// W_blocked[n / B][k / 2][n % B][k % 2]: AVX512-BF16's vdpbf16ps multiplies such pairs; elsewhere each
// 32-bit word is widened to two float32 in registers (a bfloat16 is a float32's high half), so a
// bfloat16 weight costs half a float32's memory traffic on any CPU.
#include "loupe_build.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#if LOUPE_BF16_DOT
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

typedef float vecf __attribute__((vector_size(LOUPE_VECTOR_BYTES)));
typedef uint32_t vecw __attribute__((vector_size(LOUPE_VECTOR_BYTES)));  // the same bits as 32-bit words
constexpr int kLanes = LOUPE_VECTOR_BYTES / 4;
constexpr int kVectors = 4;
constexpr int64_t kBlock = kVectors * kLanes;  // columns per block
// Rows per tile: their 4 accumulators each plus 4 weight vectors fit the registers (32 with AVX-512,
// 16 with AVX2). Each can be set with -D to measure another (python -m bench.kernel_rates).
#ifndef LOUPE_TILE
#define LOUPE_TILE (LOUPE_VECTOR_BYTES == 64 ? 6 : 3)
#endif
#ifndef LOUPE_WIDE_TILE
#define LOUPE_WIDE_TILE 4  // with AVX2 some accumulators spill, yet one pass of four rows beat two of two
#endif
#ifndef LOUPE_WIDE_ROWS
#define LOUPE_WIDE_ROWS 8
#endif
constexpr int kTile = LOUPE_TILE;
constexpr int kWideTile = LOUPE_WIDE_TILE;
constexpr int kWideRows = LOUPE_WIDE_ROWS;
#ifndef LOUPE_PREFETCH
#define LOUPE_PREFETCH 4096
#endif
// How far ahead of its loads each step asks for weights (bytes). The hardware's prefetchers stop at
// every 4 KB page; asking ahead keeps a core's reads going where the arithmetic between them grows
// (widened bfloat16, several rows): bench/README.md has what it bought.
constexpr int64_t kAhead = LOUPE_PREFETCH;

// Asks for the cache lines of one step's weights (kBlock x 4 bytes either way), kAhead bytes on.
inline void prefetch_ahead(const void* step) {
  if constexpr (kAhead > 0) {
    for (int64_t line = 0; line < kBlock * 4; line += 64) __builtin_prefetch(static_cast<const char*>(step) + kAhead + line);
  }
}

template <typename V>
inline V load(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The accumulators of one tile to y, plus the bias if there is one. The bias is added here, not used
// as the accumulators' start: that made GCC 12 keep them in memory instead of registers.
template <int Rows>
inline void store(const vecf (&acc)[Rows][kVectors], const float* bias, float* y, int64_t N) {
  for (int m = 0; m < Rows; ++m) {
    for (int v = 0; v < kVectors; ++v) std::memcpy(y + m * N + v * kLanes, &acc[m][v], sizeof acc[m][v]);
    if (bias) {
      for (int j = 0; j < kBlock; ++j) y[m * N + j] += bias[j];
    }
  }
}

// float32 weights: one block for `Rows` rows of x.
struct FloatTile {
  static constexpr int kMax = kTile;
  template <int Rows>
  static void run(const float* x, int64_t K, const float* w, const float* bias, float* y, int64_t N) {
    vecf acc[Rows][kVectors];
    for (int m = 0; m < Rows; ++m)
      for (int v = 0; v < kVectors; ++v) acc[m][v] = vecf{};
    for (int64_t k = 0; k < K; ++k) {
      prefetch_ahead(w + k * kBlock);
      vecf wk[kVectors];
      for (int v = 0; v < kVectors; ++v) wk[v] = load<vecf>(w + k * kBlock + v * kLanes);
      for (int m = 0; m < Rows; ++m) {
        const float xm = x[m * K + k];
        for (int v = 0; v < kVectors; ++v) acc[m][v] += xm * wk[v];
      }
    }
    store<Rows>(acc, bias, y, N);
  }
};

// A word of the pair layout (w[n][k] in its low half, w[n][k + 1] in its high half) as two float32.
inline void widen(vecw words, vecf& even, vecf& odd) {
  even = reinterpret_cast<vecf>(words << 16);
  odd = reinterpret_cast<vecf>(words & 0xFFFF0000u);
}

// bfloat16 weights widened in registers: one block for `Rows` rows of float32 x. For a few rows (a
// decode step), where reading the weights is the whole cost.
struct WideTile {
  static constexpr int kMax = kWideTile;
  template <int Rows>
  static void run(const float* x, int64_t K, const uint16_t* w, const float* bias, float* y, int64_t N) {
    vecf acc[Rows][kVectors];
    for (int m = 0; m < Rows; ++m)
      for (int v = 0; v < kVectors; ++v) acc[m][v] = vecf{};
    for (int64_t k = 0; k < K; k += 2) {
      prefetch_ahead(w + k * kBlock);
      float x0[Rows], x1[Rows];
      for (int m = 0; m < Rows; ++m) x0[m] = x[m * K + k], x1[m] = x[m * K + k + 1];
      for (int v = 0; v < kVectors; ++v) {  // a vector at a time: 2 weight registers, not 8
        vecf even, odd;
        widen(load<vecw>(w + k * kBlock + v * 2 * kLanes), even, odd);
        for (int m = 0; m < Rows; ++m) {
          acc[m][v] += x0[m] * even;  // two fused multiply-adds
          acc[m][v] += x1[m] * odd;
        }
      }
    }
    store<Rows>(acc, bias, y, N);
  }
};

// Tile::run<rows> for a run-time row count of 1 to Tile::kMax.
template <typename Tile, int Rows = Tile::kMax, typename W>
void tile_rows(int rows, const float* x, int64_t K, const W* w, const float* bias, float* y, int64_t N) {
  if constexpr (Rows > 1) {
    if (rows < Rows) return tile_rows<Tile, Rows - 1>(rows, x, K, w, bias, y, N);
  }
  Tile::template run<Rows>(x, K, w, bias, y, N);
}

// All M rows of x against one block, a tile at a time.
template <typename Tile, typename W>
void rows_of_block(int64_t M, int64_t K, const float* x, const W* w, const float* bias, float* y, int64_t N) {
  for (int64_t m = 0; m < M; m += Tile::kMax) {
    tile_rows<Tile>(static_cast<int>(std::min<int64_t>(Tile::kMax, M - m)), x + m * K, K, w, bias, y + m * N, N);
  }
}

// One bfloat16 block widened into float32 blocks: for many rows (a prompt), widened once, not per tile.
void widen_block(const uint16_t* w, int64_t K, std::vector<float>& out) {
  out.resize(K * kBlock);
  for (int64_t k = 0; k < K; k += 2) {
    for (int v = 0; v < kVectors; ++v) {
      vecf even, odd;
      widen(load<vecw>(w + k * kBlock + v * 2 * kLanes), even, odd);
      std::memcpy(out.data() + k * kBlock + v * kLanes, &even, sizeof even);
      std::memcpy(out.data() + (k + 1) * kBlock + v * kLanes, &odd, sizeof odd);
    }
  }
}

// Every block to the threads; `block(b, scratch)` computes all rows of block b.
template <typename Block>
void for_each_block(int64_t blocks, Block block) {
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch;  // one thread's widened block
    for (int64_t b = begin; b < end; ++b) block(b, scratch);
  });
}

template <typename T>
const T* elements(const at::Tensor& t) {
  return static_cast<const T*>(t.data_ptr());
}

// float32 x [M, K], weight [N / B, K, B] -> float32 y [M, N].
at::Tensor linear_float(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0) * kBlock;
  at::Tensor y = at::empty({M, N}, x.options());
  const float *xp = elements<float>(x), *wp = elements<float>(weight);
  const float* bp = bias.has_value() ? elements<float>(*bias) : nullptr;
  float* yp = y.data_ptr<float>();
  for_each_block(weight.size(0), [&](int64_t b, std::vector<float>&) {
    rows_of_block<FloatTile>(M, K, xp, wp + b * K * kBlock, bp ? bp + b * kBlock : nullptr, yp + b * kBlock, N);
  });
  return y;
}

// bfloat16 x [M, K], weight [N / B, K / 2, B, 2] -> bfloat16 y, computed in float32 and rounded once.
at::Tensor linear_widened(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0) * kBlock;
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const at::Tensor bf = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor y = at::empty({M, N}, xf.options());
  const float* xp = elements<float>(xf);
  const uint16_t* wp = elements<uint16_t>(weight);
  const float* bp = bf.defined() ? elements<float>(bf) : nullptr;
  float* yp = y.data_ptr<float>();
  for_each_block(weight.size(0), [&](int64_t b, std::vector<float>& scratch) {
    const uint16_t* block = wp + b * K * kBlock;
    const float* block_bias = bp ? bp + b * kBlock : nullptr;
    if (M <= kWideRows) {
      rows_of_block<WideTile>(M, K, xp, block, block_bias, yp + b * kBlock, N);
    } else {
      widen_block(block, K, scratch);
      rows_of_block<FloatTile>(M, K, xp, scratch.data(), block_bias, yp + b * kBlock, N);
    }
  });
  return y.to(at::kBFloat16);
}

#if LOUPE_BF16_DOT
// bfloat16 with vdpbf16ps, which multiplies pairs of bfloat16 and adds both products to one float32
// lane. x and the result are bfloat16, the accumulators float32, as in oneDNN's bfloat16 inner product.
struct DotTile {
  static constexpr int kMax = kTile;
  template <int Rows>
  static void run(const uint16_t* x, int64_t K, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t N) {
    __m512 acc[Rows][kVectors];
    for (int m = 0; m < Rows; ++m)
      for (int v = 0; v < kVectors; ++v) acc[m][v] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 2) {
      __m512bh wk[kVectors];  // 16 columns x 2 values of k each
      for (int v = 0; v < kVectors; ++v) wk[v] = (__m512bh)_mm512_loadu_si512(w + k * kBlock + v * 32);
      for (int m = 0; m < Rows; ++m) {
        const __m512bh xm = (__m512bh)_mm512_set1_epi32(load<int32_t>(x + m * K + k));  // x[m][k], x[m][k + 1]
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
};
static_assert(LOUPE_VECTOR_BYTES == 64, "vdpbf16ps is an AVX-512 instruction");

template <int Rows = kTile>
void dot_rows(int rows, const uint16_t* x, int64_t K, const uint16_t* w, const uint16_t* bias, uint16_t* y,
              int64_t N) {
  if constexpr (Rows > 1) {
    if (rows < Rows) return dot_rows<Rows - 1>(rows, x, K, w, bias, y, N);
  }
  DotTile::run<Rows>(x, K, w, bias, y, N);
}

at::Tensor linear_dot(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0) * kBlock;
  at::Tensor y = at::empty({M, N}, x.options());
  const uint16_t *xp = elements<uint16_t>(x), *wp = elements<uint16_t>(weight);
  const uint16_t* bp = bias.has_value() ? elements<uint16_t>(*bias) : nullptr;
  uint16_t* yp = static_cast<uint16_t*>(y.data_ptr());
  for_each_block(weight.size(0), [&](int64_t b, std::vector<float>&) {
    for (int64_t m = 0; m < M; m += kTile) {
      dot_rows(static_cast<int>(std::min<int64_t>(kTile, M - m)), xp + m * K, K, wp + b * K * kBlock,
               bp ? bp + b * kBlock : nullptr, yp + m * N + b * kBlock, N);
    }
  });
  return y;
}
#endif

// The float32 multiply-add rate (GFLOP/s) of this build's vectors on every torch thread: independent
// chains of fused multiply-adds held in registers, nothing read from memory. The peak a prompt's
// arithmetic is measured against (bench.kernel_rates --peak).
double fma_peak(int64_t iterations) {
  constexpr int kChains = LOUPE_VECTOR_BYTES == 64 ? 16 : 10;  // > latency x ports, within the registers
  const int64_t threads = at::get_num_threads();
  std::vector<float> sinks(threads * 16);  // a cache line per thread
  const auto begin = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      vecf acc[kChains];
      const vecf scale = vecf{} + 0.999999f, add = vecf{} + 1e-7f;
      for (int c = 0; c < kChains; ++c) acc[c] = vecf{} + static_cast<float>(c);
      for (int64_t i = 0; i < iterations; ++i)
        for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * scale + add;
      vecf total{};
      for (int c = 0; c < kChains; ++c) total += acc[c];
      static_cast<volatile float&>(sinks[t * 16]) = total[0];  // a store that stays: the loop is not optimised away
    }
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  return 2.0 * kLanes * kChains * static_cast<double>(iterations) * static_cast<double>(threads) / seconds / 1e9;
}

// x [M, K] float32 with weight [N / B, K, B], or x bfloat16 with weight [N / B, K / 2, B, 2].
at::Tensor blocked_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && weight.scalar_type() == x.scalar_type(), "x must be 2-D, of the weight's dtype");
  TORCH_CHECK(weight.is_contiguous() && weight.size(0) * kBlock * x.size(1) == weight.numel(),
              "weight must be contiguous blocks of ", kBlock, " columns by x.size(1)");
  TORCH_CHECK(!bias.has_value() || (bias->numel() == weight.size(0) * kBlock &&
                                    bias->scalar_type() == x.scalar_type() && bias->is_contiguous()),
              "bias must be a contiguous tensor of N elements, of x's dtype");
  const at::Tensor rows = x.contiguous();
  if (x.scalar_type() == at::kFloat) {
    TORCH_CHECK(weight.dim() == 3 && weight.size(1) == x.size(1) && weight.size(2) == kBlock,
                "a float32 weight must be [N / ", kBlock, ", K, ", kBlock, "] with K = x.size(1)");
    return linear_float(rows, weight, bias);
  }
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && weight.dim() == 4 && weight.size(1) * 2 == x.size(1) &&
                  weight.size(2) == kBlock && weight.size(3) == 2,
              "x must be float32 or bfloat16; a bfloat16 weight [N / ", kBlock, ", K / 2, ", kBlock,
              ", 2] with K = x.size(1)");
#if LOUPE_BF16_DOT
  return linear_dot(rows, weight, bias);
#else
  return linear_widened(rows, weight, bias);
#endif
}

}  // namespace

LOUPE_LIBRARY_FRAGMENT(LOUPE_NS, m) {
  m.def("blocked_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("block_width() -> int", [] { return kBlock; });
  m.def("fma_peak(int iterations) -> float", &fma_peak);
}

LOUPE_LIBRARY_IMPL(LOUPE_NS, m) { m.impl("blocked_linear", &blocked_linear); }
