// Setup shared by the stages: runtime (threads, seed, device, dtype), tokenizer and model
// loading from the common config keys, and logging the resolved config once.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "config/config.h"
#include "dist/comm.h"
#include "data/source.h"
#include "models/loader.h"
#include "tokenizer/tokenizer.h"

namespace dsk::stages {

struct Runtime {
  c10::Device device = c10::Device(c10::kCPU);
  at::ScalarType dtype = at::kFloat;
  int threads = 1;
  // The process group: size 1 unless started by dsk launch / torchrun variables / srun.
  std::shared_ptr<dist::Comm> comm;
};

// Reads threads/seed/device/dtype; seeds the torch generator. cuda without a GPU is a usage error.
// In a multi-process run it joins the process group (dist.* keys) and keeps info logs on rank 0.
Runtime setup_runtime(const config::Config& cfg);
// tokenizer.path, else the tokenizer inside the model directory at `model_key` (distill: the
// teacher's, "teacher.path").
std::unique_ptr<tok::Tokenizer> load_tokenizer_for(const config::Config& cfg,
                                                   const std::string& model_key = "model.path");
models::LoadedModel load_model_for(const config::Config& cfg, const Runtime& rt,
                                   const std::string& model_key = "model.path");
// The data source under `prefix` ("data.train", "data.eval") plus data.add_bos/add_eos.
data::DataSpec data_spec_from(const config::Config& cfg, const std::string& prefix);
// safetensors metadata of a stage's artifacts: format, dsk_version, dsk_stage, config_hash.
std::map<std::string, std::string> artifact_metadata(const config::Config& cfg, const std::string& stage);

// Copies the tokenizer (tokenizer.path, else the one inside model.path) into `dir`, so a
// written model directory is self-contained.
void copy_tokenizer(const config::Config& cfg, const std::filesystem::path& dir,
                    const std::string& model_key = "model.path");
// The same from a tokenizer file (tokenizer.model / tokenizer.json) or a directory holding one
// (with tokenizer_config.json, special_tokens_map.json); a warning when there is none (e.g. `src`
// is a llama2.c .bin).
void copy_tokenizer_from(const std::string& src, const std::filesystem::path& dir);

// data.seq_len, checked against the model's max_position_embeddings (usage error outside 1..max).
int64_t checked_seq_len(const config::Config& cfg, const models::LoadedModel& lm);

// Prints the resolved config to stderr, once, as YAML.
void log_resolved_config(const config::Config& cfg);
// Seconds since an arbitrary epoch (steady clock).
double now_s();

}  // namespace dsk::stages
