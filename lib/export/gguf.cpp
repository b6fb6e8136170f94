// GGUF writer, block encoders and the Llama export (format notes in gguf.h, docs/export.md).
#include "export/gguf.h"
#include "export/output.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"
#include "models/llama2c.h"
#include "models/quantized.h"
#include "quant/pack.h"
#include "quant/quantize.h"
#include "tokenizer/pretokenize.h"

namespace dsk::gguf {

namespace {

void put_u32(std::string& s, uint32_t v) {
  char b[4];
  std::memcpy(b, &v, 4);  // the supported platforms are little-endian
  s.append(b, 4);
}
void put_u64(std::string& s, uint64_t v) {
  char b[8];
  std::memcpy(b, &v, 8);
  s.append(b, 8);
}
void put_f32(std::string& s, float v) {
  char b[4];
  std::memcpy(b, &v, 4);
  s.append(b, 4);
}
void put_u16(std::string& s, uint16_t v) {
  char b[2];
  std::memcpy(b, &v, 2);
  s.append(b, 2);
}
void put_str(std::string& s, const std::string& v) {
  put_u64(s, v.size());
  s += v;
}

uint16_t fp16_bits(float f) { return c10::Half(f).x; }
float fp16_value(uint16_t bits) { return static_cast<float>(c10::Half(bits, c10::Half::from_bits())); }

// ggml_compute_fp32_to_bf16: round to nearest even, NaN kept quiet.
uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((u >> 16) | 64);
  return static_cast<uint16_t>((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}
float bf16_value(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint64_t align_up(uint64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

}  // namespace

// ---------------------------------------------------------------------------
// Types

const char* type_name(TensorType t) {
  switch (t) {
    case TensorType::F32: return "F32";
    case TensorType::F16: return "F16";
    case TensorType::BF16: return "BF16";
    case TensorType::Q8_0: return "Q8_0";
    case TensorType::Q4_0: return "Q4_0";
  }
  return "?";
}

TensorType parse_type(const std::string& s, const std::string& key) {
  if (s == "f32") return TensorType::F32;
  if (s == "f16") return TensorType::F16;
  if (s == "bf16") return TensorType::BF16;
  if (s == "q8_0") return TensorType::Q8_0;
  if (s == "q4_0") return TensorType::Q4_0;
  fail_usage_hint(fmt::format("{}: '{}' is not a GGUF type dsk writes", key, s),
                  fmt::format("set {} to one of f32, f16, bf16, q8_0, q4_0", key));
}

bool is_block_type(TensorType t) { return t == TensorType::Q8_0 || t == TensorType::Q4_0; }

int64_t block_bytes(TensorType t) {
  switch (t) {
    case TensorType::F32: return 4;
    case TensorType::F16:
    case TensorType::BF16: return 2;
    case TensorType::Q8_0: return 2 + kBlock;
    case TensorType::Q4_0: return 2 + kBlock / 2;
  }
  return 0;
}

uint64_t data_bytes(TensorType t, int64_t n) {
  if (is_block_type(t)) {
    DSK_CHECK(n % kBlock == 0, "gguf: {} elements are not whole {} blocks", n, type_name(t));
    return static_cast<uint64_t>(n / kBlock * block_bytes(t));
  }
  return static_cast<uint64_t>(n * block_bytes(t));
}

uint32_t file_type(TensorType t) {
  switch (t) {
    case TensorType::F32: return 0;   // LLAMA_FTYPE_ALL_F32
    case TensorType::F16: return 1;   // MOSTLY_F16
    case TensorType::Q4_0: return 2;  // MOSTLY_Q4_0
    case TensorType::Q8_0: return 7;  // MOSTLY_Q8_0
    case TensorType::BF16: return 32; // MOSTLY_BF16
  }
  return 0;
}

TensorType storage_type(TensorType requested, at::IntArrayRef shape, std::string* why) {
  if (shape.size() < 2) {
    if (why && requested != TensorType::F32) *why = "1-D: always F32";
    return TensorType::F32;
  }
  if (is_block_type(requested) && shape.back() % kBlock != 0) {
    if (why) *why = fmt::format("rows of {} are not a multiple of {}: F16", shape.back(), kBlock);
    return TensorType::F16;
  }
  return requested;
}

// ---------------------------------------------------------------------------
// Encoders

std::string encode_q8_0(const float* x, int64_t n) {
  DSK_CHECK(n % kBlock == 0, "encode_q8_0: {} values are not whole blocks of {}", n, kBlock);
  std::string out;
  out.reserve(static_cast<size_t>(n / kBlock * block_bytes(TensorType::Q8_0)));
  for (int64_t b = 0; b < n; b += kBlock) {
    float amax = 0.0f;
    for (int64_t j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[b + j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_u16(out, fp16_bits(d));
    for (int64_t j = 0; j < kBlock; ++j) out.push_back(static_cast<char>(static_cast<int8_t>(std::round(x[b + j] * id))));
  }
  return out;
}

std::string encode_q4_0(const float* x, int64_t n) {
  DSK_CHECK(n % kBlock == 0, "encode_q4_0: {} values are not whole blocks of {}", n, kBlock);
  std::string out;
  out.reserve(static_cast<size_t>(n / kBlock * block_bytes(TensorType::Q4_0)));
  for (int64_t b = 0; b < n; b += kBlock) {
    float amax = 0.0f, max = 0.0f;  // the value of largest magnitude, with its sign (first on ties)
    for (int64_t j = 0; j < kBlock; ++j) {
      const float v = x[b + j];
      if (amax < std::fabs(v)) {
        amax = std::fabs(v);
        max = v;
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_u16(out, fp16_bits(d));
    for (int64_t j = 0; j < kBlock / 2; ++j) {
      const float x0 = x[b + j] * id, x1 = x[b + kBlock / 2 + j] * id;
      const uint8_t q0 = static_cast<uint8_t>(std::min<int>(15, static_cast<int8_t>(x0 + 8.5f)));
      const uint8_t q1 = static_cast<uint8_t>(std::min<int>(15, static_cast<int8_t>(x1 + 8.5f)));
      out.push_back(static_cast<char>(q0 | (q1 << 4)));
    }
  }
  return out;
}

std::string encode_tensor(const at::Tensor& t, TensorType type) {
  at::Tensor f = t.detach().to(at::kCPU).to(at::kFloat).contiguous();
  const float* x = f.data_ptr<float>();
  const int64_t n = f.numel();
  std::string out;
  switch (type) {
    case TensorType::F32:
      out.assign(reinterpret_cast<const char*>(x), static_cast<size_t>(n) * 4);
      break;
    case TensorType::F16:
      out.reserve(static_cast<size_t>(n) * 2);
      for (int64_t i = 0; i < n; ++i) put_u16(out, fp16_bits(x[i]));
      break;
    case TensorType::BF16:
      out.reserve(static_cast<size_t>(n) * 2);
      for (int64_t i = 0; i < n; ++i) put_u16(out, bf16_bits(x[i]));
      break;
    case TensorType::Q8_0:
    case TensorType::Q4_0:
      DSK_CHECK(f.dim() >= 1 && f.size(-1) % kBlock == 0, "gguf: rows of {} do not split into {} blocks of {}",
                f.dim() ? f.size(-1) : 0, type_name(type), kBlock);
      out = type == TensorType::Q8_0 ? encode_q8_0(x, n) : encode_q4_0(x, n);
      break;
  }
  return out;
}

std::vector<float> decode(TensorType t, const std::string& bytes, int64_t n) {
  DSK_CHECK(bytes.size() == data_bytes(t, n), "gguf decode: {} bytes for {} {} values, expected {}", bytes.size(), n,
            type_name(t), data_bytes(t, n));
  std::vector<float> out(static_cast<size_t>(n));
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  auto u16 = [](const uint8_t* q) {
    uint16_t v;
    std::memcpy(&v, q, 2);
    return v;
  };
  switch (t) {
    case TensorType::F32: std::memcpy(out.data(), p, static_cast<size_t>(n) * 4); break;
    case TensorType::F16:
      for (int64_t i = 0; i < n; ++i) out[i] = fp16_value(u16(p + 2 * i));
      break;
    case TensorType::BF16:
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_value(u16(p + 2 * i));
      break;
    case TensorType::Q8_0:
      for (int64_t b = 0; b < n / kBlock; ++b) {
        const uint8_t* blk = p + b * block_bytes(t);
        const float d = fp16_value(u16(blk));
        for (int64_t j = 0; j < kBlock; ++j) out[b * kBlock + j] = d * static_cast<float>(static_cast<int8_t>(blk[2 + j]));
      }
      break;
    case TensorType::Q4_0:
      for (int64_t b = 0; b < n / kBlock; ++b) {
        const uint8_t* blk = p + b * block_bytes(t);
        const float d = fp16_value(u16(blk));
        for (int64_t j = 0; j < kBlock / 2; ++j) {
          out[b * kBlock + j] = d * static_cast<float>((blk[2 + j] & 0x0f) - 8);
          out[b * kBlock + kBlock / 2 + j] = d * static_cast<float>((blk[2 + j] >> 4) - 8);
        }
      }
      break;
  }
  return out;
}

std::string encode_blocks_from_codes(const at::Tensor& codes, const at::Tensor& scales, TensorType t) {
  DSK_CHECK(is_block_type(t), "encode_blocks_from_codes: {} is not a block type", type_name(t));
  DSK_CHECK(codes.dim() == 2 && codes.size(1) % kBlock == 0, "encode_blocks_from_codes: codes {} are not [N, 32*G]",
            models::shape_str(codes.sizes()));
  const int64_t N = codes.size(0), K = codes.size(1), G = K / kBlock;
  DSK_CHECK(scales.dim() == 2 && scales.size(0) == N && scales.size(1) == G,
            "encode_blocks_from_codes: scales {} do not match codes {}", models::shape_str(scales.sizes()),
            models::shape_str(codes.sizes()));
  at::Tensor c = codes.to(at::kInt).contiguous(), s = scales.to(at::kFloat).contiguous();
  const int32_t* cp = c.data_ptr<int32_t>();
  const float* sp = s.data_ptr<float>();
  const int lo = t == TensorType::Q8_0 ? -128 : -8, hi = t == TensorType::Q8_0 ? 127 : 7;
  std::string out;
  out.reserve(static_cast<size_t>(N * G * block_bytes(t)));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < G; ++g) {
      put_u16(out, fp16_bits(sp[n * G + g]));
      const int32_t* q = cp + n * K + g * kBlock;
      for (int64_t j = 0; j < kBlock; ++j)
        DSK_CHECK(q[j] >= lo && q[j] <= hi, "a code {} is outside [{}, {}] of {}", q[j], lo, hi, type_name(t));
      if (t == TensorType::Q8_0) {
        for (int64_t j = 0; j < kBlock; ++j) out.push_back(static_cast<char>(static_cast<int8_t>(q[j])));
      } else {
        for (int64_t j = 0; j < kBlock / 2; ++j)
          out.push_back(static_cast<char>((q[j] + 8) | ((q[j + kBlock / 2] + 8) << 4)));
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Writer

void Writer::add_raw(const std::string& key, std::string payload) {
  DSK_CHECK(!has_key(key), "gguf: metadata key '{}' added twice", key);
  kv_.push_back(Kv{key, std::move(payload)});
}

bool Writer::has_key(const std::string& key) const {
  return std::any_of(kv_.begin(), kv_.end(), [&](const Kv& k) { return k.key == key; });
}

void Writer::add_u32(const std::string& key, uint32_t v) {
  std::string p;
  put_u32(p, static_cast<uint32_t>(ValueType::UInt32));
  put_u32(p, v);
  add_raw(key, std::move(p));
}
void Writer::add_i32(const std::string& key, int32_t v) {
  std::string p;
  put_u32(p, static_cast<uint32_t>(ValueType::Int32));
  put_u32(p, static_cast<uint32_t>(v));
  add_raw(key, std::move(p));
}
void Writer::add_u64(const std::string& key, uint64_t v) {
  std::string p;
  put_u32(p, static_cast<uint32_t>(ValueType::UInt64));
  put_u64(p, v);
  add_raw(key, std::move(p));
}
void Writer::add_f32(const std::string& key, float v) {
  std::string p;
  put_u32(p, static_cast<uint32_t>(ValueType::Float32));
  put_f32(p, v);
  add_raw(key, std::move(p));
}
void Writer::add_bool(const std::string& key, bool v) {
  std::string p;
  put_u32(p, static_cast<uint32_t>(ValueType::Bool));
  p.push_back(v ? 1 : 0);
  add_raw(key, std::move(p));
}
void Writer::add_string(const std::string& key, const std::string& v) {
  std::string p;
  put_u32(p, static_cast<uint32_t>(ValueType::String));
  put_str(p, v);
  add_raw(key, std::move(p));
}
void Writer::add_strings(const std::string& key, const std::vector<std::string>& v) {
  std::string p;
  put_u32(p, static_cast<uint32_t>(ValueType::Array));
  put_u32(p, static_cast<uint32_t>(ValueType::String));
  put_u64(p, v.size());
  for (const auto& s : v) put_str(p, s);
  add_raw(key, std::move(p));
}
void Writer::add_f32s(const std::string& key, const std::vector<float>& v) {
  std::string p;
  put_u32(p, static_cast<uint32_t>(ValueType::Array));
  put_u32(p, static_cast<uint32_t>(ValueType::Float32));
  put_u64(p, v.size());
  for (float f : v) put_f32(p, f);
  add_raw(key, std::move(p));
}
void Writer::add_i32s(const std::string& key, const std::vector<int32_t>& v) {
  std::string p;
  put_u32(p, static_cast<uint32_t>(ValueType::Array));
  put_u32(p, static_cast<uint32_t>(ValueType::Int32));
  put_u64(p, v.size());
  for (int32_t i : v) put_u32(p, static_cast<uint32_t>(i));
  add_raw(key, std::move(p));
}

void Writer::add_tensor(const std::string& name, std::vector<int64_t> shape, TensorType type,
                        std::function<std::string()> data) {
  for (const auto& t : tensors_) DSK_CHECK(t.name != name, "gguf: tensor '{}' added twice", name);
  DSK_CHECK(!shape.empty() && shape.size() <= 4, "gguf: tensor '{}' has {} dimensions (1..4 allowed)", name,
            shape.size());
  if (is_block_type(type))
    DSK_CHECK(shape.back() % kBlock == 0, "gguf: tensor '{}' {} rows of {} are not whole {} blocks", name,
              models::shape_str(shape), shape.back(), type_name(type));
  tensors_.push_back(Tensor{name, std::move(shape), type, std::move(data)});
}

void Writer::write(std::ostream& out) const {
  std::string head;
  put_u32(head, kMagic);
  put_u32(head, kVersion);
  put_u64(head, tensors_.size());
  put_u64(head, kv_.size());
  for (const auto& kv : kv_) {
    put_str(head, kv.key);
    head += kv.payload;
  }
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    put_str(head, t.name);
    put_u32(head, static_cast<uint32_t>(t.shape.size()));
    for (size_t i = t.shape.size(); i-- > 0;) put_u64(head, static_cast<uint64_t>(t.shape[i]));  // ne[0] innermost
    put_u32(head, static_cast<uint32_t>(t.type));
    put_u64(head, offset);
    sizes.push_back(data_bytes(t.type, numel));
    offset = align_up(offset + sizes.back());
  }
  head.resize(align_up(head.size()), '\0');
  out.write(head.data(), static_cast<std::streamsize>(head.size()));
  for (size_t i = 0; i < tensors_.size(); ++i) {
    std::string bytes = tensors_[i].data();
    DSK_CHECK(bytes.size() == sizes[i], "gguf: tensor '{}' encoded to {} bytes, expected {}", tensors_[i].name,
              bytes.size(), sizes[i]);
    bytes.resize(align_up(bytes.size()), '\0');
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  DSK_CHECK(out.good(), "gguf: write failed");
}

std::string Writer::serialize() const {
  std::ostringstream s;
  write(s);
  return s.str();
}

void write_file(const Writer& w, const std::filesystem::path& path, bool overwrite) {
  namespace stdfs = std::filesystem;
  export_out::check_output_file(path, overwrite);
  const stdfs::path dir = path.has_parent_path() ? path.parent_path() : stdfs::path(".");
  const stdfs::path tmp = path.string() + ".tmp." + std::to_string(::getpid());
  try {
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) fail("cannot create '{}'", tmp.string());
      w.write(out);
      out.flush();
      if (!out) fail("writing '{}' failed (disk full?)", tmp.string());
    }
    fs::fsync_path(tmp);
    stdfs::rename(tmp, path);
    fs::fsync_path(dir);
  } catch (...) {
    std::error_code ec;
    stdfs::remove(tmp, ec);
    throw;
  }
}

// ---------------------------------------------------------------------------
// Llama export

std::string tensor_name(const std::string& hf) {
  static const std::map<std::string, std::string> top = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  if (auto it = top.find(hf); it != top.end()) return it->second;
  static const std::map<std::string, std::string> layer = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
  };
  const std::string prefix = "model.layers.";
  if (hf.compare(0, prefix.size(), prefix) != 0) return "";
  const size_t dot = hf.find('.', prefix.size());
  if (dot == std::string::npos) return "";
  const std::string idx = hf.substr(prefix.size(), dot - prefix.size());
  if (idx.empty() || !std::all_of(idx.begin(), idx.end(), ::isdigit)) return "";
  auto it = layer.find(hf.substr(dot + 1));
  return it == layer.end() ? "" : "blk." + idx + "." + it->second;
}

namespace {

// tokenizer.ggml.pre of a byte-level BPE tokenizer from its split patterns.
std::string bpe_pre(const std::vector<std::string>& patterns, std::vector<std::string>& warnings) {
  for (const auto& p : patterns) {
    if (p == tok::kLlama3Pattern) return "llama-bpe";
    if (p == tok::kQwen2Pattern) return "qwen2";
    if (p == tok::kGpt2Pattern) return "gpt-2";
  }
  warnings.push_back("the BPE pre-tokenizer is none of GPT-2 / Llama-3 / Qwen2: tokenizer.ggml.pre is 'default', "
                     "llama.cpp may split text differently than dsk");
  return "default";
}

void add_tokenizer(Writer& w, const tok::Tokenizer& tok, int64_t model_vocab, std::vector<std::string>& warnings) {
  tok::VocabularyExport v = tok.export_vocabulary();
  const int64_t n = static_cast<int64_t>(v.tokens.size());
  if (n > model_vocab)
    fail_usage_hint(fmt::format("the tokenizer has {} tokens but the model's vocabulary is {}", n, model_vocab),
                    "export with the tokenizer the model was trained with (tokenizer.path)");
  // Rows of the embedding without a token (padded vocabularies) get unused placeholders, as
  // llama.cpp's converter does: llama.cpp wants one token per row.
  for (int64_t i = 0; i < model_vocab; ++i) {
    if (i >= n) {
      v.tokens.push_back("");
      v.scores.push_back(0.0f);
      v.types.push_back(5);
    }
    if (v.tokens[i].empty()) {
      v.tokens[i] = fmt::format("[PAD{}]", i);
      v.types[i] = 5;
    }
  }
  if (v.kind == tok::VocabularyExport::Kind::SentencePiece) {
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_strings("tokenizer.ggml.tokens", v.tokens);
    w.add_f32s("tokenizer.ggml.scores", v.scores);
    w.add_i32s("tokenizer.ggml.token_type", v.types);
    w.add_bool("tokenizer.ggml.add_space_prefix", v.add_dummy_prefix);
  } else {
    w.add_string("tokenizer.ggml.model", "gpt2");
    w.add_string("tokenizer.ggml.pre", bpe_pre(v.split_patterns, warnings));
    w.add_strings("tokenizer.ggml.tokens", v.tokens);
    w.add_i32s("tokenizer.ggml.token_type", v.types);
    w.add_strings("tokenizer.ggml.merges", v.merges);
  }
  if (tok.bos_id() >= 0) w.add_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(tok.bos_id()));
  if (tok.eos_id() >= 0) w.add_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(tok.eos_id()));
  if (v.unk_id >= 0) w.add_u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(v.unk_id));
  w.add_bool("tokenizer.ggml.add_bos_token", tok.bos_id() >= 0);
  w.add_bool("tokenizer.ggml.add_eos_token", false);
}

// One linear layer's weight as GGUF bytes: quantized codes mapped into blocks, or a float weight
// (dequantized when the layer is quantized) encoded with the fallback rule.
struct LinearSource {
  std::string hf_name;
  models::LoraLinearImpl* lin = nullptr;
  int64_t rope_heads = 0;  // > 0: q/k rows to permute from Half to Interleaved with this many heads
};

// Why a quantized layer's codes cannot become `t` blocks ("" when they can).
std::string block_mapping_problem(const quant::QWeight& q, TensorType t) {
  if (q.in_features() % kBlock != 0) return "";  // handled by the fallback rule (F16), not an error
  const int zero = 1 << (q.bits - 1);
  if (q.group_size != kBlock)
    return fmt::format("its scales cover {} (GGUF {} has one scale per 32 consecutive weights of a row)",
                       q.group_size > 0 ? fmt::format("groups of {}", q.group_size)
                                        : std::string(q.group_size == 0 ? "whole rows (per-channel)" : "the whole tensor"),
                       type_name(t));
  if (!at::equal(q.g_idx.to(at::kInt), quant::group_index(q.in_features(), q.group_size).to(at::kInt)))
    return "its groups are permuted (act-order / desc_act): GGUF blocks are consecutive columns";
  if (!(q.zeros.to(at::kInt) == zero).all().item<bool>())
    return fmt::format("it is asymmetric (zero points other than {}): {} blocks have no zero point", zero, type_name(t));
  if (t == TensorType::Q4_0 && q.bits > 4)
    return fmt::format("its {}-bit codes do not fit Q4_0's 4 bits (re-quantizing would add error)", q.bits);
  if (q.bits > 8) return fmt::format("{}-bit codes do not fit", q.bits);
  return "";
}

}  // namespace

Writer build_llama(models::LoadedModel& lm, const tok::Tokenizer& tok, const ExportOptions& opt, ExportReport* report) {
  ExportReport local;
  ExportReport& rep = report ? *report : local;
  rep = ExportReport{};
  const models::LlamaConfig& c = lm.config;
  models::Llama& model = lm.model;
  for (auto& [name, lin] : models::linear_layers(model))
    if (lin->has_lora())
      fail_usage_hint(fmt::format("layer '{}' carries an unmerged LoRA adapter", name),
                      "export the merged model (dsk finetune writes it as model/ with save.merged=true)");
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2")
    fail_usage(fmt::format("model_type '{}' has no GGUF mapping in dsk (llama, mistral, qwen2)", c.model_type));

  Writer w;
  const std::string arch = "llama";
  w.add_string("general.architecture", arch);
  w.add_string("general.name", opt.name.empty() ? std::string("dsk export") : opt.name);
  w.add_u32("general.file_type", file_type(opt.dtype));
  if (is_block_type(opt.dtype)) w.add_u32("general.quantization_version", 2);
  w.add_u32(arch + ".context_length", static_cast<uint32_t>(c.max_position_embeddings));
  w.add_u32(arch + ".embedding_length", static_cast<uint32_t>(c.hidden_size));
  w.add_u32(arch + ".block_count", static_cast<uint32_t>(c.num_hidden_layers));
  w.add_u32(arch + ".feed_forward_length", static_cast<uint32_t>(c.intermediate_size));
  w.add_u32(arch + ".rope.dimension_count", static_cast<uint32_t>(c.head_dim()));
  w.add_u32(arch + ".attention.head_count", static_cast<uint32_t>(c.num_attention_heads));
  w.add_u32(arch + ".attention.head_count_kv", static_cast<uint32_t>(c.num_key_value_heads));
  if (c.head_dim() * c.num_attention_heads != c.hidden_size) {
    w.add_u32(arch + ".attention.key_length", static_cast<uint32_t>(c.head_dim()));
    w.add_u32(arch + ".attention.value_length", static_cast<uint32_t>(c.head_dim()));
  }
  w.add_f32(arch + ".attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
  w.add_f32(arch + ".rope.freq_base", static_cast<float>(c.rope_theta));
  w.add_u32(arch + ".vocab_size", static_cast<uint32_t>(c.vocab_size));
  if (c.rope_scaling_type == "linear") {
    w.add_string(arch + ".rope.scaling.type", "linear");
    w.add_f32(arch + ".rope.scaling.factor", static_cast<float>(c.rope_scaling_factor));
  } else if (!c.rope_scaling_type.empty() && c.rope_scaling_type != "llama3") {
    fail_usage(fmt::format("rope_scaling type '{}' has no GGUF mapping in dsk", c.rope_scaling_type));
  }
  if (c.model_type == "mistral")
    rep.warnings.push_back("Mistral's sliding window is not written (dsk does not implement it either)");
  add_tokenizer(w, tok, c.vocab_size, rep.warnings);

  // rope_heads > 0: rows permuted from Half to Interleaved with that many heads, when written.
  auto add_float = [&](const std::string& gname, at::Tensor t, TensorType requested, std::string note,
                       int64_t rope_heads = 0) {
    std::string why;
    std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
    TensorType type = storage_type(requested, t.sizes(), &why);
    if (requested == opt.dtype && !why.empty()) note = note.empty() ? why : note + "; " + why;
    at::Tensor src = t.detach();
    const int64_t heads = c.rope_style == models::RopeStyle::Half ? rope_heads : 0;
    w.add_tensor(gname, shape, type, [src, type, heads] {
      return encode_tensor(heads > 0 ? models::permute_rope_rows(src, heads, models::RopeStyle::Interleaved) : src, type);
    });
    rep.tensors.push_back(TensorReport{gname, shape, type, note});
  };

  auto add_linear = [&](const LinearSource& s) {
    const std::string gname = tensor_name(s.hf_name + ".weight");
    const quant::QLinear* ql = s.lin->quantized();
    if (!ql) {
      add_float(gname, s.lin->weight, opt.dtype, "", s.rope_heads);
    } else {
      quant::QWeight q = ql->weight;
      if (ql->act != quant::ActMode::None)
        rep.warnings.push_back(fmt::format("{}: int8 activations (W8A8) are not part of GGUF; llama.cpp quantizes "
                                           "activations its own way",
                                           s.hf_name));
      const std::string scheme = fmt::format("int{} g{} {}", q.bits, q.group_size,
                                             (q.zeros.to(at::kInt) == (1 << (q.bits - 1))).all().item<bool>() ? "sym" : "asym");
      if (is_block_type(opt.dtype) && q.in_features() % kBlock == 0) {
        std::string problem = block_mapping_problem(q, opt.dtype);
        if (!problem.empty())
          fail_usage_hint(fmt::format("layer '{}' ({}) cannot be written as GGUF {} without re-quantizing: {}",
                                      s.hf_name, quant::describe(quant::Scheme{q.bits, q.group_size, true}),
                                      type_name(opt.dtype), problem),
                          "export it dequantized (export.dtype f16 or f32), or export the full-precision model as "
                          "q8_0/q4_0, or quantize with quant.bits=8|4 quant.group_size=32 quant.symmetric=true "
                          "quant.act_order=false");
        if (!at::equal(q.scales.to(at::kFloat), q.scales.to(at::kHalf).to(at::kFloat)))
          rep.warnings.push_back(fmt::format("{}: scales are not fp16 values; GGUF stores them rounded to fp16", s.hf_name));
        // Codes are widened and permuted only when the file is written (one layer at a time).
        const int64_t heads = c.rope_style == models::RopeStyle::Half ? s.rope_heads : 0;
        const TensorType t = opt.dtype;
        std::vector<int64_t> shape = {q.out_features(), q.in_features()};
        w.add_tensor(gname, shape, t, [q, heads, t] {
          at::Tensor codes = q.q.to(at::kInt) - (1 << (q.bits - 1));
          at::Tensor scales = q.scales.to(at::kFloat);
          if (heads > 0) {
            codes = models::permute_rope_rows(codes, heads, models::RopeStyle::Interleaved);
            scales = models::permute_rope_rows(scales, heads, models::RopeStyle::Interleaved);
          }
          return encode_blocks_from_codes(codes.contiguous(), scales.contiguous(), t);
        });
        rep.tensors.push_back(TensorReport{gname, shape, t, "from " + scheme + " codes (exact)"});
      } else {
        // the dequantized matrix only exists while this tensor is written
        std::string why;
        const TensorType type = storage_type(opt.dtype, {q.out_features(), q.in_features()}, &why);
        const int64_t heads = c.rope_style == models::RopeStyle::Half ? s.rope_heads : 0;
        std::vector<int64_t> shape = {q.out_features(), q.in_features()};
        w.add_tensor(gname, shape, type, [q, heads, type] {
          at::Tensor W = quant::dequantize(q);
          if (heads > 0) W = models::permute_rope_rows(W, heads, models::RopeStyle::Interleaved);
          return encode_tensor(W, type);
        });
        rep.tensors.push_back(
            TensorReport{gname, shape, type, "dequantized from " + scheme + (why.empty() ? "" : "; " + why)});
      }
    }
    if (s.lin->bias.defined()) {
      add_float(tensor_name(s.hf_name + ".bias"), s.lin->bias, TensorType::F32, "", s.rope_heads);
    }
  };

  add_float("token_embd.weight", model->model->embed_tokens->weight, opt.dtype, "");
  if (c.rope_scaling_type == "llama3") {
    // llama.cpp applies Llama 3.1's scaling through per-frequency divisors in rope_freqs.weight.
    models::LlamaConfig plain = c;
    plain.rope_scaling_type.clear();
    at::Tensor factors = models::rope_inv_freq(plain) / models::rope_inv_freq(c);
    add_float("rope_freqs.weight", factors.to(at::kFloat), TensorType::F32, "llama3 rope scaling factors");
  }
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    auto& L = model->model->layers[static_cast<size_t>(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add_float(tensor_name(p + "input_layernorm.weight"), L->input_layernorm->weight, TensorType::F32, "");
    add_linear({p + "self_attn.q_proj", L->self_attn->q_proj.get(), c.num_attention_heads});
    add_linear({p + "self_attn.k_proj", L->self_attn->k_proj.get(), c.num_key_value_heads});
    add_linear({p + "self_attn.v_proj", L->self_attn->v_proj.get(), 0});
    add_linear({p + "self_attn.o_proj", L->self_attn->o_proj.get(), 0});
    add_float(tensor_name(p + "post_attention_layernorm.weight"), L->post_attention_layernorm->weight,
              TensorType::F32, "");
    add_linear({p + "mlp.gate_proj", L->mlp->gate_proj.get(), 0});
    add_linear({p + "mlp.up_proj", L->mlp->up_proj.get(), 0});
    add_linear({p + "mlp.down_proj", L->mlp->down_proj.get(), 0});
  }
  add_float("output_norm.weight", model->model->norm->weight, TensorType::F32, "");
  if (!c.tie_word_embeddings) add_linear({"lm_head", model->lm_head.get(), 0});
  rep.file_type = file_type(opt.dtype);
  return w;
}

}  // namespace dsk::gguf
