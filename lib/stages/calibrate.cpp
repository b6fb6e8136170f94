#include "stages/calibrate.h"

#include <algorithm>

#include "core/error.h"
#include "data/dataset.h"
#include "models/quantized.h"
#include "stages/common.h"
#include "stages/evaluate.h"

namespace dsk::stages {

CompressionStart start_compression(const config::Config& cfg, const std::string& command,
                                   const std::string& quantized_problem, const std::string& quantized_hint) {
  CompressionStart s;
  s.rt = setup_runtime(cfg);
  if (s.rt.comm->size() > 1)
    fail_usage_hint(fmt::format("dsk {} runs in one process", command),
                    "run it without dsk launch / srun (it is not data parallel)");
  s.tok = load_tokenizer_for(cfg);
  s.lm = load_model_for(cfg, s.rt);
  if (models::is_quantized(s.lm.model))
    fail_usage_hint(fmt::format("model '{}' {}", cfg.get_string("model.path"), quantized_problem), quantized_hint);
  models::convert_to_half_rope(s.lm);  // llama2.c models: q/k rows as a Hugging Face directory holds them
  return s;
}

models::LoadedModel load_original(const config::Config& cfg, const Runtime& rt) {
  models::LoadedModel lm = load_model_for(cfg, rt);
  models::convert_to_half_rope(lm);
  return lm;
}

at::Tensor calibration_inputs(const config::Config& cfg, const tok::Tokenizer& tok, int64_t n, int seq_len,
                              const std::string& count_key) {
  data::DataSpec spec = data_spec_from(cfg, "data.calib");
  data::DataOptions opt;
  opt.seq_len = seq_len;
  data::Windows w = data::prepare_eval_data(spec, opt, tok);
  std::vector<int64_t> rows;
  // Packed windows are full except possibly the last, padded one (its final target unscored).
  for (int64_t i = 0; i < w.count() && static_cast<int64_t>(rows.size()) < n; ++i)
    if (i + 1 < w.count() || w.window_mask(i)[seq_len - 1] == 1) rows.push_back(i);
  if (static_cast<int64_t>(rows.size()) < n)
    fail_usage_hint(fmt::format("data.calib '{}' gives {} full windows of {} tokens, fewer than {} = {} ({} tokens "
                                "needed)",
                                spec.path, rows.size(), seq_len + 1, count_key, n, n * seq_len + 1),
                    fmt::format("lower {} or data.seq_len, or use a larger calibration file", count_key));
  at::Tensor out = at::empty({n, seq_len}, at::kLong);
  auto a = out.accessor<int64_t, 2>();
  for (int64_t r = 0; r < n; ++r) {
    const int32_t* t = w.window(rows[static_cast<size_t>(r)]);
    for (int j = 0; j < seq_len; ++j) a[r][j] = t[j];
  }
  return out;
}

InputObservers::InputObservers(const LinearList& layers, bool with_hessian) : layers_(layers), stats_(layers.size()) {
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto* lin = layers_[i].second;
    const int64_t K = lin->in_features();
    const auto dev = lin->weight.device();
    InputStats* s = &stats_[i];
    if (with_hessian) s->H = at::zeros({K, K}, at::TensorOptions().dtype(at::kDouble).device(dev));
    s->x_sq = at::zeros({K}, at::TensorOptions().dtype(at::kDouble).device(dev));
    lin->input_observer = [s, K](const at::Tensor& x) {
      at::Tensor X = x.detach().reshape({-1, K}).to(at::kFloat);
      if (s->H.defined()) s->H.add_(X.t().mm(X).to(at::kDouble));
      s->x_sq.add_(X.to(at::kDouble).pow(2).sum(0));
      s->amax = std::max(s->amax, X.abs().max().item<double>());
      s->rows += X.size(0);
    };
  }
}

InputObservers::~InputObservers() {
  for (auto& [name, lin] : layers_) lin->input_observer = nullptr;
}

