#include "models/llama2c.h"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "core/error.h"
#include "core/fs.h"

namespace dsk::models {

namespace {

constexpr int64_t kHeaderBytes = 7 * 4;
constexpr uint32_t kVersionedMagic = 0x616b3432;  // "ak42": llama2.c's versioned exports

int64_t checked_mul(int64_t a, int64_t b, const std::string& path) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) fail("{}: llama2.c header sizes overflow: not a llama2.c checkpoint", path);
  return r;
}

// One fp32 block of the file, in file order.
struct Segment {
  std::string c_name;   // llama2.c's name
  std::string hf_name;  // "model.layers.*.mlp.gate_proj.weight" style, for messages ("" when skipped)
  std::vector<int64_t> shape;
  int64_t numel = 0;
};

}  // namespace

Llama2cCheckpoint load_llama2c(const std::string& path) {
  fs::require_file(path, "llama2.c checkpoint");
  const int64_t file_size = static_cast<int64_t>(std::filesystem::file_size(path));
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open: {}", path, std::strerror(errno));
  int32_t h[7] = {0, 0, 0, 0, 0, 0, 0};
  if (file_size < kHeaderBytes)
    fail("{}: truncated llama2.c checkpoint: {} bytes, shorter than the 28-byte header", path, file_size);
  in.read(reinterpret_cast<char*>(h), kHeaderBytes);
  if (!in) fail("{}: cannot read the llama2.c header", path);
  if (static_cast<uint32_t>(h[0]) == kVersionedMagic)
    fail_hint(fmt::format("{}: a versioned llama2.c export (magic 'ak42', version {}) is not supported", path, h[1]),
              "export with llama2.c's legacy format (export.py --version 0)");

  const int64_t dim = h[0], hidden = h[1], L = h[2], heads = h[3], kv_heads = h[4], seq_len = h[6];
  const bool shared = h[5] > 0;
  const int64_t V = h[5] > 0 ? h[5] : -static_cast<int64_t>(h[5]);
  if (dim <= 0 || hidden <= 0 || L <= 0 || heads <= 0 || kv_heads <= 0 || V <= 0 || seq_len <= 0 ||
      dim % heads != 0 || heads % kv_heads != 0 || (dim / heads) % 2 != 0)
    fail("{}: invalid llama2.c header (dim {}, hidden_dim {}, n_layers {}, n_heads {}, n_kv_heads {}, vocab_size {}, "
         "seq_len {}): not a llama2.c checkpoint",
         path, dim, hidden, L, heads, kv_heads, h[5], seq_len);
  const int64_t D = dim / heads, kv_dim = kv_heads * D;

  auto m = [&](int64_t a, int64_t b) { return checked_mul(a, b, path); };
  std::vector<Segment> segs = {
      {"token_embedding_table", "model.embed_tokens.weight", {V, dim}},
      {"rms_att_weight", "model.layers.*.input_layernorm.weight", {L, dim}},
      {"wq", "model.layers.*.self_attn.q_proj.weight", {L, dim, dim}},
      {"wk", "model.layers.*.self_attn.k_proj.weight", {L, kv_dim, dim}},
      {"wv", "model.layers.*.self_attn.v_proj.weight", {L, kv_dim, dim}},
      {"wo", "model.layers.*.self_attn.o_proj.weight", {L, dim, dim}},
      {"rms_ffn_weight", "model.layers.*.post_attention_layernorm.weight", {L, dim}},
      {"w1", "model.layers.*.mlp.gate_proj.weight", {L, hidden, dim}},
      {"w2", "model.layers.*.mlp.down_proj.weight", {L, dim, hidden}},
      {"w3", "model.layers.*.mlp.up_proj.weight", {L, hidden, dim}},
      {"rms_final_weight", "model.norm.weight", {dim}},
      {"freq_cis_real", "", {seq_len, D / 2}},
      {"freq_cis_imag", "", {seq_len, D / 2}},
  };
  if (!shared) segs.push_back({"wcls", "lm_head.weight", {V, dim}});

  int64_t total = 0;  // floats
  for (auto& s : segs) {
    s.numel = 1;
    for (int64_t d : s.shape) s.numel = m(s.numel, d);
    total += s.numel;
    if (total < 0 || total > (int64_t{1} << 60)) fail("{}: llama2.c header sizes overflow", path);
  }
  const int64_t expected = kHeaderBytes + 4 * total;
  if (file_size < expected) {
    int64_t offset = kHeaderBytes;
    for (auto& s : segs) {
      if (offset + 4 * s.numel > file_size) {
        fail("{}: truncated llama2.c checkpoint: {} bytes, the header implies {}; the file ends inside '{}'{} "
             "(bytes {}..{})",
             path, file_size, expected, s.c_name, s.hf_name.empty() ? "" : " (" + s.hf_name + ")", offset,
             offset + 4 * s.numel);
      }
      offset += 4 * s.numel;
    }
  }
  if (file_size > expected)
    fail_hint(fmt::format("{}: llama2.c checkpoint has {} bytes, the header implies {} ({} extra bytes)", path,
                          file_size, expected, file_size - expected),
              shared ? "a file with an untied classifier must store vocab_size negated" : "the file is corrupt");

  at::Tensor all = at::empty({total}, at::kFloat);  // every fp32 value of the file
  char* dst = reinterpret_cast<char*>(all.data_ptr<float>());
  int64_t left = 4 * total;
  while (left > 0) {
    std::streamsize chunk = static_cast<std::streamsize>(std::min<int64_t>(left, int64_t{1} << 30));
    in.read(dst, chunk);
    if (in.gcount() != chunk) fail("{}: read failed after {} of {} bytes", path, 4 * total - left, 4 * total);
    dst += chunk;
    left -= chunk;
  }

  Llama2cCheckpoint ck;
  LlamaConfig& c = ck.config;
  c.hidden_size = dim;
  c.intermediate_size = hidden;
  c.num_hidden_layers = L;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.vocab_size = V;
  c.max_position_embeddings = seq_len;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = shared;
  c.attention_bias = false;
  c.rope_style = RopeStyle::Interleaved;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  c.torch_dtype = "float32";
  c.model_type = "llama";

  int64_t offset = 0;
  for (auto& s : segs) {
    at::Tensor t = all.narrow(0, offset, s.numel).view(s.shape);
    offset += s.numel;
    if (s.hf_name.empty()) continue;
    size_t star = s.hf_name.find('*');
    if (star == std::string::npos) {
      ck.weights[s.hf_name] = t;
      continue;
    }
    for (int64_t i = 0; i < L; ++i)
      ck.weights[s.hf_name.substr(0, star) + std::to_string(i) + s.hf_name.substr(star + 1)] = t[i];
  }
  return ck;
}

