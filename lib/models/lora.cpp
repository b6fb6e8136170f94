#include "models/lora.h"

#include <ATen/core/grad_mode.h>
#include <fnmatch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <regex>
#include <set>

#include "core/error.h"

namespace dsk::models {

namespace {

const std::string kPeftPrefix = "base_model.model.";
const std::vector<std::string> kLayerLinears = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                "gate_proj", "up_proj", "down_proj"};

bool is_glob(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }
bool is_regex(const std::string& s) { return s.rfind("re:", 0) == 0; }

bool ends_with_component(const std::string& name, const std::string& suffix) {
  if (name == suffix) return true;
  return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
         name[name.size() - suffix.size() - 1] == '.';
}

// Every LoraLinear of the decoder layers under its full module name, in model order (lm_head is
// left out so that classifier_weight() is always the whole classifier).
std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>> linears(Llama& model) {
  std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>> out;
  for (auto& item : model->model->named_modules("model", /*include_self=*/false))
    if (auto lin = std::dynamic_pointer_cast<LoraLinearImpl>(item.value())) out.emplace_back(item.key(), lin);
  return out;
}

std::string regex_escape(const std::string& s) {
  static const std::string special = R"(\^$.|?*+()[]{})";
  std::string out;
  for (char c : s) {
    if (special.find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

// A glob (* ? [...]) as a regex with the same meaning under full match.
std::string glob_to_regex(const std::string& glob) {
  std::string out;
  for (size_t i = 0; i < glob.size(); ++i) {
    char c = glob[i];
    if (c == '*') {
      out += ".*";
    } else if (c == '?') {
      out += '.';
    } else if (c == '[') {
      size_t close = glob.find(']', i + 1);
      if (close == std::string::npos) {
        out += "\\[";
        continue;
      }
      std::string set = glob.substr(i + 1, close - i - 1);
      if (!set.empty() && set[0] == '!') set[0] = '^';
      out += "[" + set + "]";
      i = close;
    } else {
      out += regex_escape(std::string(1, c));
    }
  }
  return out;
}

std::string format_number(double v) {
  if (v == std::floor(v) && std::abs(v) < 1e15) return std::to_string(static_cast<int64_t>(v));
  return fmt::format("{}", v);
}

}  // namespace

double LoraSpec::scale() const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

std::vector<std::string> parse_target_modules(const std::string& csv) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= csv.size()) {
    size_t comma = csv.find(',', start);
    if (comma == std::string::npos) comma = csv.size();
    std::string item = csv.substr(start, comma - start);
    size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    if (b != std::string::npos) out.push_back(item.substr(b, e - b + 1));
    start = comma + 1;
  }
  return out;
}

bool lora_target_matches(const std::vector<std::string>& targets, const std::string& name) {
  for (const std::string& t : targets) {
    if (t == "all-linear") {
      if (name.rfind("model.layers.", 0) != 0) continue;
      for (const std::string& lin : kLayerLinears)
        if (ends_with_component(name, lin)) return true;
    } else if (is_regex(t)) {
      try {
        if (std::regex_match(name, std::regex(t.substr(3)))) return true;
      } catch (const std::regex_error& e) {
        fail_usage("LoRA target_modules entry '{}' is not a valid regex: {}", t, e.what());
      }
    } else if (is_glob(t)) {
      if (fnmatch(t.c_str(), name.c_str(), 0) == 0) return true;
    } else if (ends_with_component(name, t)) {
      return true;
    }
  }
  return false;
}

LoraModules apply_lora(Llama& model, const LoraSpec& spec) {
  if (spec.target_modules.empty()) fail_usage("LoRA target_modules is empty");
  if (spec.r <= 0) fail_usage("LoRA rank r must be positive, got {}", spec.r);
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  LoraModules out;
  auto all = linears(model);
  for (auto& [name, lin] : all) {
    if (!lora_target_matches(spec.target_modules, name)) continue;
    lin->attach_lora(spec.r, spec.scale(), spec.dropout);
    out.names.push_back(name);
    out.parameters.push_back(lin->lora_A());
    out.parameters.push_back(lin->lora_B());
  }
  if (out.names.empty()) {
    std::string targets;
    for (auto& t : spec.target_modules) targets += (targets.empty() ? "" : ",") + t;
    fail_usage_hint(fmt::format("LoRA target_modules '{}' select no linear layer of the model", targets),
                    fmt::format("name linears such as q_proj,v_proj or a glob such as *.mlp.*_proj; the model has "
                                "{} ... {}",
                                all.front().first, all.back().first));
  }
  return out;
}

std::vector<at::Tensor> lora_parameters(Llama& model) {
  std::vector<at::Tensor> out;
  for (auto& [name, lin] : linears(model)) {
    if (!lin->has_lora()) continue;
    out.push_back(lin->lora_A());
    out.push_back(lin->lora_B());
  }
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> lora_state_tensors(Llama& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& [name, lin] : linears(model)) {
    if (!lin->has_lora()) continue;
    out.emplace_back(kPeftPrefix + name + ".lora_A.weight", lin->lora_A().detach());
    out.emplace_back(kPeftPrefix + name + ".lora_B.weight", lin->lora_B().detach());
  }
  return out;
}

void load_lora_state(Llama& model, const std::map<std::string, at::Tensor>& tensors) {
  auto expected = lora_state_tensors(model);
  if (expected.empty()) fail("load_lora_state: the model has no LoRA adapters (call apply_lora first)");
  const std::string hint = "adapter_config.json and adapter_model.safetensors disagree, or the adapter was made "
                           "for another base model";
  std::set<std::string> names;
  for (auto& [name, t] : expected) {
    names.insert(name);
    auto it = tensors.find(name);
    if (it == tensors.end()) fail_usage_hint(fmt::format("adapter tensor '{}' is missing", name), hint);
    if (!it->second.sizes().equals(t.sizes()))
      fail_usage_hint(fmt::format("adapter tensor '{}' has shape {}, expected {}", name, shape_str(it->second.sizes()),
                                  shape_str(t.sizes())),
                      hint);
  }
  for (auto& [name, t] : tensors)
    if (!names.count(name)) fail_usage_hint(fmt::format("adapter tensor '{}' is not expected", name), hint);
  at::NoGradGuard no_grad;
  for (auto& [name, t] : expected) t.copy_(tensors.at(name));
}

void merge_lora(Llama& model) {
  for (auto& [name, lin] : linears(model)) lin->merge_lora();
}

nlohmann::json peft_adapter_config_json(const LoraSpec& spec, const std::string& base_model_path) {
  bool plain = std::none_of(spec.target_modules.begin(), spec.target_modules.end(),
                            [](const std::string& t) { return is_glob(t) || is_regex(t); });
  nlohmann::json targets;
  if (plain) {
    std::set<std::string> names;
    for (const std::string& t : spec.target_modules) {
      if (t == "all-linear")
        names.insert(kLayerLinears.begin(), kLayerLinears.end());
      else
        names.insert(t);
    }
    targets = std::vector<std::string>(names.begin(), names.end());
  } else {
    std::string re;
    for (const std::string& t : spec.target_modules) {
      std::string part;
      if (t == "all-linear") {
        part = "model\\.layers\\..*\\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)";
      } else if (is_regex(t)) {
        part = t.substr(3);
      } else if (is_glob(t)) {
        part = glob_to_regex(t);
      } else {
        part = "(.*\\.)?" + regex_escape(t);
      }
      re += (re.empty() ? "" : "|") + ("(?:" + part + ")");
    }
    targets = re;
  }
  nlohmann::json alpha = nlohmann::json::parse(format_number(spec.alpha));
  nlohmann::json j = {
      {"base_model_name_or_path", base_model_path},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"layers_pattern", nullptr},
      {"layers_to_transform", nullptr},
      {"lora_alpha", alpha},
      {"lora_dropout", spec.dropout},
      {"modules_to_save", nullptr},
      {"peft_type", "LORA"},
      {"r", spec.r},
      {"revision", nullptr},
      {"target_modules", targets},
      {"task_type", "CAUSAL_LM"},
  };
  if (spec.use_rslora) j["use_rslora"] = true;
  return j;
}

