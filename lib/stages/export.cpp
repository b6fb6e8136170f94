// dsk export: the stage's entry, the sources it reads (stages/export.h) and the checks shared by
// the formats. Each format lives in its own file: export_gguf.cpp, export_onnx.cpp, export_hf.cpp.
#include "stages/export.h"

#include <ATen/Parallel.h>
#include <torch/nn/module.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "ckpt/safetensors.h"
#include "core/error.h"
#include "core/log.h"
#include "models/quantized.h"
#include "stages/common.h"
#include "stages/run_dir.h"
#include "stages/stages.h"

namespace dsk::stages {

namespace {
namespace stdfs = std::filesystem;

bool is_file_in(const stdfs::path& dir, const char* name) { return stdfs::is_regular_file(dir / name); }

nlohmann::json read_json(const stdfs::path& file) {
  std::ifstream in(file);
  if (!in) fail_usage("cannot read '{}'", file.string());
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail_usage_hint(fmt::format("'{}' is not valid JSON: {}", file.string(), e.what()),
                    "the file is damaged: re-create it, or export from another checkpoint");
  }
}

// The base model a run, checkpoint or adapter recorded, unless model.base replaces it.
std::string base_path(const config::Config& cfg, const std::string& recorded, const std::string& what) {
  if (cfg.has("model.base") && !cfg.get_string("model.base").empty()) return cfg.get_string("model.base");
  if (recorded.empty())
    fail_usage_hint(fmt::format("{} does not name its base model", what), "set model.base to the base model's path");
  if (!stdfs::exists(recorded))
    fail_usage_hint(fmt::format("the base model '{}' recorded by {} does not exist (relative paths are resolved "
                                "against the current directory)",
                                recorded, what),
                    "run from the directory the run was started in, or set model.base to the base model's path");
  return recorded;
}

models::LoadedModel load_fp32(const std::string& path) { return models::load_model(path, at::kFloat); }

// Applies the PEFT adapter in `dir` to src.lm.
void attach_peft_adapter(ExportSource& src, const stdfs::path& dir) {
  if (!is_file_in(dir, "adapter_config.json") || !is_file_in(dir, "adapter_model.safetensors"))
    fail_usage_hint(fmt::format("'{}' is not a PEFT adapter directory", dir.string()),
                    "point model.adapter at a directory with adapter_config.json and adapter_model.safetensors "
                    "(a dsk finetune run's adapter/)");
  try {
    auto spec = models::lora_spec_from_peft_config(read_json(dir / "adapter_config.json"));
    models::apply_lora(src.lm.model, spec);
    auto file = ckpt::SafetensorsFile::open((dir / "adapter_model.safetensors").string());
    std::map<std::string, at::Tensor> tensors;
    for (const auto& t : file->tensors()) tensors[t.name] = file->tensor(t.name);
    models::load_lora_state(src.lm.model, tensors);
    src.lora = spec;
  } catch (const Error& e) {
    throw e.context(fmt::format("applying adapter '{}'", dir.string()));
  }
}

// A PEFT adapter directory: its base, then the adapter.
ExportSource from_adapter_dir(const config::Config& cfg, const stdfs::path& dir) {
  auto config = read_json(dir / "adapter_config.json");
  ExportSource src;
  src.base_path = base_path(cfg, config.value("base_model_name_or_path", std::string()),
                            fmt::format("adapter '{}'", dir.string()));
  src.lm = load_fp32(src.base_path);
  attach_peft_adapter(src, dir);
  src.tokenizer_path = src.base_path;
  src.description = fmt::format("adapter {} over {}", dir.string(), src.base_path);
  return src;
}

// checkpoints/step-N of a finetune run: config.yaml two levels up names the base and the method.
ExportSource from_checkpoint(const config::Config& cfg, const stdfs::path& dir) {
  const stdfs::path run = dir.parent_path().parent_path();
  const stdfs::path run_config = run / "config.yaml";
  if (!stdfs::is_regular_file(run_config))
    fail_usage_hint(fmt::format("checkpoint '{}' has no config.yaml two levels up ('{}')", dir.string(),
                                run_config.string()),
                    "export from the run's output directory as dsk wrote it (output_dir/checkpoints/step-N)");
  {  // config.yaml's header: "# Resolved config ...", then "# dsk <stage> <path>"
    std::ifstream in(run_config);
    std::string line, stage_line;
    while (std::getline(in, line) && line.rfind("#", 0) == 0)
      if (line.rfind("# dsk ", 0) == 0) stage_line = line;
    if (stage_line.rfind("# dsk finetune ", 0) != 0)
      fail_usage_hint(fmt::format("checkpoint '{}' is not from a dsk finetune run ({} says '{}')", dir.string(),
                                  run_config.string(), stage_line.empty() ? "no stage" : stage_line.substr(2, 20)),
                      "export the run's model/ directory (distill and prune runs write their model there)");
  }
  config::Config run_cfg = config::load_config(finetune_schema(), run_config.string(), {});
  auto state = read_checkpoint_state(dir);
  ExportSource src;
  src.base_path = base_path(cfg, run_cfg.get_string("model.path"), fmt::format("run '{}'", run.string()));
  src.lm = load_fp32(src.base_path);
  const bool lora = state.value("method", run_cfg.get_string("method")) == "lora";
  if (lora) {
    models::LoraSpec spec;
    spec.target_modules = run_cfg.get_list("lora.targets");
    spec.r = run_cfg.get_int("lora.rank");
    spec.alpha = run_cfg.get_float("lora.alpha");
    models::apply_lora(src.lm.model, spec);
    src.lora = spec;
  }
  // The trainable tensors go back under their module names; other tensors of the checkpoint
  // (none for finetune today) are reported, never silently half-applied.
  auto file = ckpt::SafetensorsFile::open((dir / "trainable.safetensors").string());
  std::map<std::string, at::Tensor> params;
  for (auto& p : src.lm.model->named_parameters()) params[p.key()] = p.value();
  at::NoGradGuard no_grad;
  int64_t restored = 0;
  for (const auto& t : file->tensors()) {
    auto it = params.find(t.name);
    if (it == params.end())
      fail_usage_hint(fmt::format("checkpoint '{}' holds tensor '{}', which the model built from '{}' lacks",
                                  dir.string(), t.name, src.base_path),
                      "set model.base to the model the run started from");
    at::Tensor v = file->tensor(t.name);
    if (!v.sizes().equals(it->second.sizes()))
      fail_usage_hint(fmt::format("checkpoint '{}': tensor '{}' has shape {}, the model's is {}", dir.string(), t.name,
                                  models::shape_str(v.sizes()), models::shape_str(it->second.sizes())),
                      "set model.base to the model the run started from");
    it->second.copy_(v);
    ++restored;
  }
  if (restored == 0) fail_usage("checkpoint '{}' holds no tensor", dir.string());
  src.tokenizer_path = run_cfg.has("tokenizer.path") && !run_cfg.get_string("tokenizer.path").empty()
                           ? run_cfg.get_string("tokenizer.path")
                           : src.base_path;
  src.description = fmt::format("checkpoint {} (step {}, {})", dir.string(), state.value("step", int64_t{0}),
                                lora ? "lora" : "full");
  return src;
}

// A run's output directory: model/ first (a full fine-tune, a merged LoRA, a distilled or pruned
// student), then adapter/ (QLoRA runs write no model/), then the newest checkpoint.
ExportSource from_run_dir(const config::Config& cfg, const stdfs::path& dir, bool want_adapter) {
  const bool has_model = is_file_in(dir / "model", "config.json");
  const bool has_adapter = is_file_in(dir / "adapter", "adapter_config.json");
  if (has_adapter && (want_adapter || !has_model)) return from_adapter_dir(cfg, dir / "adapter");
  if (has_model) {
    ExportSource src;
    src.lm = load_fp32((dir / "model").string());
    src.base_path = src.tokenizer_path = (dir / "model").string();
    src.description = fmt::format("run output {} (model/)", dir.string());
    return src;
  }
  Checkpoints ckpts(dir, 0);
  if (auto newest = ckpts.newest()) return from_checkpoint(cfg, *newest);
  fail_usage_hint(fmt::format("run directory '{}' has no model/, adapter/ or checkpoint yet", dir.string()),
                  "wait for the run to save one, or point model.path at a model");
}

}  // namespace

