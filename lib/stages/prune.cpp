// dsk prune: unstructured (magnitude layer-wise or global, Wanda, SparseGPT), semi-structured N:M,
// and structured pruning (MLP neurons, KV groups of attention heads, whole decoder layers) with a
// report (prune_report.json + a table on stderr) and the pruned model/ (docs/pruning.md).
//
// Unstructured/N:M: the selected linear layers get exact zeros; Wanda and SparseGPT run layer
// by layer on calibration data (each layer calibrated on the outputs of the already-pruned layers
// before it, as both papers do). model/ is the same shape with zeros and config.json records them
// in "dsk_sparsity", which dsk finetune reads to keep them zero.
//
// Structured: units are ranked per layer by an importance (magnitude of their weights, their
// activation energy on calibration data, or first-order Taylor |sum w * dL/dw| on calibration
// data) and the same number is removed from every layer, so model/ is a physically smaller
// standard Llama directory (models/surgery.h) that transformers loads.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"
#include "models/loader.h"
#include "models/quantized.h"
#include "models/surgery.h"
#include "prune/sparsify.h"
#include "stages/calibrate.h"
#include "stages/common.h"
#include "stages/evaluate.h"
#include "stages/run_dir.h"
#include "stages/stages.h"
#include "train/loss.h"

namespace dsk::stages {
namespace {

namespace stdfs = std::filesystem;

bool is_structured(const std::string& method) {
  return method == "mlp_neurons" || method == "attention_heads" || method == "layers";
}

int64_t parameter_total(models::Llama& m) {
  int64_t n = 0;
  for (auto& [name, t] : models::state_tensors(m)) n += t.numel();
  return n;
}

int64_t nonzero_total(models::Llama& m) {
  int64_t n = 0;
  for (auto& [name, t] : models::state_tensors(m)) n += t.ne(0).sum().item<int64_t>();
  return n;
}

// Forward tokens/s of a model over the given inputs (best of `repeats` passes after a warm-up).
double forward_tokens_per_s(models::Llama& m, const at::Tensor& inputs, int batch_size, int repeats = 3) {
  at::NoGradGuard no_grad;
  m->eval();
  const int64_t n = inputs.size(0);
  m->forward(inputs.narrow(0, 0, std::min<int64_t>(batch_size, n)));  // warm-up
  double best = 1e300;
  for (int r = 0; r < repeats; ++r) {
    const double t0 = now_s();
    for (int64_t b = 0; b < n; b += batch_size) m->forward(inputs.narrow(0, b, std::min<int64_t>(batch_size, n - b)));
    best = std::min(best, now_s() - t0);
  }
  return static_cast<double>(inputs.numel()) / std::max(best, 1e-9);
}

// Weights of the query heads / kv head of KV group g.
struct GroupSlices {
  int64_t q0, q1, kv0, kv1;  // row ranges of q_proj and k/v_proj (= column range of o_proj for q)
};
GroupSlices group_slices(const models::LlamaConfig& c, int64_t g) {
  const int64_t D = c.head_dim(), G = c.num_attention_heads / c.num_key_value_heads;
  return {g * G * D, (g + 1) * G * D, g * D, (g + 1) * D};
}

// sum(w * grad) over a tensor slice (grad may be undefined: 0)
double wg(const at::Tensor& w, const at::Tensor& g) {
  if (!g.defined()) return 0.0;
  return (w.detach().to(at::kDouble) * g.to(at::kDouble)).sum().item<double>();
}

}  // namespace

int run_prune(const config::Config& cfg) {
  CompressionStart start = start_compression(cfg, "prune", "is quantized: dsk prune works on full-precision weights",
                                             "prune the full-precision model, then quantize the pruned one");
  Runtime& rt = start.rt;
  auto& tok = start.tok;
  models::LoadedModel& lm = start.lm;

  // ---- settings (every error before output_dir is touched)
  const std::string method = cfg.get_string("prune.method");
  const bool structured = is_structured(method);
  const double sparsity = cfg.get_float("prune.sparsity");
  prune::check_sparsity(sparsity, "prune.sparsity");
  const prune::Pattern pattern = prune::parse_pattern(cfg.get_string("prune.pattern"));
  const std::string scope = cfg.get_string("prune.scope");
  const std::string importance = cfg.get_string("prune.importance");
  if (structured && pattern.active())
    fail_usage_hint(fmt::format("prune.pattern {} applies to unstructured methods, not prune.method {}",
                                prune::describe(pattern), method),
                    "use prune.method magnitude, wanda or sparsegpt with a pattern");
  if (pattern.active() && cfg.is_set("prune.sparsity") && std::abs(sparsity - pattern.sparsity()) > 1e-9)
    fail_usage_hint(fmt::format("prune.sparsity {} contradicts prune.pattern {} (which prunes {:g}%)", sparsity,
                                prune::describe(pattern), 100.0 * pattern.sparsity()),
                    "leave prune.sparsity unset when a pattern is given");
  const double target = pattern.active() ? pattern.sparsity() : sparsity;
  if (scope == "global" && (method != "magnitude" || pattern.active()))
    fail_usage_hint(fmt::format("prune.scope global ranks magnitudes across layers; it does not apply to {}{}", method,
                                pattern.active() ? " with an N:M pattern" : ""),
                    "use prune.scope layer");
  if (method == "layers" && importance == "magnitude")
    fail_usage_hint("prune.importance magnitude does not rank whole layers (their weight norms say little about "
                    "what removing them costs)",
                    "use prune.importance activation (block influence) or taylor");
  if (!structured && !cfg.is_set("prune.sparsity") && !pattern.active())
    log::info("prune.sparsity defaults to {}", sparsity);
  const int seq_len = static_cast<int>(cfg.get_int("data.seq_len"));
  if (seq_len < 2 || seq_len > lm.config.max_position_embeddings)
    fail_usage_hint(fmt::format("data.seq_len {} is outside 2..{} (the model's max_position_embeddings)", seq_len,
                                lm.config.max_position_embeddings),
                    fmt::format("set data.seq_len to at most {}", lm.config.max_position_embeddings));
  const int batch_size = static_cast<int>(cfg.get_int("batch_size"));
  if (batch_size < 1) fail_usage_hint("batch_size must be >= 1", "set batch_size=8");

  const models::LlamaConfig& mc = lm.model->config();
  LinearList selected;
  if (!structured) {
    selected = models::select_linear_layers(lm.model, cfg.get_list("prune.include"), cfg.get_list("prune.exclude"));
    if (selected.empty())
      fail_usage_hint("prune.include / prune.exclude select no linear layer", "include e.g. [\"*\"]");
    for (auto& [name, lin] : selected) prune::check_pattern(pattern, lin->in_features(), name);
  }
  // Units removed from every layer (structured).
  int64_t units = 0, remove = 0;
  if (structured) {
    units = method == "mlp_neurons" ? mc.intermediate_size
            : method == "attention_heads" ? mc.num_key_value_heads
                                          : mc.num_hidden_layers;
    remove = prune::prune_count(sparsity, units);
    const char* what = method == "mlp_neurons" ? "MLP neurons" : method == "attention_heads" ? "KV groups" : "layers";
    if (remove == 0)
      fail_usage_hint(fmt::format("prune.sparsity {} removes none of the {} {}{}", sparsity, units, what,
                                  method == "layers" ? "" : " per layer"),
                      fmt::format("raise prune.sparsity to at least {:.4g}", 1.0 / static_cast<double>(units)));
    if (remove >= units)
      fail_usage_hint(fmt::format("prune.sparsity {} would remove all {} {}", sparsity, units, what),
                      "lower prune.sparsity");
  }
  const bool needs_calib = method == "wanda" || method == "sparsegpt" || (structured && importance != "magnitude");
  const int64_t calib_samples = cfg.get_int("prune.calib_samples");
  if (calib_samples < 1) fail_usage_hint("prune.calib_samples must be >= 1", "set prune.calib_samples=128");
  at::Tensor calib;
  if (needs_calib) {
    if (!cfg.has("data.calib.path"))
      fail_usage_hint(fmt::format("prune.method {}{} needs calibration data", method,
                                  structured ? " with prune.importance " + importance : ""),
                      "set data.calib.path to text like the model's training data");
    calib = calibration_inputs(cfg, *tok, calib_samples, seq_len, "prune.calib_samples").to(rt.device);
  }
  prune::SparseGptOptions gopt;
  gopt.damp = cfg.get_float("prune.damp");
  gopt.block_size = cfg.get_int("prune.block_size");
  if (!(gopt.damp > 0)) fail_usage_hint("prune.damp must be > 0", "set prune.damp=0.01 (the SparseGPT default)");
  if (gopt.block_size < 1) fail_usage_hint("prune.block_size must be >= 1", "set prune.block_size=128");
  data::Windows eval_windows = eval_windows_for(cfg, *tok);
  if (!cfg.has("data.eval.path"))
    log::warn("no data.eval.path: the report has no NLL before/after; set data.eval.path to measure it");

  const stdfs::path out = cfg.get_string("output_dir");
  prepare_output_dir(out, "false");
  save_resolved_config(out, cfg);
  log_resolved_config(cfg);

  models::LoadedModel original = load_original(cfg, rt);
  const int64_t params_before = parameter_total(lm.model);
  const double t_start = now_s();
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  models::Llama pruned{nullptr};

  if (!structured) {
    // ---- unstructured / N:M
    struct Row {
      std::string name;
      int64_t out = 0, in = 0, nonzero_before = 0, nonzero_after = 0;
      double sparsity = 0;
      bool follows_pattern = true;
      std::optional<double> output_error;
    };
    std::vector<Row> rows;
    auto record = [&](const std::string& name, models::LoraLinearImpl* lin, int64_t nz_before,
                      std::optional<double> err) {
      Row r;
      r.name = name;
      r.out = lin->out_features();
      r.in = lin->in_features();
      r.nonzero_before = nz_before;
      r.nonzero_after = lin->weight.ne(0).sum().item<int64_t>();
      r.sparsity = prune::zero_fraction(lin->weight);
      r.follows_pattern = prune::follows_pattern(lin->weight, pattern);
      r.output_error = err;
      rows.push_back(r);
    };
    at::NoGradGuard no_grad;
    if (method == "magnitude" && scope == "global") {
      std::vector<at::Tensor> Ws;
      for (auto& [name, lin] : selected) Ws.push_back(lin->weight.detach());
      auto masks = prune::global_magnitude_masks(Ws, target);
      for (size_t i = 0; i < selected.size(); ++i) {
        auto* lin = selected[i].second;
        const int64_t nz = lin->weight.ne(0).sum().item<int64_t>();
        lin->weight.mul_(masks[i]);
        record(selected[i].first, lin, nz, std::nullopt);
      }
    } else if (method == "magnitude") {
      for (auto& [name, lin] : selected) {
        const int64_t nz = lin->weight.ne(0).sum().item<int64_t>();
        lin->weight.mul_(prune::magnitude_mask(lin->weight.detach(), target, pattern));
        record(name, lin, nz, std::nullopt);
      }
    } else {
      const bool sgpt = method == "sparsegpt";
      layerwise_pass(lm.model, calib, batch_size, selected, /*with_hessian=*/sgpt,
                     [&](const LinearList& group, std::vector<InputStats>& stats) {
                       for (size_t i = 0; i < group.size(); ++i) {
                         auto& [name, lin] = group[i];
                         at::Tensor W = lin->weight.detach();
                         const int64_t nz = W.ne(0).sum().item<int64_t>();
                         try {
                           if (sgpt) {
                             at::Tensor before = W.clone();
                             prune::Pruned p = prune::sparsegpt_prune(W, stats[i].H, target, pattern, gopt);
                             lin->weight.copy_(p.weight);
                             record(name, lin, nz, prune::output_error(before, p.weight, stats[i].H));
                           } else {
                             lin->weight.mul_(prune::wanda_mask(W, stats[i].x_sq, target, pattern));
                             record(name, lin, nz, std::nullopt);
                           }
                         } catch (const Error& e) {
                           throw e.context("pruning " + name);
                         }
                       }
                     });
    }
    int64_t total = 0, zeros = 0;
    std::vector<std::string> names;
    for (const auto& r : rows) {
      total += r.out * r.in;
      zeros += r.out * r.in - r.nonzero_after;
      names.push_back(r.name);
      nlohmann::ordered_json j = {{"name", r.name},
                                  {"shape", {r.out, r.in}},
                                  {"sparsity", r.sparsity},
                                  {"params", r.out * r.in},
                                  {"nonzero_before", r.nonzero_before},
                                  {"nonzero_after", r.nonzero_after}};
      if (pattern.active()) j["follows_pattern"] = r.follows_pattern;
      j["output_rel_error"] = r.output_error ? nlohmann::ordered_json(*r.output_error) : nlohmann::ordered_json(nullptr);
      layers.push_back(j);
    }
    nlohmann::ordered_json rec = {{"method", method},
                                  {"scope", scope},
                                  {"sparsity", static_cast<double>(zeros) / static_cast<double>(std::max<int64_t>(total, 1))},
                                  {"pattern", pattern.active() ? prune::describe(pattern) : ""},
                                  {"layers", names}};
    lm.model->set_sparsity_config(rec.dump());
    pruned = lm.model;
    std::fprintf(stderr, "\n%-42s %11s %9s %12s %10s\n", "layer", "shape", "sparsity", "nonzero", "output err");
    for (const auto& r : rows)
      std::fprintf(stderr, "%-42s %11s %8.2f%% %12lld %10s\n", r.name.c_str(), fmt::format("{}x{}", r.out, r.in).c_str(),
                   100.0 * r.sparsity, static_cast<long long>(r.nonzero_after),
                   r.output_error ? fmt::format("{:.5f}", *r.output_error).c_str() : "-");
  } else {
    // ---- structured: importance per unit, the same count removed from every layer
    const int64_t L = mc.num_hidden_layers;
    std::vector<at::Tensor> scores;  // per layer [units], or one [L] for method layers
    if (importance == "magnitude") {
      scores = method == "mlp_neurons" ? models::mlp_neuron_magnitude(lm.model) : models::kv_group_magnitude(lm.model);
    } else if (importance == "activation") {
      at::NoGradGuard no_grad;
      lm.model->eval();
      if (method == "layers") {
        // Block influence (ShortGPT): 1 - cos(input, output) of each layer, averaged over tokens.
        at::Tensor bi = at::zeros({L}, at::kDouble);
        int64_t tokens = 0;
        for (int64_t b = 0; b < calib.size(0); b += batch_size) {
          std::vector<at::Tensor> outs;
          lm.model->hidden_states(calib.narrow(0, b, std::min<int64_t>(batch_size, calib.size(0) - b)), nullptr, &outs);
          for (int64_t l = 0; l < L; ++l) {
            at::Tensor x = outs[static_cast<size_t>(l)].reshape({-1, mc.hidden_size}).to(at::kDouble);
            at::Tensor y = outs[static_cast<size_t>(l + 1)].reshape({-1, mc.hidden_size}).to(at::kDouble);
            bi[l] += (1.0 - at::cosine_similarity(x, y, 1, 1e-12)).sum().cpu();
          }
          tokens += outs[0].size(0) * outs[0].size(1);
        }
        scores.push_back(bi / static_cast<double>(tokens));
      } else {
        // The energy each unit adds to the residual stream on the calibration tokens:
        // neurons sum_t (x_j w_down[:, j])^2 = x_sq_j |w_down[:, j]|^2; groups tr(W_g H_g W_g^T)
        // over the o_proj input columns of the group's heads.
        LinearList obs_layers;
        for (auto& layer : lm.model->model->layers)
          obs_layers.emplace_back("", method == "mlp_neurons" ? layer->mlp->down_proj.get() : layer->self_attn->o_proj.get());
        InputObservers obs(obs_layers, /*with_hessian=*/method == "attention_heads");
        for (int64_t b = 0; b < calib.size(0); b += batch_size)
          lm.model->forward(calib.narrow(0, b, std::min<int64_t>(batch_size, calib.size(0) - b)));
        for (int64_t l = 0; l < L; ++l) {
          const InputStats& st = obs.stats()[static_cast<size_t>(l)];
          at::Tensor Wo = obs_layers[static_cast<size_t>(l)].second->weight.detach().to(at::kDouble);  // [C, K]
          if (method == "mlp_neurons") {
            scores.push_back((st.x_sq * Wo.pow(2).sum(0)).cpu());
          } else {
            at::Tensor s = at::zeros({mc.num_key_value_heads}, at::kDouble);
            for (int64_t g = 0; g < mc.num_key_value_heads; ++g) {
              GroupSlices gs = group_slices(mc, g);
              at::Tensor Wg = Wo.narrow(1, gs.q0, gs.q1 - gs.q0);
              at::Tensor Hg = st.H.narrow(0, gs.q0, gs.q1 - gs.q0).narrow(1, gs.q0, gs.q1 - gs.q0);
              s[g] = at::trace(Wg.mm(Hg).mm(Wg.t())).cpu();
            }
            scores.push_back(s);
          }
        }
      }
    } else {  // taylor: |sum over the unit's weights of w * dL/dw|, gradients summed over the calibration batches
      lm.model->eval();
      for (auto& p : lm.model->parameters()) p.set_requires_grad(true), p.mutable_grad().reset();
      for (int64_t b = 0; b < calib.size(0); b += batch_size) {
        at::Tensor x = calib.narrow(0, b, std::min<int64_t>(batch_size, calib.size(0) - b));
        at::Tensor logits = lm.model->forward(x.narrow(1, 0, seq_len - 1));
        train::cross_entropy(logits, x.narrow(1, 1, seq_len - 1)).loss.backward();
      }
      at::NoGradGuard no_grad;
      if (method == "layers") {
        at::Tensor s = at::zeros({L}, at::kDouble);
        for (int64_t l = 0; l < L; ++l) {
          double sum = 0;
          for (auto& p : lm.model->model->layers[static_cast<size_t>(l)]->parameters()) sum += wg(p, p.grad());
          s[l] = std::abs(sum);
        }
        scores.push_back(s);
      } else {
        for (int64_t l = 0; l < L; ++l) {
          auto layer = lm.model->model->layers[static_cast<size_t>(l)];
          if (method == "mlp_neurons") {
            auto per_row = [](const at::Tensor& w) {
              return w.grad().defined() ? (w.detach().to(at::kDouble) * w.grad().to(at::kDouble)).sum(1)
                                        : at::zeros({w.size(0)}, at::kDouble);
            };
            const at::Tensor& wd = layer->mlp->down_proj->weight;
            at::Tensor down = wd.grad().defined() ? (wd.detach().to(at::kDouble) * wd.grad().to(at::kDouble)).sum(0)
                                                  : at::zeros({wd.size(1)}, at::kDouble);
            scores.push_back((per_row(layer->mlp->gate_proj->weight) + per_row(layer->mlp->up_proj->weight) + down)
                                 .abs()
                                 .cpu());
          } else {
            auto& at_ = layer->self_attn;
            at::Tensor s = at::zeros({mc.num_key_value_heads}, at::kDouble);
            for (int64_t g = 0; g < mc.num_key_value_heads; ++g) {
              GroupSlices gs = group_slices(mc, g);
              double sum = 0;
              auto rows = [&](models::LoraLinear& lin, int64_t r0, int64_t r1) {
                sum += wg(lin->weight.narrow(0, r0, r1 - r0),
                          lin->weight.grad().defined() ? lin->weight.grad().narrow(0, r0, r1 - r0) : at::Tensor());
                if (lin->bias.defined())
                  sum += wg(lin->bias.narrow(0, r0, r1 - r0),
                            lin->bias.grad().defined() ? lin->bias.grad().narrow(0, r0, r1 - r0) : at::Tensor());
              };
              rows(at_->q_proj, gs.q0, gs.q1);
              rows(at_->k_proj, gs.kv0, gs.kv1);
              rows(at_->v_proj, gs.kv0, gs.kv1);
              const at::Tensor& wo = at_->o_proj->weight;
              sum += wg(wo.narrow(1, gs.q0, gs.q1 - gs.q0),
                        wo.grad().defined() ? wo.grad().narrow(1, gs.q0, gs.q1 - gs.q0) : at::Tensor());
              s[g] = std::abs(sum);
            }
            scores.push_back(s);
          }
        }
      }
      for (auto& p : lm.model->parameters()) p.mutable_grad().reset();
    }

    models::StructuredPlan plan;
    if (method == "layers") {
      plan.layers_keep = models::keep_top(scores, units - remove)[0];
    } else if (method == "mlp_neurons") {
      plan.mlp_keep = models::keep_top(scores, units - remove);
    } else {
      plan.group_keep = models::keep_top(scores, units - remove);
    }
    {
      at::NoGradGuard no_grad;
      pruned = models::apply_structured_plan(lm.model, plan);
    }
    for (int64_t l = 0; l < L; ++l) {
      nlohmann::ordered_json j = {{"layer", l}};
      if (method == "layers") {
        const bool kept = std::count(plan.layers_keep.begin(), plan.layers_keep.end(), l) > 0;
        j["importance"] = scores[0][l].item<double>();
        j["kept"] = kept;
      } else {
        const auto& keep = method == "mlp_neurons" ? plan.mlp_keep[static_cast<size_t>(l)] : plan.group_keep[static_cast<size_t>(l)];
        std::vector<int64_t> removed;
        for (int64_t u = 0; u < units; ++u)
          if (!std::binary_search(keep.begin(), keep.end(), u)) removed.push_back(u);
        j["units_before"] = units;
        j["units_after"] = static_cast<int64_t>(keep.size());
        j["removed"] = removed;
      }
      layers.push_back(j);
    }
    const auto& nc = pruned->config();
    std::fprintf(stderr, "\nstructured pruning: %s by %s importance\n", method.c_str(), importance.c_str());
    std::fprintf(stderr, "  layers %lld -> %lld, intermediate_size %lld -> %lld, heads %lld/%lld -> %lld/%lld (head_dim %lld)\n",
                 static_cast<long long>(mc.num_hidden_layers), static_cast<long long>(nc.num_hidden_layers),
                 static_cast<long long>(mc.intermediate_size), static_cast<long long>(nc.intermediate_size),
                 static_cast<long long>(mc.num_attention_heads), static_cast<long long>(mc.num_key_value_heads),
                 static_cast<long long>(nc.num_attention_heads), static_cast<long long>(nc.num_key_value_heads),
                 static_cast<long long>(nc.head_dim()));
  }
  const double prune_seconds = now_s() - t_start;
  const int64_t params_after = parameter_total(pruned);
  const int64_t nonzero_after = nonzero_total(pruned);

  // ---- speed: measured for structured pruning; said plainly for the rest
  nlohmann::ordered_json speed;
  if (structured) {
    at::Tensor inputs;
    if (calib.defined()) {
      inputs = calib;
    } else if (eval_windows.count() > 0) {
      const int64_t rows = std::min<int64_t>(eval_windows.count(), 4 * batch_size);
      inputs = window_tensors(eval_windows.window(0), eval_windows.window_mask(0), rows, eval_windows.seq_len, rt.device).inputs;
    }
    if (inputs.defined()) {
      const double before = forward_tokens_per_s(original.model, inputs, batch_size);
      const double after = forward_tokens_per_s(pruned, inputs, batch_size);
      speed = {{"measured", true},
               {"device", rt.device.str()},
               {"tokens_per_s_before", before},
               {"tokens_per_s_after", after},
               {"speedup", after / before},
               {"note", fmt::format("forward over {} windows of {} tokens, batch {}, best of 3", inputs.size(0),
                                    inputs.size(1), batch_size)}};
      log::info("speed ({}): {:.0f} -> {:.0f} tokens/s ({:.2f}x)", rt.device.str(), before, after, after / before);
    } else {
      speed = {{"measured", false}, {"note", "no calibration or eval data to time the forward on"}};
    }
  } else {
    const std::string note =
        rt.device.is_cpu()
            ? "none on this device: LibTorch on CPU stores and multiplies pruned weights densely, so zeros save "
              "neither time nor memory (a compressed format or a sparse kernel would be needed)"
            : pattern.active() && pattern.n == 2 && pattern.m == 4
                  ? "none in this build: 2:4 weights can run on Ampere/Hopper sparse tensor cores through "
                    "cuSPARSELt (about 1.1-1.7x on large GEMMs), which dsk does not call yet"
                  : "none: unstructured zeros are multiplied densely on this device";
    speed = {{"measured", false}, {"device", rt.device.str()}, {"speedup", 1.0}, {"note", note}};
    log::info("speed: {}", note);
  }

  // ---- end to end
  Comparison e2e;
  if (eval_windows.count() > 0) {
    e2e = compare_models(original.model, pruned, eval_windows, batch_size, cfg.get_int("eval.max_batches"), rt.device);
    log::info("eval: nll {:.5f} -> {:.5f} (delta {:+.5f} nats/token), KL(original || pruned) {:.5f} over {} tokens",
              e2e.nll_reference, e2e.nll_candidate, e2e.nll_candidate - e2e.nll_reference, e2e.kl, e2e.tokens);
  }
  std::fprintf(stderr, "parameters %lld -> %lld (%lld nonzero, %.2f%% of the original)\n\n",
               static_cast<long long>(params_before), static_cast<long long>(params_after),
               static_cast<long long>(nonzero_after), 100.0 * nonzero_after / std::max<int64_t>(params_before, 1));

  nlohmann::ordered_json e2e_json = nullptr;
  if (e2e.tokens > 0)
    e2e_json = {{"data", cfg.get_string("data.eval.path")}, {"tokens", e2e.tokens},
                {"nll_before", e2e.nll_reference},          {"nll_after", e2e.nll_candidate},
                {"delta_nll", e2e.nll_candidate - e2e.nll_reference}, {"kl", e2e.kl}};
  nlohmann::ordered_json report = {
      {"method", method},
      {"kind", structured ? "structured" : pattern.active() ? "semi-structured" : "unstructured"},
      {"target_sparsity", structured ? sparsity : target},
      {"pattern", pattern.active() ? prune::describe(pattern) : ""},
      {"scope", structured ? "per-layer" : scope},
      {"importance", structured ? nlohmann::ordered_json(importance) : nlohmann::ordered_json(nullptr)},
      {"calibration", calib.defined() ? nlohmann::ordered_json{{"data", cfg.get_string("data.calib.path")},
                                                                {"samples", calib_samples},
                                                                {"seq_len", seq_len}}
                                      : nlohmann::ordered_json(nullptr)},
      {"model", cfg.get_string("model.path")},
      {"params", {{"before", params_before}, {"after", params_after}, {"nonzero_after", nonzero_after},
                  {"expected_after", models::parameter_count(pruned->config())}}},
      {"end_to_end", e2e_json},
      {"speed", speed},
      {"seconds", prune_seconds},
      {"layers", layers},
      {"dsk_version", DSK_VERSION},
      {"config_hash", cfg.hash()}};
  fs::write_file_atomic(out / "prune_report.json", report.dump(2) + "\n");

  // ---- model
  {
    fs::StagingDir dir(out / "model");
    models::save_model_hf(dir.path().string(), pruned, artifact_metadata(cfg, "prune"));
    copy_tokenizer(cfg, dir.path());
    dir.commit();
  }
  log::info("saved {} and {}", (out / "model").string(), (out / "prune_report.json").string());
  nlohmann::ordered_json summary = {{"stage", "prune"},
                                    {"method", method},
                                    {"params_before", params_before},
                                    {"params_after", params_after},
                                    {"nonzero_after", nonzero_after},
                                    {"report", (out / "prune_report.json").string()},
                                    {"model", (out / "model").string()}};
  if (e2e.tokens > 0)
    summary["nll_before"] = e2e.nll_reference, summary["nll_after"] = e2e.nll_candidate,
    summary["delta_nll"] = e2e.nll_candidate - e2e.nll_reference;
  std::printf("%s\n", summary.dump().c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace dsk::stages
