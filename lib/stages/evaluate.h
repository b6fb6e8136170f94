// Evaluation shared by `dsk eval` and the finetune loop: mean token NLL over windows.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "data/pack.h"
#include "dist/comm.h"
#include "models/llama.h"

namespace dsk::stages {

struct EvalResult {
  double nll = 0.0;    // mean negative log-likelihood per scored token (nats)
  double ppl = 0.0;    // exp(nll)
  int64_t tokens = 0;  // scored tokens
};

// Inputs [B, T] and targets [B, T] (ignore_index where the mask is 0) for windows
// [first, first + rows) of `w`, as int64 on `device`.
struct BatchTensors {
  at::Tensor inputs, targets;
  int64_t loss_tokens = 0;
};
BatchTensors window_tensors(const int32_t* tokens, const uint8_t* mask, int64_t rows, int seq_len,
                            c10::Device device);

// Scores windows in order, `batch_size` at a time (max_batches 0: all; else the first
// max_batches batches), without gradients and in eval mode (the model's mode is restored).
// With a process group of W ranks, rank r scores batches r, r + W, ... and the sums are
// all-reduced, so every rank returns the result of the whole set.
EvalResult evaluate(models::Llama& model, const data::Windows& windows, int batch_size, int64_t max_batches = 0,
                    dist::Comm* comm = nullptr);

}  // namespace dsk::stages
