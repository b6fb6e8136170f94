// llama2.c checkpoints (the legacy "version 0" export of karpathy/llama2.c) and the rotary
// layout conversion between llama2.c/Meta (Interleaved) and Hugging Face (Half) weights.
//
// File layout, all little-endian:
//   header  7 x int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//           (vocab_size < 0: an untied classifier wcls follows; |vocab_size| is the vocabulary)
//   fp32    token_embedding [V, dim]            -> model.embed_tokens.weight
//           rms_att  [L, dim]                   -> model.layers.{i}.input_layernorm.weight
//           wq [L, dim, dim]  wk, wv [L, kv_dim, dim]  wo [L, dim, dim]   -> self_attn.{q,k,v,o}_proj
//           rms_ffn  [L, dim]                   -> model.layers.{i}.post_attention_layernorm.weight
//           w1 [L, hidden, dim] w2 [L, dim, hidden] w3 [L, hidden, dim]  -> mlp.{gate,down,up}_proj
//           rms_final [dim]                     -> model.norm.weight
//           freq_cis_real, freq_cis_imag [seq_len, head_dim/2] each (skipped: recomputed)
//           wcls [V, dim] (only when vocab_size < 0) -> lm_head.weight
// The file size must equal what the header implies, byte for byte.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "models/llama_config.h"

namespace dsk::models {

struct Llama2cCheckpoint {
  LlamaConfig config;                          // rope_style Interleaved, torch_dtype float32
  std::map<std::string, at::Tensor> weights;  // HF names, fp32, q/k rows in llama2.c order
};

// Usage error when the file is missing; runtime error naming the first incomplete tensor when the
// file is shorter than its header says, or when it is longer or the header is invalid.
Llama2cCheckpoint load_llama2c(const std::string& path);

// The rows of a q_proj/k_proj weight [n_heads*D, C] (or bias [n_heads*D]) reordered so that a
// model with rope style `to` computes what the other style computed with `w`. Interleaved -> Half
// is the permutation of Hugging Face's convert_llama_weights_to_hf.py: row 2i+j of each head goes
// to row j*D/2+i.
at::Tensor permute_rope_rows(const at::Tensor& w, int64_t n_heads, RopeStyle to);

// Permutes every q_proj/k_proj weight and bias and sets config.rope_style; the resulting model
// gives the same logits. No-op when the config already has that style.
void convert_rope_to_half(LlamaConfig& config, std::map<std::string, at::Tensor>& weights);
void convert_rope_to_half(LlamaConfig& config, std::vector<std::pair<std::string, at::Tensor>>& weights);
void convert_rope_to_interleaved(LlamaConfig& config, std::map<std::string, at::Tensor>& weights);

}  // namespace dsk::models
