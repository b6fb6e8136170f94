// Llama-family decoder forward: embeddings -> L x (RMSNorm, GQA attention with rotary embeddings,
// RMSNorm, SwiGLU MLP) -> RMSNorm -> classifier. Attention is softmax(QK^T/sqrt(D) + mask) V with
// the query heads of one kv group stacked along the rows, so keys and values are never repeated.
#include "models/llama.h"

#include <ATen/core/grad_mode.h>

#include <cmath>
#include <limits>
#include <set>

#include "core/error.h"
#include "core/torch_compat.h"
#include "kernels/fused.h"
#include "models/checkpoint.h"
#include "models/quantized.h"

namespace dsk::models {

namespace {

// Validates the hyper-parameters the modules rely on (usage error: they come from config.json).
void check_config(const LlamaConfig& c) {
  auto positive = [](int64_t v, const char* name) {
    if (v <= 0) fail_usage("model config: {} must be positive, got {}", name, v);
  };
  positive(c.hidden_size, "hidden_size");
  positive(c.intermediate_size, "intermediate_size");
  positive(c.num_hidden_layers, "num_hidden_layers");
  positive(c.num_attention_heads, "num_attention_heads");
  positive(c.num_key_value_heads, "num_key_value_heads");
  positive(c.vocab_size, "vocab_size");
  positive(c.max_position_embeddings, "max_position_embeddings");
  if (c.head_dim_override < 0) fail_usage("model config: head_dim must be positive, got {}", c.head_dim_override);
  // Without an explicit head_dim the heads split hidden_size; with one, the attention width
  // H * head_dim is independent of hidden_size (q_proj [H*D, C], o_proj [C, H*D]).
  if (c.head_dim_override == 0 && c.hidden_size % c.num_attention_heads != 0)
    fail_usage("model config: hidden_size {} is not divisible by num_attention_heads {}", c.hidden_size,
               c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail_usage("model config: num_key_value_heads {} does not divide num_attention_heads {}",
               c.num_key_value_heads, c.num_attention_heads);
  if (c.head_dim() % 2 != 0) fail_usage("model config: head_dim {} must be even for rotary embeddings", c.head_dim());
  if (!c.rope_scaling_type.empty() && c.rope_scaling_type != "linear" && c.rope_scaling_type != "llama3" &&
      c.rope_scaling_type != "default")
    fail_usage_hint("model config: rope_scaling type '" + c.rope_scaling_type + "' is not supported",
                    "supported: linear, llama3 (or none)");
}

}  // namespace

at::Tensor rope_inv_freq(const LlamaConfig& c) {
  const int64_t D = c.head_dim();
  at::Tensor exponent = at::arange(0, D, 2, at::kFloat) / static_cast<double>(D);  // [D/2]
  at::Tensor inv_freq = at::pow(c.rope_theta, exponent).reciprocal();              // [D/2]
  if (c.rope_scaling_type == "linear") {
    inv_freq = inv_freq / c.rope_scaling_factor;
  } else if (c.rope_scaling_type == "llama3") {
    const float factor = static_cast<float>(c.rope_scaling_factor);
    const float low = static_cast<float>(c.rope_low_freq_factor), high = static_cast<float>(c.rope_high_freq_factor);
    const float old_len = static_cast<float>(c.rope_original_max_position_embeddings);
    if (old_len <= 0 || factor <= 0 || high <= low)
      fail_usage("model config: rope_scaling llama3 needs factor > 0, high_freq_factor > low_freq_factor and "
                 "original_max_position_embeddings > 0");
    const float low_wavelen = old_len / low, high_wavelen = old_len / high;
    float* f = inv_freq.data_ptr<float>();
    for (int64_t i = 0; i < inv_freq.numel(); ++i) {
      const float wavelen = static_cast<float>(2.0 * 3.14159265358979323846) / f[i];
      if (wavelen > low_wavelen) {
        f[i] = f[i] / factor;  // low frequencies: scaled
      } else if (!(wavelen < high_wavelen)) {  // medium: interpolate between scaled and unscaled
        const float smooth = (old_len / wavelen - low) / (high - low);
        f[i] = (1 - smooth) * f[i] / factor + smooth * f[i];
      }
    }
  }
  return inv_freq;
}

namespace {

// x [B, T, n, D] -> the same with each rotated pair rotated by its position's angle.
// Both styles pair dimensions within one head only (the last axis), so rows h*D .. h*D+D-1 of
// q_proj/k_proj are head h in either layout: whole heads can be sliced out (models/surgery.h).
at::Tensor apply_rope(const at::Tensor& x, const PositionContext& pos) {
  const int64_t D = x.size(-1);
  at::Tensor swapped;  // pair partners exchanged: Half (x2, x1); Interleaved (x1, x0, x3, x2, ...)
  if (pos.style == RopeStyle::Half) {
    swapped = at::cat({x.narrow(-1, D / 2, D / 2), x.narrow(-1, 0, D / 2)}, -1);
  } else {
    auto sizes = x.sizes().vec();
    sizes.back() = D / 2;
    sizes.push_back(2);
    swapped = x.reshape(sizes).flip({-1}).reshape(x.sizes());
  }
  const int64_t T = x.size(1);
  at::Tensor cos = pos.cos.view({1, T, 1, D}), sin = pos.sin.view({1, T, 1, D});
  return at::addcmul(x * cos, swapped, sin);
}

}  // namespace

// ----------------------------------------------------------------------------
// Building blocks

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_, at::TensorOptions options) : eps(eps_) {
  weight = register_parameter("weight", at::empty({dim}, options));
}

// weight * x / rms(x), in float32: the fused kernel on CPU (kernels/fused.h), the composite
// expression elsewhere.
at::Tensor RMSNormImpl::forward(const at::Tensor& x) { return kernels::rms_norm(x, weight, eps); }

AttentionImpl::AttentionImpl(const LlamaConfig& cfg, at::TensorOptions options)
    : n_heads(cfg.num_attention_heads), n_kv_heads(cfg.num_key_value_heads), head_dim(cfg.head_dim()) {
  const int64_t C = cfg.hidden_size, D = head_dim;
  q_proj = register_module("q_proj", LoraLinear(C, n_heads * D, cfg.attention_bias, options));
  k_proj = register_module("k_proj", LoraLinear(C, n_kv_heads * D, cfg.attention_bias, options));
  v_proj = register_module("v_proj", LoraLinear(C, n_kv_heads * D, cfg.attention_bias, options));
  o_proj = register_module("o_proj", LoraLinear(n_heads * D, C, false, options));
}

int64_t causal_query_blocks(int64_t T, int64_t block) {
  if (block <= 0 || T < 2 * block || T % block != 0) return 1;
  return T / block;
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const PositionContext& pos, KVCache* cache, int64_t layer) {
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t H = n_heads, KV = n_kv_heads, G = H / KV, D = head_dim;
  at::Tensor q = apply_rope(q_proj(x).view({B, T, H, D}), pos);   // [B, T, H, D]
  at::Tensor k = apply_rope(k_proj(x).view({B, T, KV, D}), pos);  // [B, T, KV, D]
  at::Tensor v = v_proj(x).view({B, T, KV, D});                   // [B, T, KV, D]

#if DSK_HAS_SDPA
  // LibTorch 2.x: PyTorch's fused causal attention (flash / memory-efficient kernels on CUDA).
  if (!cache) {
    at::Tensor kh = k.permute({0, 2, 1, 3}), vh = v.permute({0, 2, 1, 3});  // [B, KV, T, D]
    if (G > 1) kh = kh.repeat_interleave(G, 1), vh = vh.repeat_interleave(G, 1);  // head h -> kv h / G
    at::Tensor o = compat::causal_attention(q.permute({0, 2, 1, 3}), kh, vh);   // [B, H, T, D]
    return o_proj(o.permute({0, 2, 1, 3}).reshape({B, T, H * D}));
  }
#endif
  at::Tensor keys, values;  // [B*KV, S, D]
  int64_t S = T;
  if (cache) {
    S = pos.start + T;
    at::Tensor& ck = cache->k[layer];  // [B, KV, capacity, D]
    at::Tensor& cv = cache->v[layer];
    ck.narrow(2, pos.start, T).copy_(k.permute({0, 2, 1, 3}));
    cv.narrow(2, pos.start, T).copy_(v.permute({0, 2, 1, 3}));
    keys = ck.narrow(2, 0, S).reshape({B * KV, S, D});  // a view: B and KV strides merge
    values = cv.narrow(2, 0, S).reshape({B * KV, S, D});
  } else {
    keys = k.permute({0, 2, 1, 3}).reshape({B * KV, T, D});
    values = v.permute({0, 2, 1, 3}).reshape({B * KV, T, D});
  }
  // Query head h = kv * G + g uses kv head kv (as HF's repeat_kv and llama2.c's h / kv_mul).
  const double scale0 = 1.0 / std::sqrt(static_cast<double>(D));
  const int64_t nb = causal_query_blocks(T, query_block);
  if (!cache && nb > 1) {
    // Causal attention in query blocks: block j sees keys [0, (j+1) Tb) only, so the scores,
    // softmax and weighted sums skip most of the masked upper triangle ((n+1)/2n of the T x T
    // work and memory). The same numbers as the whole-matrix path below: masked scores are
    // exp(-inf) = 0 there.
    const int64_t Tb = T / nb;
    at::Tensor q4 = q.permute({0, 2, 1, 3}).reshape({B * KV, G, T, D});   // [B*KV, G, T, D]
    at::Tensor mask3 = pos.mask.view({G, T, T});
    std::vector<at::Tensor> outs;
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t Sj = (j + 1) * Tb;
      at::Tensor qb = q4.narrow(2, j * Tb, Tb).reshape({B * KV, G * Tb, D});
      at::Tensor mb = mask3.narrow(1, j * Tb, Tb).narrow(2, 0, Sj).reshape({G * Tb, Sj});
      at::Tensor sc = at::baddbmm(mb, qb, keys.narrow(1, 0, Sj).transpose(1, 2), 1.0, scale0);  // [B*KV, G*Tb, Sj]
      at::Tensor pr = sc.scalar_type() == at::kFloat ? at::softmax(sc, -1)
                                                      : at::softmax(sc, -1, at::kFloat).to(sc.scalar_type());
      outs.push_back(at::bmm(pr, values.narrow(1, 0, Sj)).view({B * KV, G, Tb, D}));
    }
    at::Tensor o = at::cat(outs, 2).view({B, H, T, D}).permute({0, 2, 1, 3}).reshape({B, T, H * D});
    return o_proj(o);
  }
  at::Tensor qg = q.permute({0, 2, 1, 3}).reshape({B * KV, G * T, D});  // rows (g, t)
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  at::Tensor scores = at::baddbmm(pos.mask, qg, keys.transpose(1, 2), 1.0, scale);  // [B*KV, G*T, S]
  at::Tensor probs = scores.scalar_type() == at::kFloat
                         ? at::softmax(scores, -1)
                         : at::softmax(scores, -1, at::kFloat).to(scores.scalar_type());  // [B*KV, G*T, S]
  at::Tensor out = at::bmm(probs, values);                                               // [B*KV, G*T, D]
  out = out.view({B, H, T, D}).permute({0, 2, 1, 3}).reshape({B, T, H * D});             // [B, T, H*D]
  return o_proj(out);
}

