// Model loading and saving by path: a llama2.c .bin file or a Hugging Face directory in, a
// Hugging Face directory out. Weight files go through lib/ckpt; names are the HF keys
// (models/llama.h), so both directions are name lookups.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <string>

#include "models/llama.h"

namespace dsk::models {

struct LoadedModel {
  LlamaConfig config;       // the config the model runs with (llama2.c: rope_style Interleaved)
  Llama model{nullptr};     // weights loaded, in train mode, every parameter trainable
  std::string path;         // where it came from
};

// `path`: a llama2.c checkpoint (a regular file, kept in its Interleaved rope layout) or a
// Hugging Face directory (config.json + model.safetensors or a sharded index). The model gets
// `dtype` and `device`. Usage error when the path is missing or is neither; errors carry the
// context "loading model PATH".
LoadedModel load_model(const std::string& path, at::ScalarType dtype = at::kFloat,
                       c10::Device device = c10::Device(c10::kCPU));

// Turns a model in the Interleaved rotary layout (llama2.c) into the equivalent Half-layout one
// (q/k rows permuted, same logits), so that layer-wise transforms such as quantization produce
// weights a Hugging Face directory can hold as they are. No-op for Half models.
void convert_to_half_rope(LoadedModel& lm);

// Writes `model` as a Hugging Face directory (config.json, generation_config.json,
// model.safetensors or shards over max_shard_bytes) in the model's dtype. An Interleaved model's
// q/k rows are permuted to the Half layout on the way (convert_rope_to_half), so transformers
// computes the same logits. A model with unmerged LoRA adapters is refused: merge_lora first.
void save_model_hf(const std::string& dir, Llama& model, const std::map<std::string, std::string>& metadata,
                   uint64_t max_shard_bytes = 0);

}  // namespace dsk::models
