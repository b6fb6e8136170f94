// LoRA adapters on a Llama's linear layers, saved and loaded in PEFT's format.
// defines: LoraSpec, parse_target_modules, lora_target_matches, apply_lora, lora_parameters,
//          lora_state_tensors, load_lora_state, merge_lora, peft_adapter_config_json,
//          lora_spec_from_peft_config
//
// Target matching (each entry of target_modules, against a linear's full module name such as
// "model.layers.0.self_attn.q_proj"; a linear is adapted when any entry matches):
//   "q_proj", "self_attn.q_proj"   plain: the name equals the entry or ends with "." + entry
//                                  (PEFT's list rule)
//   "*.self_attn.*_proj"           glob (contains * ? or [): the whole name matches; * also
//                                  crosses dots
//   "re:.*layers\.[0-3]\..*"       regex (ECMAScript): the whole name matches (PEFT's string rule)
//   "all-linear"                   every linear of the decoder layers, not lm_head (as PEFT)
// Candidates are q/k/v/o_proj and gate/up/down_proj of every layer (not lm_head: the fused loss
// uses Llama::classifier_weight(), which must be the whole classifier).
// Selecting nothing is a usage error.
//
// PEFT tensor names: "base_model.model." + module name + ".lora_A.weight" [r, in] and
// ".lora_B.weight" [out, r]; the model forward adds scale * B(A(dropout(x))), scale = alpha / r
// (alpha / sqrt(r) with use_rslora).
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json_fwd.hpp>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "models/llama.h"

namespace dsk::models {

struct LoraSpec {
  std::vector<std::string> target_modules{"q_proj", "v_proj"};  /// matching rule above
  int64_t r = 8;                                                 /// rank
  double alpha = 16.0;                                           /// lora_alpha
  double dropout = 0.0;                                          /// on the adapter's input, training only
  bool use_rslora = false;                                       /// scale alpha / sqrt(r)

  double scale() const;
};

// "q_proj, v_proj" -> {"q_proj", "v_proj"} (split on commas, trimmed, empty entries dropped).
std::vector<std::string> parse_target_modules(const std::string& csv);
// Whether the linear named `module_name` is selected by `targets` (rule above).
bool lora_target_matches(const std::vector<std::string>& targets, const std::string& module_name);

struct LoraModules {
  std::vector<std::string> names;      // adapted modules, in model order
  std::vector<at::Tensor> parameters;  // lora_A then lora_B of each: the trainable parameters
};

// Attaches a fresh adapter (A kaiming-uniform from the global torch generator, B zeros) to every
// selected linear and freezes every other parameter of the model.
LoraModules apply_lora(Llama& model, const LoraSpec& spec);
// lora_A and lora_B of every adapted linear, in model order.
std::vector<at::Tensor> lora_parameters(Llama& model);
// The adapters under their PEFT names (sharing storage with the model).
std::vector<std::pair<std::string, at::Tensor>> lora_state_tensors(Llama& model);
// Copies PEFT-named adapter tensors into the adapters apply_lora attached (usage error naming the
// tensor on a missing or unexpected name or a shape mismatch).
void load_lora_state(Llama& model, const std::map<std::string, at::Tensor>& tensors);
// W += scale * B @ A for every adapter, then removes the adapters: the model is a plain Llama
// again (base weights stay frozen), and state_tensors() saves it as a Hugging Face model.
void merge_lora(Llama& model);

// adapter_config.json as PEFT writes it for a causal-LM LoRA. target_modules is a list when every
// entry is plain ("all-linear" expanded to the suffix names), else one regex string that PEFT
// full-matches.
nlohmann::json peft_adapter_config_json(const LoraSpec& spec, const std::string& base_model_path);
// The spec from a PEFT adapter_config.json; usage error for features dsk does not implement
// (bias other than "none", fan_in_fan_out, DoRA, rank/alpha patterns, layers_to_transform).
LoraSpec lora_spec_from_peft_config(const nlohmann::json& config);

}  // namespace dsk::models
