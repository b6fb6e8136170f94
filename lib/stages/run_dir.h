// The output directory of a run and its checkpoints.
//
// Layout: <output_dir>/config.yaml, metrics.jsonl, events.out.tfevents.*,
//         checkpoints/step-<N>/{state.json, trainable.safetensors, optimizer.safetensors}
// A checkpoint directory is built under a temporary name and renamed into place, so
// checkpoints/step-N either exists complete (state.json is written last) or not at all.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>

#include "config/config.h"

namespace dsk::stages {

namespace stdfs = std::filesystem;

// Applies the rerun policy: a missing or empty output_dir is created; a non-empty one is
// refused (usage error, nothing touched) unless `resume` is auto or a path.
void prepare_output_dir(const stdfs::path& dir, const std::string& resume);

// Writes config.yaml (the resolved config) atomically.
void save_resolved_config(const stdfs::path& dir, const config::Config& cfg);

// Checkpoints under <dir>/checkpoints.
class Checkpoints {
 public:
  Checkpoints(stdfs::path output_dir, int keep_last);
  // The newest complete checkpoint, if any.
  std::optional<stdfs::path> newest() const;
  // Creates step-<step>: `write(tmp_dir)` fills the directory, state.json goes last, then the
  // directory is renamed into place and checkpoints beyond keep_last are deleted.
  template <typename Fn>
  stdfs::path save(int64_t step, const nlohmann::json& state, Fn&& write) {
    begin(step);
    write(staging_path());
    return finish(step, state);
  }
  // Resolves `resume` (auto | path): the checkpoint to load, or nullopt to start fresh.
  std::optional<stdfs::path> resolve(const std::string& resume) const;

 private:
  void begin(int64_t step);
  const stdfs::path& staging_path() const;
  stdfs::path finish(int64_t step, const nlohmann::json& state);

  stdfs::path root_;
  int keep_last_;
  struct Staging;
  std::shared_ptr<Staging> staging_;
};

nlohmann::json read_checkpoint_state(const stdfs::path& ckpt_dir);

}  // namespace dsk::stages
