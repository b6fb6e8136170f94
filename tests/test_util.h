// Helpers shared by the test binaries: test data paths, scratch directories, running the CLI.
#pragma once

#include <cstdlib>
#include <unistd.h>

#include <filesystem>
#include <string>

#include <catch2/catch.hpp>

#include "core/error.h"

namespace dsk::test {

// A file under the data/ folder that scripts/get-data fills. Skips the test with a
// clear message when it is absent (tests/ never download).
inline std::string data_path(const std::string& name) {
  std::filesystem::path p = std::filesystem::path(DSK_DATA_DIR) / name;
  if (!std::filesystem::exists(p)) FAIL("test data " << p << " missing: run scripts/get-data");
  return p.string();
}

// A fresh, empty scratch directory unique to this test name and process (ctest runs test cases
// in parallel processes; two that share a name must not share files).
inline std::filesystem::path scratch_dir(const std::string& name) {
  std::filesystem::path p = std::filesystem::path(DSK_TEST_TMP) / (name + "." + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

struct CmdResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs a shell command line, capturing stdout and stderr separately.
CmdResult run_cmd(const std::string& cmdline);

// Path of the dsk binary under test.
inline std::string dsk_bin() {
  const char* env = std::getenv("DSK_BIN");
  return env ? env : DSK_BIN;
}

// The dsk::Error that f() throws; fails the test when it throws none.
template <typename F>
dsk::Error error_of(F&& f) {
  try {
    f();
  } catch (const dsk::Error& e) {
    return e;
  }
  FAIL("expected a dsk::Error");
  return dsk::Error(dsk::Error::Kind::Runtime, "");
}

}  // namespace dsk::test
