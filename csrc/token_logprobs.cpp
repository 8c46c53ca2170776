// logprob_rows and kl_rows: row-wise log-sum-exp statistics over the vocabulary, with the
// in-place probability / gradient writes of the torch spec.
//
// A row is streamed in kChunk-column chunks through L1-resident float buffers (online
// log-sum-exp): read once for the statistics and, in the in-place modes, once more to be
// overwritten.

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"
#include "vec_math.h"

namespace mosa {
namespace {

constexpr int kChunk = 512;

// A row's running log-sum-exp: `sum` holds sum exp(x - shift) and `dot` sum exp(x - shift) y
// for a second row y folded along, where shift is the max so far, or 0 while that is not
// finite (as in torch.logsumexp).
struct RunningLse {
  float max = -kInf;
  double sum = 0, dot = 0;

  static float shift_for(float m) { return std::isfinite(m) ? m : 0.0f; }

  // Moves to a chunk's max, rescaling the sums; returns the shift the chunk's sums must use.
  float raise_to(float top) {
    const float new_max = std::max(max, top);
    const float shift = shift_for(new_max);
    if (sum > 0) {
      const double scale = std::exp(double(max) - shift);
      sum *= scale;
      dot *= scale;
    }
    max = new_max;
    return shift;
  }

  double log_sum_exp() const { return shift_for(max) + std::log(sum); }
};

// Loads columns [c0, c0 + count) of a row divided by t (the spec's float32 division, skipped
// at t = 1, where it is exact) and returns their max. Division by t > 0 keeps the order, so
// the max of the quotients is the quotient of the max.
MOSA_INLINE float load_scaled(const void* row, Dtype dtype, std::int64_t c0, int count, float t,
                              float* out) {
  const float top = load_floats(row, dtype, c0, count, out);
  if (t == 1.0f) return top;
  for (int j = 0; j < count; ++j) out[j] /= t;
  return top / t;
}

MOSA_MULTIVERSION
void logprob_row(const LogprobArgs& a, std::int64_t r) {
  alignas(64) float chunk[kChunk];
  const float t = float(a.temperature);
  void* row = row_at(a.logits.data, a.logits.dtype, r, a.logits.stride);
  const Dtype dtype = a.logits.dtype;

  RunningLse stats;
  for (std::int64_t c0 = 0; c0 < a.vocab; c0 += kChunk) {
    const int count = int(std::min<std::int64_t>(kChunk, a.vocab - c0));
    const float top = load_scaled(row, dtype, c0, count, t, chunk);
    if (top > -kInf) stats.sum += chunk_exp_sum(chunk, count, stats.raise_to(top));
  }
  const float lse = float(stats.log_sum_exp());
  a.lse[r] = lse;

  // Targets' z are read before an in-place mode overwrites the row.
  const std::int64_t* targets = a.targets + r * a.num_targets;
  std::vector<float> target_z(a.num_targets, 0.0f);
  for (std::int64_t j = 0; j < a.num_targets; ++j) {
    const bool keep = targets[j] != a.ignore_index;
    if (keep) {
      load_floats(row, dtype, targets[j], 1, &target_z[j]);
      target_z[j] /= t;
    }
    a.logp[r * a.num_targets + j] = keep ? target_z[j] - lse : 0.0f;
  }
  if (a.grad == nullptr && !a.write_probs) return;

  // d(sum_j g_j logp_j)/dx = (scatter(g at targets) - sum(g) softmax(z)) / T.
  const float* grad = a.grad == nullptr ? nullptr : a.grad + r * a.num_targets;
  float grad_sum = 0.0f;
  if (grad != nullptr)
    for (std::int64_t j = 0; j < a.num_targets; ++j)
      if (targets[j] != a.ignore_index) grad_sum += grad[j];
  for (std::int64_t c0 = 0; c0 < a.vocab; c0 += kChunk) {
    const int count = int(std::min<std::int64_t>(kChunk, a.vocab - c0));
    load_scaled(row, dtype, c0, count, t, chunk);
    if (grad == nullptr) {
#pragma omp simd
      for (int j = 0; j < count; ++j) chunk[j] = exp_f32(chunk[j] - lse);
    } else {
#pragma omp simd
      for (int j = 0; j < count; ++j) chunk[j] = exp_f32(chunk[j] - lse) * -grad_sum / t;
    }
    store_floats(chunk, count, row, dtype, c0);
  }
  if (grad == nullptr) return;

  // Target columns get their g added (every occurrence of a repeated id, in order) before the
  // division by T, as the spec's scatter_add does.
  for (std::int64_t j = 0; j < a.num_targets; ++j) {
    const std::int64_t id = targets[j];
    if (id == a.ignore_index || std::find(targets, targets + j, id) != targets + j) continue;
    float value = exp_f32(target_z[j] - lse) * -grad_sum;
    for (std::int64_t i = j; i < a.num_targets; ++i)
      if (targets[i] == id) value += grad[i];
    value /= t;
    store_floats(&value, 1, row, dtype, id);
  }
}

MOSA_MULTIVERSION
void kl_row(const KlArgs& a, std::int64_t r) {
  alignas(64) float z[kChunk];
  alignas(64) float zr[kChunk];
  void* row = row_at(a.logits.data, a.logits.dtype, r, a.logits.stride);
  const void* ref_row = row_at(a.ref_logits.data, a.ref_logits.dtype, r, a.ref_logits.stride);

  // KL = E_p[z - zr] - lse(z) + lse(zr); `policy.dot` accumulates p-weighted z - zr.
  RunningLse policy, reference;
  for (std::int64_t c0 = 0; c0 < a.vocab; c0 += kChunk) {
    const int count = int(std::min<std::int64_t>(kChunk, a.vocab - c0));
    const float top = load_floats(row, a.logits.dtype, c0, count, z);
    const float ref_top = load_floats(ref_row, a.ref_logits.dtype, c0, count, zr);
    if (ref_top > -kInf) reference.sum += chunk_exp_sum(zr, count, reference.raise_to(ref_top));
    if (top > -kInf) {
      for (int j = 0; j < count; ++j) zr[j] = z[j] - zr[j];
      float sum, dot;
      chunk_exp_dot(z, zr, count, policy.raise_to(top), sum, dot);
      policy.sum += sum;
      policy.dot += dot;
    }
  }
  const double lse = policy.log_sum_exp();
  const double mean_diff = policy.dot / policy.sum;
  a.kl[r] = float(mean_diff - lse + reference.log_sum_exp());
  if (a.grad == nullptr) return;

  // d(g KL)/dz = g p (d - E_p[d]) with d = z - zr; where p is 0 the term is 0 even if d is
  // infinite.
  const float g = a.grad[r];
  const float lse_f = float(lse);
  const float mean_f = float(mean_diff);
  for (std::int64_t c0 = 0; c0 < a.vocab; c0 += kChunk) {
    const int count = int(std::min<std::int64_t>(kChunk, a.vocab - c0));
    load_floats(row, a.logits.dtype, c0, count, z);
    load_floats(ref_row, a.ref_logits.dtype, c0, count, zr);
#pragma omp simd
    for (int j = 0; j < count; ++j) {
      const float p = exp_f32(z[j] - lse_f);
      z[j] = p > 0.0f ? g * p * (z[j] - zr[j] - mean_f) : 0.0f;
    }
    store_floats(z, count, row, a.logits.dtype, c0);
  }
}

}  // namespace

void logprob_rows(const LogprobArgs& args, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::int64_t r = 0; r < args.rows; ++r) logprob_row(args, r);
}

void kl_rows(const KlArgs& args, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::int64_t r = 0; r < args.rows; ++r) kl_row(args, r);
}

}  // namespace mosa
