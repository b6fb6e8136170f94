// Data-parallel building blocks over a Comm: gradient all-reduce in buckets that overlap with the
// backward pass (what torch's DDP Reducer does), flat broadcasts of parameters, the ZeRO-1
// parameter partition, and gathering named tensors (sharded optimizer state) onto rank 0.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dist/comm.h"

namespace dsk::dist {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Sums the gradients of `params` over the ranks.
//
// Parameters are grouped into buckets of about `bucket_bytes`, in reverse order (the backward
// pass produces the last layers' gradients first). A post-hook on each parameter's
// AccumulateGrad node counts the gradients that are ready; when a bucket is complete, its
// gradients are copied into one flat buffer and an asynchronous all-reduce starts while the
// backward pass goes on. Buckets are launched in index order on every rank, so the collectives
// match even when ranks see gradients in a different order. Only micro-steps marked by
// begin(true) communicate: gradient accumulation needs no communication until the last one.
//
// With `owner` (ZeRO-1: parameter i belongs to rank owner[i], see partition_params) each bucket
// holds one rank's parameters and is summed into that rank only (a reduce: together, a
// reduce-scatter of the gradients). After finish() a rank holds the summed gradients of the
// parameters it owns and no gradient (undefined .grad) for the others.
class GradSync {
 public:
  GradSync(Comm& comm, std::vector<at::Tensor> params, int64_t bucket_bytes, std::vector<int> owner = {});
  ~GradSync();
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  // Before a micro-step's backward: `sync` = this is the last micro-step of the optimizer step.
  void begin(bool sync);
  // After the last micro-step's backward (or instead of it, when a rank had nothing to score):
  // launches the buckets not yet launched, waits for all, and writes the sums into .grad.
  void finish();
  int64_t buckets() const;

  struct State;  // shared with the autograd hooks (lib/dist/ddp.cpp)

 private:
  std::shared_ptr<State> st_;
};

// Broadcasts `tensors` from `src` in flat chunks of at most `chunk_bytes` (same dtype per chunk).
void broadcast_tensors(Comm& comm, const std::vector<at::Tensor>& tensors, int src,
                       int64_t chunk_bytes = 64 << 20);

// ZeRO-1 ownership: parameter i belongs to rank owner[i]. Largest first, each to the rank with
// the fewest elements so far (ties: lowest rank), as torch's ZeroRedundancyOptimizer does.
std::vector<int> partition_params(const std::vector<int64_t>& numels, int world_size);

// Every rank passes its own tensors; rank 0 gets the concatenation in rank order, the others an
// empty list. Names, shapes and dtypes travel with the data.
NamedTensors gather_named(Comm& comm, const NamedTensors& local);

}  // namespace dsk::dist
