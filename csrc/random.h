// Counter-based random numbers, bit-for-bit as mosa_kernels/random.py (the spec).
//
// A draw is a pure function of (seed, row, column): lowbias32 chained over the three, so the
// noise does not depend on chunking, threading or the backend.
#pragma once

#include <cstdint>
#include <cstring>

#include "multiversion.h"

namespace mosa {

MOSA_INLINE std::uint32_t hash32(std::uint32_t x) {
  x ^= x >> 16;
  x *= 0x21f0aaadu;
  x ^= x >> 15;
  x *= 0x735a2d97u;
  x ^= x >> 15;
  return x;
}

// The part of the chain that depends on the row only: hash32(hash32(seed) ^ row).
inline std::uint32_t row_key(std::uint32_t seed, std::int64_t row) {
  return hash32(hash32(seed) ^ std::uint32_t(row));
}

MOSA_INLINE std::uint64_t double_bits(double x) {
  std::uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

MOSA_INLINE double bits_double(std::uint64_t bits) {
  double x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// log(x) for a positive, finite, normal double, within about 1 ulp; branch-free, so that
// the loop drawing a chunk of noise vectorises (libm's log is a call).
// x = 2^e m with m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact) and s = f / (2 + f):
// log m = 2 atanh s = f - s (f - R) with R = 2 z / 3 + 2 z^2 / 5 + ..., z = s^2 <= 0.0295,
// where nine terms leave a truncation far below an ulp.
MOSA_INLINE double log_f64(double x) {
  const std::uint64_t bits = double_bits(x);
  const double mantissa = bits_double((bits & 0x000fffffffffffffu) | 0x3ff0000000000000u);
  const bool halve = mantissa > 0x1.6a09e667f3bcdp+0;  // sqrt(2)
  const double m = halve ? mantissa * 0.5 : mantissa;
  // The biased exponent as a double, via the 2^52 bit pattern (no int64 -> double on SSE2).
  const double biased = bits_double((bits >> 52) | 0x4330000000000000u) - 0x1p52;
  const double e = biased - (halve ? 1022.0 : 1023.0);
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s;
  double r = 2.0 / 19.0;
  r = r * z + 2.0 / 17.0;
  r = r * z + 2.0 / 15.0;
  r = r * z + 2.0 / 13.0;
  r = r * z + 2.0 / 11.0;
  r = r * z + 2.0 / 9.0;
  r = r * z + 2.0 / 7.0;
  r = r * z + 2.0 / 5.0;
  r = r * z + 2.0 / 3.0;
  const double log_m = f - s * (f - r * z);
  // ln2 split into a 33-bit head (e * head is exact) and a tail.
  return e * 0x1.62e42ffp-1 + (log_m + e * -0x1.718432a1b0e26p-35);
}

// Standard Gumbel noise for column `col` of the row with key `key`: -log(-log u) with
// u = ((h >> 9) + 0.5) / 2^23, evaluated in double and rounded once to float32 as the torch
// spec does, so that the noise (and a sampled token) agrees with it bit for bit.
MOSA_INLINE float gumbel(std::uint32_t key, std::uint32_t col) {
  const std::uint32_t h = hash32(key ^ col);
  const double u = (double(std::int32_t(h >> 9)) + 0.5) * 0x1p-23;
  return float(-log_f64(-log_f64(u)));
}

}  // namespace mosa
