// Calibration shared by dsk quantize and dsk prune: calibration windows, the layer-wise pass
// (each decoder layer calibrated on the outputs of the already-transformed layers before it, as
// GPTQ, SparseGPT and Wanda do), and the end-to-end comparison of two models on eval windows.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"
#include "data/pack.h"
#include "models/llama.h"
#include "models/loader.h"
#include "stages/common.h"
#include "tokenizer/tokenizer.h"

namespace dsk::stages {

using LinearList = std::vector<std::pair<std::string, models::LoraLinearImpl*>>;

// The start both commands share: one process (`command` names it in the error), the model at model.path in full
// precision with q/k rows in the Hugging Face rotary layout (llama2.c models converted). A quantized model is a
// usage error with `quantized_problem` and `quantized_hint`.
struct CompressionStart {
  Runtime rt;
  std::unique_ptr<tok::Tokenizer> tok;
  models::LoadedModel lm;
};
CompressionStart start_compression(const config::Config& cfg, const std::string& command,
                                   const std::string& quantized_problem, const std::string& quantized_hint);
// model.path again, converted the same way: the original kept for the end-to-end comparison.
models::LoadedModel load_original(const config::Config& cfg, const Runtime& rt);

// The first `n` full (unpadded) windows of data.calib as [n, seq_len] int64 inputs. Usage error
// naming `count_key` when the file gives fewer.
at::Tensor calibration_inputs(const config::Config& cfg, const tok::Tokenizer& tok, int64_t n, int seq_len,
                              const std::string& count_key);

// What a layer's input observer gathers over the calibration tokens.
struct InputStats {
  at::Tensor H;      // [K, K] float64: sum of x x^T (when asked for)
  at::Tensor x_sq;   // [K] float64: sum of x_j^2
  double amax = 0;   // max |x|
  int64_t rows = 0;  // tokens seen
};

// Runs `calib` through the model one decoder layer at a time (then the final norm for layers
// outside the decoder, such as lm_head). For each decoder layer: observers on its linears in
// `selected` gather InputStats (H only when with_hessian), `transform` changes them (quantizes,
// prunes), and the layer runs again to give the next layer its inputs. Without gradients, in
// eval mode.
void layerwise_pass(models::Llama& model, const at::Tensor& calib, int batch_size, const LinearList& selected,
                    bool with_hessian,
                    const std::function<void(const LinearList& group, std::vector<InputStats>& stats)>& transform);

// Installs observers gathering InputStats on `layers` (removed by the destructor).
class InputObservers {
 public:
  InputObservers(const LinearList& layers, bool with_hessian);
  ~InputObservers();
  InputObservers(const InputObservers&) = delete;
  InputObservers& operator=(const InputObservers&) = delete;
  std::vector<InputStats>& stats() { return stats_; }

 private:
  LinearList layers_;
  std::vector<InputStats> stats_;
};

// NLL of both models and KL(reference || candidate) per scored token over eval windows.
struct Comparison {
  double nll_reference = 0, nll_candidate = 0, kl = 0;
  int64_t tokens = 0;
};
Comparison compare_models(models::Llama& reference, models::Llama& candidate, const data::Windows& w, int batch_size,
                          int64_t max_batches, c10::Device device);

// Eval windows of data.eval (data.seq_len, data.stride), or none when data.eval.path is unset.
data::Windows eval_windows_for(const config::Config& cfg, const tok::Tokenizer& tok);

}  // namespace dsk::stages
