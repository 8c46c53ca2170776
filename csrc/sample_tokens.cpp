// sample_update: folds vocabulary columns into the per-row sampling state in one pass.
//
// Each row is streamed in chunks of kChunk columns through an L1-resident float buffer:
// load (+ guidance, suppression), token choice, then a top-2 pass and an exp pass over the
// confidence logits, whose sums are rescaled whenever the running max grows (online softmax).
// GCC keeps a float compare or multiply that an earlier pass made conditional out of a
// vectorised loop when it "could trap"; nothing here reads the FP exception flags, so say so
// (results, inf and NaN included, are unchanged). First, so that it covers every function.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "kernels.h"
#include "random.h"
#include "vec_math.h"

namespace mosa {
namespace {

constexpr int kChunk = 2048;

// Columns of the state rows, as in torch_kernels.py.
enum StateColumn { kMax, kSum, kMoment, kTop2, kBest, kBestConf, kStateWidth };

// Global token ids, sorted once per call so that each chunk finds its own by binary search.
class IdSet {
 public:
  explicit IdSet(Ids ids) : ids_(ids.data, ids.data + ids.count) {
    std::sort(ids_.begin(), ids_.end());
  }

  // The ids in [begin, end).
  std::pair<const std::int64_t*, const std::int64_t*> within(std::int64_t begin,
                                                             std::int64_t end) const {
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

MOSA_INLINE void set_minus_inf(float* chunk, std::int64_t col0,
                               std::pair<const std::int64_t*, const std::int64_t*> ids) {
  for (const std::int64_t* id = ids.first; id != ids.second; ++id) chunk[*id - col0] = -kInf;
}

// Temperature 0: the first column holding the chunk's best logit wins if it beats the best so
// far (strictly, so earlier columns keep ties). `chunk` holds logits, not yet excluded.
MOSA_INLINE void take_argmax(const Call& call, const float* chunk, int count, float chunk_best,
                             std::int64_t col0, RowState& row) {
  if (!(chunk_best > row.best)) return;
  const int j = int(std::find(chunk, chunk + count, chunk_best) - chunk);
  row.best = chunk_best;
  row.best_index = col0 + j;
  row.best_conf = call.exclude.contains(col0 + j) ? -kInf : chunk[j];
}

// Temperature > 0: Gumbel-max over logits / T + gumbel(seed, row, col).
MOSA_INLINE void take_gumbel_max(const Call& call, const float* chunk, int count,
                                 std::uint32_t key, std::int64_t col0, RowState& row) {
  const float t = call.temperature;
  for (int j = 0; j < count; ++j) {
    const float score = chunk[j] / t + gumbel(key, col0 + j);
    if (score > row.best) {
      row.best = score;
      row.best_index = col0 + j;
      const float conf = call.tempered ? chunk[j] / t : chunk[j];
      row.best_conf = call.exclude.contains(col0 + j) ? -kInf : conf;
    }
  }
}

// Folds a chunk of confidence logits (max `first`, runner-up `second`) into the row's max,
// top-2, sum exp(c - M) and sum exp(c - M) (c - M).
MOSA_INLINE void fold_confidence(const float* chunk, int count, float first, float second,
                                 RowState& row) {
  const float new_max = std::max(row.max, first);
  row.top2 = std::max(row.top2, std::max(second, std::min(row.max, first)));
  if (first > -kInf) {
    // Everything -inf so far keeps the spec's shift of 0 (no inf - inf).
    const float shift = std::isfinite(new_max) ? new_max : 0.0f;
    float sum, moment;
    chunk_exp_sums(chunk, count, shift, sum, moment);
    if (row.sum > 0) {
      const double drop = double(row.max) - shift;
      const double scale = std::exp(drop);
      row.moment = (row.moment + row.sum * drop) * scale;
      row.sum *= scale;
    }
    row.sum += sum;
    row.moment += moment;
  }
  row.max = new_max;
}

MOSA_MULTIVERSION
void update_row(const Call& call, std::int64_t r) {
  const SampleUpdateArgs& a = call.args;
  alignas(64) float chunk[kChunk];
  alignas(64) float uncond[kChunk];
  float* state = a.state + r * kStateWidth;
  RowState row{state[kMax],  state[kTop2],          state[kBest], state[kBestConf],
               state[kSum],  state[kMoment],        a.best_index[r]};
  const void* logits = row_at(a.logits.data, a.logits.dtype, r, a.logits.stride);
  const std::uint32_t key = row_key(a.seed, r);

  for (std::int64_t c0 = 0; c0 < a.width; c0 += kChunk) {
    const int count = int(std::min<std::int64_t>(kChunk, a.width - c0));
    const std::int64_t col0 = a.col_offset + c0;

    load_floats(logits, a.logits.dtype, c0, count, chunk);
    if (a.logits_uncond != nullptr) {
      const Matrix& u = *a.logits_uncond;
      load_floats(row_at(u.data, u.dtype, r, u.stride), u.dtype, c0, count, uncond);
      const float w = call.cfg_weight;
      for (int j = 0; j < count; ++j) chunk[j] = uncond[j] + w * (chunk[j] - uncond[j]);
    }
    set_minus_inf(chunk, col0, call.suppress.within(col0, col0 + count));

    // Excluded ids still compete for the token, so at T = 0 the argmax needs its own max pass
    // in the (rare) chunks holding one; elsewhere it reuses the confidence max below.
    const auto excluded = call.exclude.within(col0, col0 + count);
    const bool excluding = excluded.first != excluded.second;
    if (call.sample)
      take_gumbel_max(call, chunk, count, key, col0, row);
    else if (excluding)
      take_argmax(call, chunk, count, chunk_max(chunk, count), col0, row);

    if (call.tempered)
      for (int j = 0; j < count; ++j) chunk[j] /= call.temperature;
    set_minus_inf(chunk, col0, excluded);
    const float first = chunk_max(chunk, count);
    if (!call.sample && !excluding) take_argmax(call, chunk, count, first, col0, row);
    fold_confidence(chunk, count, first, chunk_second(chunk, count, first), row);
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
