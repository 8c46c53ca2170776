// select_transfer: which masked positions of each row a denoising step commits.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"

namespace mosa {
namespace {

// Descending confidence with NaN first (torch's descending sort).
bool more_confident(float a, float b) { return (std::isnan(a) && !std::isnan(b)) || a > b; }

// Whether the masked position at `rank` (0 = most confident) with confidence `conf` is taken.
// The float32 arithmetic repeats the torch spec's: `threshold` is compared as a float32 and
// `factor / (rank + 2)` is computed as float32(1 / (rank + 2)) * float32(factor).
bool takes(TransferRule rule, std::int64_t k, float bound, std::int64_t rank, float conf) {
  switch (rule) {
    case TransferRule::top_k:
      return rank < k;
    case TransferRule::threshold:
      return rank == 0 || conf >= bound;
    case TransferRule::factor:
      return rank == 0 || conf >= 1.0f - 1.0f / float(rank + 2) * bound;
  }
  return false;
}

}  // namespace

void select_transfer(const float* confidence, const std::uint8_t* is_masked, std::int64_t rows,
                     std::int64_t width, TransferRule rule, const std::int64_t* k,
                     double threshold_or_factor, std::uint8_t* take, int threads) {
  const float bound = float(threshold_or_factor);
#pragma omp parallel num_threads(threads)
  {
    std::vector<std::int64_t> order;  // the row's masked positions, best first
    order.reserve(width);
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* conf = confidence + r * width;
      const std::uint8_t* masked = is_masked + r * width;
      std::uint8_t* out = take + r * width;
      order.clear();
      for (std::int64_t w = 0; w < width; ++w) {
        out[w] = 0;
        if (masked[w]) order.push_back(w);
      }
      // Ties go to the lower position, as in the spec's stable sort.
      std::sort(order.begin(), order.end(), [conf](std::int64_t a, std::int64_t b) {
        return more_confident(conf[a], conf[b]) || (!more_confident(conf[b], conf[a]) && a < b);
      });
      const std::int64_t row_k = rule == TransferRule::top_k ? k[r] : 0;
      for (std::int64_t rank = 0; rank < std::int64_t(order.size()); ++rank) {
        const std::int64_t w = order[rank];
        out[w] = takes(rule, row_k, bound, rank, conf[w]);
      }
    }
  }
}

}  // namespace mosa