at::Tensor permute_rope_rows(const at::Tensor& w, int64_t n_heads, RopeStyle to) {
  const int64_t rows = w.size(0), D = rows / n_heads;
  DSK_CHECK(rows % n_heads == 0 && D % 2 == 0, "permute_rope_rows: {} rows do not split into {} heads of even size",
            rows, n_heads);
  at::Tensor w2 = w.dim() == 1 ? w.unsqueeze(1) : w;  // [rows, cols]
  const int64_t cols = w2.size(1);
  at::Tensor out = to == RopeStyle::Half
                       ? w2.reshape({n_heads, D / 2, 2, cols}).transpose(1, 2)   // (i, j) -> (j, i)
                       : w2.reshape({n_heads, 2, D / 2, cols}).transpose(1, 2);  // inverse
  out = out.reshape({rows, cols});
  return w.dim() == 1 ? out.squeeze(1) : out;
}

namespace {

// Permutes the q/k weights and biases found by `find(name)` (nullptr when absent).
template <typename Find>
void convert_rope(LlamaConfig& config, Find find, RopeStyle to) {
  if (config.rope_style == to) return;
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".self_attn.";
    for (const char* suffix : {"weight", "bias"}) {
      if (at::Tensor* q = find(p + "q_proj." + suffix)) *q = permute_rope_rows(*q, config.num_attention_heads, to);
      if (at::Tensor* k = find(p + "k_proj." + suffix)) *k = permute_rope_rows(*k, config.num_key_value_heads, to);
    }
  }
  config.rope_style = to;
}

auto map_finder(std::map<std::string, at::Tensor>& weights) {
  return [&weights](const std::string& name) -> at::Tensor* {
    auto it = weights.find(name);
    return it == weights.end() ? nullptr : &it->second;
  };
}

}  // namespace

void convert_rope_to_half(LlamaConfig& config, std::map<std::string, at::Tensor>& weights) {
  convert_rope(config, map_finder(weights), RopeStyle::Half);
}

void convert_rope_to_half(LlamaConfig& config, std::vector<std::pair<std::string, at::Tensor>>& weights) {
  std::map<std::string, at::Tensor*> index;
  for (auto& [name, t] : weights) index[name] = &t;
  convert_rope(
      config,
      [&index](const std::string& name) -> at::Tensor* {
        auto it = index.find(name);
        return it == index.end() ? nullptr : it->second;
      },
      RopeStyle::Half);
}

void convert_rope_to_interleaved(LlamaConfig& config, std::map<std::string, at::Tensor>& weights) {
  convert_rope(config, map_finder(weights), RopeStyle::Interleaved);
}

}  // namespace dsk::models