MlpImpl::MlpImpl(const LlamaConfig& cfg, at::TensorOptions options) {
  const int64_t C = cfg.hidden_size, F = cfg.intermediate_size;
  gate_proj = register_module("gate_proj", LoraLinear(C, F, false, options));
  up_proj = register_module("up_proj", LoraLinear(C, F, false, options));
  down_proj = register_module("down_proj", LoraLinear(F, C, false, options));
}

at::Tensor MlpImpl::forward(const at::Tensor& x) {
  return down_proj(kernels::swiglu(gate_proj(x), up_proj(x)));  // silu(gate) * up: [B, T, F] -> [B, T, C]
}

DecoderLayerImpl::DecoderLayerImpl(const LlamaConfig& cfg, at::TensorOptions options) {
  input_layernorm = register_module("input_layernorm", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, options));
  self_attn = register_module("self_attn", Attention(cfg, options));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, options));
  mlp = register_module("mlp", Mlp(cfg, options));
}

at::Tensor DecoderLayerImpl::forward(const at::Tensor& x, const PositionContext& pos, KVCache* cache,
                                     int64_t layer) {
  at::Tensor h = x + self_attn(input_layernorm(x), pos, cache, layer);  // [B, T, C]
  return h + mlp(post_attention_layernorm(h));
}

