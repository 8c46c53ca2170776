// Float32 building blocks for the row kernels, written as plain loops that GCC vectorises
// (`omp simd` marks the reductions, whose order it may then change). No -ffast-math: inf and
// NaN must behave as IEEE says, so the functions below are branch-free by construction
// rather than by licence to reorder.
#pragma once

#include <cstdint>
#include <limits>

#include "dtype.h"
#include "multiversion.h"

namespace mosa {

constexpr float kInf = std::numeric_limits<float>::infinity();
// exp(x) rounds to 0 in float32 below about -103.97; clamping there keeps 0 * -inf out of sums.
constexpr float kExpFloor = -104.0f;

// max/min that ignore a NaN in `b` (the reductions below thereby skip NaN entries).
MOSA_INLINE float max_of(float a, float b) { return b > a ? b : a; }
MOSA_INLINE float min_of(float a, float b) { return b < a ? b : a; }

// exp(x) within about 1.2 ulp. x = n ln2 + r with |r| <= ln2 / 2; e^r by its degree-7 Taylor
// polynomial (truncation < 0.1 ulp); 2^n applied as two factors so that subnormal results
// round correctly. x >= 88.8 gives inf, x <= -104 gives 0, NaN stays NaN.
MOSA_INLINE float exp_f32(float x) {
  const float xc = x > 88.8f ? 88.8f : (x < kExpFloor ? kExpFloor : x);
  const float round_shift = 0x1.8p23f;  // adding 1.5 * 2^23 rounds to an integer
  const float shifted = xc * 1.44269504f + round_shift;
  const float n = shifted - round_shift;
  const std::int32_t ni = std::int32_t(float_bits(shifted) - float_bits(round_shift));
  // ln2 split into a 9-bit head (n * head is exact) and a tail.
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
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

// The second largest value (counting repeats) of x, given the largest, `first`.
MOSA_INLINE float chunk_second(const float* x, int count, float first) {
  float below = -kInf;
  int ties = 0;
#pragma omp simd reduction(max : below) reduction(+ : ties)
  for (int i = 0; i < count; ++i) {
    below = max_of(below, x[i] < first ? x[i] : -kInf);
    ties += x[i] == first;
  }
  return ties > 1 ? first : below;
}

// sum exp(x - shift).
MOSA_INLINE float chunk_exp_sum(const float* x, int count, float shift) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int i = 0; i < count; ++i) sum += exp_f32(x[i] - shift);
  return sum;
}

// sum exp(x - shift) and sum exp(x - shift) (x - shift); entries at -inf add nothing to either.
MOSA_INLINE void chunk_exp_sums(const float* x, int count, float shift, float& sum,
                                float& moment) {
  float s = 0.0f, e = 0.0f;
#pragma omp simd reduction(+ : s, e)
  for (int i = 0; i < count; ++i) {
    const float d = max_of(x[i] - shift, kExpFloor);
    const float p = exp_f32(d);
    s += p;
    e += p * d;
  }
  sum = s;
  moment = e;
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

}  // namespace mosa
