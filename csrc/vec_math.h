// Float32 building blocks for the row kernels: a row is streamed through small float buffers
// (a chunk of columns at a time), and each pass over a buffer is a plain loop that GCC
// vectorises; `omp simd` marks the reductions, whose order it may then change. No
// -ffast-math: inf and NaN must behave as IEEE says, so the math below is branch-free by
// construction rather than by licence to reorder.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#include "dtype.h"
#include "multiversion.h"

namespace mosa {

constexpr float kInf = std::numeric_limits<float>::infinity();
// exp(x) rounds to 0 in float32 below about -103.97; clamping there keeps 0 * -inf out of sums.
constexpr float kExpFloor = -104.0f;

// max that ignores a NaN in `b` (the reductions below thereby skip NaN entries).
MOSA_INLINE float max_of(float a, float b) { return b > a ? b : a; }

// exp(x) within 1.34 ulp, branch-free so that loops calling it vectorise. x = n ln2 + r
// with |r| <= ln2 / 2; e^r by a degree-6 polynomial fitted for minimal relative error on that
// interval (0.04 ulp); 2^n applied as two factors so that subnormal results round correctly.
// x >= 88.8 gives inf, x <= -104 gives 0, NaN stays NaN.
MOSA_INLINE float exp_f32(float x) {
  const float xc = x > 88.8f ? 88.8f : (x < kExpFloor ? kExpFloor : x);
  const float round_shift = 0x1.8p23f;  // adding 1.5 * 2^23 rounds to an integer
  const float shifted = xc * 1.44269504f + round_shift;
  const float n = shifted - round_shift;
  const std::int32_t ni = std::int32_t(float_bits(shifted) - float_bits(round_shift));
  // ln2 split into a 9-bit head (n * head is exact) and a tail.
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 0x1.6af79ap-10f;
  p = p * r + 0x1.12678ap-7f;
  p = p * r + 0x1.55580ep-5f;
  p = p * r + 0x1.55541ap-3f;
  p = p * r + 0x1.fffffcp-2f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const std::int32_t half = ni >> 1;
  const float scale_a = bits_float(std::uint32_t(half + 127) << 23);
  const float scale_b = bits_float(std::uint32_t(ni - half + 127) << 23);
  return p * scale_a * scale_b;
}

MOSA_INLINE float chunk_max(const float* x, int count) {
  float m = -kInf;
#pragma omp simd reduction(max : m)
  for (int i = 0; i < count; ++i) m = max_of(m, x[i]);
  return m;
}

// sum exp(x - shift).
MOSA_INLINE float chunk_exp_sum(const float* x, int count, float shift) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int i = 0; i < count; ++i) sum += exp_f32(x[i] - shift);
  return sum;
}

// The statistics of a chunk of confidence logits x whose max is `first`: sum exp(x - shift),
// sum exp(x - shift) (x - shift) (entries at -inf add nothing to either) and the second
// largest x, counting repeats.
MOSA_INLINE void chunk_softmax_stats(const float* x, int count, float first, float shift,
                                     float& sum, float& moment, float& second) {
  float s = 0.0f, e = 0.0f, below = -kInf;
  int ties = 0;
#pragma omp simd reduction(+ : s, e, ties) reduction(max : below)
  for (int i = 0; i < count; ++i) {
    const float d = max_of(x[i] - shift, kExpFloor);
    const float p = exp_f32(d);
    s += p;
    e += p * d;
    below = max_of(below, x[i] < first ? x[i] : -kInf);
    ties += x[i] == first;
  }
  sum = s;
  moment = e;
  second = ties > 1 ? first : below;
}

// sum exp(x - shift) and sum exp(x - shift) y; where the exponential is 0 the y term is
// skipped, so an infinite or NaN y there adds nothing.
MOSA_INLINE void chunk_exp_dot(const float* x, const float* y, int count, float shift,
                               float& sum, float& dot) {
  float s = 0.0f, d = 0.0f;
#pragma omp simd reduction(+ : s, d)
  for (int i = 0; i < count; ++i) {
    const float p = exp_f32(x[i] - shift);
    s += p;
    d += p > 0.0f ? p * y[i] : 0.0f;
  }
  sum = s;
  dot = d;
}

// out[i] = float(row[start + i]) for i < count; returns the largest of them (NaN ignored), so
// that loading a chunk is also its max pass.
MOSA_INLINE float load_floats(const void* row, Dtype dtype, std::int64_t start, int count,
                              float* out) {
  float m = -kInf;
  switch (dtype) {
    case Dtype::f32: {
      const float* src = static_cast<const float*>(row) + start;
#pragma omp simd reduction(max : m)
      for (int i = 0; i < count; ++i) m = max_of(m, out[i] = src[i]);
      break;
    }
    case Dtype::f64: {
      const double* src = static_cast<const double*>(row) + start;
#pragma omp simd reduction(max : m)
      for (int i = 0; i < count; ++i) m = max_of(m, out[i] = float(src[i]));
      break;
    }
    case Dtype::bf16: {
      const std::uint16_t* src = static_cast<const std::uint16_t*>(row) + start;
#pragma omp simd reduction(max : m)
      for (int i = 0; i < count; ++i) m = max_of(m, out[i] = bf16_to_float(src[i]));
      break;
    }
    case Dtype::f16: {
      const std::uint16_t* src = static_cast<const std::uint16_t*>(row) + start;
#pragma omp simd reduction(max : m)
      for (int i = 0; i < count; ++i) m = max_of(m, out[i] = f16_to_float(src[i]));
      break;
    }
  }
  return m;
}

// row[start + i] = in[i] in the row's dtype, for i < count.
MOSA_INLINE void store_floats(const float* in, int count, void* row, Dtype dtype,
                              std::int64_t start) {
  switch (dtype) {
    case Dtype::f32:
      std::memcpy(static_cast<float*>(row) + start, in, sizeof(float) * count);
      break;
    case Dtype::f64: {
      double* dst = static_cast<double*>(row) + start;
      for (int i = 0; i < count; ++i) dst[i] = in[i];
      break;
    }
    case Dtype::bf16: {
      std::uint16_t* dst = static_cast<std::uint16_t*>(row) + start;
      for (int i = 0; i < count; ++i) dst[i] = float_to_bf16(in[i]);
      break;
    }
    case Dtype::f16: {
      std::uint16_t* dst = static_cast<std::uint16_t*>(row) + start;
      for (int i = 0; i < count; ++i) dst[i] = float_to_f16(in[i]);
      break;
    }
  }
}

}  // namespace mosa
