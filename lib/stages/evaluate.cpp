#include "stages/evaluate.h"

#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>

#include "train/loss.h"

namespace dsk::stages {

BatchTensors window_tensors(const int32_t* tokens, const uint8_t* mask, int64_t rows, int seq_len,
                            c10::Device device) {
  const int64_t T = seq_len;
  auto win = at::from_blob(const_cast<int32_t*>(tokens), {rows, T + 1}, at::kInt).to(at::kLong);  // [B, T+1]
  auto m = at::from_blob(const_cast<uint8_t*>(mask), {rows, T}, at::kByte).to(at::kBool);         // [B, T]
  BatchTensors b;
  b.inputs = win.narrow(1, 0, T).contiguous();
  b.targets = win.narrow(1, 1, T).masked_fill(m.logical_not(), train::kIgnoreIndex).contiguous();
  b.loss_tokens = m.sum().item<int64_t>();
  if (!device.is_cpu()) {
    b.inputs = b.inputs.to(device);
    b.targets = b.targets.to(device);
  }
  return b;
}

EvalResult evaluate(models::Llama& model, const data::Windows& windows, int batch_size, int64_t max_batches,
                    dist::Comm* comm) {
  bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard no_grad;
  const int64_t world = comm ? comm->size() : 1, rank = comm ? comm->rank() : 0;
  int64_t n_batches = (windows.count() + batch_size - 1) / batch_size;
  if (max_batches > 0) n_batches = std::min(n_batches, max_batches);
  double sum = 0.0;
  int64_t count = 0;
  for (int64_t batch = rank; batch < n_batches; batch += world) {
    const int64_t first = batch * batch_size;
    int64_t rows = std::min<int64_t>(batch_size, windows.count() - first);
    BatchTensors b = window_tensors(windows.window(first), windows.window_mask(first), rows, windows.seq_len,
                                    model->device());
    if (b.loss_tokens == 0) continue;
    at::Tensor hidden = model->hidden_states(b.inputs);                               // [B, T, C]
    auto loss = train::chunked_cross_entropy(hidden, model->classifier_weight(), b.targets);
    sum += loss.loss.item<double>() * static_cast<double>(loss.count);
    count += loss.count;
  }
  model->train(was_training);
  if (world > 1) {
    at::Tensor t = at::tensor({sum, static_cast<double>(count)}, at::kDouble);
    comm->allreduce_sum(t);
    sum = t[0].item<double>();
    count = static_cast<int64_t>(t[1].item<double>());
  }
  EvalResult r;
  r.tokens = count;
  r.nll = count > 0 ? sum / static_cast<double>(count) : 0.0;
  r.ppl = std::exp(r.nll);
  return r;
}

}  // namespace dsk::stages
