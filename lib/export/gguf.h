// GGUF (version 3) for llama.cpp: a small writer, the block encoders of the supported tensor
// types, and the export of a Llama-family model with its tokenizer (docs/export.md).
//
// File layout, all little-endian:
//   uint32 magic "GGUF" | uint32 version 3 | uint64 tensor_count | uint64 kv_count
//   kv_count x { string key | uint32 value_type | value }        string = uint64 length + bytes
//                                                                 array  = uint32 type + uint64 n + n values
//   tensor_count x { string name | uint32 n_dims | uint64 ne[n_dims] | uint32 ggml_type | uint64 offset }
//   zero padding to general.alignment (32), then the tensor data, each tensor at its offset
//   (relative to the data start, a multiple of the alignment, zero padding between tensors).
// ne[0] is the innermost (contiguous) dimension: a torch tensor [out, in] has ne = {in, out}.
//
// Tensor types: F32, F16 (IEEE half), BF16 (upper half of the fp32 bits, rounded to nearest even),
// Q8_0 (blocks of 32: fp16 d, int8 q[32]; x = d*q) and Q4_0 (blocks of 32: fp16 d, uint8 qs[16];
// qs[j] holds element j in its low nibble and element j+16 in its high one; x = d*(nibble - 8)).
// The float -> block rounding is ggml's reference (quantize_row_q8_0_ref / q4_0_ref), so a file
// made here holds the bytes llama.cpp's own converter + llama-quantize would write for the same
// weights.
//
// The fallback rule (storage_type): 1-D tensors (norm weights, biases) are always F32; a 2-D
// tensor whose rows (ne[0]) are not a multiple of 32 cannot be cut into blocks and is stored as
// F16 when Q8_0/Q4_0 was asked for — what llama-quantize ends with for such rows too.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "models/loader.h"
#include "tokenizer/tokenizer.h"

namespace dsk::gguf {

inline constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
inline constexpr uint32_t kVersion = 3;
inline constexpr uint64_t kAlignment = 32;
inline constexpr int64_t kBlock = 32;  // elements per Q8_0 / Q4_0 block

enum class ValueType : uint32_t {
  UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7,
  String = 8, Array = 9, UInt64 = 10, Int64 = 11, Float64 = 12,
};

// ggml_type values.
enum class TensorType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, BF16 = 30 };

const char* type_name(TensorType t);                 // "F32", "Q8_0", ...
// "f32" | "f16" | "bf16" | "q8_0" | "q4_0"; usage error naming `key` otherwise.
TensorType parse_type(const std::string& s, const std::string& key = "export.dtype");
bool is_block_type(TensorType t);                    // Q8_0, Q4_0
int64_t block_bytes(TensorType t);                   // bytes per block (per element for floats)
// Bytes of `n` elements stored as t (n a multiple of the block size for block types).
uint64_t data_bytes(TensorType t, int64_t n);
// general.file_type (llama_ftype) of a file whose large tensors are `t`.
uint32_t file_type(TensorType t);

// The documented fallback rule (see the top of this file). `shape` in torch order (outermost first).
// `why` (optional) receives a short reason when the result differs from `requested`.
TensorType storage_type(TensorType requested, at::IntArrayRef shape, std::string* why = nullptr);

// ggml's reference encoders; n must be a multiple of 32.
std::string encode_q8_0(const float* x, int64_t n);
std::string encode_q4_0(const float* x, int64_t n);
// Any float tensor (row-major, converted to fp32 first) as `t`; for block types the last dimension
// must be a multiple of 32 (blocks never cross rows).
std::string encode_tensor(const at::Tensor& t, TensorType type);
// The inverse, for tests and checks: `n` fp32 values from bytes of type t.
std::vector<float> decode(TensorType t, const std::string& bytes, int64_t n);

// Blocks built directly from integer codes that a quantized dsk checkpoint already holds (no
// re-rounding): codes [N, K] int (already centred: q - zero), scales [N, K/32] fp32, K % 32 == 0.
// Q8_0 needs codes in [-128, 127], Q4_0 in [-8, 7]; runtime error otherwise.
std::string encode_blocks_from_codes(const at::Tensor& codes, const at::Tensor& scales, TensorType t);

// A GGUF file being assembled: metadata in insertion order, tensors with their encoders.
class Writer {
 public:
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_u64(const std::string& key, uint64_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string(const std::string& key, const std::string& v);
  void add_strings(const std::string& key, const std::vector<std::string>& v);
  void add_f32s(const std::string& key, const std::vector<float>& v);
  void add_i32s(const std::string& key, const std::vector<int32_t>& v);

  // shape in torch order (outermost first); `data` returns the encoded bytes (data_bytes(type,
  // numel) of them) when the file is written, so large models are never held twice.
  void add_tensor(const std::string& name, std::vector<int64_t> shape, TensorType type,
                  std::function<std::string()> data);

  size_t tensor_count() const { return tensors_.size(); }
  size_t kv_count() const { return kv_.size(); }
  bool has_key(const std::string& key) const;

  // Streams the file to `out` (runtime error on a short write or an encoder size mismatch).
  void write(std::ostream& out) const;
  // The whole file in memory (tests, small models).
  std::string serialize() const;

 private:
  struct Kv {
    std::string key;
    std::string payload;  // value_type + value, encoded
  };
  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;
    TensorType type;
    std::function<std::string()> data;
  };
  void add_raw(const std::string& key, std::string payload);
  std::vector<Kv> kv_;
  std::vector<Tensor> tensors_;
};

// Writes through "<path>.tmp.<pid>" + fsync + rename, so `path` is either absent or complete.
// Usage error (exit 2) when `path` exists and !overwrite, or its directory does not exist.
void write_file(const Writer& w, const std::filesystem::path& path, bool overwrite);

// ---------------------------------------------------------------------------
// Llama-family models

struct ExportOptions {
  TensorType dtype = TensorType::F16;  // the type of the large (2-D) tensors
  std::string name;                     // general.name
};

struct TensorReport {
  std::string name;             // GGUF name ("blk.0.attn_q.weight")
  std::vector<int64_t> shape;   // torch order
  TensorType type;
  std::string note;             // why it is not ExportOptions::dtype, or how it was made ("from int4 codes")
};

struct ExportReport {
  std::vector<TensorReport> tensors;
  uint32_t file_type = 0;
  std::vector<std::string> warnings;
};

// The GGUF of `lm` (architecture "llama": q/k rows in the Interleaved rotary layout llama.cpp
// expects, converted from Half when needed) with `tok`'s vocabulary. A quantized model (dsk
// quantize) maps its codes straight into Q8_0/Q4_0 blocks where its scheme allows (symmetric,
// group size 32, no act-order; int4 codes fit Q8_0 too), is dequantized for F32/F16/BF16, and is
// refused with the reason otherwise. Usage errors name what cannot be exported.
Writer build_llama(models::LoadedModel& lm, const tok::Tokenizer& tok, const ExportOptions& opt,
                   ExportReport* report = nullptr);

// GGUF name of a Hugging Face parameter name ("model.layers.3.mlp.down_proj.weight" ->
// "blk.3.ffn_down.weight"); "" when it has none.
std::string tensor_name(const std::string& hf_name);

}  // namespace dsk::gguf
