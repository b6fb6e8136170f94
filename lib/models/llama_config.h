// LlamaConfig — the hyper-parameters of a Llama-family decoder (Llama 2/3, Mistral, Qwen2,
// llama2.c). Field names follow Hugging Face's config.json where one exists.
#pragma once

#include <cstdint>
#include <string>

namespace dsk::models {

// How rotary embeddings pair up the dimensions of a head.
//   Interleaved: (x0,x1),(x2,x3),...  — llama2.c / Meta's original checkpoints.
//   Half:        (x0,x_{d/2}),...     — Hugging Face transformers (q/k weights permuted).
enum class RopeStyle { Interleaved, Half };

struct LlamaConfig {
  int64_t hidden_size = 0;              // dim
  int64_t intermediate_size = 0;        // SwiGLU hidden dim
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;      // GQA: divides num_attention_heads
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;  // the longest sequence the model supports
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;     // lm_head shares embed_tokens.weight
  bool attention_bias = false;          // q/k/v projections carry a bias (Qwen2)
  RopeStyle rope_style = RopeStyle::Half;
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  std::string torch_dtype = "float32";  // dtype the weights were stored in
  std::string model_type = "llama";     // "llama" | "qwen2" | "mistral"
  // config.json "rope_scaling": type "" (none) | "linear" | "llama3" (Llama 3.1+ and its distills).
  std::string rope_scaling_type;
  double rope_scaling_factor = 1.0;                    // linear, llama3
  double rope_low_freq_factor = 1.0;                   // llama3
  double rope_high_freq_factor = 4.0;                  // llama3
  int64_t rope_original_max_position_embeddings = 0;   // llama3
  // config.json "quantization_config" as JSON text, empty for a full-precision model
  // (models/quantized.h reads and writes it).
  std::string quantization_config;
  // config.json "dsk_sparsity" as JSON text, empty unless dsk prune made the zeros of some
  // layers (method, sparsity, pattern, layers); finetune keeps those zeros (docs/pruning.md).
  std::string sparsity_config;

  // Width of one attention head when set explicitly (config.json "head_dim"), 0 for the default
  // hidden_size / num_attention_heads. Structured pruning of attention heads keeps hidden_size but
  // lowers the head counts, so H * head_dim then differs from hidden_size. transformers reads
  // config.head_dim for the q/k/v/o shapes and rotary tables of LlamaForCausalLM from 4.45 on
  // (before that it assumed hidden_size / num_attention_heads; MistralConfig had it earlier and
  // Qwen2 reads it in recent releases), so such a directory needs a recent transformers.
  int64_t head_dim_override = 0;

  // D: head_dim_override when set, else hidden_size / num_attention_heads. The attention width
  // is num_attention_heads * head_dim() (q_proj/o_proj), num_key_value_heads * head_dim() (k/v).
  int64_t head_dim() const { return head_dim_override > 0 ? head_dim_override : hidden_size / num_attention_heads; }
};

}  // namespace dsk::models
