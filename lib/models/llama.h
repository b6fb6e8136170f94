// Llama — the Llama-family decoder (Llama 2/3, Mistral, Qwen2, llama2.c) as LibTorch modules.
// defines: KVCache, RMSNorm, Attention, Mlp, DecoderLayer, LlamaModel, Llama,
//          state_tensors, load_state_tensors
//
// Parameter names equal the Hugging Face safetensors keys, so loading and saving are name lookups
// (B batch, T tokens, C hidden_size, H heads, KV kv-heads, D head_dim, F intermediate_size, V vocab;
// D is config.head_dim(): hidden_size / H unless config.json sets head_dim, so H*D may differ
// from C, e.g. after attention heads were pruned away (models/surgery.h)):
//   model.embed_tokens.weight                          [V, C]
//   model.layers.{i}.input_layernorm.weight            [C]
//   model.layers.{i}.self_attn.q_proj.weight           [H*D, C]   (+ .bias [H*D] when attention_bias)
//   model.layers.{i}.self_attn.{k,v}_proj.weight       [KV*D, C]  (+ .bias [KV*D] when attention_bias)
//   model.layers.{i}.self_attn.o_proj.weight           [C, H*D]
//   model.layers.{i}.post_attention_layernorm.weight   [C]
//   model.layers.{i}.mlp.{gate,up}_proj.weight         [F, C]
//   model.layers.{i}.mlp.down_proj.weight              [C, F]
//   model.norm.weight                                  [C]
//   lm_head.weight                                     [V, C]     absent when tie_word_embeddings
// A LoRA adapter adds "<linear>.lora_A.weight" / ".lora_B.weight" (see models/lora.h);
// state_tensors() never includes them.
//
// Rotary embeddings follow config.rope_style: Interleaved rotates (x0,x1),(x2,x3)... (llama2.c,
// Meta's checkpoints); Half rotates (x_i, x_{i+D/2}) (Hugging Face). convert_rope_to_half()
// (models/llama2c.h) turns one into the other by permuting q/k rows.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/linear.h"
#include "models/llama_config.h"

namespace dsk::models {

// Keys and values of every layer for incremental decoding (inference only: use under NoGradGuard).
// All sequences of the batch share positions: position p of the cache holds token p of each row.
struct KVCache {
  std::vector<at::Tensor> k, v;  // per layer [B, KV, capacity, D], rope already applied to k
  int64_t length = 0;            // positions filled; the next forward starts at this position

  int64_t batch() const { return k.empty() ? 0 : k[0].size(0); }
  int64_t capacity() const { return k.empty() ? 0 : k[0].size(2); }
  void reset() { length = 0; }
};

// ----------------------------------------------------------------------------
// Building blocks

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, at::TensorOptions options);
  // x * rsqrt(mean(x^2) + eps) computed in fp32, cast back to x's dtype, times weight.
  at::Tensor forward(const at::Tensor& x);  // [..., C] -> [..., C]
  at::Tensor weight;                        // [C]
  double eps;
};
TORCH_MODULE(RMSNorm);

// What every layer needs about the positions of one forward, computed once per forward:
// the rotary tables for positions [start, start+T) — out = x * cos + swap(x) * sin, where swap
// exchanges the members of each rotated pair and `sin` carries the sign — and the additive causal
// mask (0 or -inf) over the S = start + T visible keys, repeated for the G query heads of a group.
struct PositionContext {
  int64_t start = 0;
  at::Tensor cos, sin;  // [T, D], model dtype
  at::Tensor mask;      // [G*T, S], model dtype
  RopeStyle style = RopeStyle::Half;
};

// Query blocks for causal attention over T positions with blocks of `block` queries: T / block
// when that is at least 2 and whole, else 1 (one block: the whole-matrix path).
int64_t causal_query_blocks(int64_t T, int64_t block);

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const LlamaConfig& cfg, at::TensorOptions options);
  // x [B, T, C] -> [B, T, C]. With a cache, keys/values are written at positions
  // [cache->length, cache->length + T) of layer `layer` and attention spans all filled positions.
  at::Tensor forward(const at::Tensor& x, const PositionContext& pos, KVCache* cache, int64_t layer);

  LoraLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  int64_t n_heads, n_kv_heads, head_dim;
  // Without a KV cache, causal attention runs in blocks of this many queries, each against only
  // the keys it can see (causal_query_blocks); 0 turns it off. Same results either way.
  int64_t query_block = 64;
};
TORCH_MODULE(Attention);

