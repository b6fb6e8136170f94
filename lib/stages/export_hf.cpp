// dsk export, formats hf and peft: a Hugging Face directory (LoRA merged, optional dtype
// conversion) or the LoRA adapter alone in PEFT's layout, from any source stages/export.h reads.
// Both are written into a staging directory renamed into place: an existing output is replaced
// only with export.overwrite, and only once the new one is complete.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "ckpt/safetensors.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"
#include "models/llama2c.h"
#include "models/quantized.h"
#include "stages/common.h"
#include "stages/export.h"

namespace dsk::stages {

namespace {
namespace stdfs = std::filesystem;

at::ScalarType torch_dtype(const std::string& d) {
  return d == "bf16" ? at::kBFloat16 : d == "f16" ? at::kHalf : at::kFloat;
}

uint64_t directory_bytes(const stdfs::path& dir) {
  uint64_t n = 0;
  for (const auto& e : stdfs::directory_iterator(dir))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

void print_summary(nlohmann::json summary, const stdfs::path& out) {
  summary["output"] = out.string();
  summary["bytes"] = directory_bytes(out);
  std::printf("%s\n", summary.dump().c_str());
}

}  // namespace

int export_hf(const config::Config& cfg) {
  const stdfs::path out = cfg.get_string("output");
  check_export_output(out, cfg.get_bool("export.overwrite"), /*directory=*/true);
  ExportSource src = load_export_source(cfg, /*merge=*/true);
  const std::string dtype = export_dtype(cfg, "hf", &src);
  log_resolved_config(cfg);
  auto& model = src.lm.model;
  if (models::is_quantized(model)) {
    if (cfg.get_string("export.dtype") != "auto")
      fail_usage_hint(fmt::format("{} is quantized: its integer weights cannot be converted to {}", src.description,
                                  dtype),
                      "leave export.dtype=auto (the quantized directory is copied as it is)");
  } else if (model->dtype() != torch_dtype(dtype)) {
    model->to(torch_dtype(dtype));
  }
  const double shard_mb = cfg.get_float("export.shard_mb");
  if (shard_mb < 0) fail_usage_hint("export.shard_mb must be >= 0", "use 0 for one model.safetensors");

  const double t0 = now_s();
  if (out.has_parent_path()) stdfs::create_directories(out.parent_path());
  {
    fs::StagingDir dir(out);
    models::save_model_hf(dir.path().string(), model, artifact_metadata(cfg, "export"),
                          static_cast<uint64_t>(shard_mb * 1024.0 * 1024.0));
    copy_export_tokenizer(cfg, src, dir.path());
    dir.commit();
  }
  const auto n_tensors = models::state_tensors(model).size();
  log::info("export: wrote {} (Hugging Face, {}{}, {} tensors) in {:.2f}s", out.string(), dtype,
            src.merged ? ", LoRA merged" : "", n_tensors, now_s() - t0);
  print_summary({{"format", "hf"}, {"dtype", dtype}, {"tensors", n_tensors}, {"lora_merged", src.merged},
                 {"source", src.description}},
                out);
  return 0;
}

int export_peft(const config::Config& cfg) {
  const stdfs::path out = cfg.get_string("output");
  check_export_output(out, cfg.get_bool("export.overwrite"), /*directory=*/true);
  ExportSource src = load_export_source(cfg, /*merge=*/false);
  if (!src.lora)
    fail_usage_hint(fmt::format("{} has no LoRA adapter to export", src.description),
                    "point model.path at a LoRA run (its output, adapter/ or a checkpoint), or use export.format=hf");
  const std::string dtype = export_dtype(cfg, "peft", &src);
  log_resolved_config(cfg);

  auto tensors = models::lora_state_tensors(src.lm.model);
  // PEFT adapters apply to the Hugging Face layout of the base: in a llama2.c (Interleaved) base,
  // the output rows of q_proj/k_proj are ordered differently, so B's rows are permuted the same
  // way the base's are when it is converted (models/llama2c.h).
  const auto& mc = src.lm.config;
  const bool interleaved = mc.rope_style != models::RopeStyle::Half;
  for (auto& [name, t] : tensors) {
    if (interleaved && name.size() > 14 && name.compare(name.size() - 14, 14, ".lora_B.weight") == 0) {
      if (name.find("self_attn.q_proj.") != std::string::npos)
        t = models::permute_rope_rows(t, mc.num_attention_heads, models::RopeStyle::Half);
      else if (name.find("self_attn.k_proj.") != std::string::npos)
        t = models::permute_rope_rows(t, mc.num_key_value_heads, models::RopeStyle::Half);
    }
    t = t.to(torch_dtype(dtype)).contiguous();
  }
  if (interleaved)
    log::warn("export: the base '{}' is a llama2.c checkpoint: the adapter is written for its Hugging Face form "
              "(dsk export export.format=hf model.path={})",
              src.base_path, src.base_path);

  if (out.has_parent_path()) stdfs::create_directories(out.parent_path());
  {
    fs::StagingDir dir(out);
    auto config = models::peft_adapter_config_json(*src.lora, src.base_path);
    fs::write_file_atomic(dir.path() / "adapter_config.json", config.dump(2));
    ckpt::save_safetensors((dir.path() / "adapter_model.safetensors").string(), tensors,
                           artifact_metadata(cfg, "export"));
    dir.commit();
  }
  log::info("export: wrote {} (PEFT LoRA adapter, r={}, {} tensors, {})", out.string(), src.lora->r, tensors.size(),
            dtype);
  print_summary({{"format", "peft"}, {"dtype", dtype}, {"tensors", tensors.size()}, {"rank", src.lora->r},
                 {"source", src.description}},
                out);
  return 0;
}

}  // namespace dsk::stages
