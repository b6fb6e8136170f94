// Shared by the export tests (GGUF, ONNX): the npm packages they run (node-llama-cpp,
// onnxruntime-node) with a failing (never skipping) check that they are installed, and the rules
// for an existing output.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "stage_util.h"
#include "test_util.h"

namespace dsk::test {

// The directory of an npm package that scripts/setup installs under .cache/<cache_name> (or where
// $env_var points), checked by `entry` inside it. Fails the test when the package or node is missing.
inline std::string node_package_dir(const char* env_var, const std::string& cache_name, const std::string& entry,
                                    const std::string& package) {
  const char* env = std::getenv(env_var);
  std::string dir = env && *env ? env : src(".cache/" + cache_name);
  if (!std::filesystem::exists(std::filesystem::path(dir) / entry))
    FAIL(package << " is not installed in " << dir << " (run scripts/setup, which installs " << package
                 << " there; or point " << env_var << " at an install)");
  if (run_cmd("node --version").exit_code != 0) FAIL("node is not on PATH (run scripts/setup)");
  return dir;
}

// `dsk quantize` (RTN int8, group size 32, symmetric: the scheme GGUF Q8_0 holds exactly) of
// stories260K into `output_dir`; returns its model/ directory. `extra`: overrides (quant.*).
inline std::filesystem::path quantize_stories(const std::filesystem::path& output_dir, const std::string& extra = "") {
  auto q = run_cmd(in_repo(dsk_bin() + " quantize configs/stories260k/quantize-int4-gptq.yaml output_dir=" +
                           output_dir.string() +
                           " threads=2 quant.bits=8 quant.group_size=32 quant.method=rtn quant.act_order=false "
                           "quant.calib_samples=8 " + extra));
  INFO(q.err);
  REQUIRE(q.exit_code == 0);
  return output_dir / "model";
}

// An existing output is refused (exit 2, untouched) without export.overwrite=true and replaced
// with it; `run` exports to the path with the given overrides. No temporary is left in its directory.
inline void check_existing_output(const std::filesystem::path& existing,
                                  const std::function<CmdResult(const std::filesystem::path&, const std::string&)>& run) {
  { std::ofstream(existing) << "keep me"; }
  auto again = run(existing, "");
  CHECK(again.exit_code == 2);
  CHECK_THAT(again.err, Catch::Matchers::Contains("already exists") && Catch::Matchers::Contains("export.overwrite=true"));
  CHECK(slurp(existing) == "keep me");
  auto over = run(existing, "export.overwrite=true");
  INFO(over.err);
  CHECK(over.exit_code == 0);
  CHECK(slurp(existing) != "keep me");
  for (const auto& e : std::filesystem::directory_iterator(existing.parent_path()))
    CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
}

}  // namespace dsk::test
