// dsk finetune: full or LoRA fine-tuning with periodic atomic checkpoints and exact resume.
//
// Shape of the recipe: setup (validate inputs, load model/tokenizer/data, then claim
// output_dir) -> resume (trainable weights, optimizer, RNG, data position) -> train loop
// (accumulate, clip, step, log, eval, checkpoint, stop on a signal) -> save (checkpoint,
// adapter/, model/) -> eval after -> one JSON line on stdout.
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
#include "models/lora.h"
#include "stages/common.h"
#include "stages/evaluate.h"
#include "stages/run_dir.h"
#include "stages/stages.h"
#include "train/clip.h"
#include "train/loss.h"
#include "train/metrics.h"
#include "train/optim.h"
#include "train/rng.h"
#include "train/schedule.h"
#include "train/tfevents.h"

namespace dsk::stages {
namespace {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

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

std::map<std::string, std::string> artifact_metadata(const config::Config& cfg) {
  return {{"format", "pt"}, {"dsk_version", DSK_VERSION}, {"dsk_stage", "finetune"}, {"config_hash", cfg.hash()}};
}

std::map<std::string, at::Tensor> read_all(const stdfs::path& file) {
  auto f = ckpt::SafetensorsFile::open(file.string());
  std::map<std::string, at::Tensor> out;
  for (const auto& t : f->tensors()) out[t.name] = f->tensor(t.name);
  return out;
}

// Copies the tokenizer file next to the weights so model/ is self-contained.
void copy_tokenizer(const config::Config& cfg, const stdfs::path& dir) {
  std::string src = cfg.has("tokenizer.path") ? cfg.get_string("tokenizer.path") : cfg.get_string("model.path");
  stdfs::path p(src);
  std::error_code ec;
  if (stdfs::is_directory(p, ec)) {
    for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"})
      if (stdfs::exists(p / name, ec)) stdfs::copy_file(p / name, dir / name, stdfs::copy_options::overwrite_existing, ec);
    return;
  }
  std::string target = p.extension() == ".json" ? "tokenizer.json" : "tokenizer.model";
  stdfs::copy_file(p, dir / target, stdfs::copy_options::overwrite_existing, ec);
  if (ec) fail("copying tokenizer '{}' into '{}': {}", src, dir.string(), ec.message());
}

// ---------------------------------------------------------------------------

struct Trainer {
  const config::Config& cfg;
  Runtime rt;
  std::unique_ptr<tok::Tokenizer> tok;
  models::LoadedModel lm;
  data::TrainData data;
  bool lora = false;
  models::LoraSpec lora_spec;
  NamedTensors trainable;
  std::vector<at::Tensor> trainable_list;
  std::unique_ptr<train::Optimizer> opt;
  std::unique_ptr<train::Schedule> schedule;
  std::unique_ptr<data::Loader> loader;
  int64_t total_steps = 0;
  std::optional<double> eval_nll_before;  // kept in state.json so a resumed run still reports it
  int64_t grad_accum = 1;
  stdfs::path out;

  explicit Trainer(const config::Config& c) : cfg(c) {}

