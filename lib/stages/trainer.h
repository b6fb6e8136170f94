// Trainer — the training loop shared by `dsk finetune` and `dsk distill` (docs/training.md).
//
// Shape of a run: setup (validate inputs, load model/tokenizer/data, then claim output_dir) ->
// resume (trainable weights, optimizer, RNG, data position) -> train loop (accumulate, clip,
// step, log, eval, checkpoint, stop on a signal) -> save (checkpoint, adapter/, model/) -> eval
// after -> one JSON line on stdout.
//
// Data parallel (W ranks, docs/distributed.md): every rank runs this same loop on its own
// shard of each global batch; gradients are summed in buckets during the backward pass of the
// last micro-step (dist::GradSync), and the loss of every rank is weighted by the global token
// count, so W ranks at batch b take exactly the step of one process at batch W*b. Each step
// starts with one small all-reduce that agrees on the token count and on stopping (a signal to
// any rank stops all after the same step). With zero: 1 each rank keeps the optimizer state of
// the parameters it owns, receives their summed gradients only (reduce-scatter), updates them
// and broadcasts them. Only rank 0 writes files.
//
// A stage customizes the loop through TrainHooks: where the model comes from, extra setup,
// extra trainable tensors (kept in checkpoints, not in model/), the training data and the loss.
// Pruned models (config.json dsk_sparsity, or sparsity.keep: true) keep their zeros: masked
// gradients and weights for full training, masked LoRA updates (models/linear.h).
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "data/dataset.h"
#include "data/loader.h"
#include "dist/ddp.h"
#include "models/lora.h"
#include "models/quantized.h"
#include "profile/phases.h"
#include "stages/common.h"
#include "stages/evaluate.h"
#include "stages/run_dir.h"
#include "train/amp.h"
#include "train/loss.h"
#include "train/optim.h"
#include "train/schedule.h"

namespace dsk::stages {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

struct Trainer;

struct TrainHooks {
  std::string stage = "finetune";       // log lines, metadata, summary
  std::string model_key = "model.path";  // where the tokenizer (and by default the model) come from
  // The model to train (default: load_model_for(cfg, rt, model_key)).
  std::function<models::LoadedModel(Trainer&)> load_model;
  // The training data source (default: data.train.*); may write files it needs first.
  std::function<data::DataSpec(Trainer&)> train_spec;
  // After the model (LoRA, freezing) is set up and before the trainable list is made, still
  // before output_dir is claimed: load what else the loss needs, append extra trainable tensors.
  std::function<void(Trainer&)> after_model;
  // Right after output_dir is claimed (rank 0 only).
  std::function<void(Trainer&)> after_claim;
  // The loss of one micro-batch, under autocast (default: cross-entropy, or QAT's KD).
  std::function<train::LossResult(Trainer&, const BatchTensors&)> loss;

  // dsk profile (stages/profile.cpp); a normal run leaves these as they are and pays nothing.
  profile::PhaseTimer* phases = nullptr;  // times each step's phases (docs/profiling.md)
  // Before each step, with the number of steps done (profile starts measuring after warm-up).
  std::function<void(Trainer&, int64_t)> before_step;
  int64_t max_steps = 0;  // > 0: run exactly this many steps, whatever max_steps / epochs say
  bool artifacts = true;  // false: no eval before/after, no final checkpoint, model/ or stdout summary
};

struct Trainer {
  const config::Config& cfg;
  TrainHooks hooks;
  Runtime rt;
  std::unique_ptr<tok::Tokenizer> tok;
  models::LoadedModel lm;
  data::TrainData data;
  bool lora = false;
  models::LoraSpec lora_spec;
  // qat.enabled: the fake-quantized layers and their scheme (converted to a quantized model/)
  std::vector<std::pair<std::string, models::LoraLinearImpl*>> qat_layers;
  std::shared_ptr<quant::FakeQuant> qat;
  models::Llama teacher{nullptr};  // qat.distill / dsk distill: the frozen teacher
  // Trainable tensors beyond the model's (distill's projections): optimized, checkpointed and
  // broadcast like the model's, never saved in model/.
  NamedTensors extra_trainable;
  // Pruned layers whose zeros training keeps: (layer, keep mask).
  std::vector<std::pair<models::LoraLinearImpl*, at::Tensor>> sparse_layers;
  NamedTensors trainable;
  std::vector<at::Tensor> trainable_list;
  std::unique_ptr<train::Optimizer> opt;
  std::unique_ptr<train::Schedule> schedule;
  std::unique_ptr<data::Loader> loader;
  std::shared_ptr<dist::Comm> comm;
  bool main_rank = true;
  int world = 1;
  std::unique_ptr<dist::GradSync> grad_sync;  // world > 1
  bool zero = false;                           // ZeRO-1: optimizer state sharded over the ranks
  std::vector<std::vector<at::Tensor>> owned;  // zero: the trainable tensors each rank updates
  std::set<std::string> owned_names;           // zero: this rank's
  // Mixed precision: dtype bf16/fp16 keeps fp32 master weights and runs the forward under autocast;
  // fp16 scales the loss dynamically.
  at::ScalarType amp_dtype = at::kFloat;
  train::LossScaler scaler{false};
  int64_t total_steps = 0;
  std::optional<double> eval_nll_before;  // kept in state.json so a resumed run still reports it
  int64_t grad_accum = 1;
  stdfs::path out;
  nlohmann::ordered_json summary_extra = nlohmann::ordered_json::object();  // added to the stdout summary

  Trainer(const config::Config& c, TrainHooks h = {}) : cfg(c), hooks(std::move(h)) {}

  int run();

  // Windows of one global batch: what a loader position is counted in, so that a checkpoint
  // resumes at any world size whose global batch divides the position.
  int64_t global_batch() const { return cfg.get_int("batch_size") * world; }

  // Everything before training; rt (and so the process group) is already set up.
  void setup();
  // Setup on every rank, then one all-reduce so that a failure on any rank stops all of them
  // with its exit code (the failing rank prints the error; the others say which rank failed).
  void setup_agreed();
  // Quantization-aware training (qat.enabled): fake quantization with a straight-through
  // estimator on the selected linear layers; save_final converts them to a quantized model/.
  void setup_qat();
  // QAT's end: each fake-quantized layer becomes the quantized layer it has been simulating.
  void convert_qat();
  // sparsity.keep: the masks of the pruned layers (config.json dsk_sparsity, or every layer's
  // exact zeros with sparsity.keep: true).
  void setup_sparsity();
  // Zeroes the gradients (before clipping) or the weights (after the step) of pruned weights.
  void mask_gradients();
  void mask_weights();

  // Collective (ZeRO gathers the optimizer state); rank 0 writes.
  void save_checkpoint(Checkpoints& ckpts, int64_t step, double elapsed);
  // This rank's batch index for a saved position: checkpoints count windows of the epoch, so a
  // run saved at W ranks x batch b resumes at W' x b' when W' * b' divides that count.
  int64_t resume_index(const nlohmann::json& state, const stdfs::path& dir) const;
  // Returns the step to continue after, and the elapsed time so far.
  std::pair<int64_t, double> restore(const stdfs::path& dir);

  EvalResult run_eval();
  void save_final(int64_t step);
};

}  // namespace dsk::stages
