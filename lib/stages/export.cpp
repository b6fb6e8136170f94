// dsk export: a model (+ its tokenizer) in a format an inference engine loads. GGUF for llama.cpp
// today (F32/F16/BF16/Q8_0/Q4_0, lib/export/gguf.h); export.format leaves room for ONNX, Hugging
// Face safetensors and PEFT adapters (docs/export.md).
//
// Order: check the output path, load model and tokenizer, build the GGUF (metadata, tensor plan:
// refusals happen here), then write it through a temporary file renamed into place.
#include <ATen/Parallel.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "export/gguf.h"
#include "models/loader.h"
#include "stages/common.h"
#include "stages/stages.h"

namespace dsk::stages {

namespace {
namespace stdfs = std::filesystem;

void check_output(const stdfs::path& out, bool overwrite) {
  if (stdfs::exists(out) && !overwrite)
    fail_usage_hint(fmt::format("output '{}' already exists", out.string()),
                    "choose another output path, remove it, or set export.overwrite=true");
  if (stdfs::is_directory(out))
    fail_usage_hint(fmt::format("output '{}' is a directory", out.string()),
                    "output is the GGUF file's path, e.g. runs/model.gguf");
}

}  // namespace

int run_export(const config::Config& cfg) {
  const int64_t threads = cfg.get_int("threads");
  if (threads < 0) fail_usage_hint("threads must be >= 0", "use 0 for all cores");
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));

  const std::string format = cfg.get_string("export.format");
  if (format != "gguf")
    fail_usage_hint(fmt::format("export.format '{}' is not implemented yet", format), "use export.format=gguf");
  const gguf::TensorType dtype = gguf::parse_type(cfg.get_string("export.dtype"));
  const stdfs::path out = cfg.get_string("output");
  const bool overwrite = cfg.get_bool("export.overwrite");
  check_output(out, overwrite);  // before the (possibly long) load

  const std::string model_path = cfg.get_string("model.path");
  auto tok = load_tokenizer_for(cfg);
  models::LoadedModel lm = models::load_model(model_path, at::kFloat);  // fp32: no rounding before encoding
  log_resolved_config(cfg);

  gguf::ExportOptions opt;
  opt.dtype = dtype;
  opt.name = cfg.get_string("export.name");
  if (opt.name.empty()) opt.name = stdfs::path(model_path).filename().replace_extension().string();
  gguf::ExportReport rep;
  gguf::Writer w;
  try {
    w = gguf::build_llama(lm, *tok, opt, &rep);
  } catch (const Error& e) {
    throw e.context(fmt::format("exporting '{}' as GGUF {}", model_path, gguf::type_name(dtype)));
  }
  for (const auto& msg : rep.warnings) log::warn("export: {}", msg);

  std::map<std::string, int> by_type;
  for (const auto& t : rep.tensors) {
    ++by_type[gguf::type_name(t.type)];
    if (!t.note.empty()) log::info("export: {} {} {}: {}", t.name, models::shape_str(t.shape), gguf::type_name(t.type), t.note);
  }
  if (out.has_parent_path()) stdfs::create_directories(out.parent_path());
  const double t0 = now_s();
  gguf::write_file(w, out, overwrite);
  const auto bytes = stdfs::file_size(out);
  std::string types;
  for (const auto& [name, n] : by_type) types += fmt::format("{}{} {}", types.empty() ? "" : ", ", n, name);
  log::info("export: wrote {} ({:.2f} MiB, {} tensors: {}) in {:.2f}s", out.string(), bytes / 1048576.0,
            rep.tensors.size(), types, now_s() - t0);

  nlohmann::json summary = {{"output", out.string()},  {"format", "gguf"},
                            {"dtype", cfg.get_string("export.dtype")}, {"bytes", bytes},
                            {"tensors", rep.tensors.size()}, {"tensor_types", by_type}};
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

}  // namespace dsk::stages
