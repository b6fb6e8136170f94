// Structured surgery: slicing whole neurons, KV groups and layers out of a Llama.
//
// Why slicing heads is valid in both rotary layouts: AttentionImpl::forward views q_proj(x) as
// [B, T, H, D] and k_proj(x) as [B, T, KV, D], i.e. rows h*D .. h*D+D-1 of the weight are head h,
// and apply_rope (llama.cpp) rotates pairs along the last axis only — (2i, 2i+1) in the
// Interleaved layout, (i, i+D/2) in the Half layout — so a head's rows stay contiguous and its
// rotation never involves another head. Query head h attends with kv head h / G, so the G query
// heads of group g are rows [g*G*D, (g+1)*G*D) of q_proj and columns of the same range of o_proj.
#include "models/surgery.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "core/error.h"
#include "models/quantized.h"

namespace dsk::models {

namespace {

// Usage error for models whose stored weights are not what they compute with.
void require_plain(Llama& model, const char* what) {
  if (!model->config().quantization_config.empty() || is_quantized(model))
    fail_usage_hint(fmt::format("{}: the model is quantized", what),
                    "structured pruning needs full-precision weights: prune before quantizing");
  for (auto& [name, lin] : linear_layers(model)) {
    if (lin->has_lora())
      fail_usage_hint(fmt::format("{}: the model has a LoRA adapter attached ({})", what, name),
                      "merge the adapters into the weights (or detach them) first");
  }
}

// Indices must lie in [0, n), be distinct and ascending.
void check_indices(const std::vector<int64_t>& idx, int64_t n, const std::string& what) {
  std::vector<char> seen(static_cast<size_t>(n), 0);
  for (size_t i = 0; i < idx.size(); ++i) {
    const int64_t v = idx[i];
    if (v < 0 || v >= n) fail_usage("structured plan: {} index {} is out of range [0, {})", what, v, n);
    if (seen[static_cast<size_t>(v)]) fail_usage("structured plan: {} lists index {} twice", what, v);
    seen[static_cast<size_t>(v)] = 1;
    if (i > 0 && idx[i - 1] > v)
      fail_usage("structured plan: {} must be sorted ascending ({} comes before {})", what, idx[i - 1], v);
  }
}

std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), int64_t{0});
  return v;
}

// Per original layer: the kept units (validated), `all` units when the outer list is empty.
// Surviving layers must agree on the count; returns it.
int64_t per_layer_keep(const std::vector<std::vector<int64_t>>& plan, int64_t L, int64_t all,
                       const std::vector<int64_t>& layers, const char* key, const char* units,
                       const char* config_key, std::vector<std::vector<int64_t>>& out) {
  if (plan.empty()) {
    out.assign(static_cast<size_t>(L), iota(all));
    return all;
  }
  if (static_cast<int64_t>(plan.size()) != L)
    fail_usage("structured plan: {} has {} entries, the model has {} layers (one entry per original layer)", key,
               plan.size(), L);
  out = plan;
  for (int64_t l = 0; l < L; ++l) check_indices(plan[l], all, fmt::format("{} of layer {}", key, l));
  const int64_t first = layers.front();
  const int64_t count = static_cast<int64_t>(plan[first].size());
  for (int64_t l : layers) {
    const int64_t n = static_cast<int64_t>(plan[l].size());
    if (n == 0) fail_usage("structured plan: {} keeps no {} of layer {}", key, units, l);
    if (n != count)
      fail_usage_hint(fmt::format("structured plan: the surviving layers keep different numbers of {} (layer {} keeps "
                                  "{}, layer {} keeps {})",
                                  units, first, count, l, n),
                      fmt::format("Hugging Face's config.json has one {}: keep the same number in every layer",
                                  config_key));
  }
  return count;
}

at::Tensor index_tensor(const std::vector<int64_t>& v, c10::Device device) {
  return at::tensor(at::ArrayRef<int64_t>(v), at::TensorOptions().dtype(at::kLong)).to(device);
}

