// dsk export, format onnx: one .onnx file (+ OUTPUT.data with external data) for ONNX Runtime
// and other ONNX engines (lib/export/onnx.h, docs/export.md "ONNX").
//
// Order: check the options and the output path, load the model (LoRA merged), build the graph
// (refusals happen here: quantized models, what the graph does not implement), then write it
// through a temporary directory (the checker runs on the written file) renamed into place.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "export/onnx.h"
#include "stages/common.h"
#include "stages/export.h"

namespace dsk::stages {

int export_onnx(const config::Config& cfg) {
  namespace stdfs = std::filesystem;
  const std::string dtype_name = export_dtype(cfg, "onnx");
  onnx::ExportOptions opt;
  opt.dtype = onnx::parse_dtype(dtype_name);
  opt.opset = cfg.get_int("export.onnx.opset");
  opt.kv_cache = cfg.get_bool("export.onnx.kv_cache");
  onnx::check_options(opt);
  const std::string external_mode = cfg.get_string("export.onnx.external_data");
  const stdfs::path out = cfg.get_string("output");
  const bool overwrite = cfg.get_bool("export.overwrite");
  check_export_output(out, overwrite, /*directory=*/false);  // before the (possibly long) load

  ExportSource src = load_export_source(cfg, /*merge=*/true);
  log_resolved_config(cfg);

  opt.doc = fmt::format("{} exported by dsk {} (export.dtype {}, kv_cache {})", src.description, DSK_VERSION,
                        dtype_name, opt.kv_cache ? "true" : "false");
  opt.metadata = {{"dsk_version", DSK_VERSION}, {"config_hash", cfg.hash()}, {"source", src.description}};
  const double t0 = now_s();
  onnx::Model model;
  try {
    model = onnx::build_llama(src.lm, opt);
  } catch (const Error& e) {
    throw e.context(fmt::format("exporting {} as ONNX {}", src.description, dtype_name));
  }
  const onnx::ExportReport& rep = model.report();
  for (const auto& msg : rep.warnings) log::warn("export: {}", msg);
  const bool external = model.wants_external(external_mode);

  if (out.has_parent_path()) stdfs::create_directories(out.parent_path());
  model.write(out, overwrite, external);
  const stdfs::path data = onnx::data_path(out);
  const uint64_t bytes = stdfs::file_size(out), data_bytes = external ? stdfs::file_size(data) : 0;
  // a stale data file of an earlier external export would otherwise sit beside an inline model
  if (!external && overwrite && stdfs::exists(data)) {
    log::info("export: removing '{}' (the new model holds its weights inline)", data.string());
    stdfs::remove(data);
  }
  const double seconds = now_s() - t0;
  log::info("export: wrote {} ({:.2f} MiB{}, {} nodes, {} initializers, opset {}) in {:.2f}s", out.string(),
            bytes / 1048576.0,
            external ? fmt::format(" + {} {:.2f} MiB", data.filename().string(), data_bytes / 1048576.0) : "",
            rep.nodes, rep.initializers, opt.opset, seconds);

  nlohmann::json summary = {{"output", out.string()},
                            {"format", "onnx"},
                            {"dtype", dtype_name},
                            {"opset", opt.opset},
                            {"kv_cache", opt.kv_cache},
                            {"bytes", bytes},
                            {"external_data", external ? nlohmann::json(data.string()) : nlohmann::json(nullptr)},
                            {"data_bytes", data_bytes},
                            {"nodes", rep.nodes},
                            {"initializers", rep.initializers},
                            {"inputs", rep.inputs},
                            {"outputs", rep.outputs},
                            {"seconds", seconds}};
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

}  // namespace dsk::stages
