// Small random Llama models for the models unit tests.
#pragma once

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <map>
#include <string>

#include "core/error.h"
#include "models/llama.h"
#include "test_util.h"

namespace dsk::test {

// A Llama config of this shape; every other field keeps LlamaConfig's default (Half rope, untied head, no bias).
inline models::LlamaConfig llama_shape(int64_t hidden, int64_t ffn, int64_t layers, int64_t heads, int64_t kv_heads,
                                       int64_t vocab, int64_t max_len) {
  models::LlamaConfig c;
  c.hidden_size = hidden;
  c.intermediate_size = ffn;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.vocab_size = vocab;
  c.max_position_embeddings = max_len;
  return c;
}

// 2 layers, C 32, H 4, KV 2 (GQA), D 8, F 48, V 61, max length 40.
inline models::LlamaConfig tiny_config(models::RopeStyle style = models::RopeStyle::Half, bool tied = false,
                                       bool bias = false) {
  models::LlamaConfig c = llama_shape(32, 48, 2, 4, 2, 61, 40);
  c.tie_word_embeddings = tied;
  c.attention_bias = bias;
  c.rope_style = style;
  return c;
}

// A model whose weights (norms and biases included) are all random, so no parameter is inert.
inline models::Llama random_model(const models::LlamaConfig& cfg, uint64_t seed) {
  at::manual_seed(seed);
  models::Llama m(cfg);
  at::NoGradGuard no_grad;
  for (auto& p : m->parameters()) p.normal_(0.0, 0.2);
  for (auto& item : m->named_parameters())
    if (item.key().find("norm") != std::string::npos) item.value().uniform_(0.5, 1.5);
  return m;
}

inline std::map<std::string, at::Tensor> weight_map(models::Llama& m) {
  std::map<std::string, at::Tensor> out;
  for (auto& [name, t] : models::state_tensors(m)) out[name] = t.clone();
  return out;
}

inline at::Tensor random_tokens(int64_t B, int64_t T, int64_t vocab, uint64_t seed) {
  at::manual_seed(seed);
  return at::randint(vocab, {B, T}, at::kLong);
}

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace dsk::test
