// loupe::decode_attention: softmax(q k^T * scale) v for one new token per sequence, grouped-query.
//
// A decode step's attention reads every cached key and value once. torch's CPU flash attention
// splits the work per query head, so with two query heads per key-value head each cached key and
// value is read twice, in blocks sized for long queries; for one token it read them at about a third
// of the machine's bandwidth. Here one task per (sequence, key-value head) reads its keys once for
// all the query heads that share them (scores), then its values once (weighted sum), in float32.
// Built beside blocked_linear.cpp for each variant; plain GCC vector types of 16 floats, so no
// intrinsics: with AVX2 each is two registers, with AVX-512 one.
#include "loupe_build.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

typedef float vec16 __attribute__((vector_size(64)));
typedef uint16_t half16 __attribute__((vector_size(32)));
typedef uint32_t word16 __attribute__((vector_size(64)));

// 16 values of a cached row as float32: a bfloat16 is the top half of a float32.
inline vec16 load16(const float* p) {
  vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline vec16 load16(const at::BFloat16* p) {
  half16 h;
  std::memcpy(&h, p, sizeof h);
  return reinterpret_cast<vec16>(__builtin_convertvector(h, word16) << 16);
}

inline float sum16(vec16 v) {
  float total = 0.0f;
  for (int i = 0; i < 16; ++i) total += v[i];
  return total;
}

// One (sequence, key-value head): `group` query heads of `dim` values, `length` cached positions.
template <typename T>
void one_head(const T* q, int64_t q_head_stride, const T* k, const T* v, int64_t k_row, int64_t v_row,
              const bool* mask, int64_t length, int64_t group, int64_t dim, float scale, T* out,
              int64_t out_head_stride) {
  const int64_t vectors = dim / 16;
  std::vector<vec16> query(group * vectors), acc(group * vectors, vec16{});
  std::vector<float> scores(group * length);
  for (int64_t g = 0; g < group; ++g)
    for (int64_t i = 0; i < vectors; ++i) query[g * vectors + i] = load16(q + g * q_head_stride + i * 16) * scale;
  constexpr float kMasked = -std::numeric_limits<float>::infinity();
  for (int64_t l = 0; l < length; ++l) {
    if (mask && !mask[l]) {
      for (int64_t g = 0; g < group; ++g) scores[g * length + l] = kMasked;
      continue;
    }
    const T* key = k + l * k_row;
    for (int64_t g = 0; g < group; ++g) {
      vec16 dot{};
      for (int64_t i = 0; i < vectors; ++i) dot += query[g * vectors + i] * load16(key + i * 16);
      scores[g * length + l] = sum16(dot);
    }
  }
  std::vector<float> total(group, 0.0f);
  for (int64_t g = 0; g < group; ++g) {
    float* s = scores.data() + g * length;
    float top = kMasked;
    for (int64_t l = 0; l < length; ++l) top = std::max(top, s[l]);
    for (int64_t l = 0; l < length; ++l) {
      s[l] = s[l] == kMasked ? 0.0f : std::exp(s[l] - top);
      total[g] += s[l];
    }
  }
  for (int64_t l = 0; l < length; ++l) {
    if (mask && !mask[l]) continue;
    const T* value = v + l * v_row;
    for (int64_t i = 0; i < vectors; ++i) {
      const vec16 row = load16(value + i * 16);
      for (int64_t g = 0; g < group; ++g) acc[g * vectors + i] += scores[g * length + l] * row;
    }
  }
  for (int64_t g = 0; g < group; ++g) {
    for (int64_t i = 0; i < vectors; ++i) {
      const vec16 result = acc[g * vectors + i] / total[g];
      for (int j = 0; j < 16; ++j) out[g * out_head_stride + i * 16 + j] = static_cast<T>(result[j]);
    }
  }
}

// q: [B, Hq, 1, D]; k, v: [B, Hkv, L, D], any strides but the last (contiguous); mask: [B, L] bool
// (false: a padding position) or none. Returns [B, 1, Hq, D], the layout the attention layer wants.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const c10::optional<at::Tensor>& mask, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(2) == 1, "q [B, Hq, 1, D], k, v [B, Hkv, L, D]");
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(3), Hkv = k.size(1), L = k.size(2);
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == B && k.size(3) == D && Hq % Hkv == 0 && D % 16 == 0,
              "k and v must match, Hq a multiple of Hkv, and D a multiple of 16");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && k.scalar_type() == v.scalar_type() &&
                  (q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16),
              "q, k and v must all be float32 or all bfloat16");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "the last dimension must be contiguous");
  TORCH_CHECK(!mask.has_value() || (mask->scalar_type() == at::kBool && mask->dim() == 2 && mask->size(0) == B &&
                                    mask->size(1) == L && mask->is_contiguous()),
              "mask must be a contiguous [B, L] bool tensor");
  at::Tensor out = at::empty({B, 1, Hq, D}, q.options());
  const int64_t group = Hq / Hkv;
  const bool* mp = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  auto run = [&](auto* typed) {
    using T = std::remove_pointer_t<decltype(typed)>;
    const T* qp = q.data_ptr<T>();
    const T* kp = k.data_ptr<T>();
    const T* vp = v.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / Hkv, h = task % Hkv;
        one_head<T>(qp + b * q.stride(0) + h * group * q.stride(1), q.stride(1), kp + b * k.stride(0) + h * k.stride(1),
                    vp + b * v.stride(0) + h * v.stride(1), k.stride(2), v.stride(2), mp ? mp + b * L : nullptr, L,
                    group, D, static_cast<float>(scale), op + b * Hq * D + h * group * D, D);
      }
    });
  };
  if (q.scalar_type() == at::kFloat) {
    run(static_cast<float*>(nullptr));
  } else {
    run(static_cast<at::BFloat16*>(nullptr));
  }
  return out;
}

}  // namespace

LOUPE_LIBRARY_FRAGMENT(LOUPE_NS, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor");
}

LOUPE_LIBRARY_IMPL(LOUPE_NS, m) { m.impl("decode_attention", &decode_attention); }
