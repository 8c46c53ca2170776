// The C++ kernels behind mosa_kernels/cpu_kernels.py. Semantics: mosa_kernels/torch_kernels.py.
//
// Tensors arrive as raw pointers (checked for dtype and layout by the Python wrapper);
// matrices are row-major with `stride` elements between rows and unit column stride.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace mosa {

// A read-only [rows, cols] matrix of any supported dtype.
struct Matrix {
  const void* data;
  Dtype dtype;
  std::int64_t stride;
};

// A [rows, cols] matrix written in place.
struct MutableMatrix {
  void* data;
  Dtype dtype;
  std::int64_t stride;
};

// A list of int64 token ids.
struct Ids {
  const std::int64_t* data;
  std::int64_t count;
};

// Columns of the sampling state rows. Python names them in mosa_kernels/interface.py
// (M, S, E, TOP2, BEST, BEST_C, STATE_WIDTH); bindings.cpp exposes these numbers as
// _C.state_columns() so that tests/kernels/test_backend_contract.py compares the two.
enum StateColumn { kMax, kSum, kMoment, kTop2, kBest, kBestConf, kStateWidth };

struct SampleUpdateArgs {
  Matrix logits;
  const Matrix* logits_uncond;  // null without classifier-free guidance
  double cfg_scale;
  std::int64_t rows, width, col_offset;
  float* state;  // [rows, kStateWidth] float32
  std::int64_t* best_index;  // [rows]
  double temperature;
  bool tempered_confidence;
  std::uint32_t seed;
  Ids suppress, exclude;
};

void sample_update(const SampleUpdateArgs& args, int threads);

// Codes as in mosa_kernels/interface.py (TOP_K, THRESHOLD, FACTOR); _C.transfer_rules().
enum class TransferRule { top_k, threshold, factor };

void select_transfer(const float* confidence, const std::uint8_t* is_masked, std::int64_t rows,
                     std::int64_t width, TransferRule rule, const std::int64_t* k,
                     double threshold_or_factor, std::uint8_t* take, int threads);

struct LogprobArgs {
  MutableMatrix logits;  // read; overwritten when grad or write_probs
  std::int64_t rows, vocab;
  const std::int64_t* targets;  // [rows, num_targets]
  std::int64_t num_targets;
  double temperature;
  std::int64_t ignore_index;
  const float* grad;  // [rows, num_targets], or null
  bool write_probs;
  float* logp;  // [rows, num_targets] out
  float* lse;   // [rows] out
};

void logprob_rows(const LogprobArgs& args, int threads);

struct KlArgs {
  MutableMatrix logits;  // read; overwritten with the gradient when grad is given
  Matrix ref_logits;
  std::int64_t rows, vocab;
  const float* grad;  // [rows], or null
  float* kl;          // [rows] out
};

void kl_rows(const KlArgs& args, int threads);

}  // namespace mosa