void layerwise_pass(models::Llama& model, const at::Tensor& calib, int batch_size, const LinearList& selected,
                    bool with_hessian,
                    const std::function<void(const LinearList& group, std::vector<InputStats>& stats)>& transform) {
  at::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  const int64_t n = calib.size(0), T = calib.size(1);
  models::PositionContext pos = model->position_context(0, T);
  std::vector<at::Tensor> hidden;
  for (int64_t b = 0; b < n; b += batch_size)
    hidden.push_back(at::embedding(model->model->embed_tokens->weight,
                                   calib.narrow(0, b, std::min<int64_t>(batch_size, n - b)).to(model->device())));
  auto run_group = [&](const LinearList& group, const std::function<void()>& run) {
    if (group.empty()) return;
    std::vector<InputStats> stats;
    {
      InputObservers obs(group, with_hessian);
      run();
      stats = std::move(obs.stats());
    }
    transform(group, stats);
  };
  for (size_t li = 0; li < model->model->layers.size(); ++li) {
    auto layer = model->model->layers[li];
    const std::string prefix = fmt::format("model.layers.{}.", li);
    LinearList group;
    for (auto& s : selected)
      if (s.first.rfind(prefix, 0) == 0) group.push_back(s);
    run_group(group, [&] {
      for (auto& h : hidden) layer->forward(h, pos, nullptr, static_cast<int64_t>(li));
    });
    for (auto& h : hidden) h = layer->forward(h, pos, nullptr, static_cast<int64_t>(li));
  }
  LinearList head;
  for (auto& s : selected)
    if (s.first.rfind("model.layers.", 0) != 0) head.push_back(s);
  run_group(head, [&] {
    for (auto& h : hidden) model->logits(model->model->norm->forward(h));
  });
  if (was_training) model->train();
}

Comparison compare_models(models::Llama& reference, models::Llama& candidate, const data::Windows& w, int batch_size,
                          int64_t max_batches, c10::Device device) {
  at::NoGradGuard no_grad;
  const bool ref_training = reference->is_training(), cand_training = candidate->is_training();
  reference->eval();
  candidate->eval();
  Comparison r;
  double nll_ref = 0, nll_cand = 0, kl = 0;
  int64_t batches = 0;
  for (int64_t first = 0; first < w.count(); first += batch_size) {
    if (max_batches > 0 && batches++ >= max_batches) break;
    const int64_t rows = std::min<int64_t>(batch_size, w.count() - first);
    BatchTensors b = window_tensors(w.window(first), w.window_mask(first), rows, w.seq_len, device);
    if (b.loss_tokens == 0) continue;
    at::Tensor lp = at::log_softmax(reference->forward(b.inputs).to(at::kFloat), -1);  // [B, T, V]
    at::Tensor lq = at::log_softmax(candidate->forward(b.inputs).to(at::kFloat), -1);
    at::Tensor mask = b.targets.ne(-100);
    at::Tensor tgt = b.targets.clamp_min(0).unsqueeze(-1);
    nll_ref -= lp.gather(-1, tgt).squeeze(-1).masked_select(mask).sum().item<double>();
    nll_cand -= lq.gather(-1, tgt).squeeze(-1).masked_select(mask).sum().item<double>();
    kl += (lp.exp() * (lp - lq)).sum(-1).masked_select(mask).sum().item<double>();
    r.tokens += b.loss_tokens;
  }
  if (r.tokens > 0) {
    r.nll_reference = nll_ref / static_cast<double>(r.tokens);
    r.nll_candidate = nll_cand / static_cast<double>(r.tokens);
    r.kl = kl / static_cast<double>(r.tokens);
  }
  if (ref_training) reference->train();
  if (cand_training) candidate->train();
  return r;
}

data::Windows eval_windows_for(const config::Config& cfg, const tok::Tokenizer& tok) {
  if (!cfg.has("data.eval.path")) return {};
  data::DataOptions opt;
  opt.seq_len = static_cast<int>(cfg.get_int("data.seq_len"));
  opt.stride = static_cast<int>(cfg.get_int("data.stride"));
  return data::prepare_eval_data(data_spec_from(cfg, "data.eval"), opt, tok);
}

}  // namespace dsk::stages
