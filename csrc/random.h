// Counter-based random numbers, bit-for-bit as mosa_kernels/random.py (the spec).
//
// A draw is a pure function of (seed, row, column): lowbias32 chained over the three, so
// the noise does not depend on chunking, threading or the backend.
#pragma once

#include <cmath>
#include <cstdint>

namespace mosa {

inline std::uint32_t hash32(std::uint32_t x) {
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

// Uniform in (0, 1): the top 23 hash bits plus a half, exact in float32 (24 significant bits).
inline double uniform(std::uint32_t key, std::int64_t col) {
  const std::uint32_t h = hash32(key ^ std::uint32_t(col));
  return (double(h >> 9) + 0.5) * 0x1p-23;
}

// -log(-log u) evaluated in double and rounded once to float32, as the torch spec does, so
// the noise (and hence a sampled token) agrees with it bit for bit.
inline float gumbel(std::uint32_t key, std::int64_t col) {
  return float(-std::log(-std::log(uniform(key, col))));
}

}  // namespace mosa
