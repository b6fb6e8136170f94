// ONNX (opset 17, IR version 8) export of a Llama-family model: the graph is built node by node
// from the model's weights (no tracing) with Debian's ONNX library (protobuf classes + checker),
// which stays inside onnx.cpp: this header is plain C++ (docs/export.md, "ONNX").
//
// Graph (B batch, T sequence, P past_sequence, S = P + T, C hidden, H heads, KV kv-heads, G = H/KV,
// D head_dim, V vocab; names as Hugging Face Optimum's decoder exports):
//   inputs   input_ids                    int64 [batch, sequence]
//            past_key_values.{i}.key      act   [batch, KV, past_sequence, D]   (kv_cache only;
//            past_key_values.{i}.value    act   [batch, KV, past_sequence, D]    P may be 0)
//   outputs  logits                       fp32  [batch, sequence, V]
//            present.{i}.key / .value     act   [batch, KV, total_sequence, D]  (kv_cache only)
// act is the export dtype (fp32, or fp16). Positions are P + arange(T), P read from the shape of
// past_key_values.0.key; query t sees keys 0 .. P + t (causal mask built in-graph).
//
// Numerics follow models/llama.cpp: RMSNorm x / sqrt(mean(x^2) + eps) * w with the mean in fp32;
// rotary embeddings in the Half layout (an Interleaved llama2.c model has its q/k rows permuted,
// as convert_to_half_rope does) from precomputed fp32 cos/sin tables [max_position_embeddings, D]
// gathered by position (rope_scaling already applied); GQA by broadcasting each kv head over its
// G query heads ([B, KV, G, T, D] x [B, KV, 1, D, S]); scaled scores, mask and softmax in fp32;
// SwiGLU; the classifier is a Gemm over the embedding matrix when tied (stored once).
// fp16: weights and activations fp16; RMSNorm statistics, softmax and the logits output fp32.
//
// Weights keep their Hugging Face names and [out, in] layouts (Gemm transB=1). With external data,
// every initializer of 1 KiB or more is stored in OUTPUT.data (file name relative to the model,
// offsets aligned to 4096), the rest inline.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/loader.h"

namespace dsk::onnx {

inline constexpr int64_t kOpset = 17;      // the only opset written (Debian's ONNX 1.12 knows up to 17)
inline constexpr int64_t kIrVersion = 8;   // IR version of opset 17
inline constexpr uint64_t kExternalMinBytes = 1024;  // smaller initializers stay inline
inline constexpr uint64_t kExternalAlign = 4096;     // offsets in OUTPUT.data
// auto external data: when the weights would bring the serialized model to protobuf's 2 GiB limit.
inline constexpr uint64_t kProtobufLimit = (uint64_t{1} << 31) - (uint64_t{64} << 20);

enum class DType { F32, F16 };
// "f32" | "f16"; usage error naming export.dtype otherwise.
DType parse_dtype(const std::string& s);

struct ExportOptions {
  DType dtype = DType::F32;
  int64_t opset = kOpset;
  bool kv_cache = false;
  std::string doc;                                              // the model's doc_string
  std::vector<std::pair<std::string, std::string>> metadata;   // extra metadata_props
};

// Usage error (exit 2) for options the exporter refuses (an opset other than 17), before any work.
void check_options(const ExportOptions& opt);

struct ExportReport {
  int64_t nodes = 0;
  int64_t initializers = 0;
  uint64_t weight_bytes = 0;            // bytes of all initializers in the export dtype
  std::vector<std::string> inputs, outputs;
  std::vector<std::string> warnings;
};

// A built model: the graph plus references to the weights, encoded only when written.
class Model {
 public:
  Model();
  ~Model();
  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;

  const ExportReport& report() const;
  // Whether export.onnx.external_data (auto|true|false) puts the weights in OUTPUT.data.
  bool wants_external(const std::string& mode) const;
  // The serialized ModelProto with every initializer inline, after the checker ran on it
  // (tests, small models; runtime error over protobuf's limit).
  std::string serialize() const;
  // Writes `path` (and `path`.data when external) into a temporary directory beside it, runs the
  // checker and strict shape inference on the written file, then renames the data file and the
  // model into place: `path` is complete or untouched. Usage error when `path` (or its data file)
  // exists and !overwrite.
  void write(const std::filesystem::path& path, bool overwrite, bool external) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  friend Model build_llama(models::LoadedModel& lm, const ExportOptions& opt);
};

// The ONNX graph of `lm` (fp32 weights; an Interleaved model is converted to the Half layout in
// place). Usage errors: unsupported opset, a quantized model (export it as GGUF Q8_0/Q4_0), an
// unmerged LoRA adapter, a model_type or rope scaling the graph does not implement.
Model build_llama(models::LoadedModel& lm, const ExportOptions& opt);

// OUTPUT.data: where the external weights of `model_path` go.
std::filesystem::path data_path(const std::filesystem::path& model_path);

}  // namespace dsk::onnx
