// dsk quantize: weight quantization (RTN or GPTQ; 8/4/3/2 bits; per-tensor, per-channel or
// group-wise; symmetric or asymmetric) with optional int8 activations (W8A8 dynamic/static),
// layer by layer on calibration data, a sensitivity report, and a GPTQ-layout model directory
// (docs/quantization.md).
//
// The pass (what GPTQ's reference implementation does): calibration windows are embedded, then
// for each decoder layer in order (1) the layer runs on the current hidden states with observers
// on its selected linear layers, which accumulate H = sum x x^T ([K, K], float64) and max|x|;
// (2) each selected linear layer is quantized (RTN, or GPTQ with H) and switched to its
// quantized forward; (3) the layer runs again, quantized, to give the next layer its inputs. So
// every layer is calibrated on the outputs of the already-quantized layers before it. The
// output error of a layer is measured on exactly the inputs it was calibrated on, from H.
#include <ATen/ATen.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"
#include "data/dataset.h"
#include "models/loader.h"
#include "models/quantized.h"
#include "stages/common.h"
#include "stages/evaluate.h"
#include "stages/run_dir.h"
#include "stages/stages.h"

namespace dsk::stages {

namespace {

namespace stdfs = std::filesystem;

int64_t param_bytes(const at::Tensor& t) { return t.numel() * static_cast<int64_t>(t.element_size()); }

// The layer's calibration statistics, filled by its input observer.
struct Observed {
  at::Tensor H;        // [K, K] float64: sum of x x^T
  double amax = 0.0;   // max |x|
  int64_t rows = 0;
};

struct LayerReport {
  std::string name;
  int64_t out_features = 0, in_features = 0;
  double weight_error = 0, output_error = 0;
  int64_t bytes_before = 0, bytes_after = 0;
  double seconds = 0;
};

// The first `n` full (unpadded) windows of the calibration data, as [n, T] inputs.
at::Tensor calibration_inputs(const config::Config& cfg, const tok::Tokenizer& tok, int64_t n, int seq_len) {
  data::DataSpec spec = data_spec_from(cfg, "data.calib");
  data::DataOptions opt;
  opt.seq_len = seq_len;
  data::Windows w = data::prepare_eval_data(spec, opt, tok);
  std::vector<int64_t> rows;
  // Packed windows are full except possibly the last, padded one (its final target unscored).
  for (int64_t i = 0; i < w.count() && static_cast<int64_t>(rows.size()) < n; ++i)
    if (i + 1 < w.count() || w.window_mask(i)[seq_len - 1] == 1) rows.push_back(i);
  if (static_cast<int64_t>(rows.size()) < n)
    fail_usage_hint(fmt::format("data.calib '{}' gives {} full windows of {} tokens, fewer than quant.calib_samples = "
                                "{} ({} tokens needed)",
                                spec.path, rows.size(), seq_len + 1, n, n * seq_len + 1),
                    "lower quant.calib_samples or data.seq_len, or use a larger calibration file");
  at::Tensor out = at::empty({n, seq_len}, at::kLong);
  auto a = out.accessor<int64_t, 2>();
  for (int64_t r = 0; r < n; ++r) {
    const int32_t* t = w.window(rows[static_cast<size_t>(r)]);
    for (int j = 0; j < seq_len; ++j) a[r][j] = t[j];
  }
  return out;
}

struct EndToEnd {
  double nll_fp = 0, nll_q = 0, kl = 0;
  int64_t tokens = 0;
};

// NLL of both models and KL(original || quantized) per scored token over the eval windows.
EndToEnd compare_models(models::Llama& fp, models::Llama& q, const data::Windows& w, int batch_size,
                        int64_t max_batches, c10::Device device) {
  at::NoGradGuard no_grad;
  fp->eval();
  q->eval();
  EndToEnd r;
  double nll_fp = 0, nll_q = 0, kl = 0;
  int64_t batches = 0;
  for (int64_t first = 0; first < w.count(); first += batch_size) {
    if (max_batches > 0 && batches++ >= max_batches) break;
    const int64_t rows = std::min<int64_t>(batch_size, w.count() - first);
    BatchTensors b = window_tensors(w.window(first), w.window_mask(first), rows, w.seq_len, device);
    if (b.loss_tokens == 0) continue;
    at::Tensor lp = at::log_softmax(fp->forward(b.inputs).to(at::kFloat), -1);  // [B, T, V]
    at::Tensor lq = at::log_softmax(q->forward(b.inputs).to(at::kFloat), -1);
    at::Tensor mask = b.targets.ne(-100);
    at::Tensor tgt = b.targets.clamp_min(0).unsqueeze(-1);
    nll_fp -= lp.gather(-1, tgt).squeeze(-1).masked_select(mask).sum().item<double>();
    nll_q -= lq.gather(-1, tgt).squeeze(-1).masked_select(mask).sum().item<double>();
    kl += (lp.exp() * (lp - lq)).sum(-1).masked_select(mask).sum().item<double>();
    r.tokens += b.loss_tokens;
  }
  if (r.tokens > 0) {
    r.nll_fp = nll_fp / static_cast<double>(r.tokens);
    r.nll_q = nll_q / static_cast<double>(r.tokens);
    r.kl = kl / static_cast<double>(r.tokens);
  }
  return r;
}

std::string human_bytes(int64_t b) {
  if (b >= (int64_t{1} << 20)) return fmt::format("{:.2f} MiB", static_cast<double>(b) / (1 << 20));
  return fmt::format("{:.1f} KiB", static_cast<double>(b) / 1024);
}

}  // namespace

int run_quantize(const config::Config& cfg) {
  Runtime rt = setup_runtime(cfg);
  if (rt.comm->size() > 1)
    fail_usage_hint("dsk quantize runs in one process", "run it without dsk launch / srun (it is not data parallel)");
  auto tok = load_tokenizer_for(cfg);
  models::LoadedModel lm = load_model_for(cfg, rt);
  if (models::is_quantized(lm.model))
    fail_usage_hint(fmt::format("model '{}' is already quantized", cfg.get_string("model.path")),
                    "quantize the full-precision model (the one this was made from)");
  models::convert_to_half_rope(lm);  // llama2.c models: q/k rows as a Hugging Face directory holds them

  models::QuantConfig qc;
  qc.scheme.bits = static_cast<int>(cfg.get_int("quant.bits"));
  qc.scheme.group_size = cfg.get_int("quant.group_size");
  qc.scheme.symmetric = cfg.get_bool("quant.symmetric");
  qc.method = cfg.get_string("quant.method");
  qc.act = quant::act_mode_from(cfg.get_string("quant.activations"));
  qc.act_order = cfg.get_bool("quant.act_order");
  qc.damp = cfg.get_float("quant.damp");
  quant::check_scheme(qc.scheme);
  if (qc.act != quant::ActMode::None && qc.scheme.bits != 8)
    fail_usage_hint(fmt::format("quant.activations: {} needs 8-bit weights (W8A8), got quant.bits {}",
                                quant::act_mode_name(qc.act), qc.scheme.bits),
                    "set quant.bits=8, or quant.activations=none for weight-only quantization");
  if (!(qc.damp > 0)) fail_usage_hint("quant.damp must be > 0", "set quant.damp=0.01 (the GPTQ default)");
  if (qc.act_order && qc.method != "gptq")
    fail_usage_hint("quant.act_order needs quant.method gptq", "set quant.method=gptq or quant.act_order=false");
  quant::GptqOptions gopt;
  gopt.damp = qc.damp;
  gopt.act_order = qc.act_order;
  gopt.block_size = cfg.get_int("quant.block_size");
  if (gopt.block_size < 1) fail_usage_hint("quant.block_size must be >= 1", "set quant.block_size=128");
  const int64_t calib_samples = cfg.get_int("quant.calib_samples");
  if (calib_samples < 1) fail_usage_hint("quant.calib_samples must be >= 1", "set quant.calib_samples=128");
  const int seq_len = static_cast<int>(cfg.get_int("data.seq_len"));
  if (seq_len < 1 || seq_len > lm.config.max_position_embeddings)
    fail_usage_hint(fmt::format("data.seq_len {} is outside 1..{} (the model's max_position_embeddings)", seq_len,
                                lm.config.max_position_embeddings),
                    fmt::format("set data.seq_len to at most {}", lm.config.max_position_embeddings));
  const int batch_size = static_cast<int>(cfg.get_int("batch_size"));
  if (batch_size < 1) fail_usage_hint("batch_size must be >= 1", "set batch_size=8");
  const auto include = cfg.get_list("quant.include"), exclude = cfg.get_list("quant.exclude");
  auto selected = models::select_linear_layers(lm.model, include, exclude);
  if (selected.empty())
    fail_usage_hint("quant.include / quant.exclude select no linear layer",
                    "include e.g. [\"*\"] (every linear layer; embeddings are never quantized)");
  const bool sensitivity_only = cfg.get_bool("quant.sensitivity_only");

  at::Tensor calib = calibration_inputs(cfg, *tok, calib_samples, seq_len).to(rt.device);
  data::Windows eval_windows;
  if (cfg.has("data.eval.path")) {
    data::DataOptions opt;
    opt.seq_len = seq_len;
    opt.stride = static_cast<int>(cfg.get_int("data.stride"));
    eval_windows = data::prepare_eval_data(data_spec_from(cfg, "data.eval"), opt, *tok);
  } else {
    log::warn("no data.eval.path: the report has no end-to-end NLL / KL; set data.eval.path to measure them");
  }

  const stdfs::path out = cfg.get_string("output_dir");
  prepare_output_dir(out, "false");
  save_resolved_config(out, cfg);
  log_resolved_config(cfg);

  // The original model stays for the end-to-end comparison.
  models::LoadedModel original = load_model_for(cfg, rt);
  models::convert_to_half_rope(original);

  int64_t bytes_before = 0;
  for (auto& p : lm.model->parameters()) bytes_before += param_bytes(p);
  log::info("quantize: {} by {}{}, activations {}, {} of {} linear layers, {} calibration windows of {} tokens",
            quant::describe(qc.scheme), qc.method, qc.act_order ? " (act-order)" : "", quant::act_mode_name(qc.act),
            selected.size(), models::linear_layers(lm.model).size(), calib_samples, seq_len);
  // ---- layer-wise calibration and quantization
  at::NoGradGuard no_grad;
  lm.model->eval();
  const int64_t T = seq_len;
  models::PositionContext pos = lm.model->position_context(0, T);
  std::vector<at::Tensor> hidden;
  for (int64_t b = 0; b < calib_samples; b += batch_size)
    hidden.push_back(at::embedding(lm.model->model->embed_tokens->weight, calib.narrow(0, b, std::min<int64_t>(batch_size, calib_samples - b))));

  std::vector<LayerReport> reports;
  auto quantize_group = [&](const std::vector<std::pair<std::string, models::LoraLinearImpl*>>& group,
                            const std::function<void()>& run) {
    std::vector<Observed> obs(group.size());
    for (size_t i = 0; i < group.size(); ++i) {
      auto* lin = group[i].second;
      const int64_t K = lin->in_features();
      obs[i].H = at::zeros({K, K}, at::TensorOptions().dtype(at::kDouble).device(rt.device));
      Observed* o = &obs[i];
      lin->input_observer = [o, K](const at::Tensor& x) {
        at::Tensor X = x.reshape({-1, K}).to(at::kFloat);
        o->H.add_(X.t().mm(X).to(at::kDouble));
        o->amax = std::max(o->amax, X.abs().max().item<double>());
        o->rows += X.size(0);
      };
    }
    run();
    for (size_t i = 0; i < group.size(); ++i) {
      auto& [name, lin] = group[i];
      lin->input_observer = nullptr;
      const double t0 = now_s();
      at::Tensor W = lin->weight.detach();
      quant::QWeight qw = qc.method == "gptq" ? quant::quantize_gptq(W, obs[i].H, qc.scheme, gopt)
                                              : quant::quantize_rtn(W, qc.scheme);
      LayerReport r;
      r.name = name;
      r.out_features = lin->out_features();
      r.in_features = lin->in_features();
      r.weight_error = quant::weight_error(W, qw);
      r.output_error = quant::output_error(W, qw, obs[i].H);
      r.bytes_before = param_bytes(W);
      r.bytes_after = quant::stored_bytes(qw);
      float input_scale = 0.0f;
      if (qc.act == quant::ActMode::Static) {
        // one float16-exact step per layer, as the weight scales
        input_scale = at::tensor({std::max(obs[i].amax, 1e-12) / 127.0}).to(at::kHalf).to(at::kFloat).item<float>();
        r.bytes_after += 4;
      }
      lin->set_quantized(quant::make_qlinear(std::move(qw), qc.act, input_scale));
      r.seconds = now_s() - t0;
      reports.push_back(r);
    }
  };

  for (size_t li = 0; li < lm.model->model->layers.size(); ++li) {
    auto layer = lm.model->model->layers[li];
    const std::string prefix = fmt::format("model.layers.{}.", li);
    std::vector<std::pair<std::string, models::LoraLinearImpl*>> group;
    for (auto& s : selected)
      if (s.first.rfind(prefix, 0) == 0) group.push_back(s);
    quantize_group(group, [&] {
      for (auto& h : hidden) layer->forward(h, pos, nullptr, static_cast<int64_t>(li));
    });
    for (auto& h : hidden) h = layer->forward(h, pos, nullptr, static_cast<int64_t>(li));
    log::debug("quantize: layer {} done", li);
  }
  std::vector<std::pair<std::string, models::LoraLinearImpl*>> head;
  for (auto& s : selected)
    if (s.first.rfind("model.layers.", 0) != 0) head.push_back(s);
  if (!head.empty())
    quantize_group(head, [&] {
      for (auto& h : hidden) lm.model->logits(lm.model->model->norm->forward(h));
    });
  hidden.clear();

  int64_t bytes_after = 0;
  for (auto& [name, t] : models::state_tensors(lm.model)) bytes_after += param_bytes(t);

  // What this build can and cannot accelerate: say it rather than let a user assume it.
  const double ratio = static_cast<double>(bytes_before) / std::max<int64_t>(bytes_after, 1);
  if (rt.device.is_cpu())
    log::info("speed on CPU: decoding multiplies straight from the codes (about 2x fp32 tokens/s at batch 1); "
              "prefill/eval dequantizes each weight per call (about fp32 speed); weights {:.2f}x smaller{}",
              ratio,
              qc.act == quant::ActMode::None
                  ? ""
                  : "; int8 activations are simulated (no integer GEMM in this build): W8A8 brings no extra speed");
  else
    log::info("speed on {}: no quantized kernel for this device in this build; layers dequantize their weight per "
              "call (fp16/fp32 speed), weights {:.2f}x smaller",
              rt.device.str(), ratio);

  // ---- end to end
  EndToEnd e2e;
  if (eval_windows.count() > 0) {
    e2e = compare_models(original.model, lm.model, eval_windows, batch_size, cfg.get_int("eval.max_batches"), rt.device);
    log::info("eval: nll {:.5f} -> {:.5f} (delta {:+.5f} nats/token), KL(original || quantized) {:.5f} over {} tokens",
              e2e.nll_fp, e2e.nll_q, e2e.nll_q - e2e.nll_fp, e2e.kl, e2e.tokens);
  }

  // ---- report
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (const auto& r : reports)
    layers.push_back({{"name", r.name},
                      {"shape", {r.out_features, r.in_features}},
                      {"weight_rel_error", r.weight_error},
                      {"output_rel_error", r.output_error},
                      {"bytes_before", r.bytes_before},
                      {"bytes_after", r.bytes_after},
                      {"seconds", r.seconds}});
  nlohmann::ordered_json e2e_json = nullptr;
  if (e2e.tokens > 0)
    e2e_json = {{"data", cfg.get_string("data.eval.path")}, {"tokens", e2e.tokens},        {"nll_original", e2e.nll_fp},
                {"nll_quantized", e2e.nll_q},               {"delta_nll", e2e.nll_q - e2e.nll_fp}, {"kl", e2e.kl}};
  nlohmann::ordered_json report = {
      {"scheme", quant::describe(qc.scheme)},
      {"bits", qc.scheme.bits},
      {"group_size", qc.scheme.group_size},
      {"symmetric", qc.scheme.symmetric},
      {"method", qc.method},
      {"act_order", qc.act_order},
      {"activations", quant::act_mode_name(qc.act)},
      {"calibration", {{"data", cfg.get_string("data.calib.path")}, {"samples", calib_samples}, {"seq_len", seq_len}}},
      {"model", cfg.get_string("model.path")},
      {"size", {{"bytes_before", bytes_before}, {"bytes_after", bytes_after},
                {"ratio", bytes_after > 0 ? static_cast<double>(bytes_before) / static_cast<double>(bytes_after) : 0.0}}},
      {"end_to_end", e2e_json},
      {"layers", layers},
      {"dsk_version", DSK_VERSION},
      {"config_hash", cfg.hash()}};
  fs::write_file_atomic(out / "quant_report.json", report.dump(2) + "\n");

  std::fprintf(stderr, "\n%-42s %11s %10s %10s %10s\n", "layer", "shape", "weight err", "output err", "size");
  for (const auto& r : reports)
    std::fprintf(stderr, "%-42s %11s %10.5f %10.5f %10s\n", r.name.c_str(),
                 fmt::format("{}x{}", r.out_features, r.in_features).c_str(), r.weight_error, r.output_error,
                 human_bytes(r.bytes_after).c_str());
  std::fprintf(stderr, "model size %s -> %s (%.2fx smaller)\n\n", human_bytes(bytes_before).c_str(),
               human_bytes(bytes_after).c_str(), static_cast<double>(bytes_before) / std::max<int64_t>(bytes_after, 1));

  // ---- model
  std::string model_dir;
  if (!sensitivity_only) {
    int64_t wraps = 0;
    for (auto& [name, lin] : selected) wraps += lin->quantized()->weight.zeros.eq(0).sum().item<int64_t>();
    if (wraps > 0)
      log::warn("{} zero points are 0: GPTQ's v1 layout stores them as 2^bits - 1, which dsk reads back exactly but "
                "AutoGPTQ-style loaders read as 2^bits; use quant.symmetric=true for checkpoints other tools load",
                wraps);
    std::vector<std::string> names;
    for (auto& r : reports) names.push_back(r.name);
    lm.model->set_quantization_config(models::quantization_config_json(qc, names));
    fs::StagingDir dir(out / "model");
    models::save_model_hf(dir.path().string(), lm.model, artifact_metadata(cfg, "quantize"));
    copy_tokenizer(cfg, dir.path());
    dir.commit();
    model_dir = (out / "model").string();
    log::info("saved {} ({} quantized layers)", model_dir, reports.size());
  }
  nlohmann::ordered_json summary = {{"scheme", quant::describe(qc.scheme)},
                                    {"method", qc.method},
                                    {"bytes_before", bytes_before},
                                    {"bytes_after", bytes_after},
                                    {"report", (out / "quant_report.json").string()},
                                    {"model", model_dir.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(model_dir)}};
  if (e2e.tokens > 0) summary["delta_nll"] = e2e.nll_q - e2e.nll_fp, summary["kl"] = e2e.kl;
  std::printf("%s\n", summary.dump().c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace dsk::stages
