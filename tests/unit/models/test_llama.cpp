// Llama modules: names and shapes, GQA grouping, rope conventions, KV cache, weight loading.
#include <ATen/ATen.h>

#include <set>

#include "models/llama.h"
#include "models/llama2c.h"
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

TEST_CASE("parameter names are the Hugging Face keys with GQA shapes", "[llama]") {
  LlamaConfig cfg = tiny_config(RopeStyle::Half, /*tied=*/false, /*bias=*/true);
  Llama m(cfg);
  std::map<std::string, std::vector<int64_t>> shapes;
  for (auto& item : m->named_parameters()) shapes[item.key()] = item.value().sizes().vec();
  // 1 embedding + 2 layers x (2 norms + 4 attn weights + 3 biases + 3 mlp) + norm + lm_head
  CHECK(shapes.size() == 1 + 2 * 12 + 1 + 1);
  CHECK(shapes.at("model.embed_tokens.weight") == std::vector<int64_t>{61, 32});
  CHECK(shapes.at("model.layers.1.input_layernorm.weight") == std::vector<int64_t>{32});
  CHECK(shapes.at("model.layers.1.self_attn.q_proj.weight") == std::vector<int64_t>{32, 32});
  CHECK(shapes.at("model.layers.1.self_attn.q_proj.bias") == std::vector<int64_t>{32});
  CHECK(shapes.at("model.layers.1.self_attn.k_proj.weight") == std::vector<int64_t>{16, 32});
  CHECK(shapes.at("model.layers.1.self_attn.v_proj.bias") == std::vector<int64_t>{16});
  CHECK(shapes.at("model.layers.0.self_attn.o_proj.weight") == std::vector<int64_t>{32, 32});
  CHECK(shapes.count("model.layers.0.self_attn.o_proj.bias") == 0);
  CHECK(shapes.at("model.layers.0.post_attention_layernorm.weight") == std::vector<int64_t>{32});
  CHECK(shapes.at("model.layers.0.mlp.gate_proj.weight") == std::vector<int64_t>{48, 32});
  CHECK(shapes.at("model.layers.0.mlp.up_proj.weight") == std::vector<int64_t>{48, 32});
  CHECK(shapes.at("model.layers.0.mlp.down_proj.weight") == std::vector<int64_t>{32, 48});
  CHECK(shapes.at("model.norm.weight") == std::vector<int64_t>{32});
  CHECK(shapes.at("lm_head.weight") == std::vector<int64_t>{61, 32});

  at::Tensor tokens = random_tokens(2, 5, cfg.vocab_size, 1);
  at::Tensor logits = m->forward(tokens);
  CHECK(logits.sizes().vec() == std::vector<int64_t>{2, 5, 61});
  CHECK(logits.scalar_type() == at::kFloat);
  std::vector<at::Tensor> layers;
  at::Tensor hidden = m->hidden_states(tokens, nullptr, &layers);
  CHECK(hidden.sizes().vec() == std::vector<int64_t>{2, 5, 32});
  CHECK(layers.size() == 3);
  CHECK(max_abs_diff(m->logits(hidden), logits) == 0.0);
}

TEST_CASE("tied models share the embedding and do not emit lm_head.weight", "[llama]") {
  Llama tied = random_model(tiny_config(RopeStyle::Half, /*tied=*/true), 2);
  std::set<std::string> names;
  for (auto& [name, t] : state_tensors(tied)) names.insert(name);
  CHECK(names.count("lm_head.weight") == 0);
  CHECK(names.count("model.embed_tokens.weight") == 1);
  at::Tensor tokens = random_tokens(1, 6, 61, 3);
  at::Tensor h = tied->hidden_states(tokens);
  at::Tensor expect = at::matmul(h, tied->model->embed_tokens->weight.t());
  CHECK(max_abs_diff(tied->forward(tokens), expect) < 1e-5);

  Llama untied = random_model(tiny_config(), 2);
  names.clear();
  for (auto& [name, t] : state_tensors(untied)) names.insert(name);
  CHECK(names.count("lm_head.weight") == 1);
}

