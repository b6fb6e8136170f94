// Quantized Llama models: which linear layers hold quantized weights, their tensors in the GPTQ
// layout (quant/pack.h), and config.json's "quantization_config" (docs/quantization.md).
//
// A quantized model directory is a Hugging Face directory whose quantized layers carry
// "<layer>.qweight", ".qzeros", ".scales", ".g_idx" (and ".input_scale" for static W8A8)
// instead of "<layer>.weight"; every other tensor is unchanged.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "models/llama.h"
#include "quant/qlinear.h"
#include "quant/quantize.h"

namespace dsk::models {

struct QuantConfig {
  quant::Scheme scheme;
  std::string method = "rtn";  // rtn | gptq | qat
  quant::ActMode act = quant::ActMode::None;
  bool act_order = false;
  double damp = 0.01;
};

// quantization_config for config.json: GPTQ's keys (quant_method "gptq", bits, group_size,
// desc_act, sym, damp_percent, checkpoint_format "gptq") plus a "dsk" object with what GPTQ
// cannot say (method, activations, granularity, the quantized layers).
std::string quantization_config_json(const QuantConfig& qc, const std::vector<std::string>& layers);
// Parses it back (usage errors name the key); where: the file, for messages.
QuantConfig parse_quantization_config(const std::string& json_text, const std::string& where);

// Every linear layer with its name ("model.layers.0.self_attn.q_proj", ..., "lm_head").
std::vector<std::pair<std::string, LoraLinearImpl*>> linear_layers(Llama& model);
bool is_quantized(Llama& model);

// The linear layers whose full name or last component matches an include glob and no exclude
// glob (quant.include / quant.exclude, qat.include / qat.exclude).
std::vector<std::pair<std::string, LoraLinearImpl*>> select_linear_layers(Llama& model,
                                                                          const std::vector<std::string>& include,
                                                                          const std::vector<std::string>& exclude);

// The packed tensors of the quantized layers (state_tensors() appends them).
std::vector<std::pair<std::string, at::Tensor>> quantized_state_tensors(Llama& model);

// Attaches the quantized layers found in `weights` ("<layer>.qweight" present) and removes
// their packed tensors from `weights`; the rest loads as usual (load_state_tensors).
void load_quantized_layers(Llama& model, const QuantConfig& qc, std::map<std::string, at::Tensor>& weights);

}  // namespace dsk::models