LoraSpec lora_spec_from_peft_config(const nlohmann::json& c) {
  auto unsupported = [](const std::string& what) {
    fail_usage_hint("PEFT adapter uses " + what + ", which dsk does not implement",
                    "use a plain LoRA adapter (bias none, no DoRA, one rank for all modules)");
  };
  if (!c.is_object()) fail_usage("adapter_config.json is not a JSON object");
  if (c.value("peft_type", std::string("LORA")) != "LORA")
    fail_usage("adapter_config.json: peft_type '{}' is not LORA", c.value("peft_type", std::string()));
  auto nonempty = [&](const char* key) { return c.contains(key) && !c[key].is_null() && !c[key].empty(); };
  if (c.contains("bias") && c["bias"] != "none") unsupported("bias '" + c["bias"].dump() + "'");
  if (c.value("fan_in_fan_out", false)) unsupported("fan_in_fan_out");
  if (c.value("use_dora", false)) unsupported("DoRA");
  if (nonempty("rank_pattern") || nonempty("alpha_pattern")) unsupported("rank_pattern/alpha_pattern");
  if (nonempty("layers_to_transform")) unsupported("layers_to_transform");
  LoraSpec spec;
  try {
    spec.r = c.at("r").get<int64_t>();
    spec.alpha = c.at("lora_alpha").get<double>();
    spec.dropout = c.contains("lora_dropout") && !c["lora_dropout"].is_null() ? c["lora_dropout"].get<double>() : 0.0;
    spec.use_rslora = c.value("use_rslora", false);
    const auto& t = c.at("target_modules");
    if (t.is_string())
      spec.target_modules = {"re:" + t.get<std::string>()};
    else
      spec.target_modules = t.get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    fail_usage("adapter_config.json: {}", e.what());
  }
  return spec;
}

}  // namespace dsk::models
