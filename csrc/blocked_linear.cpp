// loupe::blocked_linear: y = x @ W^T + b with W stored in 64-column blocks, W_blocked[n / 64][k][n % 64].
//
// A decode step multiplies a few rows by every weight, so it is bound by how fast the weights stream
// from memory. In this layout each block is one contiguous run of memory, read once per call from
// start to end, which keeps the hardware prefetchers ahead and both cores reading at the full
// bandwidth. Within a block, tiles of up to kTile rows keep kTile x 4 accumulator vectors in registers;
// for a long prompt the block (512 KB for K = 2048) stays in L2 while every tile of rows passes over it.
// Built with -mavx512f by model_native_kernel.py; plain GCC vector types, so no intrinsics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
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

at::Tensor blocked_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be a 2-D float32 tensor");
  TORCH_CHECK(weight.dim() == 3 && weight.size(2) == kBlock && weight.size(1) == x.size(1) &&
                  weight.scalar_type() == at::kFloat && weight.is_contiguous(),
              "weight must be a contiguous float32 [N / 64, K, 64] tensor with K = x.size(1)");
  const int64_t M = x.size(0), K = x.size(1), blocks = weight.size(0), N = blocks * kBlock;
  TORCH_CHECK(!bias.has_value() || (bias->numel() == N && bias->scalar_type() == at::kFloat && bias->is_contiguous()),
              "bias must be a contiguous float32 tensor of N elements");
  const at::Tensor rows = x.contiguous();
  at::Tensor y = at::empty({M, N}, x.options());
  const float* xp = rows.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t m = 0; m < M; m += kTile) {
        tile_rows(static_cast<int>(std::min<int64_t>(kTile, M - m)), xp + m * K, K, wp + b * K * kBlock,
                  bp ? bp + b * kBlock : nullptr, yp + m * N + b * kBlock, N);
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(loupe, m) { m.def("blocked_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor"); }

TORCH_LIBRARY_IMPL(loupe, CPU, m) { m.impl("blocked_linear", &blocked_linear); }