ExportSource load_export_source(const config::Config& cfg, bool merge) {
  const stdfs::path path = cfg.get_string("model.path");
  const bool want_adapter = cfg.get_string("export.format") == "peft";
  if (!stdfs::exists(path))
    fail_usage_hint(fmt::format("model.path '{}' does not exist", path.string()),
                    "point model.path at a model, a dsk run output or one of its checkpoints");
  ExportSource src;
  try {
    if (stdfs::is_directory(path) && is_file_in(path, "adapter_config.json") && !is_file_in(path, "config.json")) {
      src = from_adapter_dir(cfg, path);
    } else if (stdfs::is_directory(path) && is_file_in(path, "state.json") &&
               is_file_in(path, "trainable.safetensors")) {
      src = from_checkpoint(cfg, path);
    } else if (stdfs::is_directory(path) && is_file_in(path, "config.yaml") && !is_file_in(path, "config.json")) {
      src = from_run_dir(cfg, path, want_adapter);
    } else {
      src.lm = load_fp32(path.string());
      src.base_path = src.tokenizer_path = path.string();
      src.description = fmt::format("model {}", path.string());
    }
    if (cfg.has("model.adapter") && !cfg.get_string("model.adapter").empty()) {
      if (src.lora)
        fail_usage_hint(fmt::format("{} already carries a LoRA adapter", src.description),
                        "leave model.adapter unset, or point model.path at the base model");
      attach_peft_adapter(src, cfg.get_string("model.adapter"));
      src.description += fmt::format(" + adapter {}", cfg.get_string("model.adapter"));
    }
  } catch (const Error& e) {
    throw e.context(fmt::format("reading model.path '{}'", path.string()));
  }
  if (merge && src.lora) {
    if (models::is_quantized(src.lm.model))
      fail_usage_hint(fmt::format("{}: the adapter cannot be merged into a quantized base", src.description),
                      "set model.base to the full-precision base model, or export.format=peft for the adapter alone");
    models::merge_lora(src.lm.model);
    src.merged = true;
  }
  src.lm.model->eval();
  log::info("export: source {}", src.description);
  return src;
}

