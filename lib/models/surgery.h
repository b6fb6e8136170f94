// Structured model surgery: a physically smaller Llama with whole MLP neurons, whole KV groups
// (one k/v head and the query heads that share it) and whole decoder layers removed, plus the
// magnitude importance scores and counting helpers the pruning stage ranks units with.
//
// Shapes (models/llama.h): per layer q_proj [H*D, C], k/v_proj [KV*D, C], o_proj [C, H*D],
// gate/up_proj [F, C], down_proj [C, F]. Query head h belongs to KV group h / G (G = H / KV), as
// in the attention forward and Hugging Face's repeat_kv. Removing a neuron removes its gate and
// up rows and its down_proj column; removing a group removes the q rows of its G query heads, the
// k/v rows of its kv head (biases too) and the o_proj columns of its query heads. hidden_size and
// head_dim never change, so the result has H*D != C in general and its config keeps head_dim
// explicit (LlamaConfig::head_dim_override; config.json "head_dim").
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "models/llama.h"
#include "models/llama_config.h"

namespace dsk::models {

// What to keep of a Llama. Indices are strictly ascending and in range; every surviving layer
// keeps the same number of neurons and the same number of groups (config.json has one
// intermediate_size and one head count). Entries for layers that layers_keep drops are checked
// for range and order but otherwise ignored (they may be empty).
struct StructuredPlan {
  std::vector<std::vector<int64_t>> mlp_keep;    // per ORIGINAL layer, indices into [0, F); empty outer = all
  std::vector<std::vector<int64_t>> group_keep;  // per ORIGINAL layer, indices into [0, KV); empty outer = all
  std::vector<int64_t> layers_keep;              // original layer indices; empty = all
};

// A new model (same dtype and device, same train/eval mode, activation checkpointing and
// attention query_block) holding copies of the kept weights, with layers renumbered 0..L'-1 and a
// config with intermediate_size, num_attention_heads, num_key_value_heads and num_hidden_layers
// reduced and head_dim_override set to the original head_dim. The rope style is kept (slicing
// whole heads is valid in both layouts). sparsity_config is cleared: its layer numbers and
// per-layer fractions described the original model. Usage errors (exit 2): a quantized model, a
// model with LoRA adapters attached (merge or detach them first), a plan whose lists have the
// wrong length, indices out of range, duplicated or unsorted, a ragged plan (surviving layers
// keeping different counts), or one that keeps no layer, neuron or group.
Llama apply_structured_plan(Llama& model, const StructuredPlan& plan);

// Per layer [F] float64 (CPU): the sum of squares of each neuron's weights — its gate_proj row,
// up_proj row and down_proj column ("magnitude" importance). Usage error for quantized models and
// models with LoRA adapters attached (their effective weights are not the stored ones).
std::vector<at::Tensor> mlp_neuron_magnitude(Llama& model);

// Per layer [KV] float64 (CPU): the sum of squares of each KV group's weights — the q_proj rows of
// its query heads, its k_proj and v_proj rows and the o_proj columns of its query heads (biases
// are not counted). Same refusals as mlp_neuron_magnitude.
std::vector<at::Tensor> kv_group_magnitude(Llama& model);

// Per layer, the `keep` units with the highest scores (ties: the lower index wins), ascending.
// Scores are 1-D tensors of any floating dtype and device. Usage error unless 1 <= keep <= the
// layer's unit count; runtime error for a NaN score.
std::vector<std::vector<int64_t>> keep_top(const std::vector<at::Tensor>& scores, int64_t keep);

// The parameter count of a model with config c: embeddings, per layer two norms, q/k/v/o (and the
// q/k/v biases when attention_bias) and gate/up/down, the final norm, and lm_head unless tied.
// Equals the sum of numel over state_tensors of a full-precision model.
int64_t parameter_count(const LlamaConfig& c);

}  // namespace dsk::models
