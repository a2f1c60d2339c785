// loupe::rms_norm and loupe::head_norm_rope: the small steps between a decode step's matrix products.
//
// transformers computes an RMSNorm in eight tensor operations and a query's rotary embedding in ten;
// a decode step of Qwen3-VL-2B runs 113 norms and 28 rotations on a few thousand numbers each. Between
// weight reads that flush the caches, each operation pays for cold caches on its way through Python
// and the dispatcher: 25 ms of a 240 ms float32 step was spent outside the matrix products, against
// 12 ms with the weight reads taken away. These do the same arithmetic in one call each, rounding a
// bfloat16 result where transformers' own operations round it.
#include "loupe_build.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// Calls __VA_ARGS__ (a lambda using scalar_t) for float32 or bfloat16, the dtypes Loupe runs in;
// any other dtype is an error naming the op.
#define LOUPE_FLOAT_OR_BFLOAT16(TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

// What a tensor operation of this dtype stores: float32 as computed, bfloat16 rounded to nearest even.
template <typename T>
inline float stored(float value) {
  return static_cast<float>(static_cast<T>(value));
}

// 1 / sqrt(mean(x^2) + eps) over one row, summed in float32.
template <typename T>
float inverse_rms(const T* x, int64_t D, float eps) {
  float sum = 0.0f;
  for (int64_t i = 0; i < D; ++i) {
    const float value = static_cast<float>(x[i]);
    sum += value * value;
  }
  return 1.0f / std::sqrt(sum / static_cast<float>(D) + eps);
}

// transformers' Qwen3VLTextRMSNorm: weight * (x * rsqrt(mean(x^2) + eps)).to(dtype), per row.
template <typename T>
void norm_row(const T* x, const T* weight, int64_t D, float eps, float* out) {
  const float scale = inverse_rms(x, D, eps);
  for (int64_t i = 0; i < D; ++i) {
    out[i] = stored<T>(static_cast<float>(weight[i]) * stored<T>(static_cast<float>(x[i]) * scale));
  }
}

template <typename T>
void rms_norm_rows(const at::Tensor& x, const at::Tensor& weight, double eps, at::Tensor& y) {
  const int64_t D = x.size(-1), rows = x.numel() / D;
  const T* in = x.data_ptr<T>();
  const T* w = weight.data_ptr<T>();
  T* out = y.data_ptr<T>();
  std::vector<float> row(D);
  for (int64_t r = 0; r < rows; ++r) {
    norm_row(in + r * D, w, D, static_cast<float>(eps), row.data());
    for (int64_t i = 0; i < D; ++i) out[r * D + i] = static_cast<T>(row[i]);
  }
}

// x [..., D] -> the RMSNorm of each row, x's dtype.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1) && weight.scalar_type() == x.scalar_type(),
              "weight must be [D] of x's dtype, D = x.size(-1)");
  const at::Tensor rows = x.contiguous(), w = weight.contiguous();
  at::Tensor y = at::empty_like(rows);
  LOUPE_FLOAT_OR_BFLOAT16(x.scalar_type(), "rms_norm", [&] { rms_norm_rows<scalar_t>(rows, w, eps, y); });
  return y;
}

template <typename T>
void head_norm_rope_rows(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& cos, const at::Tensor& sin,
                         double eps, at::Tensor& y) {
  const int64_t B = x.size(0), H = x.size(1), D = x.size(2), half = D / 2, stride = x.stride(0);
  const T* w = weight.data_ptr<T>();
  std::vector<float> n(D);
  for (int64_t b = 0; b < B; ++b) {
    const T* c = cos.data_ptr<T>() + b * D;
    const T* s = sin.data_ptr<T>() + b * D;
    for (int64_t h = 0; h < H; ++h) {
      norm_row(x.data_ptr<T>() + b * stride + h * D, w, D, static_cast<float>(eps), n.data());
      T* out = y.data_ptr<T>() + (b * H + h) * D;
      for (int64_t i = 0; i < D; ++i) {
        // (q * cos) + (rotate_half(q) * sin), each product and the sum stored as torch stores them
        const float rotated = i < half ? -n[i + half] : n[i - half];
        const float first = stored<T>(n[i] * static_cast<float>(c[i]));
        const float second = stored<T>(rotated * static_cast<float>(s[i]));
        out[i] = static_cast<T>(first + second);
      }
    }
  }
}

// x [B, H, D] (rows of heads, each head contiguous), cos and sin [B, D] -> [B, H, 1, D]: each head
// RMSNormed over D (Qwen3's q_norm and k_norm), then rotated (apply_rotary_pos_emb).
at::Tensor head_norm_rope(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& cos, const at::Tensor& sin,
                          double eps) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1 && x.stride(1) == x.size(2) && x.size(2) % 2 == 0,
              "x must be [B, H, D] with contiguous heads and even D");
  const int64_t B = x.size(0), D = x.size(2);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == D && weight.scalar_type() == x.scalar_type(),
              "weight must be [D] of x's dtype");
  for (const at::Tensor* t : {&cos, &sin}) {
    TORCH_CHECK(t->dim() == 2 && t->size(0) == B && t->size(1) == D && t->is_contiguous() &&
                    t->scalar_type() == x.scalar_type(),
                "cos and sin must be contiguous [B, D] of x's dtype");
  }
  const at::Tensor w = weight.contiguous();
  at::Tensor y = at::empty({B, x.size(1), 1, D}, x.options());
  LOUPE_FLOAT_OR_BFLOAT16(x.scalar_type(), "head_norm_rope",
                          [&] { head_norm_rope_rows<scalar_t>(x, w, cos, sin, eps, y); });
  return y;
}

}  // namespace

LOUPE_LIBRARY_FRAGMENT(LOUPE_NS, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("head_norm_rope(Tensor x, Tensor weight, Tensor cos, Tensor sin, float eps) -> Tensor");
}

LOUPE_LIBRARY_IMPL(LOUPE_NS, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("head_norm_rope", &head_norm_rope);
}
