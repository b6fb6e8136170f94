// Seeded split, per-epoch orders and the batch Loader.
#include "data/loader.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace dsk::data {

uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  DSK_CHECK(n > 0, "uniform_below: empty range");
  // Draws below 2^64 mod n are rejected so the rest is a whole number of copies of [0, n).
  const uint64_t threshold = (0 - n) % n;
  for (;;) {
    uint64_t x = rng();
    if (x >= threshold) return x % n;
  }
}

std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(static_cast<size_t>(std::max<int64_t>(n, 0)));
  std::iota(p.begin(), p.end(), int64_t{0});
  std::mt19937_64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    auto j = static_cast<int64_t>(uniform_below(rng, static_cast<uint64_t>(i) + 1));
    std::swap(p[i], p[j]);
  }
  return p;
}

Split split_documents(std::vector<Document> docs, double eval_fraction, uint64_t seed) {
  if (!(eval_fraction >= 0.0 && eval_fraction < 1.0))
    fail_usage_hint(fmt::format("eval_fraction {} is outside [0, 1)", eval_fraction),
                    "set data.eval_fraction to e.g. 0.05 (0 = no eval set)");
  Split out;
  const auto n = static_cast<int64_t>(docs.size());
  if (eval_fraction == 0.0) {
    out.train = std::move(docs);
    return out;
  }
  if (n < 2) {
    fail_usage_hint(fmt::format("cannot hold out eval documents: the training data has {} document", n),
                    "give data.eval.path, cut the file into more documents (data.train.separator), "
                    "or set data.eval_fraction: 0");
  }
  int64_t n_eval = std::llround(static_cast<double>(n) * eval_fraction);
  n_eval = std::min(std::max<int64_t>(n_eval, 1), n - 1);
  std::vector<bool> is_eval(static_cast<size_t>(n), false);
  const auto perm = permutation(n, seed ^ kSplitSeedSalt);
  for (int64_t i = 0; i < n_eval; ++i) is_eval[perm[i]] = true;
  for (int64_t i = 0; i < n; ++i) (is_eval[i] ? out.eval : out.train).push_back(std::move(docs[i]));
  return out;
}

// ---------------------------------------------------------------------------

Loader::Loader(Windows windows, LoaderOptions options) : windows_(std::move(windows)), opt_(options) {
  if (opt_.batch_size < 1) fail_usage("batch_size must be at least 1, got {}", opt_.batch_size);
  if (opt_.world_size < 1 || opt_.rank < 0 || opt_.rank >= opt_.world_size)
    fail_usage("data loader: rank {} is not in [0, world_size = {})", opt_.rank, opt_.world_size);
  const int64_t count = windows_.count(), B = opt_.batch_size, W = opt_.world_size, r = opt_.rank;
  global_batches_ = opt_.drop_last ? count / B : (count + B - 1) / B;
  if (opt_.drop_last) per_rank_ = global_batches_ / W;
  else per_rank_ = global_batches_ > r ? (global_batches_ - r + W - 1) / W : 0;
  if (per_rank_ == 0) {
    fail_usage_hint(fmt::format("the data makes {} windows of {} tokens: not one batch of {} per process for {} "
                                "process(es)", count, windows_.seq_len + 1, B, W),
                    "lower batch_size or data.seq_len, or add data");
  }
}

void Loader::set_position(LoaderPosition pos) {
  if (pos.epoch < 0 || pos.index < 0 || pos.index > per_rank_) {
    fail_usage_hint(fmt::format("data position epoch {} batch {} is outside an epoch of {} batches", pos.epoch,
                                pos.index, per_rank_),
                    "resume with the same data, seq_len, batch_size and number of processes as the checkpoint");
  }
  if (pos.index == per_rank_) pos = {pos.epoch + 1, 0};
  pos_ = pos;
}

const std::vector<int64_t>& Loader::order(int64_t epoch) const {
  if (order_epoch_ != epoch) {
    if (opt_.shuffle) {
      order_ = permutation(windows_.count(), opt_.seed + static_cast<uint64_t>(epoch));
    } else if (order_.size() != static_cast<size_t>(windows_.count())) {
      order_.resize(static_cast<size_t>(windows_.count()));
      std::iota(order_.begin(), order_.end(), int64_t{0});
    }
    order_epoch_ = epoch;
  }
  return order_;
}

std::vector<int64_t> Loader::batch_windows(int64_t epoch, int64_t index) const {
  DSK_CHECK(index >= 0 && index < per_rank_, "data loader: batch {} of an epoch of {}", index, per_rank_);
  const auto& ord = order(epoch);
  const int64_t g = index * opt_.world_size + opt_.rank;
  const int64_t begin = g * opt_.batch_size;
  const int64_t end = std::min<int64_t>(begin + opt_.batch_size, windows_.count());
  return std::vector<int64_t>(ord.begin() + begin, ord.begin() + end);
}

Batch Loader::next() {
  Batch b;
  b.position = pos_;
  b.windows = batch_windows(pos_.epoch, pos_.index);
  b.rows = static_cast<int>(b.windows.size());
  b.seq_len = windows_.seq_len;
  const int64_t L = windows_.seq_len;
  b.tokens.reserve(b.windows.size() * (L + 1));
  b.mask.reserve(b.windows.size() * L);
  for (int64_t w : b.windows) {
    b.tokens.insert(b.tokens.end(), windows_.window(w), windows_.window(w) + L + 1);
    b.mask.insert(b.mask.end(), windows_.window_mask(w), windows_.window_mask(w) + L);
  }
  if (++pos_.index == per_rank_) pos_ = {pos_.epoch + 1, 0};
  return b;
}

}  // namespace dsk::data
