// Structured surgery (models/surgery.h) and explicit head_dim: removing neurons / KV groups / layers
// computes exactly what the original model computes with those units' outputs zeroed, on random
// models in both rotary layouts and on stories260K; counts, round trips and refusals.
#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "models/llama.h"
#include "models/loader.h"
#include "models/lora.h"
#include "models/surgery.h"
#include "models_test_util.h"
#include "test_util.h"

using namespace dsk;
using namespace dsk::models;
using Catch::Matchers::Contains;
using dsk::test::error_of;
using dsk::test::max_abs_diff;
using dsk::test::random_model;
using dsk::test::random_tokens;
using dsk::test::tiny_config;
using dsk::test::weight_map;

namespace {

// 2 layers, C 32, H 8, KV 4 (G 2), D 4, F 48, V 61: four groups to choose from.
LlamaConfig group_config(RopeStyle style, bool bias = false, bool tied = false) {
  LlamaConfig c = tiny_config(style, tied, bias);
  c.num_attention_heads = 8;
  c.num_key_value_heads = 4;
  return c;
}

Llama copy_of(Llama& m) {
  Llama c(m->config(), at::TensorOptions().dtype(m->dtype()), /*init=*/false);
  load_state_tensors(c, weight_map(m));
  return c;
}

at::Tensor logits_of(Llama& m, const at::Tensor& tokens) {
  at::NoGradGuard no_grad;
  return m->forward(tokens);
}

std::vector<int64_t> complement(const std::vector<int64_t>& keep, int64_t n) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i)
    if (!std::binary_search(keep.begin(), keep.end(), i)) out.push_back(i);
  return out;
}

// What the plan removes, applied to `ref` by zeroing: the down_proj columns of removed neurons,
// the o_proj columns of removed query heads, o_proj and down_proj of removed layers (the layer
// then passes its input through: x + 0 + 0).
void zero_removed(Llama& ref, const StructuredPlan& plan) {
  const LlamaConfig& c = ref->config();
  const int64_t G = c.num_attention_heads / c.num_key_value_heads, D = c.head_dim();
  at::NoGradGuard no_grad;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    auto& layer = ref->model->layers[static_cast<size_t>(l)];
    const bool kept = plan.layers_keep.empty() ||
                      std::binary_search(plan.layers_keep.begin(), plan.layers_keep.end(), l);
    if (!kept) {
      layer->self_attn->o_proj->weight.zero_();
      layer->mlp->down_proj->weight.zero_();
      continue;
    }
    if (!plan.mlp_keep.empty())
      for (int64_t f : complement(plan.mlp_keep[l], c.intermediate_size)) layer->mlp->down_proj->weight.select(1, f).zero_();
    if (!plan.group_keep.empty())
      for (int64_t g : complement(plan.group_keep[l], c.num_key_value_heads))
        layer->self_attn->o_proj->weight.narrow(1, g * G * D, G * D).zero_();
  }
}

int64_t numel_of(Llama& m) {
  int64_t n = 0;
  for (auto& [name, t] : state_tensors(m)) n += t.numel();
  return n;
}

// A random sorted subset of `keep` of [0, n).
std::vector<int64_t> random_subset(int64_t n, int64_t keep, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor p = std::get<0>(at::randperm(n, at::kLong).narrow(0, 0, keep).sort()).contiguous();
  return std::vector<int64_t>(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + keep);
}

