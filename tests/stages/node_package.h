// The npm packages the export tests run (node-llama-cpp, onnxruntime-node): where scripts/setup
// installs them, and a failing (never skipping) check that they are there.
#pragma once

#include <cstdlib>
#include <filesystem>
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

}  // namespace dsk::test
