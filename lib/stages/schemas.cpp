// The config schema of every stage: the one place that declares keys, types, defaults and help.
// Component keys (optimizer, schedule) come from their registries in lib/train.
#include "config/config.h"
#include "core/error.h"
#include "data/dataset.h"
#include "stages/stages.h"
#include "train/optim.h"
#include "train/schedule.h"

namespace dsk::stages {
namespace {

using config::KeySpec;
using config::Schema;
using config::Type;

Type type_from_registry(const std::string& t) {
  if (t == "float") return Type::Float;
  if (t == "int") return Type::Int;
  if (t == "bool") return Type::Bool;
  if (t == "float_pair" || t == "floats") return Type::FloatList;
  return Type::String;
}

void add_runtime_keys(Schema& s);

void add_model_keys(Schema& s) {
  s.add_required("model.path", Type::Path, "Hugging Face model directory or llama2.c .bin checkpoint");
  add_runtime_keys(s);
}

// Tokenizer, device, dtype, seed, threads.
void add_runtime_keys(Schema& s) {
  s.add("tokenizer.path", Type::Path, "~",
        "tokenizer.model / tokenizer.json (default: the one inside the model directory)");
  s.add_enum("device", {"auto", "cpu", "cuda"}, "auto", "where to run (auto: cuda when available)");
  s.add_enum("dtype", {"fp32", "bf16", "fp16"}, "fp32",
             "compute dtype (eval/generate: the weights'; finetune: fp32 master weights + autocast, fp16 on CUDA only "
             "with dynamic loss scaling)");
  s.add("seed", Type::Int, "0", "random seed (same seed + config -> same results on CPU)");
  s.add("threads", Type::Int, "0", "CPU threads for compute (0: all cores)");
}

// Multi-process runs (dsk launch, torchrun variables, srun); ignored in a single process.
void add_dist_keys(Schema& s) {
  s.add_enum("dist.backend", {"auto", "gloo", "nccl"}, "auto", "collectives: nccl on CUDA, gloo on CPU (auto picks)");
  s.add("dist.timeout_s", Type::Float, "300",
        "seconds to wait for the other ranks (rendezvous and each collective) before failing");
}

Type type_from_doc(const std::string& t) {
  if (t == "enum") return Type::Enum;
  if (t == "path") return Type::Path;
  return type_from_registry(t);
}

KeySpec spec_from_doc(const std::string& prefix, const data::KeyDoc& d) {
  KeySpec k;
  k.key = prefix + "." + d.key;
  k.type = type_from_doc(d.type);
  k.default_value = d.default_value;
  k.help = d.help;
  k.choices = d.choices;
  return k;
}

// data.train.* / data.eval.* from lib/data's key list; `path` required where the stage needs it.
void add_data_source(Schema& s, const std::string& prefix, bool required) {
  for (const auto& d : data::data_source_keys()) {
    KeySpec k = spec_from_doc(prefix, d);
    if (d.key == "path" && required) {
      k.required = true;
      k.default_value = "~";
      k.help = "data file";
    }
    s.add(k);
  }
}

void add_data_keys(Schema& s, bool train, bool train_path_required = true) {
  if (train) add_data_source(s, "data.train", train_path_required);
  add_data_source(s, "data.eval", !train);
  for (const auto& d : data::data_keys()) {
    if (d.scope == (train ? "eval" : "train")) continue;
    s.add(spec_from_doc("data", d));
  }
}

void add_generate_keys(Schema& s) {
  s.add("generate.prompt", Type::String, "\"\"", "text to continue (BOS is prepended)");
  s.add("generate.max_new_tokens", Type::Int, "128", "tokens to generate at most (stops at EOS)");
  s.add("generate.temperature", Type::Float, "0.0", "0 = greedy; otherwise softmax temperature");
  s.add("generate.top_k", Type::Int, "0", "keep the k most likely tokens (0: off)");
  s.add("generate.top_p", Type::Float, "1.0", "nucleus sampling mass (1.0: off)");
  s.add("generate.num_samples", Type::Int, "1",
        "independent samples (seeds seed, seed+1, ...), each followed by a blank line");
}

// optim.name selects an optimizer; each registry key becomes optim.<key> valid only for
// the optimizers that declare it.
void add_registry_keys(Schema& s, const std::string& section, const std::vector<train::ComponentInfo>& reg,
                       const std::string& default_name, const std::string& help) {
  std::vector<std::string> names;
  for (const auto& c : reg) names.push_back(c.name);
  s.add_enum(section + ".name", names, default_name, help);
  // A key shared by several components is declared once, valid for all of them.
  std::vector<std::string> order;
  std::map<std::string, KeySpec> specs;
  for (const auto& c : reg) {
    for (const auto& p : c.params) {
      std::string key = section + "." + p.key;
      auto it = specs.find(key);
      if (it == specs.end()) {
        KeySpec k;
        k.key = key;
        k.type = type_from_registry(p.type);
        k.default_value = p.default_value;
        k.help = p.help;
        k.when_key = section + ".name";
        order.push_back(key);
        it = specs.emplace(key, k).first;
      }
      it->second.when_values.push_back(c.name);
      // Components that share a key may default it differently (betas: adamw vs lion): then the
      // schema leaves it unset and the component applies its own default.
      if (it->second.default_value != p.default_value && it->second.default_value != "~") {
        it->second.help += " (default per " + section + ".name)";
        it->second.default_value = "~";
      }
    }
  }
  for (const auto& key : order) {
    KeySpec k = specs[key];
    if (k.when_values.size() == names.size()) k.when_key.clear(), k.when_values.clear();
    s.add(k);
  }
}

// The weight scheme and layer selection shared by quant.* (dsk quantize) and qat.* (finetune).
void add_scheme_keys(Schema& s, const std::string& p) {
  s.add(p + ".bits", Type::Int, "4", "weight bits: 8, 4, 3 or 2");
  s.add(p + ".group_size", Type::Int, "32",
        "> 0: group-wise scales over this many input columns (the last group may be shorter); 0: per-channel; -1: "
        "per-tensor");
  s.add(p + ".symmetric", Type::Bool, "true", "symmetric (zero point 2^(bits-1)) or asymmetric (min/max) ranges");
  s.add(p + ".include", Type::StringList, "[\"*\"]",
        "linear layers to quantize: names (q_proj) or globs on the full name (model.layers.*.mlp.*)");
  s.add(p + ".exclude", Type::StringList, "[lm_head]", "linear layers kept in full precision (embeddings always are)");
}

// The training loop's keys (stages/trainer.h), shared by finetune and distill.
void add_training_keys(Schema& s) {
  s.add_required("output_dir", Type::Path, "everything the run writes goes here");
  s.add_enum("method", {"lora", "full"}, "lora", "full: train every (unfrozen) weight; lora: low-rank adapters");
  s.add("max_steps", Type::Int, "~", "optimizer steps to run (unset: from epochs)");
  s.add("epochs", Type::Float, "1", "passes over the training data when max_steps is unset");
  s.add("batch_size", Type::Int, "8", "windows per micro-batch (per process)");
  s.add("grad_accum", Type::Int, "1", "micro-batches accumulated per optimizer step");
  s.add("clip_grad_norm", Type::Float, "1.0", "clip the global gradient norm to this (0: off)");
  s.add("resume", Type::String, "false",
        "false: refuse a non-empty output_dir; auto: continue from its newest checkpoint; or a checkpoint path");
  s.add("lora.rank", Type::Int, "8", "LoRA rank r");
  s.add("lora.alpha", Type::Float, "16", "LoRA alpha (updates are scaled by alpha/r)");
  s.add("lora.dropout", Type::Float, "0.0", "dropout on the LoRA input");
  s.add("lora.targets", Type::StringList, "[q_proj, k_proj, v_proj, o_proj]",
        "modules that get adapters: names (q_proj) or globs on the full name (*.mlp.*)");
  s.add("freeze.layers", Type::String, "\"\"", "decoder layers to freeze, e.g. \"0-3\" or \"0,2,5\"");
  s.add("freeze.patterns", Type::StringList, "[]", "globs of parameter names to freeze (full method)");
  s.add("freeze.embeddings", Type::Bool, "false", "freeze the token embeddings (full method)");
  s.add("optim.lr", Type::Float, "3e-4", "peak learning rate");
  add_registry_keys(s, "optim", train::optimizer_registry(), "adamw", "optimizer");
  add_registry_keys(s, "schedule", train::schedule_registry(), "cosine", "learning-rate schedule");
  s.add("eval.every", Type::Int, "0", "evaluate every N steps (0: only before and after training)");
  s.add("eval.max_batches", Type::Int, "0", "batches per evaluation (0: the whole eval set)");
  s.add("checkpoint.every", Type::Int, "0", "save a checkpoint every N steps (0: only at the end)");
  s.add("checkpoint.keep_last", Type::Int, "2", "checkpoints to keep (older ones are deleted)");
  s.add("log.every", Type::Int, "10", "plain log line (when not on a terminal) every N steps");
  s.add("save.merged", Type::Bool, "true", "lora: also write the merged model as model/");
  add_dist_keys(s);
  s.add("dist.bucket_mb", Type::Float, "25", "gradient all-reduce bucket size in MiB (smaller: earlier overlap)");
  s.add("zero", Type::Int, "0",
        "1: shard the optimizer state over the ranks (ZeRO stage 1); checkpoints stay world-size independent");
  s.add("activation_checkpointing", Type::Bool, "false",
        "recompute each decoder block in the backward pass instead of keeping its activations");
  s.add_enum("sparsity.keep", {"auto", "true", "false"}, "auto",
             "keep pruned weights at zero (auto: when config.json has dsk_sparsity, as dsk prune writes; true: the "
             "exact zeros of every linear layer; false: let them fill in)");
}

Schema make_finetune_schema() {
  Schema s("finetune", "Fine-tune a model, fully or with LoRA, on text/JSONL/token data.");
  add_model_keys(s);
  add_data_keys(s, true);
  add_training_keys(s);
  s.add("qat.enabled", Type::Bool, "false",
        "quantization-aware training (method full): fake-quantize the selected layers, save model/ quantized");
  add_scheme_keys(s, "qat");
  s.add_enum("qat.activations", {"none", "dynamic"}, "none", "QAT: int8 per-token activations too (needs bits 8)");
  s.add("qat.distill", Type::Bool, "true",
        "QAT loss: KL from the full-precision model (true, LLM-QAT) or cross-entropy on the data (false)");
  return s;
}

Schema make_distill_schema() {
  Schema s("distill", "Distill a teacher into a student (KL/JS on logits with temperature, hidden-state losses).");
  s.add_required("teacher.path", Type::Path, "the teacher: Hugging Face model directory or llama2.c .bin checkpoint");
  add_runtime_keys(s);
  s.add_enum("student.init.from", {"teacher", "path", "scratch"}, "teacher",
             "teacher: the teacher's layers listed in student.init.layers; path: student.path; scratch: the "
             "teacher's family with the student.* sizes, randomly initialized");
  s.add("student.init.layers", Type::StringList, "[]",
        "from teacher: the teacher layers the student keeps, e.g. [0, 2, 4] (empty: all)");
  s.add("student.path", Type::Path, "~", "from path: the student model (same vocabulary as the teacher)");
  for (const char* k : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads"})
    s.add(std::string("student.") + k, Type::Int, "0", "from scratch: the student's size (0: the teacher's)");
  add_data_keys(s, true, /*train_path_required=*/false);  // only for data.train.source file (the stage checks)
  s.add_enum("data.train.source", {"file", "teacher"}, "file",
             "file: data.train.path; teacher: sequences sampled from the teacher (kept as output_dir/teacher_samples.i32)");
  s.add("data.train.prompts", Type::Path, "~", "source teacher: prompts, one per line (unset: unconditional, from BOS)");
  s.add("data.train.num_samples", Type::Int, "256", "source teacher: sequences to sample");
  s.add("data.train.max_new_tokens", Type::Int, "256", "source teacher: tokens per sequence at most (stops at EOS)");
  s.add("data.train.temperature", Type::Float, "1.0", "source teacher: sampling temperature (0: greedy)");
  s.add("data.train.top_k", Type::Int, "0", "source teacher: top-k sampling (0: off)");
  s.add("data.train.top_p", Type::Float, "1.0", "source teacher: nucleus sampling mass (1.0: off)");
  add_training_keys(s);
  s.add_enum("distill.loss", {"forward_kl", "reverse_kl", "js"}, "forward_kl",
             "divergence between teacher and student next-token distributions");
  s.add("distill.temperature", Type::Float, "1.0", "softmax temperature T of both models (the loss is scaled by T^2)");
  s.add("distill.alpha", Type::Float, "0.5", "weight of the distillation term; 1 - alpha weights cross-entropy on the data");
  s.add("distill.top_k", Type::Int, "0", "match only the teacher's k most likely tokens, renormalized (0: all)");
  s.add("distill.hidden.weight", Type::Float, "0", "weight of the hidden-state loss (0: off)");
  s.add_enum("distill.hidden.loss", {"mse", "cosine"}, "mse", "hidden-state distance (TinyBERT mse, DistilBERT cosine)");
  s.add("distill.hidden.layer_map", Type::StringList, "[]",
        "\"student:teacher\" layer pairs whose outputs are matched (empty: each student layer to its teacher "
        "layer, or evenly spaced)");
  return s;
}

Schema make_eval_schema() {
  Schema s("eval", "Mean token NLL and perplexity of a model on a dataset, written to eval.json.");
  add_model_keys(s);
  add_data_keys(s, false);
  s.add("batch_size", Type::Int, "8", "windows per forward pass");
  s.add("output_dir", Type::Path, "~", "where eval.json goes (unset: only the stdout summary)");
  s.add("max_batches", Type::Int, "0", "stop after this many batches (0: the whole set)");
  add_dist_keys(s);
  return s;
}

Schema make_generate_schema() {
  Schema s("generate", "Generate text with a KV cache; the text goes to stdout, logs to stderr.");
  add_model_keys(s);
  add_generate_keys(s);
  return s;
}

Schema make_quantize_schema() {
  Schema s("quantize", "Quantize a model's linear layers (RTN or GPTQ, W8A8) and write a GPTQ-layout model + report.");
  add_model_keys(s);
  add_data_source(s, "data.calib", true);
  add_data_source(s, "data.eval", false);
  for (const auto& d : data::data_keys())
    if (d.scope != "train") s.add(spec_from_doc("data", d));
  s.add_required("output_dir", Type::Path, "quant_report.json, config.yaml and model/ go here");
  s.add("batch_size", Type::Int, "8", "windows per forward pass (calibration and evaluation)");
  s.add("eval.max_batches", Type::Int, "0", "eval batches for the end-to-end NLL/KL (0: the whole eval set)");
  add_scheme_keys(s, "quant");
  s.add_enum("quant.method", {"gptq", "rtn"}, "gptq", "rtn: round to nearest; gptq: error-compensating (calibration)");
  s.add_enum("quant.activations", {"none", "dynamic", "static"}, "none",
             "int8 activations (W8A8, needs bits 8): dynamic per token, or static per-layer scales from calibration");
  s.add("quant.calib_samples", Type::Int, "128", "calibration windows of data.seq_len tokens from data.calib");
  s.add("quant.damp", Type::Float, "0.01", "GPTQ dampening added to the Hessian diagonal, relative to its mean");
  s.add("quant.act_order", Type::Bool, "false", "GPTQ: quantize columns by decreasing activation energy (desc_act)");
  s.add("quant.block_size", Type::Int, "128", "GPTQ: columns per lazy-update block");
  s.add("quant.sensitivity_only", Type::Bool, "false", "write the report only, no model/");
  return s;
}

Schema make_prune_schema() {
  Schema s("prune", "Prune weights (magnitude, Wanda, SparseGPT; N:M) or structure (MLP neurons, KV groups, layers).");
  add_model_keys(s);
  add_data_source(s, "data.calib", false);
  add_data_source(s, "data.eval", false);
  for (const auto& d : data::data_keys())
    if (d.scope != "train") s.add(spec_from_doc("data", d));
  s.add_required("output_dir", Type::Path, "prune_report.json, config.yaml and model/ go here");
  s.add("batch_size", Type::Int, "8", "windows per forward pass (calibration, evaluation, timing)");
  s.add("eval.max_batches", Type::Int, "0", "eval batches for the NLL before/after (0: the whole eval set)");
  s.add_enum("prune.method", {"magnitude", "wanda", "sparsegpt", "mlp_neurons", "attention_heads", "layers"}, "wanda",
             "unstructured / N:M criterion (magnitude, wanda, sparsegpt), or what structured pruning removes "
             "(mlp_neurons, attention_heads as whole KV groups, layers)");
  s.add("prune.sparsity", Type::Float, "0.5",
        "fraction in [0, 1) of the selected weights (unstructured) or of the units of each layer (structured) to remove");
  s.add("prune.pattern", Type::String, "\"\"", "N:M semi-structured pattern, e.g. \"2:4\" (keep 2 of every 4); "
        "implies the sparsity");
  s.add_enum("prune.scope", {"layer", "global"}, "layer",
             "magnitude: the same sparsity in every layer, or one threshold over all selected layers");
  s.add_enum("prune.importance", {"magnitude", "activation", "taylor"}, "activation",
             "structured: rank units by weight norm, activation energy (layers: block influence) or first-order "
             "Taylor |sum w * grad| on calibration data");
  s.add("prune.include", Type::StringList, "[\"*\"]",
        "unstructured: linear layers to prune, names (q_proj) or globs on the full name (model.layers.*.mlp.*)");
  s.add("prune.exclude", Type::StringList, "[lm_head]", "unstructured: linear layers left dense (embeddings always are)");
  s.add("prune.calib_samples", Type::Int, "128", "calibration windows of data.seq_len tokens from data.calib");
  s.add("prune.damp", Type::Float, "0.01", "SparseGPT dampening added to the Hessian diagonal, relative to its mean");
  s.add("prune.block_size", Type::Int, "128", "SparseGPT: columns per block (mask selection and lazy updates)");
  return s;
}

Schema make_export_schema() {
  Schema s("export",
           "Export a model with its tokenizer: GGUF (llama.cpp), ONNX, a Hugging Face directory or a PEFT adapter.");
  s.add_required("model.path", Type::Path,
                 "a model (HF directory, llama2.c .bin, dsk quantize model/), a dsk run output directory, one of its "
                 "checkpoints/step-N, or a PEFT adapter directory (docs/export.md)");
  s.add("model.adapter", Type::Path, "~", "a PEFT adapter directory applied to model.path (merged unless format peft)");
  s.add("model.base", Type::Path, "~",
        "the base model of a run, checkpoint or adapter, replacing the path it recorded");
  s.add("tokenizer.path", Type::Path, "~",
        "tokenizer.model / tokenizer.json (default: the one inside the model directory)");
  s.add("threads", Type::Int, "0", "CPU threads (0: all cores)");
  s.add_enum("export.format", {"gguf", "onnx", "hf", "peft"}, "gguf",
             "gguf: one file for llama.cpp; onnx: an ONNX model; hf: a Hugging Face directory (LoRA merged); peft: "
             "the LoRA adapter alone");
  s.add_enum("export.dtype", {"auto", "f32", "f16", "bf16", "q8_0", "q4_0"}, "auto",
             "gguf: 2-D tensors' type, 1-D ones F32, rows not divisible by 32 F16 for q8_0/q4_0 (auto: f16); onnx: "
             "f32|f16 (auto: f32); hf/peft: f32|f16|bf16 (auto: the source's, peft f32)");
  s.add("export.shard_mb", Type::Float, "5000", "hf: largest model-*.safetensors shard in MiB (0: one file)");
  s.add("export.onnx.opset", Type::Int, "17", "onnx: the default-domain opset (only 17 is written: docs/export.md)");
  s.add("export.onnx.kv_cache", Type::Bool, "false",
        "onnx: past_key_values.N.key/value inputs and present.N.key/value outputs for incremental decoding");
  s.add_enum("export.onnx.external_data", {"auto", "true", "false"}, "auto",
             "onnx: weights in OUTPUT.data beside the model (auto: when the model exceeds 2 GiB, protobuf's limit)");
  s.add("export.name", Type::String, "\"\"", "gguf: general.name (default: the model's file/directory name)");
  s.add("export.overwrite", Type::Bool, "false", "replace an existing output (only once the new one is complete)");
  s.add_required("output", Type::Path,
                 "gguf/onnx: the file to write (runs/model.gguf); hf/peft: the directory (refused when it exists)");
  return s;
}

// dsk profile: the profile.* keys, and output_dir (required: report.html and trace.json go there).
const char* const kProfileSummary =
    "Profile warm-up + measured steps of a stage (finetune, eval, generate): report.html, summary.json and "
    "trace.json in output_dir. A profile config is the stage's config plus these keys: every key of the stage "
    "named by profile.stage is accepted too (docs/profiling.md).";

void add_profile_keys(Schema& s) {
  KeySpec stage;
  stage.key = "profile.stage";
  stage.type = Type::Enum;
  stage.choices = {"finetune", "eval", "generate"};
  stage.default_value = "~";
  stage.required = true;
  stage.help = "the stage whose steps are profiled; its keys are accepted too";
  s.add(stage);
  s.add("profile.warmup_steps", Type::Int, "2", "steps run before measuring (allocations, caches, first-call costs)");
  s.add("profile.steps", Type::Int, "5",
        "measured steps (finetune: optimizer steps; eval: batches; generate: whole sequences); at least 1");
  s.add("profile.record_shapes", Type::Bool, "true", "record operator input shapes (top operators by shape)");
  s.add("profile.top_ops", Type::Int, "25", "operators listed in the report");
  s.add("profile.peak_flops", Type::Float, "~",
        "FLOP/s to compute MFU against instead of measuring (e.g. a GPU's documented dense bf16 rate)");
  s.add("profile.memory_interval_ms", Type::Int, "10", "resident memory sampling interval");
}

KeySpec profile_output_dir() {
  KeySpec k;
  k.key = "output_dir";
  k.type = Type::Path;
  k.default_value = "~";
  k.required = true;
  k.help = "report.html, summary.json, trace.json and config.yaml go here (a new or empty directory)";
  return k;
}

Schema make_profile_schema() {
  Schema s("profile", kProfileSummary);
  s.add(profile_output_dir());
  add_profile_keys(s);
  return s;
}

// The stage's schema with output_dir required and the profile keys.
Schema make_profile_schema_for(const Schema& stage) {
  Schema s("profile", kProfileSummary);
  bool has_output = false;
  for (const auto& k : stage.keys()) {
    if (k.key == "output_dir") {
      s.add(profile_output_dir());
      has_output = true;
    } else {
      s.add(k);
    }
  }
  if (!has_output) s.add(profile_output_dir());
  add_profile_keys(s);
  return s;
}

}  // namespace

const config::Schema& profile_schema() {
  static const Schema s = make_profile_schema();
  return s;
}

const config::Schema& profile_schema_for_stage(const std::string& stage) {
  static const Schema finetune = make_profile_schema_for(finetune_schema());
  static const Schema eval = make_profile_schema_for(eval_schema());
  static const Schema generate = make_profile_schema_for(generate_schema());
  if (stage == "finetune") return finetune;
  if (stage == "eval") return eval;
  if (stage == "generate") return generate;
  fail("internal: no profile schema for stage '{}'", stage);
}

const config::Schema& export_schema() {
  static const Schema s = make_export_schema();
  return s;
}

const config::Schema& prune_schema() {
  static const Schema s = make_prune_schema();
  return s;
}

const config::Schema& quantize_schema() {
  static const Schema s = make_quantize_schema();
  return s;
}

const config::Schema& distill_schema() {
  static const Schema s = make_distill_schema();
  return s;
}

const config::Schema& finetune_schema() {
  static const Schema s = make_finetune_schema();
  return s;
}
const config::Schema& eval_schema() {
  static const Schema s = make_eval_schema();
  return s;
}
const config::Schema& generate_schema() {
  static const Schema s = make_generate_schema();
  return s;
}

}  // namespace dsk::stages