// In float64, so that the equivalences below hold to 1e-9 instead of fp32's summation-order noise
// (stories260K's logits reach ~20: fp32 differs by ~3e-5 there).
LoadedModel stories() { return load_model(test::data_path("stories260K.bin"), at::kDouble); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Explicit head_dim

TEST_CASE("a model with an explicit head_dim (H*D != C) runs, decodes with a cache and round-trips", "[surgery][head_dim]") {
  for (int64_t heads : {2, 6}) {  // H*D = 16 < C = 32 and 48 > 32
    INFO("heads " << heads);
    LlamaConfig cfg = tiny_config(RopeStyle::Half, /*tied=*/false, /*bias=*/true);
    cfg.num_attention_heads = heads;
    cfg.num_key_value_heads = heads / 2;
    cfg.head_dim_override = 8;
    REQUIRE(cfg.head_dim() == 8);
    REQUIRE(heads * cfg.head_dim() != cfg.hidden_size);
    Llama m = random_model(cfg, 21);
    auto& attn = m->model->layers[0]->self_attn;
    CHECK(attn->q_proj->weight.sizes().vec() == std::vector<int64_t>{heads * 8, 32});
    CHECK(attn->k_proj->weight.sizes().vec() == std::vector<int64_t>{heads / 2 * 8, 32});
    CHECK(attn->q_proj->bias.sizes().vec() == std::vector<int64_t>{heads * 8});
    CHECK(attn->o_proj->weight.sizes().vec() == std::vector<int64_t>{32, heads * 8});
    CHECK(parameter_count(cfg) == numel_of(m));

    at::Tensor tokens = random_tokens(2, 11, cfg.vocab_size, 22);
    at::Tensor full = logits_of(m, tokens);
    CHECK(full.sizes().vec() == std::vector<int64_t>{2, 11, 61});
    {
      at::NoGradGuard no_grad;
      KVCache cache = m->make_cache(2, 11);
      CHECK(cache.k[0].size(3) == 8);
      for (int64_t t = 0; t < 11; ++t)
        CHECK(max_abs_diff(m->forward(tokens.narrow(1, t, 1), &cache).select(1, 0), full.select(1, t)) < 1e-5);
    }

    auto dir = test::scratch_dir("surgery_head_dim") / "model";
    save_model_hf(dir.string(), m, {});
    nlohmann::json j = nlohmann::json::parse(std::ifstream(dir / "config.json"));
    CHECK(j["head_dim"] == 8);
    CHECK(j["hidden_size"] == 32);
    CHECK(j["num_attention_heads"] == heads);
    LoadedModel back = load_model(dir.string());
    CHECK(back.config.head_dim() == 8);
    CHECK(back.config.head_dim_override == 8);
    CHECK(max_abs_diff(logits_of(back.model, tokens), full) == 0.0);
  }
  // Without the explicit value the same head counts would not divide hidden_size (6) or give D 16 (2).
  LlamaConfig bad = tiny_config();
  bad.num_attention_heads = 6;
  bad.num_key_value_heads = 3;
  auto e = error_of([&] { Llama m(bad); });
  CHECK(e.exit_code() == kExitUsage);
  CHECK_THAT(e.message(), Contains("not divisible by num_attention_heads"));
  bad.head_dim_override = 7;
  CHECK_THAT(error_of([&] { Llama m(bad); }).message(), Contains("head_dim 7 must be even"));
}

// ---------------------------------------------------------------------------------------------
// Equivalences

TEST_CASE("removing MLP neurons equals zeroing their down_proj columns", "[surgery]") {
  for (RopeStyle style : {RopeStyle::Half, RopeStyle::Interleaved}) {
    LlamaConfig cfg = tiny_config(style, /*tied=*/false, /*bias=*/true);
    Llama m = random_model(cfg, 31);
    StructuredPlan plan;
    plan.mlp_keep = {random_subset(48, 30, 1), random_subset(48, 30, 2)};
    REQUIRE(plan.mlp_keep[0] != plan.mlp_keep[1]);
    Llama small = apply_structured_plan(m, plan);
    CHECK(small->config().intermediate_size == 30);
    CHECK(small->config().num_attention_heads == 4);
    CHECK(small->config().rope_style == style);
    CHECK(small->model->layers[1]->mlp->down_proj->weight.sizes().vec() == std::vector<int64_t>{32, 30});

    Llama ref = copy_of(m);
    zero_removed(ref, plan);
    at::Tensor tokens = random_tokens(2, 17, cfg.vocab_size, 32);
    at::Tensor got = logits_of(small, tokens);
    CHECK(max_abs_diff(got, logits_of(ref, tokens)) < 1e-5);
    CHECK(max_abs_diff(got, logits_of(m, tokens)) > 1e-3);  // the removed neurons mattered
  }
}

TEST_CASE("removing KV groups equals zeroing their query heads' o_proj columns, in both rope layouts", "[surgery]") {
  for (RopeStyle style : {RopeStyle::Half, RopeStyle::Interleaved}) {
    for (bool bias : {false, true}) {
      INFO("interleaved " << (style == RopeStyle::Interleaved) << " bias " << bias);
      LlamaConfig cfg = group_config(style, bias);
      Llama m = random_model(cfg, 41);
      StructuredPlan plan;
      plan.group_keep = {{0, 2, 3}, {1, 2, 3}};
      Llama small = apply_structured_plan(m, plan);
      const LlamaConfig& sc = small->config();
      CHECK(sc.num_key_value_heads == 3);
      CHECK(sc.num_attention_heads == 6);
      CHECK(sc.head_dim() == 4);
      CHECK(sc.head_dim_override == 4);
      CHECK(sc.hidden_size == 32);
      auto& a = small->model->layers[0]->self_attn;
      CHECK(a->q_proj->weight.sizes().vec() == std::vector<int64_t>{24, 32});
      CHECK(a->v_proj->weight.sizes().vec() == std::vector<int64_t>{12, 32});
      CHECK(a->o_proj->weight.sizes().vec() == std::vector<int64_t>{32, 24});
      // Group 1 of layer 0 is gone: kept k rows are the original kv heads 0, 2, 3.
      auto& orig_k = m->model->layers[0]->self_attn->k_proj->weight;
      CHECK(max_abs_diff(a->k_proj->weight.narrow(0, 4, 4), orig_k.narrow(0, 8, 4)) == 0.0);
      if (bias) CHECK(max_abs_diff(a->q_proj->bias.narrow(0, 8, 8), m->model->layers[0]->self_attn->q_proj->bias.narrow(0, 16, 8)) == 0.0);

      Llama ref = copy_of(m);
      zero_removed(ref, plan);
      at::Tensor tokens = random_tokens(2, 19, cfg.vocab_size, 42);
      at::Tensor got = logits_of(small, tokens);
      CHECK(max_abs_diff(got, logits_of(ref, tokens)) < 1e-5);
      CHECK(max_abs_diff(got, logits_of(m, tokens)) > 1e-3);
      // The KV cache of the smaller model works with its head counts.
      at::NoGradGuard no_grad;
      KVCache cache = small->make_cache(2, 19);
      small->forward(tokens.narrow(1, 0, 12), &cache);
      CHECK(max_abs_diff(small->forward(tokens.narrow(1, 12, 7), &cache), got.narrow(1, 12, 7)) < 1e-5);
    }
  }
}

TEST_CASE("removing a layer equals zeroing its o_proj and down_proj (residual passthrough)", "[surgery]") {
  LlamaConfig cfg = group_config(RopeStyle::Half, /*bias=*/true, /*tied=*/true);
  cfg.num_hidden_layers = 3;
  Llama m = random_model(cfg, 51);
  StructuredPlan plan;
  plan.layers_keep = {0, 2};
  Llama small = apply_structured_plan(m, plan);
  CHECK(small->config().num_hidden_layers == 2);
  CHECK(small->model->layers.size() == 2);
  // Layer 2 is now layer 1.
  CHECK(max_abs_diff(small->model->layers[1]->mlp->up_proj->weight, m->model->layers[2]->mlp->up_proj->weight) == 0.0);
  std::set<std::string> names;
  for (auto& [name, t] : state_tensors(small)) names.insert(name);
  CHECK(names.count("model.layers.1.input_layernorm.weight") == 1);
  CHECK(names.count("model.layers.2.input_layernorm.weight") == 0);

  Llama ref = copy_of(m);
  zero_removed(ref, plan);
  at::Tensor tokens = random_tokens(1, 23, cfg.vocab_size, 52);
  at::Tensor got = logits_of(small, tokens);
  CHECK(max_abs_diff(got, logits_of(ref, tokens)) < 1e-5);
  CHECK(max_abs_diff(got, logits_of(m, tokens)) > 1e-3);
}

TEST_CASE("stories260K: neurons, groups and a layer removed at once equal the zeroed original", "[surgery]") {
  LoadedModel lm = stories();
  REQUIRE(lm.config.rope_style == RopeStyle::Interleaved);
  REQUIRE(lm.model->dtype() == at::kDouble);
  const LlamaConfig& c = lm.config;
  REQUIRE(c.num_key_value_heads == 4);
  StructuredPlan plan;
  const int64_t F2 = c.intermediate_size * 3 / 4;
  plan.mlp_keep = keep_top(mlp_neuron_magnitude(lm.model), F2);
  plan.group_keep = keep_top(kv_group_magnitude(lm.model), 3);
  plan.layers_keep = {0, 1, 2, 4};
  Llama small = apply_structured_plan(lm.model, plan);
  CHECK(small->config().rope_style == RopeStyle::Interleaved);
  CHECK(small->config().intermediate_size == F2);
  CHECK(small->config().num_key_value_heads == 3);
  CHECK(small->config().num_attention_heads == 6);
  CHECK(small->config().num_hidden_layers == 4);

  Llama ref = copy_of(lm.model);
  zero_removed(ref, plan);
  at::Tensor tokens = random_tokens(2, 64, c.vocab_size, 61);
  at::Tensor got = logits_of(small, tokens);
  CHECK(max_abs_diff(got, logits_of(ref, tokens)) < 1e-9);
  CHECK(max_abs_diff(got, logits_of(lm.model, tokens)) > 1e-2);

  // Groups alone, per layout: the same model converted to the Half layout gives the same result.
  StructuredPlan groups;
  groups.group_keep = plan.group_keep;
  Llama inter_small = apply_structured_plan(lm.model, groups);
  LoadedModel half = stories();
  convert_to_half_rope(half);
  REQUIRE(half.config.rope_style == RopeStyle::Half);
  Llama half_small = apply_structured_plan(half.model, groups);
  Llama half_ref = copy_of(half.model);
  zero_removed(half_ref, groups);
  at::Tensor half_got = logits_of(half_small, tokens);
  CHECK(max_abs_diff(half_got, logits_of(half_ref, tokens)) < 1e-9);
  CHECK(max_abs_diff(half_got, logits_of(inter_small, tokens)) < 1e-9);
}

// ---------------------------------------------------------------------------------------------
// Counts, round trip

TEST_CASE("parameter counts equal parameter_count and the exact expected drop", "[surgery]") {
  for (bool bias : {false, true}) {
    for (bool tied : {false, true}) {
      INFO("bias " << bias << " tied " << tied);
      LlamaConfig cfg = group_config(RopeStyle::Half, bias, tied);
      cfg.num_hidden_layers = 3;
      Llama m = random_model(cfg, 71);
      const int64_t C = 32, F = 48, D = 4, G = 2, V = 61;
      CHECK(numel_of(m) == parameter_count(cfg));
      // Closed form for the original, independent of parameter_count.
      const int64_t per_layer = 2 * C + (8 * D) * C * 2 + (4 * D) * C * 2 + 3 * F * C + (bias ? 8 * D + 2 * 4 * D : 0);
      CHECK(numel_of(m) == V * C * (tied ? 1 : 2) + 3 * per_layer + C);

      StructuredPlan plan;
      plan.mlp_keep = {random_subset(F, 20, 3), {}, random_subset(F, 20, 4)};  // layer 1 is dropped
      plan.group_keep = {{1, 3}, {0}, {0, 2}};
      plan.layers_keep = {0, 2};
      Llama small = apply_structured_plan(m, plan);
      const int64_t n = numel_of(small);
      CHECK(n == parameter_count(small->config()));
      // Dropped: one whole layer; in each of the two others 28 neurons (3C each) and 2 groups
      // (G query heads of D rows in q and D columns in o, D rows in k and v, and their biases).
      const int64_t per_group = G * D * C * 2 + D * C * 2 + (bias ? G * D + 2 * D : 0);
      const int64_t drop = per_layer + 2 * (28 * 3 * C + 2 * per_group);
      CHECK(numel_of(m) - n == drop);
    }
  }
}

TEST_CASE("a shrunk model round-trips through a Hugging Face directory with the reduced config", "[surgery]") {
  for (RopeStyle style : {RopeStyle::Half, RopeStyle::Interleaved}) {
    LlamaConfig cfg = group_config(style, /*bias=*/true);
    Llama m = random_model(cfg, 81);
    StructuredPlan plan;
    plan.mlp_keep = {random_subset(48, 40, 5), random_subset(48, 40, 6)};
    plan.group_keep = {{0, 1, 3}, {0, 2, 3}};
    Llama small = apply_structured_plan(m, plan);
    auto dir = test::scratch_dir("surgery_roundtrip") / "model";
    save_model_hf(dir.string(), small, {{"dsk_test", "surgery"}});
    nlohmann::json j = nlohmann::json::parse(std::ifstream(dir / "config.json"));
    CHECK(j["intermediate_size"] == 40);
    CHECK(j["num_attention_heads"] == 6);
    CHECK(j["num_key_value_heads"] == 3);
    CHECK(j["num_hidden_layers"] == 2);
    CHECK(j["hidden_size"] == 32);
    CHECK(j["head_dim"] == 4);  // 32 / 6 is not it: must be explicit
    LoadedModel back = load_model(dir.string());
    CHECK(back.config.head_dim() == 4);
    CHECK(back.config.num_attention_heads == 6);
    at::Tensor tokens = random_tokens(2, 15, cfg.vocab_size, 82);
    at::Tensor a = logits_of(small, tokens), b = logits_of(back.model, tokens);
    // Half: the same weights, bit for bit. Interleaved: q/k rows permuted on save, so the head
    // dimensions are summed in another order.
    if (style == RopeStyle::Half) {
      CHECK(max_abs_diff(a, b) == 0.0);
    } else {
      CHECK(max_abs_diff(a, b) < 1e-5);
    }
  }
}

TEST_CASE("apply_structured_plan keeps dtype, mode and which weights are trainable", "[surgery]") {
  LlamaConfig cfg = group_config(RopeStyle::Half);
  Llama m = random_model(cfg, 91);
  Llama bf = copy_of(m);
  bf->to(at::kBFloat16);
  bf->eval();
  bf->model->norm->weight.set_requires_grad(false);
  StructuredPlan plan;
  plan.group_keep = {{0, 1}, {2, 3}};
  Llama small = apply_structured_plan(bf, plan);
  CHECK(small->dtype() == at::kBFloat16);
  CHECK_FALSE(small->is_training());
  CHECK_FALSE(small->model->norm->weight.requires_grad());
  CHECK(small->model->layers[0]->self_attn->q_proj->weight.requires_grad());
  CHECK(small->config().sparsity_config.empty());
}

// ---------------------------------------------------------------------------------------------
// Importance helpers

TEST_CASE("magnitude scores are the sums of squares of each unit's weights", "[surgery]") {
  LlamaConfig cfg = group_config(RopeStyle::Half, /*bias=*/true);
  Llama m = random_model(cfg, 101);
  auto mlp = mlp_neuron_magnitude(m);
  auto grp = kv_group_magnitude(m);
  REQUIRE(mlp.size() == 2);
  REQUIRE(grp.size() == 2);
  CHECK(mlp[1].scalar_type() == at::kDouble);
  CHECK(mlp[1].sizes().vec() == std::vector<int64_t>{48});
  CHECK(grp[1].sizes().vec() == std::vector<int64_t>{4});
  auto& layer = m->model->layers[1];
  auto sq = [](const at::Tensor& t) { return t.to(at::kDouble).pow(2).sum().item<double>(); };
  const double n7 = sq(layer->mlp->gate_proj->weight[7]) + sq(layer->mlp->up_proj->weight[7]) +
                    sq(layer->mlp->down_proj->weight.select(1, 7));
  CHECK(std::abs(mlp[1][7].item<double>() - n7) < 1e-9 * n7);
  auto& a = layer->self_attn;  // group 2: query heads 4, 5 (q rows 16..23), kv head 2 (rows 8..11)
  const double g2 = sq(a->q_proj->weight.narrow(0, 16, 8)) + sq(a->k_proj->weight.narrow(0, 8, 4)) +
                    sq(a->v_proj->weight.narrow(0, 8, 4)) + sq(a->o_proj->weight.narrow(1, 16, 8));
  CHECK(std::abs(grp[1][2].item<double>() - g2) < 1e-9 * g2);

  // A neuron with zero weights scores 0 and is the first to go.
  {
    at::NoGradGuard no_grad;
    layer->mlp->gate_proj->weight[5].zero_();
    layer->mlp->up_proj->weight[5].zero_();
    layer->mlp->down_proj->weight.select(1, 5).zero_();
  }
  auto kept = keep_top(mlp_neuron_magnitude(m), 47);
  CHECK(kept[1] == complement({5}, 48));
}

TEST_CASE("keep_top keeps the highest scores, ties to the lower index, sorted", "[surgery]") {
  std::vector<at::Tensor> s = {at::tensor({1.0, 3.0, 3.0, 2.0}, at::kDouble), at::tensor({5.0f, 5.0f, 5.0f, 9.0f})};
  auto k2 = keep_top(s, 2);
  CHECK(k2[0] == std::vector<int64_t>{1, 2});
  CHECK(k2[1] == std::vector<int64_t>{0, 3});
  auto k3 = keep_top(s, 3);
  CHECK(k3[0] == std::vector<int64_t>{1, 2, 3});
  CHECK(k3[1] == std::vector<int64_t>{0, 1, 3});
  CHECK(keep_top(s, 4)[0] == std::vector<int64_t>{0, 1, 2, 3});
  CHECK(error_of([&] { keep_top(s, 0); }).exit_code() == kExitUsage);
  CHECK_THAT(error_of([&] { keep_top(s, 5); }).message(), Contains("cannot keep 5 of the 4 units of layer 0"));
  std::vector<at::Tensor> nan = {at::tensor({1.0, std::nan("")}, at::kDouble)};
  CHECK(error_of([&] { keep_top(nan, 1); }).exit_code() == kExitRuntime);
}

// ---------------------------------------------------------------------------------------------
// Refusals

TEST_CASE("bad plans, quantized and LoRA models are usage errors", "[surgery]") {
  LlamaConfig cfg = group_config(RopeStyle::Half);
  Llama m = random_model(cfg, 111);
  auto usage = [&](const StructuredPlan& plan) {
    auto e = error_of([&] { apply_structured_plan(m, plan); });
    CHECK(e.kind() == Error::Kind::Usage);
    CHECK(e.exit_code() == kExitUsage);
    return e.message();
  };
  StructuredPlan p;
  p.mlp_keep = {{0, 1, 2}, {0, 1, 2, 3}};
  CHECK_THAT(usage(p), Contains("different numbers of MLP neurons (layer 0 keeps 3, layer 1 keeps 4)"));
  p.layers_keep = {1};  // the ragged layer is dropped: fine
  CHECK(apply_structured_plan(m, p)->config().intermediate_size == 4);

  p = {};
  p.group_keep = {{0, 1}, {0, 1, 2}};
  CHECK_THAT(usage(p), Contains("different numbers of KV groups"));
  p.group_keep = {{0, 4}, {0, 1}};
  CHECK_THAT(usage(p), Contains("group_keep of layer 0 index 4 is out of range [0, 4)"));
  p.group_keep = {{0, 1}, {-1, 1}};
  CHECK_THAT(usage(p), Contains("index -1 is out of range"));
  p.group_keep = {{1, 1}, {0, 1}};
  CHECK_THAT(usage(p), Contains("lists index 1 twice"));
  p.group_keep = {{2, 1}, {0, 1}};
  CHECK_THAT(usage(p), Contains("must be sorted ascending"));
  p.group_keep = {{0, 1}};
  CHECK_THAT(usage(p), Contains("group_keep has 1 entries, the model has 2 layers"));
  p.group_keep = {{}, {}};
  CHECK_THAT(usage(p), Contains("keeps no KV groups of layer 0"));

  p = {};
  p.mlp_keep = {{0, 48}, {0, 1}};
  CHECK_THAT(usage(p), Contains("mlp_keep of layer 0 index 48 is out of range [0, 48)"));
  p = {};
  p.layers_keep = {0, 2};
  CHECK_THAT(usage(p), Contains("layers_keep index 2 is out of range [0, 2)"));
  p.layers_keep = {1, 1};
  CHECK_THAT(usage(p), Contains("layers_keep lists index 1 twice"));

  // Quantized (config.json carries a quantization_config) and LoRA models.
  Llama q = copy_of(m);
  q->set_quantization_config(R"({"quant_method": "gptq"})");
  auto eq = error_of([&] { apply_structured_plan(q, {}); });
  CHECK(eq.kind() == Error::Kind::Usage);
  CHECK_THAT(eq.message(), Contains("quantized"));
  CHECK(error_of([&] { mlp_neuron_magnitude(q); }).kind() == Error::Kind::Usage);

  Llama lora = copy_of(m);
  LoraSpec spec;
  apply_lora(lora, spec);
  auto el = error_of([&] { apply_structured_plan(lora, {}); });
  CHECK(el.kind() == Error::Kind::Usage);
  CHECK_THAT(el.message(), Contains("LoRA adapter"));
  CHECK(error_of([&] { kv_group_magnitude(lora); }).kind() == Error::Kind::Usage);
}
