// sample_update: folds vocabulary columns into the per-row sampling state in one pass.
//
// Each row is streamed in chunks of kChunk columns through an L1-resident float buffer. The
// common case costs two passes over a chunk: the load (which also finds the max and so the
// T = 0 token), then one pass for the confidence statistics, whose sums are rescaled whenever
// the running max grows (online softmax). Guidance, suppressed or excluded ids and tempering
// add work only where they apply.

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "kernels.h"
#include "random.h"
#include "vec_math.h"

namespace mosa {
namespace {

constexpr int kChunk = 512;

using IdRange = std::pair<const std::int64_t*, const std::int64_t*>;

// Global token ids, sorted once per call so that each chunk finds its own by binary search.
class IdSet {
 public:
  explicit IdSet(Ids ids) : ids_(ids.data, ids.data + ids.count) {
    std::sort(ids_.begin(), ids_.end());
  }

  // The ids in [begin, end).
  IdRange within(std::int64_t begin, std::int64_t end) const {
    const std::int64_t* first = std::lower_bound(ids_.data(), ids_.data() + ids_.size(), begin);
    return {first, std::lower_bound(first, ids_.data() + ids_.size(), end)};
  }

  bool contains(std::int64_t id) const { return std::binary_search(ids_.begin(), ids_.end(), id); }

