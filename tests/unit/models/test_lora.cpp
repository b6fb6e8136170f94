// LoRA: target matching, init, trainable set, PEFT names and config, load, merge.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <set>

#include "models/lora.h"
#include "models/quantized.h"
#include "models_test_util.h"
#include "test_util.h"

using namespace dsk;
using namespace dsk::models;
using dsk::test::error_of;
using dsk::test::max_abs_diff;
using dsk::test::random_model;
using dsk::test::random_tokens;
using dsk::test::tiny_config;
using dsk::test::weight_map;

namespace {

std::vector<std::string> selected(const std::vector<std::string>& targets) {
  Llama m(tiny_config());
  LoraSpec spec;
  spec.target_modules = targets;
  return apply_lora(m, spec).names;
}

void randomize_lora(Llama& m, uint64_t seed, double std = 0.3) {
  at::manual_seed(seed);
  at::NoGradGuard no_grad;
  for (auto& p : lora_parameters(m)) p.normal_(0.0, std);
}

}  // namespace

TEST_CASE("target matching: plain suffix, glob, regex, all-linear", "[lora]") {
  CHECK(selected({"q_proj", "v_proj"}) ==
        std::vector<std::string>{"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                 "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"});
  CHECK(selected({"layers.1.mlp.down_proj"}) == std::vector<std::string>{"model.layers.1.mlp.down_proj"});
  CHECK(selected({"*.mlp.*_proj"}).size() == 6);
  CHECK(selected({"model.layers.?.self_attn.[qk]_proj"}).size() == 4);
  CHECK(selected({"re:model\\.layers\\.0\\..*"}).size() == 7);
  CHECK(selected({"all-linear"}).size() == 14);  // not lm_head
  CHECK_THROWS_AS(selected({"lm_head"}), dsk::Error);  // the classifier is not a candidate
  // Plain entries match whole components: "proj" is not "q_proj".
  auto e = error_of([] { selected({"proj"}); });
  CHECK(e.kind() == Error::Kind::Usage);
  CHECK(e.message() == "LoRA target_modules 'proj' select no linear layer of the model");
  CHECK(parse_target_modules(" q_proj, v_proj ,,") == std::vector<std::string>{"q_proj", "v_proj"});
}

TEST_CASE("a fresh adapter changes nothing - A is kaiming-uniform, B zero", "[lora]") {
  LlamaConfig cfg = tiny_config();
  Llama m = random_model(cfg, 20);
  at::Tensor tokens = random_tokens(2, 9, 61, 21);
  at::Tensor before = m->forward(tokens);
  LoraSpec spec;
  spec.r = 4;
  auto mods = apply_lora(m, spec);
  CHECK(mods.parameters.size() == 8);
  CHECK(max_abs_diff(m->forward(tokens), before) == 0.0);
  for (auto& [name, t] : lora_state_tensors(m)) {
    if (name.find("lora_A") != std::string::npos) {
      CHECK(t.abs().max().item<double>() <= 1.0 / std::sqrt(32.0));
      CHECK(t.abs().max().item<double>() > 0.5 / std::sqrt(32.0));
    } else {
      CHECK(t.abs().max().item<double>() == 0.0);
    }
  }
}

TEST_CASE("only the adapters are trainable and receive gradients", "[lora]") {
  Llama m = random_model(tiny_config(), 22);
  LoraSpec spec;
  spec.target_modules = {"q_proj", "down_proj"};
  auto mods = apply_lora(m, spec);
  randomize_lora(m, 23);
  std::set<std::string> trainable;
  for (auto& item : m->named_parameters())
    if (item.value().requires_grad()) trainable.insert(item.key());
  CHECK(trainable.size() == 8);
  for (auto& name : trainable) CHECK((name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos));
  at::Tensor loss = m->forward(random_tokens(1, 6, 61, 24)).logsumexp(-1).mean();
  loss.backward();
  for (auto& item : m->named_parameters()) {
    bool lora = trainable.count(item.key()) > 0;
    CHECK(item.value().grad().defined() == lora);
    if (lora) CHECK(item.value().grad().abs().sum().item<double>() > 0.0);
  }
}

TEST_CASE("adapter tensors carry PEFT names and shapes", "[lora]") {
  Llama m(tiny_config());
  LoraSpec spec;
  spec.r = 4;
  spec.target_modules = {"q_proj", "k_proj"};
  apply_lora(m, spec);
  std::map<std::string, std::vector<int64_t>> got;
  for (auto& [name, t] : lora_state_tensors(m)) got[name] = t.sizes().vec();
  CHECK(got.size() == 8);
  CHECK(got.at("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") == std::vector<int64_t>{4, 32});
  CHECK(got.at("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight") == std::vector<int64_t>{32, 4});
  CHECK(got.at("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight") == std::vector<int64_t>{16, 4});
  // The base weights keep their Hugging Face names.
  for (auto& [name, t] : state_tensors(m)) CHECK(name.find("lora") == std::string::npos);
}

TEST_CASE("merge_lora gives the unmerged model's logits and leaves a plain model", "[lora]") {
  for (bool tied : {false, true}) {
    Llama m = random_model(tiny_config(RopeStyle::Half, tied, /*bias=*/true), 25);
    LoraSpec spec;
    spec.target_modules = {"all-linear"};
    spec.r = 3;
    spec.alpha = 7;
    at::Tensor tokens = random_tokens(2, 11, 61, 27);
    at::NoGradGuard no_grad;
    at::Tensor base_logits = m->forward(tokens);
    apply_lora(m, spec);
    randomize_lora(m, 26, 0.05);  // |scale * B A| ~ 0.01 next to weights of 0.2
    at::Tensor with_lora = m->forward(tokens);
    merge_lora(m);
    CHECK(lora_parameters(m).empty());
    CHECK(lora_state_tensors(m).empty());
    for (auto& item : m->named_parameters()) CHECK(item.key().find("lora") == std::string::npos);
    CHECK(max_abs_diff(m->forward(tokens), with_lora) < 1e-5);
    CHECK(max_abs_diff(with_lora, base_logits) > 1e-2);  // the adapter mattered
  }
}

TEST_CASE("load_lora_state restores a saved adapter and checks shapes", "[lora]") {
  LlamaConfig cfg = tiny_config();
  Llama a = random_model(cfg, 28);
  auto base = weight_map(a);
  LoraSpec spec;
  spec.r = 2;
  apply_lora(a, spec);
  randomize_lora(a, 29);
  std::map<std::string, at::Tensor> saved;
  for (auto& [name, t] : lora_state_tensors(a)) saved[name] = t.clone();

  Llama b(cfg);
  load_state_tensors(b, base);
  apply_lora(b, spec);
  load_lora_state(b, saved);
  at::Tensor tokens = random_tokens(1, 8, 61, 30);
  CHECK(max_abs_diff(a->forward(tokens), b->forward(tokens)) == 0.0);

  LoraSpec bigger = spec;
  bigger.r = 3;
  Llama c(cfg);
  apply_lora(c, bigger);
  auto e = error_of([&] { load_lora_state(c, saved); });
  CHECK(e.kind() == Error::Kind::Usage);
  CHECK(e.message() ==
        "adapter tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' has shape [2, 32], "
        "expected [3, 32]");
}

TEST_CASE("adapter_config.json as PEFT writes it, and back", "[lora][peft]") {
  LoraSpec spec;
  spec.target_modules = {"v_proj", "q_proj"};
  spec.r = 16;
  spec.alpha = 32;
  spec.dropout = 0.05;
  nlohmann::json j = peft_adapter_config_json(spec, "models/base");
  CHECK(j["peft_type"] == "LORA");
  CHECK(j["task_type"] == "CAUSAL_LM");
  CHECK(j["r"] == 16);
  CHECK(j["lora_alpha"].is_number_integer());
  CHECK(j["lora_alpha"] == 32);
  CHECK(j["lora_dropout"] == 0.05);
  CHECK(j["target_modules"] == nlohmann::json({"q_proj", "v_proj"}));
  CHECK(j["bias"] == "none");
  CHECK(j["fan_in_fan_out"] == false);
  CHECK(j["inference_mode"] == true);
  CHECK(j["base_model_name_or_path"] == "models/base");
  CHECK(j["modules_to_save"].is_null());
  LoraSpec back = lora_spec_from_peft_config(j);
  CHECK(back.r == 16);
  CHECK(back.alpha == 32);
  CHECK(back.dropout == 0.05);
  CHECK(back.target_modules == std::vector<std::string>{"q_proj", "v_proj"});

  CHECK(peft_adapter_config_json(LoraSpec{{"all-linear"}}, "m")["target_modules"].size() == 7);

  // A glob is written as one regex that selects the same modules.
  spec.target_modules = {"model.layers.1.*", "q_proj"};
  j = peft_adapter_config_json(spec, "m");
  REQUIRE(j["target_modules"].is_string());
  LoraSpec from_regex = lora_spec_from_peft_config(j);
  CHECK(selected(from_regex.target_modules) == selected(spec.target_modules));

  j["use_dora"] = true;
  auto e = error_of([&] { lora_spec_from_peft_config(j); });
  CHECK(e.kind() == Error::Kind::Usage);
  CHECK(e.message() == "PEFT adapter uses DoRA, which dsk does not implement");
}

TEST_CASE("a sparsity mask keeps pruned weights zero through LoRA training and merging", "[lora][sparsity]") {
  Llama m = random_model(tiny_config(RopeStyle::Half, /*tied=*/false, /*bias=*/false), 31);
  at::Tensor tokens = random_tokens(2, 9, 61, 32);
  // prune half of every linear layer's weights (a fixed random mask) and record the masks
  std::vector<std::pair<dsk::models::LoraLinearImpl*, at::Tensor>> masks;
  {
    at::NoGradGuard no_grad;
    at::manual_seed(33);
    for (auto& [name, lin] : dsk::models::linear_layers(m)) {
      if (name == "lm_head") continue;  // all-linear adapts the decoder layers only
      at::Tensor keep = at::rand(lin->weight.sizes()).gt(0.5);
      lin->weight.mul_(keep);
      lin->set_sparsity_mask(keep);
      masks.emplace_back(lin, keep);
    }
  }
  LoraSpec spec;
  spec.target_modules = {"all-linear"};
  spec.r = 4;
  apply_lora(m, spec);
  randomize_lora(m, 34, 0.05);
  at::Tensor masked_logits;
  {
    at::NoGradGuard no_grad;
    masked_logits = m->forward(tokens);
  }
  // the forward equals a model whose weights are W + keep * scale * BA, computed by hand
  Llama ref = random_model(tiny_config(RopeStyle::Half, false, false), 31);
  {
    at::NoGradGuard no_grad;
    auto ref_layers = dsk::models::linear_layers(ref);  // the same order; lm_head last
    for (size_t i = 0; i < masks.size(); ++i) {
      auto* lin = masks[i].first;
      at::Tensor delta = at::mm(lin->lora_B(), lin->lora_A()).mul(lin->lora_scale()).mul(masks[i].second);
      ref_layers[i].second->weight.copy_(lin->weight + delta);
    }
    CHECK(max_abs_diff(ref->forward(tokens), masked_logits) < 1e-5);
  }
  // gradients of the adapters flow; merging keeps the zeros exactly and the logits
  at::Tensor loss = m->forward(tokens).pow(2).mean();
  loss.backward();
  CHECK(masks[0].first->lora_A().grad().defined());
  merge_lora(m);
  at::NoGradGuard no_grad;
  for (auto& [lin, keep] : masks) CHECK(at::equal(lin->weight.ne(0), keep));
  CHECK(max_abs_diff(m->forward(tokens), masked_logits) < 1e-5);
  // a mask of the wrong shape is refused
  CHECK_THROWS_AS(masks[0].first->set_sparsity_mask(at::ones({2, 2}, at::kBool)), dsk::Error);
}
