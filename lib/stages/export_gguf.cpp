// dsk export, format gguf: one file for llama.cpp (F32/F16/BF16/Q8_0/Q4_0, lib/export/gguf.h).
//
// Order: check the output path, load model and tokenizer, build the GGUF (metadata, tensor plan:
// refusals happen here), then write it through a temporary file renamed into place.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "export/gguf.h"
#include "stages/common.h"
#include "stages/export.h"

namespace dsk::stages {

int export_gguf(const config::Config& cfg) {
  namespace stdfs = std::filesystem;
  const std::string dtype_name = export_dtype(cfg, "gguf");
  const gguf::TensorType dtype = gguf::parse_type(dtype_name);
  const stdfs::path out = cfg.get_string("output");
  const bool overwrite = cfg.get_bool("export.overwrite");
  check_export_output(out, overwrite, /*directory=*/false);  // before the (possibly long) load

  ExportSource src = load_export_source(cfg, /*merge=*/true);  // fp32: no rounding before encoding
  auto tok = load_export_tokenizer(cfg, src);
  log_resolved_config(cfg);

  gguf::ExportOptions opt;
  opt.dtype = dtype;
  opt.name = cfg.get_string("export.name");
  if (opt.name.empty()) opt.name = stdfs::path(src.base_path).filename().replace_extension().string();
  gguf::ExportReport rep;
  gguf::Writer w;
  try {
    w = gguf::build_llama(src.lm, *tok, opt, &rep);
  } catch (const Error& e) {
    throw e.context(fmt::format("exporting {} as GGUF {}", src.description, gguf::type_name(dtype)));
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

  nlohmann::json summary = {{"output", out.string()}, {"format", "gguf"},          {"dtype", dtype_name},
                            {"bytes", bytes},         {"tensors", rep.tensors.size()}, {"tensor_types", by_type}};
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

}  // namespace dsk::stages