 private:
  std::vector<std::int64_t> ids_;
};

struct Call {
  const SampleUpdateArgs& args;
  IdSet suppress, exclude;
  float temperature;  // the torch spec divides float32 logits by float32(T)
  float cfg_weight;   // float32(cfg_scale + 1)
  bool sample;        // T > 0: Gumbel-max
  bool tempered;      // confidence from logits / T
};

// One row's state while its chunks are folded in; the sums are widened to double.
struct RowState {
  float max, top2, best, best_conf;
  double sum, moment;
  std::int64_t best_index;
};

// Sets the chunk's entries at `ids` to -inf and returns the chunk's new max (`top` if none).
MOSA_INLINE float set_minus_inf(float* chunk, int count, std::int64_t col0, IdRange ids,
                                float top) {
  if (ids.first == ids.second) return top;
  for (const std::int64_t* id = ids.first; id != ids.second; ++id) chunk[*id - col0] = -kInf;
  return chunk_max(chunk, count);
}

// The confidence logit of a chosen column whose logit is `logit`.
MOSA_INLINE float confidence_of(const Call& call, float logit, std::int64_t col) {
  if (call.exclude.contains(col)) return -kInf;
  return call.tempered ? logit / call.temperature : logit;
}

// Temperature 0: the first column holding the chunk's best logit `top` wins if it beats the
// best so far (strictly, so earlier columns keep ties).
MOSA_INLINE void take_argmax(const Call& call, const float* logits, int count, float top,
                             std::int64_t col0, RowState& row) {
  if (!(top > row.best)) return;
  const int j = int(std::find(logits, logits + count, top) - logits);
  row.best = top;
  row.best_index = col0 + j;
  row.best_conf = confidence_of(call, logits[j], col0 + j);
}

// Temperature > 0: Gumbel-max over logits / T + gumbel(seed, row, col); `scores` is scratch.
// No draw exceeds -log(-log(1 - 2^-24)) = 16.6355, so a chunk whose best logit `top` cannot
// beat the best score even with that much noise is skipped (the rounding of l / T + g is
// monotonic, so this is exact). With real logits most chunks go.
MOSA_INLINE void take_gumbel_max(const Call& call, const float* logits, int count, float top,
                                 std::uint32_t key, std::int64_t col0, float* scores,
                                 RowState& row) {
  if (!(top / call.temperature + 16.64f > row.best)) return;
  const std::uint32_t col = std::uint32_t(col0);  // the spec hashes columns mod 2^32
  top = -kInf;
#pragma omp simd reduction(max : top)
  for (int j = 0; j < count; ++j)
    top = max_of(top, scores[j] = logits[j] / call.temperature + gumbel(key, col + j));
  if (!(top > row.best)) return;
  const int j = int(std::find(scores, scores + count, top) - scores);
  row.best = top;
  row.best_index = col0 + j;
  row.best_conf = confidence_of(call, logits[j], col0 + j);
}

// Folds a chunk of confidence logits with max `top` into the row's max, top-2,
// sum exp(c - M) and sum exp(c - M) (c - M).
MOSA_INLINE void fold_confidence(const float* conf, int count, float top, RowState& row) {
  const float new_max = std::max(row.max, top);
  row.top2 = std::max(row.top2, std::min(row.max, top));
  if (!(top > -kInf)) {
    row.max = new_max;
    return;
  }
  // A +inf logit takes the spec's shift of 0 instead of the max (no inf - inf).
  const float shift = std::isfinite(new_max) ? new_max : 0.0f;
  float sum, moment, second;
  chunk_softmax_stats(conf, count, top, shift, sum, moment, second);
  if (row.sum > 0) {
    const double drop = double(row.max) - shift;
    const double scale = std::exp(drop);
    row.moment = (row.moment + row.sum * drop) * scale;
    row.sum *= scale;
  }
  row.sum += sum;
  row.moment += moment;
  row.top2 = std::max(row.top2, second);
  row.max = new_max;
}

MOSA_MULTIVERSION
void update_row(const Call& call, std::int64_t r) {
  const SampleUpdateArgs& a = call.args;
  alignas(64) float chunk[kChunk];
  alignas(64) float scratch[kChunk];  // unconditional logits, then sampling scores
  float* state = a.state + r * kStateWidth;
  RowState row{state[kMax], state[kTop2],   state[kBest],   state[kBestConf],
               state[kSum], state[kMoment], a.best_index[r]};
  const void* logits = row_at(a.logits.data, a.logits.dtype, r, a.logits.stride);
  const std::uint32_t key = row_key(a.seed, r);

  for (std::int64_t c0 = 0; c0 < a.width; c0 += kChunk) {
    const int count = int(std::min<std::int64_t>(kChunk, a.width - c0));
    const std::int64_t col0 = a.col_offset + c0;

    float top = load_floats(logits, a.logits.dtype, c0, count, chunk);
    if (a.logits_uncond != nullptr) {
      const Matrix& u = *a.logits_uncond;
      load_floats(row_at(u.data, u.dtype, r, u.stride), u.dtype, c0, count, scratch);
      const float w = call.cfg_weight;
      top = -kInf;
#pragma omp simd reduction(max : top)
      for (int j = 0; j < count; ++j)
        top = max_of(top, chunk[j] = scratch[j] + w * (chunk[j] - scratch[j]));
    }
    top = set_minus_inf(chunk, count, col0, call.suppress.within(col0, col0 + count), top);

    // The chunk holds the logits: choose the token (excluded ids compete for it).
    if (call.sample)
      take_gumbel_max(call, chunk, count, top, key, col0, scratch, row);
    else
      take_argmax(call, chunk, count, top, col0, row);

    // Now make it the confidence logits. Division by T > 0 keeps the order, so the max of the
    // quotients is the quotient of the max.
    if (call.tempered) {
      for (int j = 0; j < count; ++j) chunk[j] /= call.temperature;
      top /= call.temperature;
    }
    top = set_minus_inf(chunk, count, col0, call.exclude.within(col0, col0 + count), top);
    fold_confidence(chunk, count, top, row);
  }

  state[kMax] = row.max;
  state[kSum] = float(row.sum);
  state[kMoment] = float(row.moment);
  state[kTop2] = row.top2;
  state[kBest] = row.best;
  state[kBestConf] = row.best_conf;
  a.best_index[r] = row.best_index;
}

}  // namespace

void sample_update(const SampleUpdateArgs& args, int threads) {
  const bool sample = args.temperature > 0;
  const Call call{args,
                  IdSet(args.suppress),
                  IdSet(args.exclude),
                  float(args.temperature),
                  float(args.cfg_scale + 1.0),
                  sample,
                  sample && args.tempered_confidence};
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::int64_t r = 0; r < args.rows; ++r) update_row(call, r);
}

}  // namespace mosa