class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(const LlamaConfig& cfg, at::TensorOptions options);
  at::Tensor forward(const at::Tensor& x);  // down(silu(gate(x)) * up(x)): [B, T, C] -> [B, T, C]
  LoraLinear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const LlamaConfig& cfg, at::TensorOptions options);
  // h = x + attn(norm1(x)); out = h + mlp(norm2(h)):  [B, T, C] -> [B, T, C]
  at::Tensor forward(const at::Tensor& x, const PositionContext& pos, KVCache* cache, int64_t layer);

  RMSNorm input_layernorm{nullptr};
  Attention self_attn{nullptr};
  RMSNorm post_attention_layernorm{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

// The "model." part: embeddings, layers, final norm.
class LlamaModelImpl : public torch::nn::Module {
 public:
  LlamaModelImpl(const LlamaConfig& cfg, at::TensorOptions options);

  std::shared_ptr<WeightImpl> embed_tokens;  // weight [V, C]
  std::vector<DecoderLayer> layers;           // also registered as the ModuleList "layers"
  RMSNorm norm{nullptr};

 private:
  torch::nn::ModuleList layer_list_;
};
TORCH_MODULE(LlamaModel);

// ----------------------------------------------------------------------------
// The decoder with its classifier

class LlamaImpl : public torch::nn::Module {
 public:
  // Parameters get options' dtype/device. init: Hugging Face's init (normal(0, 0.02) for
  // linears and embeddings, ones for norms, zeros for biases) from the global torch generator;
  // pass false when weights will be loaded anyway (they are then uninitialized).
  explicit LlamaImpl(const LlamaConfig& config, at::TensorOptions options = {}, bool init = true);

  // tokens [B, T] int64 -> logits [B, T, V] fp32. With a cache, the tokens continue the cached
  // positions and cache->length advances by T.
  at::Tensor forward(const at::Tensor& tokens, KVCache* cache = nullptr);
  // tokens [B, T] -> final hidden states [B, T, C] (after model.norm, in the model's dtype), for
  // losses that apply the classifier in chunks. layer_outputs, when given, receives L+1 tensors
  // [B, T, C]: the input embeddings, then the output of each layer (before the final norm).
  at::Tensor hidden_states(const at::Tensor& tokens, KVCache* cache = nullptr,
                           std::vector<at::Tensor>* layer_outputs = nullptr);
  // hidden [..., C] -> logits [..., V] fp32.
  at::Tensor logits(const at::Tensor& hidden);
  // The classifier weight [V, C]: lm_head.weight, or model.embed_tokens.weight when tied.
  const at::Tensor& classifier_weight() const;

  // Hugging Face's init (see the constructor), from the global torch generator.
  void init_weights();

  // An empty cache for `batch` rows and up to `capacity` positions (<= max_position_embeddings).
  KVCache make_cache(int64_t batch, int64_t capacity) const;

  const LlamaConfig& config() const { return config_; }
  // config.json's quantization_config (models/quantized.h), set when layers are quantized.
  void set_quantization_config(std::string json) { config_.quantization_config = std::move(json); }
  // config.json's dsk_sparsity (dsk prune), set when layers were pruned to a recorded sparsity.
  void set_sparsity_config(std::string json) { config_.sparsity_config = std::move(json); }
  at::ScalarType dtype() const { return model->embed_tokens->weight.scalar_type(); }
  c10::Device device() const { return model->embed_tokens->weight.device(); }

  LlamaModel model{nullptr};
  LoraLinear lm_head{nullptr};  // null when tie_word_embeddings
  // Training with grad mode on: recompute each decoder layer in the backward pass instead of
  // keeping its activations (models/checkpoint.h). Gradients are unchanged.
  bool activation_checkpointing = false;

  // Rotary tables and causal mask for positions [start, start + T), for running layers one at a
  // time (layer-wise calibration in dsk quantize).
  PositionContext position_context(int64_t start, int64_t T);

 private:

  LlamaConfig config_;
  at::Tensor rope_cos_, rope_sin_;  // [N, D] fp32 on the model's device, grown on demand
};
TORCH_MODULE(Llama);

// ----------------------------------------------------------------------------
// Weights by Hugging Face name

// Every base weight under its HF name, in module order (the tensors share storage with the
// model). Tied models do not emit lm_head.weight, as Hugging Face does not save it.
// LoRA adapter tensors are not included (models/lora.h has lora_state_tensors). Quantized layers
// contribute their packed GPTQ tensors instead of ".weight" (models/quantized.h).
std::vector<std::pair<std::string, at::Tensor>> state_tensors(Llama& model);

// Copies `weights` into the model, converting dtype and device. Usage error (exit 2) naming the
// tensor when an expected name is missing, a name is unexpected, or a shape differs. Ignored:
// "*rotary_emb.inv_freq" buffers, and lm_head.weight in a tied model (HF ignores it too).
void load_state_tensors(Llama& model, const std::map<std::string, at::Tensor>& weights);

// Rotary inverse frequencies [D/2] fp32 as Hugging Face computes them: 1 / theta^(2i/D), then
// rope_scaling ("linear": divided by factor; "llama3": Llama 3.1's wavelength-dependent scaling).
at::Tensor rope_inv_freq(const LlamaConfig& config);

// "[172, 64]"
std::string shape_str(at::IntArrayRef sizes);

}  // namespace dsk::models