  void setup() {
    rt = setup_runtime(cfg);
    out = cfg.get_string("output_dir");
    const std::string& resume = cfg.get_string("resume");
    grad_accum = cfg.get_int("grad_accum");
    if (grad_accum < 1) fail_usage_hint("grad_accum must be >= 1", "set grad_accum=1 for no accumulation");
    if (cfg.get_int("batch_size") < 1) fail_usage_hint("batch_size must be >= 1", "set batch_size=1 or more");

    // Everything that can be wrong with the inputs is found before output_dir is touched.
    tok = load_tokenizer_for(cfg);
    lm = load_model_for(cfg, rt);
    const int64_t seq_len = cfg.get_int("data.seq_len");
    if (seq_len < 1 || seq_len > lm.config.max_position_embeddings)
      fail_usage_hint(fmt::format("data.seq_len {} is outside 1..{} (the model's max_position_embeddings)", seq_len,
                                  lm.config.max_position_embeddings),
                      fmt::format("set data.seq_len to at most {}", lm.config.max_position_embeddings));
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
    data::DataSpec train_spec = data_spec_from(cfg, "data.train");
    std::optional<data::DataSpec> eval_spec;
    if (cfg.has("data.eval.path")) eval_spec = data_spec_from(cfg, "data.eval");
    data = data::prepare_train_data(train_spec, eval_spec ? &*eval_spec : nullptr, dopt, *tok);

    data::LoaderOptions lopt;
    lopt.batch_size = dopt.batch_size;
    lopt.seed = dopt.seed;
    loader = std::make_unique<data::Loader>(data.train, lopt);

    if (cfg.has("max_steps")) {
      total_steps = cfg.get_int("max_steps");
    } else {
      double epochs = cfg.get_float("epochs");
      total_steps = static_cast<int64_t>(std::ceil(epochs * loader->batches_per_epoch() / grad_accum));
    }
    if (total_steps < 1) fail_usage_hint("the run has no step to take", "set max_steps or epochs above 0");

    // Method: LoRA adapters (everything else frozen) or full training.
    lora = cfg.get_string("method") == "lora";
    if (lora) {
      lora_spec.target_modules = cfg.get_list("lora.targets");
      lora_spec.r = cfg.get_int("lora.rank");
      lora_spec.alpha = cfg.get_float("lora.alpha");
      lora_spec.dropout = cfg.get_float("lora.dropout");
      if (lora_spec.r < 1) fail_usage_hint("lora.rank must be >= 1", "set lora.rank=8 (a common choice)");
      models::apply_lora(lm.model, lora_spec);
    }
    apply_freezing(lm.model, cfg);
    trainable = trainable_parameters(lm.model);
    if (trainable.empty()) fail_usage_hint("every parameter is frozen: nothing to train", "relax freeze.*");
    for (auto& t : trainable) trainable_list.push_back(t.second);

    opt = train::make_optimizer(cfg.get_string("optim.name"), explicit_hparams(cfg, "optim"), cfg.get_float("optim.lr"),
                                trainable);
    schedule = std::make_unique<train::Schedule>(cfg.get_string("schedule.name"), explicit_hparams(cfg, "schedule"),
                                                 cfg.get_float("optim.lr"), total_steps);

    // Only now: claim output_dir (refuses a non-empty one unless resuming).
    prepare_output_dir(out, resume);
    save_resolved_config(out, cfg);
    log_resolved_config(cfg);
    int64_t n_train = 0, n_all = 0;
    for (auto& p : lm.model->parameters()) n_all += p.numel();
    for (auto& t : trainable) n_train += t.second.numel();
    log::info("model: {} ({} layers, dim {}, {} parameters; {} trainable = {:.2f}%)", cfg.get_string("model.path"),
              lm.config.num_hidden_layers, lm.config.hidden_size, n_all, n_train, 100.0 * n_train / n_all);
    log::info("data: {} train windows ({} documents), {} eval windows ({} documents{}), {} steps of {} x {} tokens",
              data.train.count(), data.train_documents, data.eval.count(), data.eval_documents,
              data.eval_split ? ", split off the training data" : "", total_steps,
              cfg.get_int("batch_size") * grad_accum, seq_len);
  }

  // -------------------------------------------------------------------------
  // Checkpoints: trainable weights, optimizer state, RNG, data position, step.

  void save_checkpoint(Checkpoints& ckpts, int64_t step, double elapsed) {
    nlohmann::json state = {{"step", step},
                            {"epoch", loader->position().epoch},
                            {"batch_index", loader->position().index},
                            {"data_fingerprint", fmt::format("{:016x}", data.train.fingerprint())},
                            {"config_hash", cfg.hash()},
                            {"dsk_version", DSK_VERSION},
                            {"method", lora ? "lora" : "full"},
                            {"elapsed_s", elapsed}};
    if (eval_nll_before) state["eval_nll_before"] = *eval_nll_before;
    auto meta = artifact_metadata(cfg);
    auto path = ckpts.save(step, state, [&](const stdfs::path& dir) {
      NamedTensors weights;
      for (auto& t : trainable) weights.emplace_back(t.first, t.second.detach());
      ckpt::save_safetensors((dir / "trainable.safetensors").string(), weights, meta);
      ckpt::save_safetensors((dir / "optimizer.safetensors").string(), opt->state_tensors(), meta);
      ckpt::save_safetensors((dir / "rng.safetensors").string(), {{"torch_cpu", train::rng_state()}}, meta);
    });
    log::debug("saved checkpoint {}", path.string());
  }