LlamaModelImpl::LlamaModelImpl(const LlamaConfig& cfg, at::TensorOptions options) {
  embed_tokens = register_module(
      "embed_tokens", std::make_shared<WeightImpl>(at::empty({cfg.vocab_size, cfg.hidden_size}, options)));
  layer_list_ = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    layers.emplace_back(cfg, options);
    layer_list_->push_back(layers.back());
  }
  norm = register_module("norm", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, options));
}

// ----------------------------------------------------------------------------
// Llama

LlamaImpl::LlamaImpl(const LlamaConfig& config, at::TensorOptions options, bool init) : config_(config) {
  check_config(config_);
  options = options.requires_grad(false);  // parameters are made trainable by register_parameter
  model = register_module("model", LlamaModel(config_, options));
  if (!config_.tie_word_embeddings)
    lm_head = register_module("lm_head", LoraLinear(config_.hidden_size, config_.vocab_size, false, options));
  if (init) init_weights();
}

void LlamaImpl::init_weights() {
  at::NoGradGuard no_grad;
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto lin = std::dynamic_pointer_cast<LoraLinearImpl>(m)) {
      lin->weight.normal_(0.0, 0.02);
      if (lin->bias.defined()) lin->bias.zero_();
    } else if (auto norm = std::dynamic_pointer_cast<RMSNormImpl>(m)) {
      norm->weight.fill_(1.0);
    }
  }
  model->embed_tokens->weight.normal_(0.0, 0.02);
}