// Ranges [u*width, (u+1)*width) of each unit u, concatenated.
std::vector<int64_t> expand(const std::vector<int64_t>& units, int64_t width) {
  std::vector<int64_t> out;
  out.reserve(units.size() * static_cast<size_t>(width));
  for (int64_t u : units)
    for (int64_t i = 0; i < width; ++i) out.push_back(u * width + i);
  return out;
}

// dst = src, or src's entries `idx` along `dim`; dst takes src's requires_grad.
void copy_into(at::Tensor& dst, const at::Tensor& src, int64_t dim = 0, const at::Tensor& idx = {}) {
  dst.copy_(idx.defined() ? src.index_select(dim, idx) : src);
  dst.set_requires_grad(src.requires_grad());
}

}  // namespace

Llama apply_structured_plan(Llama& model, const StructuredPlan& plan) {
  require_plain(model, "structured pruning");
  const LlamaConfig& c = model->config();
  const int64_t L = c.num_hidden_layers, KV = c.num_key_value_heads, G = c.num_attention_heads / KV;
  const int64_t D = c.head_dim();

  std::vector<int64_t> layers = plan.layers_keep;
  if (layers.empty()) {
    layers = iota(L);
  } else {
    check_indices(layers, L, "layers_keep");
  }
  std::vector<std::vector<int64_t>> neurons, groups;
  const int64_t F2 = per_layer_keep(plan.mlp_keep, L, c.intermediate_size, layers, "mlp_keep", "MLP neurons",
                                    "intermediate_size", neurons);
  const int64_t KV2 = per_layer_keep(plan.group_keep, L, KV, layers, "group_keep", "KV groups",
                                     "num_key_value_heads (and num_attention_heads)", groups);

  LlamaConfig cfg = c;
  cfg.num_hidden_layers = static_cast<int64_t>(layers.size());
  cfg.intermediate_size = F2;
  cfg.num_key_value_heads = KV2;
  cfg.num_attention_heads = KV2 * G;
  cfg.head_dim_override = D;  // hidden_size stays: H' * D differs from it in general
  cfg.sparsity_config.clear();  // its layer numbers and fractions described the original model

  const c10::Device device = model->device();
  Llama out(cfg, at::TensorOptions().dtype(model->dtype()).device(device), /*init=*/false);
  at::NoGradGuard no_grad;
  copy_into(out->model->embed_tokens->weight, model->model->embed_tokens->weight);
  copy_into(out->model->norm->weight, model->model->norm->weight);
  if (out->lm_head) copy_into(out->lm_head->weight, model->lm_head->weight);

  for (size_t j = 0; j < layers.size(); ++j) {
    const int64_t l = layers[j];
    DecoderLayer& src = model->model->layers[static_cast<size_t>(l)];
    DecoderLayer& dst = out->model->layers[j];
    copy_into(dst->input_layernorm->weight, src->input_layernorm->weight);
    copy_into(dst->post_attention_layernorm->weight, src->post_attention_layernorm->weight);

    // Attention: the q rows / o columns of each kept group's G query heads, the k/v rows of its kv head.
    const at::Tensor q_idx = index_tensor(expand(groups[l], G * D), device);
    const at::Tensor kv_idx = index_tensor(expand(groups[l], D), device);
    auto& sa = src->self_attn;
    auto& da = dst->self_attn;
    copy_into(da->q_proj->weight, sa->q_proj->weight, 0, q_idx);
    copy_into(da->k_proj->weight, sa->k_proj->weight, 0, kv_idx);
    copy_into(da->v_proj->weight, sa->v_proj->weight, 0, kv_idx);
    copy_into(da->o_proj->weight, sa->o_proj->weight, 1, q_idx);
    if (c.attention_bias) {
      copy_into(da->q_proj->bias, sa->q_proj->bias, 0, q_idx);
      copy_into(da->k_proj->bias, sa->k_proj->bias, 0, kv_idx);
      copy_into(da->v_proj->bias, sa->v_proj->bias, 0, kv_idx);
    }
    da->query_block = sa->query_block;

    // MLP: gate/up rows and down_proj columns of the kept neurons.
    const at::Tensor f_idx = index_tensor(neurons[l], device);
    copy_into(dst->mlp->gate_proj->weight, src->mlp->gate_proj->weight, 0, f_idx);
    copy_into(dst->mlp->up_proj->weight, src->mlp->up_proj->weight, 0, f_idx);
    copy_into(dst->mlp->down_proj->weight, src->mlp->down_proj->weight, 1, f_idx);
  }
  out->activation_checkpointing = model->activation_checkpointing;
  out->train(model->is_training());
  return out;
}