TEST_CASE("GQA: query head h uses kv head h / (H / KV), as repeating k/v heads does", "[llama]") {
  LlamaConfig gqa_cfg = tiny_config();
  Llama gqa = random_model(gqa_cfg, 4);
  LlamaConfig mha_cfg = gqa_cfg;
  mha_cfg.num_key_value_heads = mha_cfg.num_attention_heads;
  Llama mha(mha_cfg);
  auto w = weight_map(gqa);
  const int64_t G = 2, D = 8;
  for (auto& [name, t] : w) {
    if (name.find("k_proj") == std::string::npos && name.find("v_proj") == std::string::npos) continue;
    // [KV*D, C] -> [KV, 1, D, C] -> repeat each kv head G times -> [H*D, C]
    t = t.view({-1, 1, D, t.size(1)}).expand({-1, G, D, t.size(1)}).reshape({-1, t.size(1)});
  }
  load_state_tensors(mha, w);
  at::Tensor tokens = random_tokens(2, 9, 61, 5);
  CHECK(max_abs_diff(gqa->forward(tokens), mha->forward(tokens)) < 1e-5);
}

TEST_CASE("Interleaved and Half rope give the same logits after convert_rope_to_half", "[llama][rope]") {
  for (bool bias : {false, true}) {
    LlamaConfig cfg = tiny_config(RopeStyle::Interleaved, false, bias);
    Llama inter = random_model(cfg, 6);
    auto w = weight_map(inter);
    LlamaConfig half_cfg = cfg;
    auto half_w = w;
    convert_rope_to_half(half_cfg, half_w);
    REQUIRE(half_cfg.rope_style == RopeStyle::Half);
    CHECK(max_abs_diff(half_w.at("model.layers.0.self_attn.q_proj.weight"),
                       w.at("model.layers.0.self_attn.q_proj.weight")) > 0.1);
    Llama half(half_cfg);
    load_state_tensors(half, half_w);
    at::Tensor tokens = random_tokens(2, 30, 61, 7);
    at::Tensor a = inter->forward(tokens), b = half->forward(tokens);
    CHECK(max_abs_diff(a, b) < 1e-5);
    // Without the permutation the Half model computes something else.
    Llama wrong(half_cfg);
    load_state_tensors(wrong, w);
    CHECK(max_abs_diff(wrong->forward(tokens), a) > 1e-2);
    // The inverse permutation restores the original weights exactly.
    convert_rope_to_interleaved(half_cfg, half_w);
    CHECK(half_cfg.rope_style == RopeStyle::Interleaved);
    for (auto& [name, t] : w) CHECK(max_abs_diff(half_w.at(name), t) == 0.0);
  }
}

TEST_CASE("permute_rope_rows moves row 2i+j of each head to j*D/2+i", "[rope]") {
  at::Tensor w = at::arange(8, at::kFloat).view({8, 1});  // 2 heads of D 4
  at::Tensor h = permute_rope_rows(w, 2, RopeStyle::Half).view({8});
  std::vector<float> got(h.data_ptr<float>(), h.data_ptr<float>() + 8);
  CHECK(got == std::vector<float>{0, 2, 1, 3, 4, 6, 5, 7});
  at::Tensor bias = at::arange(8, at::kFloat);
  CHECK(max_abs_diff(permute_rope_rows(bias, 2, RopeStyle::Half), h) == 0.0);
  CHECK(max_abs_diff(permute_rope_rows(permute_rope_rows(w, 2, RopeStyle::Half), 2, RopeStyle::Interleaved), w) == 0.0);
}

TEST_CASE("attention is causal", "[llama]") {
  Llama m = random_model(tiny_config(), 8);
  at::Tensor tokens = random_tokens(1, 12, 61, 9);
  at::Tensor changed = tokens.clone();
  changed[0][8] = (tokens[0][8].item<int64_t>() + 1) % 61;
  at::Tensor a = m->forward(tokens), b = m->forward(changed);
  CHECK(max_abs_diff(a.narrow(1, 0, 8), b.narrow(1, 0, 8)) == 0.0);
  CHECK(max_abs_diff(a.narrow(1, 8, 4), b.narrow(1, 8, 4)) > 1e-4);
}

