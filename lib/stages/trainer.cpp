// The training loop of finetune and distill: see stages/trainer.h.
#include <ATen/ATen.h>
#include <fnmatch.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "ckpt/safetensors.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"
#include "core/progress.h"
#include "core/signals.h"
#include "data/dataset.h"
#include "dist/ddp.h"
#include "models/lora.h"
#include "models/quantized.h"
#include "stages/common.h"
#include "stages/evaluate.h"
#include "stages/run_dir.h"
#include "stages/stages.h"
#include "stages/trainer.h"
#include "train/amp.h"
#include "train/clip.h"
#include "train/loss.h"
#include "train/metrics.h"
#include "train/optim.h"
#include "train/rng.h"
#include "train/schedule.h"
#include "train/tfevents.h"

namespace dsk::stages {
namespace {

// "0-3,7" -> {0,1,2,3,7}
std::set<int64_t> parse_layer_ranges(const std::string& text, int64_t n_layers) {
  std::set<int64_t> out;
  static const std::regex item(R"(\s*(\d+)\s*(?:-\s*(\d+))?\s*)");
  size_t start = 0;
  while (start < text.size()) {
    size_t comma = text.find(',', start);
    std::string part = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    std::smatch m;
    if (!std::regex_match(part, m, item))
      fail_usage_hint(fmt::format("freeze.layers: cannot parse '{}'", part), "write ranges like \"0-3,7\"");
    int64_t a = std::stoll(m[1].str()), b = m[2].matched ? std::stoll(m[2].str()) : a;
    if (a > b || b >= n_layers)
      fail_usage_hint(fmt::format("freeze.layers: '{}' is outside the model's layers 0-{}", part, n_layers - 1),
                      "use layer indices below num_hidden_layers");
    for (int64_t i = a; i <= b; ++i) out.insert(i);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// Applies freeze.layers / freeze.patterns / freeze.embeddings on top of the method's choice.
void apply_freezing(models::Llama& model, const config::Config& cfg) {
  auto layers = parse_layer_ranges(cfg.get_string("freeze.layers"), model->config().num_hidden_layers);
  auto patterns = cfg.get_list("freeze.patterns");
  bool embeddings = cfg.get_bool("freeze.embeddings");
  std::vector<int> pattern_hits(patterns.size(), 0);
  for (auto& p : model->named_parameters()) {
    const std::string& name = p.key();
    bool freeze = embeddings && name.find("embed_tokens") != std::string::npos;
    for (int64_t l : layers)
      if (name.rfind(fmt::format("model.layers.{}.", l), 0) == 0) freeze = true;
    for (size_t i = 0; i < patterns.size(); ++i)
      if (fnmatch(patterns[i].c_str(), name.c_str(), 0) == 0) freeze = true, ++pattern_hits[i];
    if (freeze) p.value().set_requires_grad(false);
  }
  for (size_t i = 0; i < patterns.size(); ++i)
    if (pattern_hits[i] == 0)
      fail_usage_hint(fmt::format("freeze.patterns: '{}' matches no parameter", patterns[i]),
                      "patterns are globs on full names such as model.layers.0.mlp.up_proj.weight");
}

// The keys of a component section the user set; the component applies its own defaults to the rest.
train::HParams explicit_hparams(const config::Config& cfg, const std::string& section) {
  train::HParams out;
  for (const auto& [key, value] : cfg.section(section))
    if (cfg.is_set(section + "." + key)) out[key] = value;
  return out;
}

NamedTensors trainable_parameters(models::Llama& model) {
  NamedTensors out;
  for (auto& p : model->named_parameters())
    if (p.value().requires_grad()) out.emplace_back(p.key(), p.value());
  return out;
}

std::map<std::string, at::Tensor> read_all(const stdfs::path& file) {
  auto f = ckpt::SafetensorsFile::open(file.string());
  std::map<std::string, at::Tensor> out;
  for (const auto& t : f->tensors()) out[t.name] = f->tensor(t.name);
  return out;
}

// ---------------------------------------------------------------------------

// bf16 matrix instructions (x86: avx512_bf16 or amx_bf16), without which LibTorch's CPU bf16
// matmuls are emulated and many times slower than fp32.
bool cpu_has_bf16_matmul() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("flags", 0) == 0)
      return line.find("avx512_bf16") != std::string::npos || line.find("amx_bf16") != std::string::npos;
  return true;  // unknown (not x86 Linux): say nothing
}

}  // namespace

void Trainer::setup() {
  out = cfg.get_string("output_dir");
  const std::string& resume = cfg.get_string("resume");
  grad_accum = cfg.get_int("grad_accum");
  if (grad_accum < 1) fail_usage_hint("grad_accum must be >= 1", "set grad_accum=1 for no accumulation");
  if (cfg.get_int("batch_size") < 1) fail_usage_hint("batch_size must be >= 1", "set batch_size=1 or more");

  amp_dtype = rt.dtype;
  rt.dtype = at::kFloat;  // master weights
  scaler = train::LossScaler(amp_dtype == at::kHalf);
  if (amp_dtype == at::kBFloat16 && rt.device.is_cpu() && !cpu_has_bf16_matmul())
    log::warn("dtype bf16: this CPU has no bf16 matrix instructions (avx512_bf16 / amx_bf16), so autocast is "
              "correct but slower than fp32 here; use dtype=fp32 for speed");

  // Everything that can be wrong with the inputs is found before output_dir is touched.
  tok = load_tokenizer_for(cfg, hooks.model_key);
  lm = hooks.load_model ? hooks.load_model(*this) : load_model_for(cfg, rt, hooks.model_key);
  // QAT ends in a quantized Hugging Face directory, whose q/k rows must be in the Half layout:
  // permute them now (the same function; per-row quantization commutes with the permutation).
  if (cfg.declares("qat.enabled") && cfg.get_bool("qat.enabled")) models::convert_to_half_rope(lm);
  const int64_t seq_len = checked_seq_len(cfg, lm);
  if (tok->vocab_size() > lm.config.vocab_size)
    fail_usage_hint(fmt::format("the tokenizer has {} tokens but the model only {} embeddings", tok->vocab_size(),
                                lm.config.vocab_size),
                    "use the tokenizer the model was trained with");

  data::DataOptions dopt;
  dopt.seq_len = static_cast<int>(seq_len);
  dopt.batch_size = static_cast<int>(cfg.get_int("batch_size"));
  dopt.seed = static_cast<uint64_t>(cfg.get_int("seed"));
  dopt.eval_fraction = cfg.get_float("data.eval_fraction");
  dopt.pack = cfg.get_bool("data.pack");
  data::DataSpec train_spec = hooks.train_spec ? hooks.train_spec(*this) : data_spec_from(cfg, "data.train");
  std::optional<data::DataSpec> eval_spec;
  if (cfg.has("data.eval.path")) eval_spec = data_spec_from(cfg, "data.eval");
  data = data::prepare_train_data(train_spec, eval_spec ? &*eval_spec : nullptr, dopt, *tok);

  data::LoaderOptions lopt;
  lopt.batch_size = dopt.batch_size;
  lopt.seed = dopt.seed;
  lopt.world_size = world;
  lopt.rank = comm->rank();
  loader = std::make_unique<data::Loader>(data.train, lopt);

  if (hooks.max_steps > 0) {
    total_steps = hooks.max_steps;
  } else if (cfg.has("max_steps")) {
    total_steps = cfg.get_int("max_steps");
  } else {
    double epochs = cfg.get_float("epochs");
    total_steps = static_cast<int64_t>(std::ceil(epochs * loader->batches_per_epoch() / grad_accum));
  }
  if (total_steps < 1) {
    if (world > 1 && loader->batches_per_epoch() == 0)
      fail_usage_hint(fmt::format("{} training windows make no global batch of {} x {} ranks", data.train.count(),
                                  dopt.batch_size, world),
                      "use more data, a smaller batch_size or fewer processes");
    fail_usage_hint("the run has no step to take", "set max_steps or epochs above 0");
  }

  // Method: LoRA adapters (everything else frozen) or full training.
  lora = cfg.get_string("method") == "lora";
  if (!lora && models::is_quantized(lm.model))
    fail_usage_hint(fmt::format("model '{}' is quantized: method full cannot train its integer weights",
                                cfg.get_string(hooks.model_key)),
                    "use method: lora (QLoRA: adapters over the frozen quantized base), or fine-tune the "
                    "full-precision model and quantize afterwards");
  if (lora) {
    lora_spec.target_modules = cfg.get_list("lora.targets");
    lora_spec.r = cfg.get_int("lora.rank");
    lora_spec.alpha = cfg.get_float("lora.alpha");
    lora_spec.dropout = cfg.get_float("lora.dropout");
    if (lora_spec.r < 1) fail_usage_hint("lora.rank must be >= 1", "set lora.rank=8 (a common choice)");
    models::apply_lora(lm.model, lora_spec);
  }
  apply_freezing(lm.model, cfg);
  setup_qat();
  setup_sparsity();
  if (hooks.after_model) hooks.after_model(*this);
  lm.model->activation_checkpointing = cfg.get_bool("activation_checkpointing");
  trainable = trainable_parameters(lm.model);
  for (auto& t : extra_trainable) trainable.push_back(t);
  if (trainable.empty()) fail_usage_hint("every parameter is frozen: nothing to train", "relax freeze.*");
  for (auto& t : trainable) trainable_list.push_back(t.second);

  // Data parallel: the gradient hooks, and under ZeRO-1 the partition of the trainable tensors
  // over the ranks (no collective here: see setup_agreed).
  const int64_t zero_stage = cfg.get_int("zero");
  if (zero_stage != 0 && zero_stage != 1)
    fail_usage_hint(fmt::format("zero: {} is not supported", zero_stage), "use zero: 0 or zero: 1");
  zero = zero_stage == 1 && world > 1;
  NamedTensors opt_params = trainable;
  std::vector<int> owner;  // zero: the rank that updates each trainable tensor
  if (zero) {
    std::vector<int64_t> numels;
    for (auto& t : trainable) numels.push_back(t.second.numel());
    owner = dist::partition_params(numels, world);
    owned.assign(static_cast<size_t>(world), {});
    opt_params.clear();
    for (size_t i = 0; i < trainable.size(); ++i) {
      owned[static_cast<size_t>(owner[i])].push_back(trainable[i].second);
      if (owner[i] == comm->rank()) opt_params.push_back(trainable[i]), owned_names.insert(trainable[i].first);
    }
  }
  if (world > 1) {
    // Gradients: all-reduced, or under zero: 1 reduced into their owner only (reduce-scatter).
    const double bucket_mb = cfg.get_float("dist.bucket_mb");
    if (!(bucket_mb > 0)) fail_usage_hint("dist.bucket_mb must be > 0", "set dist.bucket_mb=25 (the default)");
    grad_sync = std::make_unique<dist::GradSync>(*comm, trainable_list,
                                                 static_cast<int64_t>(bucket_mb * 1024.0 * 1024.0), owner);
    log::debug("data parallel: {} gradient buckets", grad_sync->buckets());
  }
  opt = train::make_optimizer(cfg.get_string("optim.name"), explicit_hparams(cfg, "optim"), cfg.get_float("optim.lr"),
                              opt_params);
  schedule = std::make_unique<train::Schedule>(cfg.get_string("schedule.name"), explicit_hparams(cfg, "schedule"),
                                               cfg.get_float("optim.lr"), total_steps);

  // Only now: claim output_dir (refuses a non-empty one unless resuming); rank 0 owns it.
  if (main_rank) {
    prepare_output_dir(out, resume);
    save_resolved_config(out, cfg);
    if (hooks.after_claim) hooks.after_claim(*this);
  }
  log_resolved_config(cfg);
  int64_t n_train = 0, n_all = 0;
  for (auto& p : lm.model->parameters()) n_all += p.numel();
  for (auto& t : trainable) n_train += t.second.numel();
  log::info("model: {} ({} layers, dim {}, {} parameters; {} trainable = {:.2f}%)", lm.path,
            lm.config.num_hidden_layers, lm.config.hidden_size, n_all, n_train, 100.0 * n_train / n_all);
  log::info("data: {} train windows ({} documents), {} eval windows ({} documents{}), {} steps of {} x {} tokens",
            data.train.count(), data.train_documents, data.eval.count(), data.eval_documents,
            data.eval_split ? ", split off the training data" : "", total_steps,
            cfg.get_int("batch_size") * grad_accum * world, seq_len);
  if (world > 1)
    log::info("data parallel: {} ranks x batch {} x grad_accum {}{}", world, cfg.get_int("batch_size"), grad_accum,
              zero ? ", optimizer state sharded (zero: 1)" : "");
}

void Trainer::save_checkpoint(Checkpoints& ckpts, int64_t step, double elapsed) {
  NamedTensors opt_state = zero ? dist::gather_named(*comm, opt->state_tensors()) : opt->state_tensors();
  if (!main_rank) return;
  nlohmann::json state = {{"step", step},
                          {"epoch", loader->position().epoch},
                          {"batch_index", loader->position().index},
                          {"windows_done", loader->position().index * global_batch()},
                          {"world_size", world},
                          {"global_batch", global_batch()},
                          {"data_fingerprint", fmt::format("{:016x}", data.train.fingerprint())},
                          {"config_hash", cfg.hash()},
                          {"dsk_version", DSK_VERSION},
                          {"method", lora ? "lora" : "full"},
                          {"elapsed_s", elapsed}};
  if (eval_nll_before) state["eval_nll_before"] = *eval_nll_before;
  auto meta = artifact_metadata(cfg, hooks.stage);
  auto path = ckpts.save(step, state, [&](const stdfs::path& dir) {
    NamedTensors weights;
    for (auto& t : trainable) weights.emplace_back(t.first, t.second.detach());
    ckpt::save_safetensors((dir / "trainable.safetensors").string(), weights, meta);
    ckpt::save_safetensors((dir / "optimizer.safetensors").string(), opt_state, meta);
    NamedTensors rng = {{"torch_cpu", train::rng_state()}};
    if (scaler.enabled()) rng.emplace_back("loss_scaler", scaler.state());
    ckpt::save_safetensors((dir / "rng.safetensors").string(), rng, meta);
  });
  log::debug("saved checkpoint {}", path.string());
}

int64_t Trainer::resume_index(const nlohmann::json& state, const stdfs::path& dir) const {
  if (!state.contains("windows_done")) return state.at("batch_index").get<int64_t>();  // pre-0.2 checkpoints
  const int64_t done = state.at("windows_done").get<int64_t>();
  const int64_t saved_global = state.value("global_batch", global_batch());
  if (saved_global != global_batch())
    log::warn("checkpoint {} was made with {} windows per step ({} ranks); this run takes {} ({} x batch {})",
              dir.string(), saved_global, state.value("world_size", 1), global_batch(), world,
              cfg.get_int("batch_size"));
  if (done % global_batch() != 0)
    fail_usage_hint(fmt::format("checkpoint '{}' stopped after {} windows of its epoch, which is not a whole number "
                                "of global batches of {} ({} ranks x batch_size {})",
                                dir.string(), done, global_batch(), world, cfg.get_int("batch_size")),
                    fmt::format("resume with processes x batch_size = {} (as saved)", saved_global));
  return done / global_batch();
}

std::pair<int64_t, double> Trainer::restore(const stdfs::path& dir) {
  nlohmann::json state = read_checkpoint_state(dir);
  try {
    std::string fp = fmt::format("{:016x}", data.train.fingerprint());
    if (state.at("data_fingerprint").get<std::string>() != fp)
      fail_usage_hint(fmt::format("checkpoint '{}' was made with different training data or seq_len", dir.string()),
                      "resume with the data and data.* settings of the original run, or start a new output_dir");
    if (state.at("method").get<std::string>() != (lora ? "lora" : "full"))
      fail_usage_hint(fmt::format("checkpoint '{}' is from a {} run", dir.string(), state.at("method").get<std::string>()),
                      "resume with the original method");
    if (state.at("config_hash").get<std::string>() != cfg.hash())
      log::warn("the config differs from the one checkpoint {} was made with; continuing", dir.string());
    auto weights = read_all(dir / "trainable.safetensors");
    {
      torch::NoGradGuard no_grad;
      for (auto& t : trainable) {
        auto it = weights.find(t.first);
        if (it == weights.end())
          fail("checkpoint '{}' lacks trainable tensor '{}'", dir.string(), t.first);
        if (it->second.sizes() != t.second.sizes())
          fail("checkpoint '{}': tensor '{}' has shape {}, expected {}", dir.string(), t.first,
               fmt::join(it->second.sizes(), ","), fmt::join(t.second.sizes(), ","));
        t.second.copy_(it->second);
      }
    }
    auto opt_state = read_all(dir / "optimizer.safetensors");
    if (zero) {  // this rank's slots only: "<parameter name>.<slot>"
      for (auto it = opt_state.begin(); it != opt_state.end();) {
        auto dot = it->first.rfind('.');
        it = owned_names.count(it->first.substr(0, dot)) ? std::next(it) : opt_state.erase(it);
      }
    }
    opt->load_state_tensors(opt_state);
    auto rng = read_all(dir / "rng.safetensors");
    train::set_rng_state(rng.at("torch_cpu"));
    if (scaler.enabled() && rng.count("loss_scaler")) scaler.load_state(rng.at("loss_scaler"));
    loader->set_position({state.at("epoch").get<int64_t>(), resume_index(state, dir)});
    if (state.contains("eval_nll_before")) eval_nll_before = state.at("eval_nll_before").get<double>();
    return {state.at("step").get<int64_t>(), state.value("elapsed_s", 0.0)};
  } catch (const nlohmann::json::exception& e) {
    fail("checkpoint '{}': state.json is missing a field: {}", dir.string(), e.what());
  } catch (const Error& e) {
    throw e.context("resuming from " + dir.string());
  }
}

EvalResult Trainer::run_eval() {
  train::AutocastGuard autocast(rt.device, amp_dtype);
  return evaluate(lm.model, data.eval, static_cast<int>(cfg.get_int("batch_size")), cfg.get_int("eval.max_batches"),
                  comm.get());
}

void Trainer::save_final(int64_t step) {
  auto meta = artifact_metadata(cfg, hooks.stage);
  if (lora) {
    fs::StagingDir adapter(out / "adapter");
    auto config = models::peft_adapter_config_json(lora_spec, lm.path);
    fs::write_file_atomic(adapter.path() / "adapter_config.json", config.dump(2));
    ckpt::save_safetensors((adapter.path() / "adapter_model.safetensors").string(),
                           models::lora_state_tensors(lm.model), meta);
    adapter.commit();
    if (!cfg.get_bool("save.merged")) return;
    if (models::is_quantized(lm.model)) {
      log::info("saved adapter/ after step {}; no merged model/: the base is quantized (QLoRA), apply adapter/ "
                "to the full-precision base to merge", step);
      return;
    }
    models::merge_lora(lm.model);
  }
  if (qat) convert_qat();
  fs::StagingDir model_dir(out / "model");
  models::save_model_hf(model_dir.path().string(), lm.model, meta);
  copy_tokenizer(cfg, model_dir.path(), hooks.model_key);
  model_dir.commit();
  log::info("saved {} after step {}", lora ? "adapter/ and model/" : qat ? "model/ (quantized from QAT)" : "model/",
            step);
}

void Trainer::setup_sparsity() {
  const std::string keep = cfg.declares("sparsity.keep") ? cfg.get_string("sparsity.keep") : "auto";
  const std::string record = lm.model->config().sparsity_config;
  if (keep == "false") {
    if (!record.empty()) {
      log::warn("sparsity.keep: false: the pruned zeros of '{}' will fill in; model/ records no sparsity",
                cfg.get_string(hooks.model_key));
      lm.model->set_sparsity_config("");
    }
    return;
  }
  std::set<std::string> names;
  if (!record.empty()) {
    try {
      const nlohmann::json rec = nlohmann::json::parse(record);  // (not a temporary in the range-for)
      for (const auto& n : rec.at("layers")) names.insert(n.get<std::string>());
    } catch (const nlohmann::json::exception& e) {
      fail_usage_hint(fmt::format("config.json dsk_sparsity of '{}' is malformed: {}", cfg.get_string(hooks.model_key),
                                  e.what()),
                      "re-run dsk prune, or set sparsity.keep=false to train without masks");
    }
  } else if (keep != "true") {
    return;  // auto: nothing was pruned
  }
  int64_t zeros = 0, total = 0;
  for (auto& [name, lin] : models::linear_layers(lm.model)) {
    if (!record.empty() && !names.count(name)) continue;
    if (lin->quantized()) continue;  // integer weights do not train: their zeros stay
    at::Tensor mask = lin->weight.detach().ne(0);
    const int64_t z = mask.numel() - mask.sum().item<int64_t>();
    if (record.empty() && z == 0) continue;  // sparsity.keep: true keeps whatever zeros there are
    lin->set_sparsity_mask(mask);
    sparse_layers.emplace_back(lin, mask);
    zeros += z, total += mask.numel();
  }
  if (sparse_layers.empty()) {
    if (keep == "true") log::warn("sparsity.keep: true but no linear layer of the model has zero weights");
    return;
  }
  log::info("sparsity: keeping the zeros of {} pruned layers ({:.2f}% of their {} weights){}", sparse_layers.size(),
            100.0 * static_cast<double>(zeros) / static_cast<double>(total), total,
            lora ? "; LoRA updates are masked the same way" : "");
  if (record.empty()) {
    nlohmann::ordered_json rec = {{"method", "external"}, {"sparsity", static_cast<double>(zeros) / total}};
    std::vector<std::string> kept;
    for (auto& [name, lin] : models::linear_layers(lm.model))
      if (lin->sparsity_mask().defined()) kept.push_back(name);
    rec["layers"] = kept;
    lm.model->set_sparsity_config(rec.dump());
  }
}

void Trainer::mask_gradients() {
  for (auto& [lin, mask] : sparse_layers)
    if (lin->weight.requires_grad() && lin->weight.grad().defined()) lin->weight.mutable_grad().mul_(mask);
}

void Trainer::mask_weights() {
  at::NoGradGuard no_grad;
  for (auto& [lin, mask] : sparse_layers)
    if (lin->weight.requires_grad()) lin->weight.mul_(mask);
}

void Trainer::setup_qat() {
  if (!cfg.declares("qat.enabled") || !cfg.get_bool("qat.enabled")) return;
  if (lora)
    fail_usage_hint("qat.enabled needs method: full (QAT trains the weights that will be quantized)",
                    "set method=full, or quantize a LoRA-merged model with dsk quantize");
  if (models::is_quantized(lm.model))
    fail_usage_hint("qat.enabled on a model that is already quantized", "start QAT from the full-precision model");
  qat = std::make_shared<quant::FakeQuant>();
  qat->scheme.bits = static_cast<int>(cfg.get_int("qat.bits"));
  qat->scheme.group_size = cfg.get_int("qat.group_size");
  qat->scheme.symmetric = cfg.get_bool("qat.symmetric");
  qat->act = quant::act_mode_from(cfg.get_string("qat.activations"));
  quant::check_scheme(qat->scheme);
  if (qat->act == quant::ActMode::Static)
    fail_usage_hint("qat.activations: static is not supported", "use qat.activations none or dynamic");
  if (qat->act != quant::ActMode::None && qat->scheme.bits != 8)
    fail_usage_hint("qat.activations: dynamic needs qat.bits 8 (W8A8)", "set qat.bits=8 or qat.activations=none");
  qat_layers = models::select_linear_layers(lm.model, cfg.get_list("qat.include"), cfg.get_list("qat.exclude"));
  if (qat_layers.empty())
    fail_usage_hint("qat.include / qat.exclude select no linear layer", "include e.g. [\"*\"]");
  for (auto& [name, lin] : qat_layers) lin->set_fake_quant(qat);
  if (cfg.get_bool("qat.distill")) {
    // LLM-QAT's recipe: the loss is KL(full precision || fake-quantized) on the data, which
    // teaches the quantized model the original's whole distribution rather than the data's
    // next tokens (and works on text the model generated itself).
    teacher = load_model_for(cfg, rt).model;
    teacher->eval();
    for (auto& p : teacher->parameters()) p.set_requires_grad(false);
  }
  log::info("qat: {} fake-quantized linear layers ({}, activations {})", qat_layers.size(),
            quant::describe(qat->scheme), quant::act_mode_name(qat->act));
}

void Trainer::convert_qat() {
  std::vector<std::string> names;
  for (auto& [name, lin] : qat_layers) {
    lin->set_fake_quant(nullptr);
    lin->set_quantized(quant::make_qlinear(quant::quantize_rtn(lin->weight, qat->scheme), qat->act));
    names.push_back(name);
  }
  models::QuantConfig qc;
  qc.scheme = qat->scheme;
  qc.method = "qat";
  qc.act = qat->act;
  lm.model->set_quantization_config(models::quantization_config_json(qc, names));
}

void Trainer::setup_agreed() {
  std::exception_ptr failure;
  int code = 0;
  try {
    setup();
  } catch (const Error& e) {
    failure = std::current_exception(), code = e.exit_code();
  } catch (...) {
    failure = std::current_exception(), code = kExitRuntime;
  }
  if (world == 1) {
    if (failure) std::rethrow_exception(failure);
    return;
  }
  at::Tensor t = at::tensor({static_cast<double>(code), failure ? static_cast<double>(comm->rank()) : -1.0},
                            at::kDouble);
  comm->allreduce_max(t);
  if (failure) std::rethrow_exception(failure);
  const int agreed = static_cast<int>(t[0].item<double>());
  if (agreed != 0)
    throw Error(agreed == kExitUsage ? Error::Kind::Usage : Error::Kind::Runtime,
                fmt::format("rank {} failed while setting up (its error is in its log); rank {} stops too",
                            static_cast<int>(t[1].item<double>()), comm->rank()));
}

int Trainer::run() {
  rt = setup_runtime(cfg);
  comm = rt.comm;
  world = comm->size();
  main_rank = comm->is_main();
  setup_agreed();
  // Rank 0's initial weights everywhere (LoRA's random init included). The first collective
  // after setup, so that a rank failing in setup never leaves the others waiting in it.
  if (world > 1) dist::broadcast_tensors(*comm, trainable_list, 0);
  Checkpoints ckpts(out, static_cast<int>(cfg.get_int("checkpoint.keep_last")));
  int64_t start_step = 0;
  double elapsed_before = 0.0;
  if (auto dir = ckpts.resolve(cfg.get_string("resume"))) {
    std::tie(start_step, elapsed_before) = restore(*dir);
    log::info("resumed from {} at step {}", dir->string(), start_step);
  }
  if (world > 1) {  // every rank must continue from the same step (output_dir on a shared filesystem)
    at::Tensor s = at::tensor({static_cast<double>(start_step), -static_cast<double>(start_step)}, at::kDouble);
    comm->allreduce_max(s);
    if (s[0].item<double>() != -s[1].item<double>())
      fail_usage_hint(fmt::format("the ranks resume from different steps ({} to {}): they do not see the same "
                                  "checkpoints in '{}'",
                                  -s[1].item<double>(), s[0].item<double>(), out.string()),
                      "put output_dir on a filesystem every node mounts");
  }
  // Files are rank 0's: the other ranks keep none of these.
  std::optional<train::MetricsLog> metrics;
  std::optional<train::EventWriter> events;
  std::optional<Progress> progress;
  if (main_rank) {
    metrics.emplace(out / "metrics.jsonl", start_step > 0 ? std::optional<int64_t>(start_step) : std::nullopt);
    events.emplace(out);
    if (start_step > 0) events->add_session_start(start_step + 1);
  }

  if (hooks.artifacts && data.eval.count() > 0 && start_step == 0) {
    EvalResult before = run_eval();
    eval_nll_before = before.nll;
    log::info("eval before training: nll {:.4f}, ppl {:.2f} ({} tokens)", before.nll, before.ppl, before.tokens);
    if (events) events->add_scalars(0, {{"eval/loss", before.nll}, {"eval/ppl", before.ppl}});
  }

  const int64_t eval_every = cfg.get_int("eval.every");
  const int64_t ckpt_every = cfg.get_int("checkpoint.every");
  const double max_norm = cfg.get_float("clip_grad_norm");
  if (main_rank) progress.emplace(hooks.stage, total_steps, cfg.get_int("log.every"), start_step);
  lm.model->train();
  double t_start = now_s();
  double t_last = t_start;
  double last_loss = 0.0;
  int64_t step = start_step;
  bool stopped = false;
  // dsk profile's phase timer (null in normal runs): each step is tiled into phases.
  using profile::Phase;
  profile::PhaseTimer* const ph = hooks.phases;
  while (step < total_steps) {
    if (hooks.before_step) hooks.before_step(*this, step);
    profile::StepScope step_scope(ph, step + 1);
    profile::enter_phase(ph, Phase::Data);
    // This step's micro-batches, then one all-reduce: the global count of loss tokens (each
    // rank's loss is weighted by it), the tokens processed, and whether any rank was signalled.
    const data::LoaderPosition before_step = loader->position();
    std::vector<data::Batch> micro;
    int64_t step_tokens = 0, tokens_in = 0;
    for (int64_t i = 0; i < grad_accum; ++i) {
      micro.push_back(loader->next());
      for (uint8_t m : micro.back().mask) step_tokens += m;
      tokens_in += static_cast<int64_t>(micro.back().rows) * micro.back().seq_len;
    }
    profile::enter_phase(ph, Phase::Communication);
    at::Tensor agree = at::tensor({static_cast<double>(step_tokens), static_cast<double>(tokens_in),
                                   signals::interrupted() ? 1.0 : 0.0},
                                  at::kDouble);
    comm->allreduce_sum(agree);
    if (agree[2].item<double>() > 0) {
      loader->set_position(before_step);  // the step was not taken: its batches come first on resume
      stopped = true;
      break;
    }
    const double global_tokens = std::max(agree[0].item<double>(), 1.0);
    ++step;
    opt->set_lr(schedule->lr_at(step - 1));
    // Each micro-batch's mean loss is weighted by its share of the global step's loss tokens,
    // so the update equals one batch of world * grad_accum * batch_size windows.
    double loss_sum = 0.0;
    for (size_t i = 0; i < micro.size(); ++i) {
      auto& b = micro[i];
      if (grad_sync) grad_sync->begin(i + 1 == micro.size());
      profile::enter_phase(ph, Phase::Data);
      BatchTensors t = window_tensors(b.tokens.data(), b.mask.data(), b.rows, b.seq_len, rt.device);
      if (t.loss_tokens == 0) continue;
      profile::enter_phase(ph, Phase::Forward);
      train::LossResult loss;
      {
        train::AutocastGuard autocast(rt.device, amp_dtype);
        if (hooks.loss) {
          loss = hooks.loss(*this, t);
        } else if (teacher) {  // QAT with distillation: match the full-precision model's distributions
          at::Tensor teacher_logits;
          {
            at::NoGradGuard no_grad;
            teacher_logits = teacher->forward(t.inputs);
          }
          loss = train::distill_loss(lm.model->forward(t.inputs), teacher_logits, t.targets);
        } else {
          at::Tensor hidden = lm.model->hidden_states(t.inputs);  // [B, T, C]
          loss = train::chunked_cross_entropy(hidden, lm.model->classifier_weight(), t.targets);
        }
      }
      profile::enter_phase(ph, Phase::Backward);  // (the bucketed gradient all-reduces overlap it)
      double weight = static_cast<double>(loss.count) / global_tokens;
      (loss.loss * (weight * scaler.scale())).backward();
      loss_sum += loss.loss.item<double>() * weight;
    }
    if (grad_sync) {
      profile::enter_phase(ph, Phase::Communication);
      grad_sync->finish();
      at::Tensor l = at::tensor({loss_sum}, at::kDouble);
      comm->allreduce_sum(l);
      loss_sum = l.item<double>();
    }
    // Under zero: 1 a rank holds the summed gradients of its own tensors only: the overflow
    // check and the clipping norm are agreed over the ranks.
    profile::enter_phase(ph, Phase::Optimizer);
    mask_gradients();
    const std::vector<at::Tensor>& grads_here = zero ? owned[static_cast<size_t>(comm->rank())] : trainable_list;
    bool finite_grads = !scaler.enabled() || scaler.unscale(grads_here);
    if (scaler.enabled() && zero) {
      at::Tensor overflow = at::tensor({finite_grads ? 0.0 : 1.0}, at::kDouble);
      comm->allreduce_max(overflow);
      finite_grads = overflow.item<double>() == 0.0;
    }
    if (!finite_grads) {
      // fp16 overflow: skip this update, halve the scale (identical on every rank: the
      // gradients were summed, or the verdict agreed, before the check).
      scaler.update(true);
      for (auto& t : trainable_list) t.mutable_grad().reset();
      log::debug("step {}: fp16 gradients overflowed; skipped, loss scale now {}", step, scaler.scale());
      if (main_rank) metrics->append(step, {{"loss", loss_sum}, {"lr", opt->lr()}, {"skipped", true},
                                            {"loss_scale", scaler.scale()}});
      continue;
    }
    scaler.update(false);
    double grad_norm = zero ? train::clip_grad_norm(grads_here, max_norm, [&](at::Tensor& sq) { comm->allreduce_sum(sq); })
                            : train::clip_grad_norm(trainable_list, max_norm);
    if (!std::isfinite(loss_sum) || !std::isfinite(grad_norm)) {
      fail_hint(fmt::format("step {}: the loss or gradient norm is not finite (loss {}, grad_norm {})", step,
                            loss_sum, grad_norm),
                "lower optim.lr or clip_grad_norm, or resume from an earlier checkpoint");
    }
    opt->step();
    if (zero) {
      for (auto& t : trainable_list) t.mutable_grad().reset();
      profile::enter_phase(ph, Phase::Communication);
      for (int r = 0; r < world; ++r) dist::broadcast_tensors(*comm, owned[static_cast<size_t>(r)], r);
      profile::enter_phase(ph, Phase::Optimizer);
    } else {
      opt->zero_grad();
    }
    mask_weights();
    last_loss = loss_sum;
    profile::enter_phase(ph, Phase::Other);

    double now = now_s();
    double tps = agree[1].item<double>() / std::max(now - t_last, 1e-9);
    t_last = now;
    double elapsed = elapsed_before + (now - t_start);
    nlohmann::ordered_json fields = {{"loss", loss_sum},   {"lr", opt->lr()},         {"grad_norm", grad_norm},
                                     {"tokens_per_s", tps}, {"elapsed_s", elapsed}};
    if (eval_every > 0 && step % eval_every == 0 && step < total_steps && data.eval.count() > 0) {
      profile::enter_phase(ph, Phase::Eval);
      EvalResult e = run_eval();
      profile::enter_phase(ph, Phase::Other);
      fields["eval_loss"] = e.nll;
      fields["eval_ppl"] = e.ppl;
      if (main_rank) {
        events->add_scalars(step, {{"eval/loss", e.nll}, {"eval/ppl", e.ppl}});
        progress->println(fmt::format("step {}: eval nll {:.4f}, ppl {:.2f}", step, e.nll, e.ppl));
      }
    }
    if (main_rank) {
      metrics->append(step, fields);
      events->add_scalars(step, {{"train/loss", loss_sum},
                                 {"train/lr", opt->lr()},
                                 {"train/grad_norm", grad_norm},
                                 {"train/tokens_per_s", tps}});
      progress->update(step, fmt::format("loss {:.4f} | lr {:.2e} | {:.0f} tok/s", loss_sum, opt->lr(), tps));
    }
    if (ckpt_every > 0 && step % ckpt_every == 0 && step < total_steps) {
      profile::enter_phase(ph, Phase::Checkpoint);
      save_checkpoint(ckpts, step, elapsed);
    }
  }
  if (progress) progress->finish();
  if (!hooks.artifacts)  // dsk profile: the steps were the point; it writes its own outputs
    return !stopped ? 0 : signals::interrupted() ? signals::interrupt_exit_code() : kExitTerminated;
  double elapsed = elapsed_before + (now_s() - t_start);

  if (stopped) {
    save_checkpoint(ckpts, step, elapsed);
    if (main_rank) log::warn("interrupted: saved checkpoint at step {}; continue with resume=auto", step);
    return signals::interrupted() ? signals::interrupt_exit_code() : kExitTerminated;
  }
  save_checkpoint(ckpts, step, elapsed);

  nlohmann::ordered_json summary = {{"stage", hooks.stage}, {"steps", step}, {"train_loss", last_loss}};
  if (data.eval.count() > 0) {
    EvalResult after = run_eval();
    log::info("eval after training: nll {:.4f}, ppl {:.2f} ({} tokens)", after.nll, after.ppl, after.tokens);
    if (events) events->add_scalars(step, {{"eval/loss", after.nll}, {"eval/ppl", after.ppl}});
    if (eval_nll_before) {
      summary["eval_nll_before"] = *eval_nll_before;
      log::info("eval nll {:.4f} -> {:.4f} ({:+.1f}%)", *eval_nll_before, after.nll,
                100.0 * (after.nll - *eval_nll_before) / *eval_nll_before);
    }
    summary["eval_nll"] = after.nll;
    summary["eval_ppl"] = after.ppl;
  }
  if (!main_rank) return 0;
  save_final(step);
  for (auto& [k, v] : summary_extra.items()) summary[k] = v;
  summary["elapsed_s"] = elapsed;
  summary["output_dir"] = out.string();
  std::printf("%s\n", summary.dump().c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace dsk::stages
