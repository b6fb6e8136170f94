// Hugging Face model directories: config.json <-> LlamaConfig, and the weights as
// model.safetensors or model.safetensors.index.json + model-0000i-of-0000n.safetensors shards.
// Name-agnostic: tensors move under their Hugging Face names (model.layers.3.mlp.up_proj.weight).
// A missing directory/file or an unusable config.json is a usage error (exit 2); a corrupt
// weight file or index is a runtime error (exit 1). docs/formats.md describes both layouts.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "models/llama_config.h"

namespace dsk::ckpt {

// File names inside a Hugging Face model directory.
inline constexpr const char* kHfConfigFile = "config.json";
inline constexpr const char* kHfGenerationConfigFile = "generation_config.json";
inline constexpr const char* kHfWeightsFile = "model.safetensors";
inline constexpr const char* kHfIndexFile = "model.safetensors.index.json";

// dir/config.json -> LlamaConfig (rope_style Half). Absent optional fields take transformers'
// defaults; a null or empty bos/eos_token_id becomes -1 (none). Rejects model types other than
// llama/mistral/qwen2, hidden_act != silu, rope_scaling other than linear/llama3, mlp_bias, and an
// odd head_dim. A head_dim other than hidden_size / num_attention_heads is kept explicit
// (LlamaConfig::head_dim_override): transformers >= 4.45 sizes q/k/v/o with config.head_dim.
models::LlamaConfig read_hf_config(const std::string& dir);
// LlamaConfig -> config.json that transformers loads unchanged (LlamaConfig/MistralConfig/Qwen2Config).
// Always writes head_dim (cfg.head_dim()).
nlohmann::json hf_config_json(const models::LlamaConfig& cfg);
// Every tensor of the directory: model.safetensors if present (as transformers prefers it), else
// the index and its shards (each shard must exist and hold every tensor the index maps to it).
std::map<std::string, at::Tensor> load_hf_weights(const std::string& dir);
// Writes model.safetensors, or shards + index when max_shard_bytes > 0 and the tensors' total
// exceeds it (greedy, in the given order; a tensor larger than the limit gets a shard of its own),
// then config.json and generation_config.json; each file atomically. Weight files of the other
// layout left by an earlier save are removed. `metadata` goes into every "__metadata__" with
// "format": "pt" added. config.json's torch_dtype is the weights' floating dtype when they all
// share one, else cfg.torch_dtype. cfg.rope_style must be Half. For an all-or-nothing directory,
// save into fs::StagingDir::path() and commit().
void save_hf_dir(const std::string& dir, const models::LlamaConfig& cfg,
                 const std::vector<std::pair<std::string, at::Tensor>>& weights,
                 const std::map<std::string, std::string>& metadata, uint64_t max_shard_bytes = 0);

// "model-00002-of-00005.safetensors"
std::string hf_shard_name(int index, int count);

}  // namespace dsk::ckpt
