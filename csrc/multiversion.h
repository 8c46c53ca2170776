// Compiling the hot loops for several x86-64 levels at once.
//
// The per-row kernels carry MOSA_MULTIVERSION: GCC compiles them for AVX2 and for the x86-64
// baseline (SSE2) and picks one when the extension loads, so the wheel runs on any x86-64
// but uses wider vectors where the CPU has them. No level with FMA: GCC contracts a * b + c
// in C++ by default, which would make results depend on the CPU.
//
// Everything those kernels call in a loop is MOSA_INLINE: only inlined code is compiled for
// the caller's level; a call would land in the baseline copy.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MOSA_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MOSA_MULTIVERSION
#endif

#if defined(__GNUC__)
#define MOSA_INLINE inline __attribute__((always_inline))
#else
#define MOSA_INLINE inline
#endif
