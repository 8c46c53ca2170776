// Element types the kernels read and write, and float conversions for them.
//
// Every kernel computes in float32 (vec_math.h loads rows chunk by chunk into float buffers
// and stores in-place results back in the row's own dtype). The conversions are written with
// integer bit operations (no _Float16, no F16C) so that they vectorise on plain SSE2 and need
// no runtime support from a recent libgcc.
#pragma once

#include <cstdint>
#include <cstring>

#include "multiversion.h"

namespace mosa {

// Codes shared with mosa_kernels/interface.py (DTYPE_CODES); _C.dtype_codes().
enum class Dtype : int { f32 = 0, f16 = 1, bf16 = 2, f64 = 3 };

MOSA_INLINE std::uint32_t float_bits(float x) {
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

MOSA_INLINE float bits_float(std::uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

MOSA_INLINE float bf16_to_float(std::uint16_t h) { return bits_float(std::uint32_t(h) << 16); }

MOSA_INLINE std::uint16_t float_to_bf16(float x) {
  const std::uint32_t bits = float_bits(x);
  // Round to nearest even: add just under half an ulp, plus the kept lowest bit.
  const std::uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  // Rounding a NaN could carry its payload into the exponent (or clear it): keep it quiet NaN.
  const std::uint32_t quiet_nan = (bits >> 16) | 0x40u;
  return std::uint16_t(x != x ? quiet_nan : rounded);
}

MOSA_INLINE float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t magnitude = h & 0x7fffu;
  // With exponent and mantissa moved to float positions, one exact multiply by 2^112 rebiases
  // the exponent (15 -> 127) and normalises half subnormals at the same time.
  const float finite = bits_float(magnitude << 13) * 0x1p112f;
  // Inf and NaN keep their mantissa under an all-ones float exponent.
  const std::uint32_t special = 0x7f800000u | (magnitude << 13);
  return bits_float(sign | (magnitude >= 0x7c00u ? special : float_bits(finite)));
}

MOSA_INLINE std::uint16_t float_to_f16(float x) {
  const std::uint32_t bits = float_bits(x);
  const std::uint32_t sign = (bits >> 16) & 0x8000u;
  const std::uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return std::uint16_t(sign | 0x7e00u);  // NaN
  // 65520 is halfway between the largest half (65504) and 2^16: from there up, inf.
  if (magnitude >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);
  if (magnitude >= 0x38800000u) {  // normal half: rebias (127 -> 15), round off 13 bits
    const std::uint32_t rebiased = magnitude - 0x38000000u;
    return std::uint16_t(sign | ((rebiased + 0xfffu + ((rebiased >> 13) & 1u)) >> 13));
  }
  // Subnormal half m * 2^-24: |x| * 2^24 is exact, and adding 2^23 rounds it to an integer
  // (nearest even) in the low mantissa bits. m = 1024 correctly becomes the smallest normal.
  const float scaled = bits_float(magnitude) * 0x1p24f + 0x1p23f;
  return std::uint16_t(sign | (float_bits(scaled) - 0x4b000000u));
}

inline std::size_t element_size(Dtype dtype) {
  switch (dtype) {
    case Dtype::f32: return 4;
    case Dtype::f64: return 8;
    default: return 2;
  }
}

// Row `row` of a matrix whose rows are `stride` elements apart.
inline const void* row_at(const void* base, Dtype dtype, std::int64_t row, std::int64_t stride) {
  return static_cast<const char*>(base) + row * stride * std::int64_t(element_size(dtype));
}

inline void* row_at(void* base, Dtype dtype, std::int64_t row, std::int64_t stride) {
  return static_cast<char*>(base) + row * stride * std::int64_t(element_size(dtype));
}

}  // namespace mosa