TEST_CASE("KV-cache decoding equals the full-sequence forward at every position", "[llama][cache]") {
  for (RopeStyle style : {RopeStyle::Half, RopeStyle::Interleaved}) {
    LlamaConfig cfg = tiny_config(style, /*tied=*/true, /*bias=*/true);
    Llama m = random_model(cfg, 10);
    at::NoGradGuard no_grad;
    at::Tensor tokens = random_tokens(2, 20, 61, 11);
    at::Tensor full = m->forward(tokens);  // [2, 20, V]

    KVCache one = m->make_cache(2, 20);
    for (int64_t t = 0; t < 20; ++t) {
      at::Tensor step = m->forward(tokens.narrow(1, t, 1), &one);  // [2, 1, V]
      CHECK(max_abs_diff(step.select(1, 0), full.select(1, t)) < 1e-5);
    }
    CHECK(one.length == 20);

    // A chunked prefill (7 tokens, then 5, then one at a time) agrees too.
    KVCache chunks = m->make_cache(2, 20);
    at::Tensor a = m->forward(tokens.narrow(1, 0, 7), &chunks);
    at::Tensor b = m->forward(tokens.narrow(1, 7, 5), &chunks);
    CHECK(max_abs_diff(a, full.narrow(1, 0, 7)) < 1e-5);
    CHECK(max_abs_diff(b, full.narrow(1, 7, 5)) < 1e-5);
    for (int64_t t = 12; t < 20; ++t)
      CHECK(max_abs_diff(m->forward(tokens.narrow(1, t, 1), &chunks).select(1, 0), full.select(1, t)) < 1e-5);

    // The cache refuses to overflow.
    auto e = error_of([&] { m->forward(tokens.narrow(1, 0, 1), &chunks); });
    CHECK(e.message().find("KV cache holds 20 positions, 21 needed") != std::string::npos);
  }
}

TEST_CASE("inputs longer than max_position_embeddings or outside the vocabulary are usage errors", "[llama]") {
  Llama m = random_model(tiny_config(), 12);
  auto e = error_of([&] { m->forward(random_tokens(1, 41, 61, 1)); });
  CHECK(e.kind() == Error::Kind::Usage);
  CHECK(e.message() == "sequence of 41 tokens exceeds the model's maximum length 40 (max_position_embeddings)");
  at::Tensor bad = at::full({1, 3}, 61, at::kLong);
  e = error_of([&] { m->forward(bad); });
  CHECK(e.message() == "token id 61 is outside the model's vocabulary [0, 61)");
}

TEST_CASE("load_state_tensors checks names and shapes and converts dtype", "[llama][weights]") {
  LlamaConfig cfg = tiny_config();
  Llama src = random_model(cfg, 13);
  auto w = weight_map(src);

  SECTION("a shape mismatch names the tensor, its shape and the expected shape") {
    LlamaConfig other = cfg;
    other.intermediate_size = 40;
    Llama dst(other);
    auto e = error_of([&] { load_state_tensors(dst, w); });
    CHECK(e.kind() == Error::Kind::Usage);
    CHECK(e.exit_code() == 2);
    CHECK(e.message() == "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [48, 32], expected [40, 32]");
    CHECK(e.hint().find("config.json and the weights disagree") != std::string::npos);
  }
  SECTION("missing and unexpected tensors are named") {
    Llama dst(cfg);
    auto missing = w;
    missing.erase("model.layers.1.mlp.up_proj.weight");
    auto e = error_of([&] { load_state_tensors(dst, missing); });
    CHECK(e.kind() == Error::Kind::Usage);
    CHECK(e.message() ==
          "weights lack 1 tensor(s) the model config expects: 'model.layers.1.mlp.up_proj.weight'");
    auto extra = w;
    extra["model.layers.2.mlp.up_proj.weight"] = at::zeros({48, 32});
    e = error_of([&] { load_state_tensors(dst, extra); });
    CHECK(e.message() ==
          "weights have 1 tensor(s) the model config does not expect: 'model.layers.2.mlp.up_proj.weight'");
  }
  SECTION("rotary inv_freq buffers are ignored; bf16 weights are converted") {
    Llama dst(cfg);
    auto bf = w;
    for (auto& [name, t] : bf) t = t.to(at::kBFloat16);
    bf["model.layers.0.self_attn.rotary_emb.inv_freq"] = at::ones({4});
    load_state_tensors(dst, bf);
    for (auto& [name, t] : state_tensors(dst)) {
      CHECK(t.scalar_type() == at::kFloat);
      CHECK(max_abs_diff(t, bf.at(name)) == 0.0);
    }
  }
  SECTION("a tied model ignores a stored lm_head.weight") {
    LlamaConfig tcfg = tiny_config(RopeStyle::Half, true);
    Llama dst(tcfg);
    load_state_tensors(dst, w);  // w carries lm_head.weight
    CHECK(max_abs_diff(dst->classifier_weight(), w.at("model.embed_tokens.weight")) == 0.0);
  }
}

TEST_CASE("a bf16 model runs and returns fp32 logits close to the fp32 model", "[llama]") {
  LlamaConfig cfg = tiny_config();
  Llama f32 = random_model(cfg, 14);
  Llama bf16(cfg, at::TensorOptions().dtype(at::kBFloat16), /*init=*/false);
  load_state_tensors(bf16, weight_map(f32));
  CHECK(bf16->dtype() == at::kBFloat16);
  at::Tensor tokens = random_tokens(1, 10, 61, 15);
  at::Tensor a = f32->forward(tokens), b = bf16->forward(tokens);
  CHECK(b.scalar_type() == at::kFloat);
  double scale = a.abs().max().item<double>();
  CHECK(max_abs_diff(a, b) < 0.1 * scale);
}