std::unique_ptr<tok::Tokenizer> load_export_tokenizer(const config::Config& cfg, const ExportSource& src) {
  if (cfg.has("tokenizer.path") && !cfg.get_string("tokenizer.path").empty())
    return tok::load_tokenizer(cfg.get_string("tokenizer.path"));
  if (stdfs::is_directory(src.tokenizer_path) || stdfs::path(src.tokenizer_path).extension() == ".model" ||
      stdfs::path(src.tokenizer_path).extension() == ".json")
    return tok::load_tokenizer(src.tokenizer_path);
  fail_usage_hint(fmt::format("tokenizer.path is unset and the model '{}' does not hold a tokenizer", src.tokenizer_path),
                  "set tokenizer.path to the tokenizer.model / tokenizer.json file");
}

void copy_export_tokenizer(const config::Config& cfg, const ExportSource& src, const stdfs::path& dir) {
  copy_tokenizer_from(cfg.has("tokenizer.path") && !cfg.get_string("tokenizer.path").empty()
                          ? cfg.get_string("tokenizer.path")
                          : src.tokenizer_path,
                      dir);
}

void check_export_output(const stdfs::path& out, bool overwrite, bool directory) {
  if (out.empty()) fail_usage_hint("output is empty", "set output to the path to write");
  if (stdfs::exists(out) && !overwrite)
    fail_usage_hint(fmt::format("output '{}' already exists", out.string()),
                    "choose another output path, remove it, or set export.overwrite=true");
  if (stdfs::exists(out) && stdfs::is_directory(out) != directory)
    fail_usage_hint(fmt::format("output '{}' is a {}, this format writes a {}", out.string(),
                                stdfs::is_directory(out) ? "directory" : "file", directory ? "directory" : "file"),
                    directory ? "name a directory for output, e.g. runs/export-hf"
                              : "name a file for output, e.g. runs/model.gguf");
}

std::string export_dtype(const config::Config& cfg, const std::string& format, const ExportSource* src) {
  const std::string dtype = cfg.get_string("export.dtype");
  static const std::map<std::string, std::vector<std::string>> allowed = {
      {"gguf", {"f32", "f16", "bf16", "q8_0", "q4_0"}},
      {"onnx", {"f32", "f16"}},
      {"hf", {"f32", "f16", "bf16"}},
      {"peft", {"f32", "f16", "bf16"}}};
  const auto& ok = allowed.at(format);
  if (dtype == "auto") {
    if (format == "gguf") return "f16";
    if (format == "onnx" || format == "peft" || !src) return "f32";
    const std::string& t = src->lm.config.torch_dtype;
    return t == "bfloat16" ? "bf16" : t == "float16" ? "f16" : "f32";
  }
  if (std::find(ok.begin(), ok.end(), dtype) == ok.end())
    fail_usage_hint(fmt::format("export.dtype '{}' is not available for export.format {}", dtype, format),
                    fmt::format("use one of {} (or auto)", fmt::join(ok, ", ")));
  return dtype;
}

int run_export(const config::Config& cfg) {
  const int64_t threads = cfg.get_int("threads");
  if (threads < 0) fail_usage_hint("threads must be >= 0", "use 0 for all cores");
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  const std::string format = cfg.get_string("export.format");
  export_dtype(cfg, format);  // refuse a dtype the format cannot hold before loading anything
  if (format == "gguf") return export_gguf(cfg);
  if (format == "onnx") return export_onnx(cfg);
  if (format == "hf") return export_hf(cfg);
  return export_peft(cfg);
}

}  // namespace dsk::stages
