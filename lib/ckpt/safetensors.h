// safetensors: our own reader (mmap, validated at open) and atomic streaming writer.
//
// File layout: u64 little-endian N | N bytes of JSON header | data section.
//   header = {"__metadata__": {str: str}?, name: {"dtype": "F32", "shape": [..],
//             "data_offsets": [begin, end]}, ...}, offsets relative to the data section.
// Invariants after open(): every tensor's byte range lies inside the data section, matches
// numel * element size of its dtype, and no two ranges overlap. Nothing reads past the end.
// Errors: a corrupt file is dsk::fail (exit 1) naming the file and the tensor; a missing
// file is a usage error (exit 2). docs/formats.md describes the format as we write it.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace dsk::ckpt {

struct TensorInfo {
  std::string name;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets in the data section, [begin, end)

  uint64_t nbytes() const { return end - begin; }
};

class SafetensorsFile {
 public:
  // Maps `path` read-only and validates the whole header. Usage error when it is missing.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file (data) order
  const TensorInfo* find(const std::string& name) const;              // nullptr when absent
  // Owning CPU copy in the stored dtype; error naming the tensor and file when absent.
  at::Tensor tensor(const std::string& name) const;
  // The stored bytes of a tensor, valid while this object lives (zero-copy, read-only).
  std::string_view bytes(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // "__metadata__"
  const std::string& path() const { return path_; }
  uint64_t data_size() const { return data_size_; }  // bytes in the data section

 private:
  SafetensorsFile() = default;
  const TensorInfo& require(const std::string& name) const;

  std::string path_;
  void* map_ = nullptr;
  uint64_t file_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section inside the mapping
  uint64_t data_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// Writes tensors (made contiguous, moved to CPU one at a time) in the given order, header padded
// with spaces to a multiple of 8 bytes. Streams to "<path>.tmp.<pid>", fsyncs, renames onto path.
// Supported dtypes: f64 f32 f16 bf16 i64 i32 i16 i8 u8 bool. Names must be unique and non-empty.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// "F32", "BF16", ... for a supported dtype; nullptr otherwise.
const char* safetensors_dtype_name(at::ScalarType dtype);

}  // namespace dsk::ckpt
