// Compiling the hot loops for several x86-64 levels at once.
//
// The per-row kernels carry MOSA_MULTIVERSION: GCC compiles them for AVX-512, AVX2 and the
// x86-64 baseline (SSE2) and picks one when the extension loads, so the wheel runs on any
// x86-64 but uses wider vectors where the CPU has them (AVX2 is ~2.5x faster than SSE2 here).
// The files that use it turn off FMA contraction, so every level computes the same roundings;
// only the order of the vectorised sums differs, which moves the last bit of some results.
//
// Everything those kernels call in a loop is MOSA_INLINE: only inlined code is compiled for
// the caller's level; a call would land in the baseline copy.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MOSA_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MOSA_MULTIVERSION
#endif

#if defined(__GNUC__)
#define MOSA_INLINE inline __attribute__((always_inline))
#else
#define MOSA_INLINE inline
#endif