  // Returns the step to continue after, and the elapsed time so far.
  std::pair<int64_t, double> restore(const stdfs::path& dir) {
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
      opt->load_state_tensors(read_all(dir / "optimizer.safetensors"));
      train::set_rng_state(read_all(dir / "rng.safetensors").at("torch_cpu"));
      loader->set_position({state.at("epoch").get<int64_t>(), state.at("batch_index").get<int64_t>()});
      if (state.contains("eval_nll_before")) eval_nll_before = state.at("eval_nll_before").get<double>();
      return {state.at("step").get<int64_t>(), state.value("elapsed_s", 0.0)};
    } catch (const nlohmann::json::exception& e) {
      fail("checkpoint '{}': state.json is missing a field: {}", dir.string(), e.what());
    } catch (const Error& e) {
      throw e.context("resuming from " + dir.string());
    }
  }

  // -------------------------------------------------------------------------

  EvalResult run_eval() {
    return evaluate(lm.model, data.eval, static_cast<int>(cfg.get_int("batch_size")), cfg.get_int("eval.max_batches"));
  }

  void save_final(int64_t step) {
    auto meta = artifact_metadata(cfg);
    if (lora) {
      fs::StagingDir adapter(out / "adapter");
      auto config = models::peft_adapter_config_json(lora_spec, cfg.get_string("model.path"));
      fs::write_file_atomic(adapter.path() / "adapter_config.json", config.dump(2));
      ckpt::save_safetensors((adapter.path() / "adapter_model.safetensors").string(),
                             models::lora_state_tensors(lm.model), meta);
      adapter.commit();
      if (!cfg.get_bool("save.merged")) return;
      models::merge_lora(lm.model);
    }
    fs::StagingDir model_dir(out / "model");
    models::save_model_hf(model_dir.path().string(), lm.model, meta);
    copy_tokenizer(cfg, model_dir.path());
    model_dir.commit();
    log::info("saved {} after step {}", lora ? "adapter/ and model/" : "model/", step);
  }

