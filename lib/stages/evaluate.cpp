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

EvalResult evaluate(models::Llama& model, const data::Windows& windows, int batch_size, int64_t max_batches) {
  bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard no_grad;
  double sum = 0.0;
  int64_t count = 0, batches = 0;
  for (int64_t first = 0; first < windows.count(); first += batch_size) {
    if (max_batches > 0 && batches >= max_batches) break;
    int64_t rows = std::min<int64_t>(batch_size, windows.count() - first);
    BatchTensors b = window_tensors(windows.window(first), windows.window_mask(first), rows, windows.seq_len,
                                    model->device());
    if (b.loss_tokens == 0) continue;
    at::Tensor hidden = model->hidden_states(b.inputs);                               // [B, T, C]
    auto loss = train::chunked_cross_entropy(hidden, model->classifier_weight(), b.targets);
    sum += loss.loss.item<double>() * static_cast<double>(loss.count);
    count += loss.count;
    ++batches;
  }
  model->train(was_training);
  EvalResult r;
  r.tokens = count;
  r.nll = count > 0 ? sum / static_cast<double>(count) : 0.0;
  r.ppl = std::exp(r.nll);
  return r;
}

}  // namespace dsk::stages
