// Helpers shared by the CLI tests in tests/stages: paths in the repository, reading what a run
// wrote, and starting dsk in the background.
#pragma once

#include <unistd.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "ckpt/safetensors.h"
#include "test_util.h"

namespace dsk::test {

inline std::string src(const std::string& rel) { return std::string(DSK_SOURCE_DIR) + "/" + rel; }
// Runs from the repository root so the configs' relative data/ paths resolve.
inline std::string in_repo(const std::string& cmd) { return "cd " + src("") + " && " + cmd; }

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Every tensor of a safetensors file, copied out of the mapping.
inline std::map<std::string, at::Tensor> tensors(const std::filesystem::path& file) {
  auto f = ckpt::SafetensorsFile::open(file.string());
  std::map<std::string, at::Tensor> out;
  for (const auto& t : f->tensors()) out[t.name] = f->tensor(t.name).clone();
  return out;
}

// Starts `cmd` (a dsk command line) from the repository root in the background, stdout to
// `out` and stderr to `err`; returns the pid of the dsk process itself (the shell execs it), so
// signals reach dsk. The caller waits for it.
inline pid_t spawn(const std::string& cmd, const std::string& err, const std::string& out = "/dev/null") {
  pid_t pid = fork();
  if (pid == 0) {
    std::string full = in_repo("exec " + cmd + " >" + out + " 2>" + err);
    execl("/bin/sh", "sh", "-c", full.c_str(), (char*)nullptr);
    _exit(127);
  }
  return pid;
}

}  // namespace dsk::test