// ----------------------------------------------------------------------------
// Importance and counting

namespace {
at::Tensor squares(const at::Tensor& w) { return w.detach().to(at::kDouble).pow(2); }
}  // namespace

std::vector<at::Tensor> mlp_neuron_magnitude(Llama& model) {
  require_plain(model, "MLP neuron magnitude");
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> out;
  for (auto& layer : model->model->layers) {
    auto& mlp = layer->mlp;
    at::Tensor s = squares(mlp->gate_proj->weight).sum(1) + squares(mlp->up_proj->weight).sum(1) +
                   squares(mlp->down_proj->weight).sum(0);  // [F]
    out.push_back(s.cpu());
  }
  return out;
}

std::vector<at::Tensor> kv_group_magnitude(Llama& model) {
  require_plain(model, "KV group magnitude");
  const LlamaConfig& c = model->config();
  const int64_t KV = c.num_key_value_heads;
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> out;
  for (auto& layer : model->model->layers) {
    auto& a = layer->self_attn;
    // Rows of q (columns of o) group by [KV, G*D]; rows of k and v by [KV, D].
    at::Tensor s = squares(a->q_proj->weight).sum(1).view({KV, -1}).sum(1) +
                   squares(a->k_proj->weight).sum(1).view({KV, -1}).sum(1) +
                   squares(a->v_proj->weight).sum(1).view({KV, -1}).sum(1) +
                   squares(a->o_proj->weight).sum(0).view({KV, -1}).sum(1);  // [KV]
    out.push_back(s.cpu());
  }
  return out;
}

std::vector<std::vector<int64_t>> keep_top(const std::vector<at::Tensor>& scores, int64_t keep) {
  std::vector<std::vector<int64_t>> out;
  for (size_t l = 0; l < scores.size(); ++l) {
    if (scores[l].dim() != 1)
      fail_usage("keep_top: the scores of layer {} have shape {}, expected one dimension", l,
                 shape_str(scores[l].sizes()));
    at::Tensor s = scores[l].detach().to(at::kCPU, at::kDouble).contiguous();
    const int64_t n = s.numel();
    if (keep < 1 || keep > n) fail_usage("keep_top: cannot keep {} of the {} units of layer {}", keep, n, l);
    const double* v = s.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i)
      if (std::isnan(v[i])) fail("keep_top: the score of unit {} of layer {} is NaN", i, l);
    std::vector<int64_t> order = iota(n);
    // Highest first; stable, so equal scores keep index order (the lower index wins).
    std::stable_sort(order.begin(), order.end(), [v](int64_t a, int64_t b) { return v[a] > v[b]; });
    order.resize(static_cast<size_t>(keep));
    std::sort(order.begin(), order.end());
    out.push_back(std::move(order));
  }
  return out;
}

int64_t parameter_count(const LlamaConfig& c) {
  const int64_t C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, D = c.head_dim();
  const int64_t Q = c.num_attention_heads * D, K = c.num_key_value_heads * D;
  int64_t layer = 2 * C              // input_layernorm, post_attention_layernorm
                  + Q * C + 2 * K * C  // q_proj, k_proj, v_proj
                  + C * Q              // o_proj
                  + 3 * F * C;         // gate_proj, up_proj, down_proj
  if (c.attention_bias) layer += Q + 2 * K;
  return V * C + c.num_hidden_layers * layer + C + (c.tie_word_embeddings ? 0 : V * C);
}

}  // namespace dsk::models