const at::Tensor& LlamaImpl::classifier_weight() const {
  return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

KVCache LlamaImpl::make_cache(int64_t batch, int64_t capacity) const {
  if (capacity <= 0 || capacity > config_.max_position_embeddings)
    fail_usage("KV cache capacity {} must be in [1, {}] (max_position_embeddings)", capacity,
               config_.max_position_embeddings);
  KVCache cache;
  auto opts = at::TensorOptions().dtype(dtype()).device(device());
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    cache.k.push_back(at::empty({batch, config_.num_key_value_heads, capacity, config_.head_dim()}, opts));
    cache.v.push_back(at::empty({batch, config_.num_key_value_heads, capacity, config_.head_dim()}, opts));
  }
  return cache;
}

PositionContext LlamaImpl::position_context(int64_t start, int64_t T) {
  const int64_t need = start + T, D = config_.head_dim();
  if (!rope_cos_.defined() || rope_cos_.size(0) < need || rope_cos_.device() != device()) {
    // Grow geometrically so decoding one token at a time does not recompute the tables.
    int64_t n = std::max<int64_t>(need, rope_cos_.defined() ? 2 * rope_cos_.size(0) : 256);
    n = std::min(n, config_.max_position_embeddings);
    at::Tensor t = at::arange(n, at::kFloat);                             // [N]
    at::Tensor freqs = at::outer(t, rope_inv_freq(config_));               // [N, D/2] fp32
    at::Tensor c = freqs.cos(), s = freqs.sin();
    if (config_.rope_style == RopeStyle::Half) {
      rope_cos_ = at::cat({c, c}, -1);                                      // [N, D]
      rope_sin_ = at::cat({-s, s}, -1);
    } else {
      rope_cos_ = at::stack({c, c}, -1).view({n, D});                        // c0 c0 c1 c1 ...
      rope_sin_ = at::stack({-s, s}, -1).view({n, D});                       // -s0 s0 -s1 s1 ...
    }
    rope_cos_ = rope_cos_.to(device());
    rope_sin_ = rope_sin_.to(device());
  }
  PositionContext pos;
  pos.start = start;
  pos.style = config_.rope_style;
  pos.cos = rope_cos_.narrow(0, start, T).to(dtype());  // [T, D]
  pos.sin = rope_sin_.narrow(0, start, T).to(dtype());
  const int64_t G = config_.num_attention_heads / config_.num_key_value_heads, S = start + T;
  auto opts = at::TensorOptions().dtype(dtype()).device(device());
  // Query t (absolute position start + t) sees keys 0..start+t.
  at::Tensor mask = at::full({T, S}, -std::numeric_limits<double>::infinity(), opts).triu_(start + 1);  // [T, S]
  pos.mask = G == 1 ? mask : mask.repeat({G, 1});                                                      // [G*T, S]
  return pos;
}

at::Tensor LlamaImpl::hidden_states(const at::Tensor& tokens_in, KVCache* cache,
                                    std::vector<at::Tensor>* layer_outputs) {
  if (tokens_in.dim() != 2) fail_usage("model input must be [batch, tokens], got shape {}", shape_str(tokens_in.sizes()));
  at::Tensor tokens = tokens_in.to(device(), at::kLong);  // [B, T]
  const int64_t B = tokens.size(0), T = tokens.size(1);
  if (B == 0 || T == 0) fail_usage("model input is empty: shape {}", shape_str(tokens.sizes()));
  if (tokens.device().is_cpu()) {
    int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
    if (lo < 0 || hi >= config_.vocab_size)
      fail_usage("token id {} is outside the model's vocabulary [0, {})", lo < 0 ? lo : hi, config_.vocab_size);
  }
  const int64_t start = cache ? cache->length : 0;
  if (start + T > config_.max_position_embeddings)
    fail_usage("sequence of {} tokens exceeds the model's maximum length {} (max_position_embeddings)", start + T,
               config_.max_position_embeddings);
  if (cache) {
    if (cache->k.size() != static_cast<size_t>(config_.num_hidden_layers) || cache->batch() != B)
      fail("KV cache was made for batch {} and {} layers, input has batch {}", cache->batch(), cache->k.size(), B);
    if (start + T > cache->capacity())
      fail("KV cache holds {} positions, {} needed", cache->capacity(), start + T);
  }
  PositionContext pos = position_context(start, T);
  at::Tensor h = at::embedding(model->embed_tokens->weight, tokens);  // [B, T, C]
  if (layer_outputs) layer_outputs->assign(1, h);
  const bool recompute = activation_checkpointing && is_training() && at::GradMode::is_enabled() && !cache;
  for (size_t i = 0; i < model->layers.size(); ++i) {
    if (recompute) {
      DecoderLayer layer = model->layers[i];
      std::vector<at::Tensor> params;
      for (const auto& p : layer->parameters())
        if (p.requires_grad()) params.push_back(p);
      const int64_t index = static_cast<int64_t>(i);
      auto block = [layer, pos, index](const at::Tensor& x) mutable { return layer->forward(x, pos, nullptr, index); };
      h = checkpoint(block, h, params);
    } else {
      h = model->layers[i]->forward(h, pos, cache, static_cast<int64_t>(i));
    }
    if (layer_outputs) layer_outputs->push_back(h);
  }
  if (cache) cache->length += T;
  return model->norm(h);  // [B, T, C]
}

