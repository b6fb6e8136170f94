#include "models/quantized.h"

#include <fmt/format.h>
#include <fnmatch.h>

#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsk::models {

namespace {

const char* granularity(int64_t group_size) {
  return group_size > 0 ? "group" : group_size == 0 ? "channel" : "tensor";
}

}  // namespace

std::string quantization_config_json(const QuantConfig& qc, const std::vector<std::string>& layers) {
  const quant::Scheme& s = qc.scheme;
  nlohmann::ordered_json j = {
      {"quant_method", "gptq"},
      {"checkpoint_format", "gptq"},
      {"bits", s.bits},
      {"group_size", s.group_size > 0 ? s.group_size : -1},
      {"desc_act", qc.act_order},
      {"sym", s.symmetric},
      {"damp_percent", qc.damp},
      {"true_sequential", false},
      {"dsk",
       {{"method", qc.method},
        {"granularity", granularity(s.group_size)},
        {"activations", quant::act_mode_name(qc.act)},
        {"quantized_layers", layers}}},
  };
  return j.dump();
}

QuantConfig parse_quantization_config(const std::string& json_text, const std::string& where) {
  const std::string hint = "use a model written by dsk quantize or a GPTQ checkpoint (quant_method gptq)";
  QuantConfig qc;
  try {
    const auto j = nlohmann::json::parse(json_text);
    const std::string method = j.value("quant_method", std::string());
    if (method != "gptq")
      fail_usage_hint(fmt::format("{}: quantization_config.quant_method '{}' is not supported", where, method), hint);
    const std::string format = j.value("checkpoint_format", std::string("gptq"));
    if (format != "gptq")
      fail_usage_hint(fmt::format("{}: quantization_config.checkpoint_format '{}' is not supported", where, format),
                      "dsk reads the GPTQ v1 layout (checkpoint_format gptq)");
    qc.scheme.bits = j.at("bits").get<int>();
    const int64_t gs = j.value("group_size", int64_t{-1});
    qc.scheme.symmetric = j.value("sym", true);
    qc.act_order = j.value("desc_act", false);
    qc.damp = j.value("damp_percent", 0.01);
    qc.method = "gptq";
    std::string gran = gs > 0 ? "group" : "channel";
    if (j.contains("dsk")) {
      const auto& d = j.at("dsk");
      qc.method = d.value("method", qc.method);
      gran = d.value("granularity", gran);
      qc.act = quant::act_mode_from(d.value("activations", std::string("none")));
    }
    qc.scheme.group_size = gs > 0 ? gs : gran == "tensor" ? -1 : 0;
    quant::check_scheme(qc.scheme);
  } catch (const nlohmann::json::exception& e) {
    fail_usage_hint(fmt::format("{}: quantization_config: {}", where, e.what()), hint);
  }
  return qc;
}

std::vector<std::pair<std::string, LoraLinearImpl*>> linear_layers(Llama& model) {
  std::vector<std::pair<std::string, LoraLinearImpl*>> out;
  for (auto& item : model->named_modules("", /*include_self=*/false))
    if (auto* lin = item.value()->as<LoraLinearImpl>()) out.emplace_back(item.key(), lin);
  return out;
}

namespace {

bool matches(const std::string& name, const std::vector<std::string>& patterns) {
  const size_t dot = name.rfind('.');
  const std::string leaf = dot == std::string::npos ? name : name.substr(dot + 1);
  for (const auto& p : patterns)
    if (fnmatch(p.c_str(), name.c_str(), 0) == 0 || fnmatch(p.c_str(), leaf.c_str(), 0) == 0) return true;
  return false;
}

}  // namespace

std::vector<std::pair<std::string, LoraLinearImpl*>> select_linear_layers(Llama& model,
                                                                          const std::vector<std::string>& include,
                                                                          const std::vector<std::string>& exclude) {
  std::vector<std::pair<std::string, LoraLinearImpl*>> out;
  for (auto& [name, lin] : linear_layers(model))
    if (matches(name, include) && !matches(name, exclude)) out.emplace_back(name, lin);
  return out;
}

bool is_quantized(Llama& model) {
  for (auto& [name, lin] : linear_layers(model))
    if (lin->quantized()) return true;
  return false;
}

std::vector<std::pair<std::string, at::Tensor>> quantized_state_tensors(Llama& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& [name, lin] : linear_layers(model)) {
    const quant::QLinear* q = lin->quantized();
    if (!q) continue;
    quant::GptqTensors t = quant::pack_gptq(q->weight);
    out.emplace_back(name + ".qweight", t.qweight);
    out.emplace_back(name + ".qzeros", t.qzeros);
    out.emplace_back(name + ".scales", t.scales);
    out.emplace_back(name + ".g_idx", t.g_idx);
    if (q->act == quant::ActMode::Static) out.emplace_back(name + ".input_scale", at::tensor({q->input_scale}));
  }
  return out;
}

void load_quantized_layers(Llama& model, const QuantConfig& qc, std::map<std::string, at::Tensor>& weights) {
  for (auto& [name, lin] : linear_layers(model)) {
    auto it = weights.find(name + ".qweight");
    if (it == weights.end()) continue;
    auto take = [&](const std::string& suffix, bool required) {
      auto f = weights.find(name + suffix);
      if (f == weights.end()) {
        if (required)
          fail_usage_hint(fmt::format("quantized layer '{}' lacks '{}{}'", name, name, suffix),
                          "the checkpoint is incomplete: quantize the model again");
        return at::Tensor();
      }
      at::Tensor t = f->second;
      weights.erase(f);
      return t;
    };
    quant::GptqTensors t;
    t.qweight = take(".qweight", true);
    t.qzeros = take(".qzeros", true);
    t.scales = take(".scales", true);
    t.g_idx = take(".g_idx", false);
    at::Tensor input_scale = take(".input_scale", qc.act == quant::ActMode::Static);
    const float step = input_scale.defined() ? input_scale.to(at::kFloat).reshape({-1})[0].item<float>() : 0.0f;
    try {
      lin->set_quantized(quant::make_qlinear(
          quant::unpack_gptq(t, qc.scheme.bits, lin->in_features(), lin->out_features(), qc.scheme.group_size), qc.act,
          step));
    } catch (const Error& e) {
      throw e.context("quantized layer " + name);
    }
  }
}

}  // namespace dsk::models