  int run() {
    setup();
    Checkpoints ckpts(out, static_cast<int>(cfg.get_int("checkpoint.keep_last")));
    int64_t start_step = 0;
    double elapsed_before = 0.0;
    if (auto dir = ckpts.resolve(cfg.get_string("resume"))) {
      std::tie(start_step, elapsed_before) = restore(*dir);
      log::info("resumed from {} at step {}", dir->string(), start_step);
    }
    train::MetricsLog metrics(out / "metrics.jsonl",
                              start_step > 0 ? std::optional<int64_t>(start_step) : std::nullopt);
    train::EventWriter events(out);
    if (start_step > 0) events.add_session_start(start_step + 1);

    if (data.eval.count() > 0 && start_step == 0) {
      EvalResult before = run_eval();
      eval_nll_before = before.nll;
      log::info("eval before training: nll {:.4f}, ppl {:.2f} ({} tokens)", before.nll, before.ppl, before.tokens);
      events.add_scalars(0, {{"eval/loss", before.nll}, {"eval/ppl", before.ppl}});
    }

    const int64_t eval_every = cfg.get_int("eval.every");
    const int64_t ckpt_every = cfg.get_int("checkpoint.every");
    const double max_norm = cfg.get_float("clip_grad_norm");
    Progress progress("finetune", total_steps, cfg.get_int("log.every"), start_step);
    lm.model->train();
    double t_start = now_s();
    double t_last = t_start;
    double last_loss = 0.0;
    int64_t step = start_step;
    while (step < total_steps) {
      if (signals::interrupted()) break;
      ++step;
      opt->set_lr(schedule->lr_at(step - 1));
      // Gradient accumulation: each micro-batch's mean loss is weighted by its share of the
      // step's loss tokens, so the update equals one batch of grad_accum * batch_size windows.
      std::vector<data::Batch> micro;
      int64_t step_tokens = 0;
      for (int64_t i = 0; i < grad_accum; ++i) {
        micro.push_back(loader->next());
        for (uint8_t m : micro.back().mask) step_tokens += m;
      }
      double loss_sum = 0.0;
      int64_t tokens_seen = 0;
      for (auto& b : micro) {
        BatchTensors t = window_tensors(b.tokens.data(), b.mask.data(), b.rows, b.seq_len, rt.device);
        tokens_seen += t.inputs.numel();
        if (t.loss_tokens == 0) continue;
        at::Tensor hidden = lm.model->hidden_states(t.inputs);  // [B, T, C]
        auto loss = train::chunked_cross_entropy(hidden, lm.model->classifier_weight(), t.targets);
        double weight = static_cast<double>(loss.count) / static_cast<double>(std::max<int64_t>(step_tokens, 1));
        (loss.loss * weight).backward();
        loss_sum += loss.loss.item<double>() * weight;
      }
      double grad_norm = train::clip_grad_norm(trainable_list, max_norm);
      if (!std::isfinite(loss_sum) || !std::isfinite(grad_norm)) {
        fail_hint(fmt::format("step {}: the loss or gradient norm is not finite (loss {}, grad_norm {})", step,
                              loss_sum, grad_norm),
                  "lower optim.lr or clip_grad_norm, or resume from an earlier checkpoint");
      }
      opt->step();
      opt->zero_grad();
      last_loss = loss_sum;

      double now = now_s();
      double tps = tokens_seen / std::max(now - t_last, 1e-9);
      t_last = now;
      double elapsed = elapsed_before + (now - t_start);
      nlohmann::ordered_json fields = {{"loss", loss_sum},   {"lr", opt->lr()},         {"grad_norm", grad_norm},
                                       {"tokens_per_s", tps}, {"elapsed_s", elapsed}};
      if (eval_every > 0 && step % eval_every == 0 && step < total_steps && data.eval.count() > 0) {
        EvalResult e = run_eval();
        fields["eval_loss"] = e.nll;
        fields["eval_ppl"] = e.ppl;
        events.add_scalars(step, {{"eval/loss", e.nll}, {"eval/ppl", e.ppl}});
        progress.println(fmt::format("step {}: eval nll {:.4f}, ppl {:.2f}", step, e.nll, e.ppl));
      }
      metrics.append(step, fields);
      events.add_scalars(step, {{"train/loss", loss_sum},
                                {"train/lr", opt->lr()},
                                {"train/grad_norm", grad_norm},
                                {"train/tokens_per_s", tps}});
      progress.update(step, fmt::format("loss {:.4f} | lr {:.2e} | {:.0f} tok/s", loss_sum, opt->lr(), tps));
      if (ckpt_every > 0 && step % ckpt_every == 0 && step < total_steps) save_checkpoint(ckpts, step, elapsed);
    }
    progress.finish();
    double elapsed = elapsed_before + (now_s() - t_start);

    if (signals::interrupted()) {
      save_checkpoint(ckpts, step, elapsed);
      log::warn("interrupted: saved checkpoint at step {}; continue with resume=auto", step);
      return signals::interrupt_exit_code();
    }
    save_checkpoint(ckpts, step, elapsed);

    nlohmann::ordered_json summary = {{"stage", "finetune"}, {"steps", step}, {"train_loss", last_loss}};
    if (data.eval.count() > 0) {
      EvalResult after = run_eval();
      log::info("eval after training: nll {:.4f}, ppl {:.2f} ({} tokens)", after.nll, after.ppl, after.tokens);
      events.add_scalars(step, {{"eval/loss", after.nll}, {"eval/ppl", after.ppl}});
      if (eval_nll_before) {
        summary["eval_nll_before"] = *eval_nll_before;
        log::info("eval nll {:.4f} -> {:.4f} ({:+.1f}%)", *eval_nll_before, after.nll,
                  100.0 * (after.nll - *eval_nll_before) / *eval_nll_before);
      }
      summary["eval_nll"] = after.nll;
      summary["eval_ppl"] = after.ppl;
    }
    save_final(step);
    summary["elapsed_s"] = elapsed;
    summary["output_dir"] = out.string();
    std::printf("%s\n", summary.dump().c_str());
    std::fflush(stdout);
    return 0;
  }
};

}  // namespace

int run_finetune(const config::Config& cfg) {
  Trainer t(cfg);
  return t.run();
}

}  // namespace dsk::stages