TEST_CASE("invalid configs are usage errors", "[llama]") {
  LlamaConfig cfg = tiny_config();
  cfg.num_key_value_heads = 3;
  auto e = error_of([&] { Llama m(cfg); });
  CHECK(e.kind() == Error::Kind::Usage);
  CHECK(e.message() == "model config: num_key_value_heads 3 does not divide num_attention_heads 4");
  cfg = tiny_config();
  cfg.rope_scaling_type = "yarn";
  e = error_of([&] { Llama m(cfg); });
  CHECK(e.message() == "model config: rope_scaling type 'yarn' is not supported");
}

TEST_CASE("rope inverse frequencies, plain and with llama3 scaling", "[llama][rope]") {
  LlamaConfig cfg = tiny_config();  // D 8, theta 1e4: 1, 0.1, 0.01, 0.001
  at::Tensor f = rope_inv_freq(cfg);
  REQUIRE(f.numel() == 4);
  CHECK(f[0].item<double>() == Approx(1.0));
  CHECK(f[1].item<double>() == Approx(0.1));
  CHECK(f[3].item<double>() == Approx(0.001));
  // Wavelengths 2*pi/f: 6.28, 62.8, 628, 6283. Original length 64, low/high factors 1/4: keep
  // wavelengths under 16, divide those over 64 by the factor, interpolate in between.
  cfg.rope_scaling_type = "llama3";
  cfg.rope_scaling_factor = 8.0;
  cfg.rope_low_freq_factor = 1.0;
  cfg.rope_high_freq_factor = 4.0;
  cfg.rope_original_max_position_embeddings = 64;
  at::Tensor s = rope_inv_freq(cfg);
  const double smooth = (64.0 / (2 * 3.14159265358979323846 / 0.1) - 1.0) / 3.0;
  CHECK(s[0].item<double>() == Approx(1.0));
  CHECK(s[1].item<double>() == Approx((1 - smooth) * 0.1 / 8 + smooth * 0.1).epsilon(1e-5));
  CHECK(s[2].item<double>() == Approx(0.01 / 8).epsilon(1e-5));
  CHECK(s[3].item<double>() == Approx(0.001 / 8).epsilon(1e-5));
  cfg.rope_scaling_type = "linear";
  cfg.rope_scaling_factor = 4.0;
  CHECK(rope_inv_freq(cfg)[1].item<double>() == Approx(0.025));
}

TEST_CASE("causal_query_blocks: whole blocks of at least two, else one", "[llama][attention]") {
  CHECK(causal_query_blocks(256, 64) == 4);
  CHECK(causal_query_blocks(128, 64) == 2);
  CHECK(causal_query_blocks(64, 64) == 1);   // one block is the whole matrix
  CHECK(causal_query_blocks(200, 64) == 1);  // not whole
  CHECK(causal_query_blocks(256, 0) == 1);   // off
}

TEST_CASE("attention in query blocks gives the whole-matrix logits and gradients", "[llama][attention]") {
  for (bool gqa : {true, false}) {
    INFO("gqa " << gqa);
    LlamaConfig cfg = tiny_config();
    if (!gqa) cfg.num_key_value_heads = cfg.num_attention_heads;
    Llama m = random_model(cfg, 41);
    at::Tensor tokens = random_tokens(2, 40, 61, 42);  // 40 positions: 5 blocks of 8
    auto run = [&](int64_t block) {
      for (auto& layer : m->model->layers) layer->self_attn->query_block = block;
      m->zero_grad();
      at::Tensor logits = m->forward(tokens);
      logits.logsumexp(-1).mean().backward();
      std::vector<at::Tensor> grads;
      for (auto& p : m->parameters()) grads.push_back(p.grad().clone());
      return std::make_pair(logits.detach(), grads);
    };
    auto [whole, g_whole] = run(0);
    auto [blocked, g_blocked] = run(8);
    CHECK(max_abs_diff(whole, blocked) < 1e-5);
    for (size_t i = 0; i < g_whole.size(); ++i) CHECK(at::allclose(g_whole[i], g_blocked[i], 1e-4, 1e-6));
    // Odd block sizes fall back to the whole matrix.
    auto [fallback, g_fallback] = run(7);
    CHECK(max_abs_diff(whole, fallback) == 0.0);
  }
}
