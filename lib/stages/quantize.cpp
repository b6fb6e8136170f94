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
#include "stages/calibrate.h"
#include "stages/common.h"
#include "stages/evaluate.h"
#include "stages/run_dir.h"
#include "stages/stages.h"

namespace dsk::stages {

namespace {

namespace stdfs = std::filesystem;

int64_t param_bytes(const at::Tensor& t) { return t.numel() * static_cast<int64_t>(t.element_size()); }

struct LayerReport {
  std::string name;
  int64_t out_features = 0, in_features = 0;
  double weight_error = 0, output_error = 0;
  int64_t bytes_before = 0, bytes_after = 0;
  double seconds = 0;
};

std::string human_bytes(int64_t b) {
  if (b >= (int64_t{1} << 20)) return fmt::format("{:.2f} MiB", static_cast<double>(b) / (1 << 20));
  return fmt::format("{:.1f} KiB", static_cast<double>(b) / 1024);
}

}  // namespace

int run_quantize(const config::Config& cfg) {
  CompressionStart start = start_compression(cfg, "quantize", "is already quantized",
                                             "quantize the full-precision model (the one this was made from)");
  Runtime& rt = start.rt;
  auto& tok = start.tok;
  models::LoadedModel& lm = start.lm;

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

  at::Tensor calib = calibration_inputs(cfg, *tok, calib_samples, seq_len, "quant.calib_samples").to(rt.device);
  data::Windows eval_windows = eval_windows_for(cfg, *tok);
  if (!cfg.has("data.eval.path")) {
    log::warn("no data.eval.path: the report has no end-to-end NLL / KL; set data.eval.path to measure them");
  }

  const stdfs::path out = cfg.get_string("output_dir");
  prepare_output_dir(out, "false");
  save_resolved_config(out, cfg);
  log_resolved_config(cfg);

  // The original model stays for the end-to-end comparison.
  models::LoadedModel original = load_original(cfg, rt);

  int64_t bytes_before = 0;
  for (auto& p : lm.model->parameters()) bytes_before += param_bytes(p);
  log::info("quantize: {} by {}{}, activations {}, {} of {} linear layers, {} calibration windows of {} tokens",
            quant::describe(qc.scheme), qc.method, qc.act_order ? " (act-order)" : "", quant::act_mode_name(qc.act),
            selected.size(), models::linear_layers(lm.model).size(), calib_samples, seq_len);
  // ---- layer-wise calibration and quantization
  std::vector<LayerReport> reports;
  layerwise_pass(lm.model, calib, batch_size, selected, /*with_hessian=*/true,
                 [&](const LinearList& group, std::vector<InputStats>& stats) {
                   for (size_t i = 0; i < group.size(); ++i) {
                     auto& [name, lin] = group[i];
                     const double t0 = now_s();
                     at::Tensor W = lin->weight.detach();
                     quant::QWeight qw = qc.method == "gptq" ? quant::quantize_gptq(W, stats[i].H, qc.scheme, gopt)
                                                             : quant::quantize_rtn(W, qc.scheme);
                     LayerReport r;
                     r.name = name;
                     r.out_features = lin->out_features();
                     r.in_features = lin->in_features();
                     r.weight_error = quant::weight_error(W, qw);
                     r.output_error = quant::output_error(W, qw, stats[i].H);
                     r.bytes_before = param_bytes(W);
                     r.bytes_after = quant::stored_bytes(qw);
                     float input_scale = 0.0f;
                     if (qc.act == quant::ActMode::Static) {
                       // one float16-exact step per layer, as the weight scales
                       input_scale = at::tensor({std::max(stats[i].amax, 1e-12) / 127.0})
                                         .to(at::kHalf)
                                         .to(at::kFloat)
                                         .item<float>();
                       r.bytes_after += 4;
                     }
                     lin->set_quantized(quant::make_qlinear(std::move(qw), qc.act, input_scale));
                     r.seconds = now_s() - t0;
                     reports.push_back(r);
                   }
                 });

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
  Comparison e2e;
  if (eval_windows.count() > 0) {
    e2e = compare_models(original.model, lm.model, eval_windows, batch_size, cfg.get_int("eval.max_batches"), rt.device);
    log::info("eval: nll {:.5f} -> {:.5f} (delta {:+.5f} nats/token), KL(original || quantized) {:.5f} over {} tokens",
              e2e.nll_reference, e2e.nll_candidate, e2e.nll_candidate - e2e.nll_reference, e2e.kl, e2e.tokens);
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
    e2e_json = {{"data", cfg.get_string("data.eval.path")}, {"tokens", e2e.tokens},        {"nll_original", e2e.nll_reference},
                {"nll_quantized", e2e.nll_candidate},               {"delta_nll", e2e.nll_candidate - e2e.nll_reference}, {"kl", e2e.kl}};
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
  if (e2e.tokens > 0) summary["delta_nll"] = e2e.nll_candidate - e2e.nll_reference, summary["kl"] = e2e.kl;
  std::printf("%s\n", summary.dump().c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace dsk::stages
