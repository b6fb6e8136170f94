// Splitting and batching: a seeded document split into train/eval, and a Loader that yields
// batches of windows in a seeded order per epoch, sharded over ranks, with a position that a
// checkpoint saves and restores.
//
// Orders are defined by this file alone (std::mt19937_64 + our own bounded draw + Fisher–Yates),
// not by the standard library's distributions, so they are the same on every platform.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "data/pack.h"
#include "data/source.h"

namespace dsk::data {

// Uniform integer in [0, n) from raw 64-bit draws (rejection sampling); n > 0.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n);
// A permutation of 0..n-1: Fisher–Yates (i from n-1 down to 1, swap i with a uniform j in
// [0, i]) driven by std::mt19937_64(seed).
std::vector<int64_t> permutation(int64_t n, uint64_t seed);

// Seed salt of the train/eval split, so the split and epoch 0's order draw different numbers.
inline constexpr uint64_t kSplitSeedSalt = 0x9e3779b97f4a7c15ULL;

struct Split {
  std::vector<Document> train, eval;
};
// Holds out round(n * eval_fraction) documents (at least 1 when eval_fraction > 0, at most
// n - 1): the first ones of permutation(n, seed ^ kSplitSeedSalt). Both parts keep the
// original document order. Usage error when eval_fraction is outside [0, 1) or there are too
// few documents to split.
Split split_documents(std::vector<Document> docs, double eval_fraction, uint64_t seed);

struct LoaderOptions {
  int batch_size = 8;      // windows per batch, per rank
  uint64_t seed = 0;       // epoch e is ordered by permutation(count, seed + e)
  bool shuffle = true;     // false: windows in order every epoch
  bool drop_last = true;   // false: a smaller final batch (eval)
  int world_size = 1;
  int rank = 0;
};

// Where a Loader is: the next batch it yields is batch `index` (0-based, this rank's count)
// of epoch `epoch`.
struct LoaderPosition {
  int64_t epoch = 0;
  int64_t index = 0;
  bool operator==(const LoaderPosition& o) const { return epoch == o.epoch && index == o.index; }
};

struct Batch {
  int rows = 0;                  // windows in this batch (batch_size unless the last eval batch)
  int seq_len = 0;
  std::vector<int32_t> tokens;   // (rows, seq_len + 1): inputs = [:, :-1], targets = [:, 1:]
  std::vector<uint8_t> mask;     // (rows, seq_len)
  std::vector<int64_t> windows;  // (rows,) window indices, for logging and tests
  LoaderPosition position;       // where this batch was in the order
};

// Global batch g of an epoch = windows order[g*B, (g+1)*B) with B = batch_size; rank r takes
// global batches r, r + W, r + 2W, ... (W = world_size). With drop_last, every rank gets
// floor(floor(count / B) / W) batches, so W ranks at batch B see exactly the windows one
// process at batch W*B sees, step for step.
class Loader {
 public:
  Loader(Windows windows, LoaderOptions options);

  int64_t batches_per_epoch() const { return per_rank_; }  // this rank's batches per epoch
  const Windows& windows() const { return windows_; }
  const LoaderOptions& options() const { return opt_; }

  LoaderPosition position() const { return pos_; }
  // Restores a saved position (index == batches_per_epoch() means the start of the next
  // epoch). Usage error when index is past the end: the data or batch size changed.
  void set_position(LoaderPosition pos);

  // The batch at position(), then advances (into the next epoch after the last batch).
  Batch next();
  // The windows of this rank's batch `index` in epoch `epoch`, without moving.
  std::vector<int64_t> batch_windows(int64_t epoch, int64_t index) const;

 private:
  const std::vector<int64_t>& order(int64_t epoch) const;

  Windows windows_;
  LoaderOptions opt_;
  int64_t global_batches_ = 0;
  int64_t per_rank_ = 0;
  LoaderPosition pos_;
  mutable int64_t order_epoch_ = -1;
  mutable std::vector<int64_t> order_;
};

}  // namespace dsk::data