at::Tensor LlamaImpl::logits(const at::Tensor& hidden) {
  at::Tensor out = lm_head ? lm_head->forward(hidden) : at::linear(hidden, model->embed_tokens->weight);  // [..., V]
  return out.scalar_type() == at::kFloat ? out : out.to(at::kFloat);
}

at::Tensor LlamaImpl::forward(const at::Tensor& tokens, KVCache* cache) {
  return logits(hidden_states(tokens, cache));  // [B, T, V]
}

// ----------------------------------------------------------------------------
// Weights by name

namespace {
bool is_lora_name(const std::string& name) {
  return name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos;
}
}  // namespace

std::string shape_str(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

namespace {

// The parameters a checkpoint holds: no LoRA tensors, no (emptied) weights of quantized layers.
std::vector<std::pair<std::string, at::Tensor>> parameter_tensors(Llama& model) {
  std::set<std::string> quantized;
  for (auto& [name, lin] : linear_layers(model))
    if (lin->quantized()) quantized.insert(name + ".weight");
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& item : model->named_parameters(true)) {
    if (is_lora_name(item.key()) || quantized.count(item.key())) continue;
    out.emplace_back(item.key(), item.value().detach());
  }
  return out;
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> state_tensors(Llama& model) {
  auto out = parameter_tensors(model);
  for (auto& t : quantized_state_tensors(model)) out.push_back(std::move(t));
  return out;
}

void load_state_tensors(Llama& model, const std::map<std::string, at::Tensor>& weights) {
  const std::string hint = "config.json and the weights disagree: use the config.json that came with these weights";
  auto expected = parameter_tensors(model);
  std::set<std::string> expected_names;
  std::vector<std::string> missing;
  for (auto& [name, param] : expected) {
    expected_names.insert(name);
    auto it = weights.find(name);
    if (it == weights.end()) {
      missing.push_back(name);
      continue;
    }
    if (!it->second.sizes().equals(param.sizes()))
      fail_usage_hint(fmt::format("tensor '{}' has shape {}, expected {}", name, shape_str(it->second.sizes()),
                                  shape_str(param.sizes())),
                      hint);
    if (!at::isFloatingType(it->second.scalar_type()))
      fail_usage("tensor '{}' has dtype {}, expected a floating-point type", name,
                 c10::toString(it->second.scalar_type()));
  }
  auto list = [](const std::vector<std::string>& names) {
    std::string s;
    for (size_t i = 0; i < names.size() && i < 3; ++i) s += (i ? ", '" : "'") + names[i] + "'";
    if (names.size() > 3) s += fmt::format(" and {} more", names.size() - 3);
    return s;
  };
  if (!missing.empty())
    fail_usage_hint(fmt::format("weights lack {} tensor(s) the model config expects: {}", missing.size(), list(missing)),
                    hint);
  std::vector<std::string> unexpected;
  auto ends_with = [](const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  for (auto& [name, t] : weights) {
    if (expected_names.count(name) || ends_with(name, "rotary_emb.inv_freq")) continue;
    if (name == "lm_head.weight" && model->config().tie_word_embeddings) continue;
    unexpected.push_back(name);
  }
  if (!unexpected.empty())
    fail_usage_hint(
        fmt::format("weights have {} tensor(s) the model config does not expect: {}", unexpected.size(), list(unexpected)),
        hint);
  at::NoGradGuard no_grad;
  for (auto& [name, param] : expected) param.copy_(weights.at(name));
}

}  // namespace dsk::models
