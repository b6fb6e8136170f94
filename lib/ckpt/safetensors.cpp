// safetensors reader (validate everything at open, then copy out of the mapping) and writer
// (stream header + tensors into a temporary file, fsync, rename).
#include "ckpt/safetensors.h"

#include <ATen/ops/empty.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/fs.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

namespace dsk::ckpt {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // as the reference implementation
constexpr const char* kMetadataKey = "__metadata__";

struct DtypeName {
  const char* name;
  at::ScalarType dtype;
};
constexpr DtypeName kDtypes[] = {
    {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf},  {"BF16", at::kBFloat16},
    {"I64", at::kLong},   {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},
    {"U8", at::kByte},    {"BOOL", at::kBool},
};

std::string supported_dtype_list() {
  std::string s;
  for (const auto& d : kDtypes) s += std::string(s.empty() ? "" : ", ") + d.name;
  return s;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// ---------------------------------------------------------------------------------------------
// Header parsing: one entry at a time, every field checked before it is used.

uint64_t json_uint(const nlohmann::ordered_json& v, const std::string& file, const std::string& name,
                   const char* field) {
  if (!v.is_number_unsigned()) {
    fail("{}: tensor '{}' has {} entry {}, expected a non-negative integer", file, name, field, v.dump());
  }
  return v.get<uint64_t>();
}

TensorInfo parse_entry(const std::string& file, const std::string& name, const nlohmann::ordered_json& e,
                       uint64_t data_size) {
  if (!e.is_object()) fail("{}: tensor '{}' has header entry {}, expected an object", file, name, e.dump());
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!e.contains(field)) fail("{}: tensor '{}' has no \"{}\" in the header", file, name, field);
  }
  TensorInfo t;
  t.name = name;

  const auto& dt = e["dtype"];
  if (!dt.is_string()) fail("{}: tensor '{}' has dtype {}, expected a string", file, name, dt.dump());
  const std::string dtype_name = dt.get<std::string>();
  const DtypeName* found = nullptr;
  for (const auto& d : kDtypes) {
    if (dtype_name == d.name) found = &d;
  }
  if (!found) {
    fail("{}: tensor '{}' has dtype '{}', which dsk does not support (supported: {})", file, name, dtype_name,
         supported_dtype_list());
  }
  t.dtype = found->dtype;

  const auto& sh = e["shape"];
  if (!sh.is_array()) fail("{}: tensor '{}' has shape {}, expected a list of integers", file, name, sh.dump());
  uint64_t numel = 1;
  bool overflow = false;
  for (const auto& d : sh) {
    uint64_t dim = json_uint(d, file, name, "shape");
    if (dim > static_cast<uint64_t>(INT64_MAX)) overflow = true;
    overflow |= __builtin_mul_overflow(numel, dim, &numel);
    t.shape.push_back(static_cast<int64_t>(dim));
  }
  uint64_t expected_bytes = 0;
  overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(c10::elementSize(t.dtype)), &expected_bytes);
  if (overflow) fail("{}: tensor '{}' has shape {} whose size overflows 64 bits", file, name, sh.dump());

  const auto& off = e["data_offsets"];
  if (!off.is_array() || off.size() != 2) {
    fail("{}: tensor '{}' has data_offsets {}, expected [begin, end]", file, name, off.dump());
  }
  t.begin = json_uint(off[0], file, name, "data_offsets");
  t.end = json_uint(off[1], file, name, "data_offsets");
  if (t.begin > t.end) {
    fail("{}: tensor '{}' has data_offsets [{}, {}] with begin after end", file, name, t.begin, t.end);
  }
  if (t.end > data_size) {
    fail("{}: tensor '{}' needs bytes [{}, {}) but the file's data section has {} bytes (file truncated?)", file,
         name, t.begin, t.end, data_size);
  }
  if (t.end - t.begin != expected_bytes) {
    fail("{}: tensor '{}' has {} bytes in data_offsets [{}, {}) but shape {} of {} needs {} bytes", file, name,
         t.end - t.begin, t.begin, t.end, shape_str(t.shape), dtype_name, expected_bytes);
  }
  return t;
}

std::map<std::string, std::string> parse_metadata(const std::string& file, const nlohmann::ordered_json& m) {
  if (!m.is_object()) fail("{}: \"{}\" is {}, expected an object of strings", file, kMetadataKey, m.dump());
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : m.items()) {
    if (!v.is_string()) {
      fail("{}: \"{}\" entry '{}' is {}, expected a string", file, kMetadataKey, k, v.dump());
    }
    out[k] = v.get<std::string>();
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// A file written under "<path>.tmp.<pid>" and renamed onto path by commit(); removed otherwise.

class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path path) : path_(std::move(path)) {
    tmp_ = path_;
    tmp_ += ".tmp." + std::to_string(::getpid());
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot create '{}': {}", tmp_.string(), std::strerror(errno));
  }
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        fail("writing '{}': {}", path_.string(), std::strerror(errno));
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
  }

  void commit() {
    if (::fsync(fd_) != 0) fail("flushing '{}': {}", path_.string(), std::strerror(errno));
    int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) fail("closing '{}': {}", path_.string(), std::strerror(errno));
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      fail("renaming onto '{}': {}", path_.string(), std::strerror(errno));
    }
    committed_ = true;
    fs::fsync_path(path_.has_parent_path() ? path_.parent_path() : std::filesystem::path("."));
  }

 private:
  std::filesystem::path path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace

const char* safetensors_dtype_name(at::ScalarType dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return d.name;
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Reader

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  fs::require_file(path, "safetensors file");
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open safetensors file '{}': {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail("cannot stat '{}': {}", path, std::strerror(err));
  }
  f->file_size_ = static_cast<uint64_t>(st.st_size);
  if (f->file_size_ < 8) {
    ::close(fd);
    fail("{}: file has {} bytes, fewer than the 8-byte header length (file truncated?)", path, f->file_size_);
  }
  void* map = ::mmap(nullptr, f->file_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_err = errno;
  ::close(fd);
  if (map == MAP_FAILED) fail("cannot map '{}': {}", path, std::strerror(map_err));
  f->map_ = map;
  const auto* base = static_cast<const uint8_t*>(map);

  uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);
  if (header_len > kMaxHeaderBytes) {
    fail("{}: header length {} exceeds the {}-byte limit (not a safetensors file?)", path, header_len,
         kMaxHeaderBytes);
  }
  if (header_len > f->file_size_ - 8) {
    fail("{}: header length {} runs past the end of the {}-byte file (file truncated?)", path, header_len,
         f->file_size_);
  }
  f->data_ = base + 8 + header_len;
  f->data_size_ = f->file_size_ - 8 - header_len;

  nlohmann::ordered_json header;
  try {
    header = nlohmann::ordered_json::parse(base + 8, base + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: header is not valid JSON: {}", path, e.what());
  }
  if (!header.is_object()) fail("{}: header is a JSON {}, expected an object", path, header.type_name());

  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) {
      f->metadata_ = parse_metadata(path, entry);
      continue;
    }
    f->tensors_.push_back(parse_entry(path, name, entry, f->data_size_));
  }

  std::stable_sort(f->tensors_.begin(), f->tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const TensorInfo* prev = nullptr;  // the last non-empty range; empty ones hold no bytes
  for (const auto& t : f->tensors_) {
    if (t.begin == t.end) continue;
    if (prev && t.begin < prev->end) {
      fail("{}: tensor '{}' at bytes [{}, {}) overlaps tensor '{}' at [{}, {})", path, t.name, t.begin, t.end,
           prev->name, prev->begin, prev->end);
    }
    prev = &t;
  }
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->index_[f->tensors_[i].name] = i;
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, file_size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::require(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) fail("{}: no tensor named '{}' ({} tensors in the file)", path_, name, tensors_.size());
  return *t;
}

std::string_view SafetensorsFile::bytes(const std::string& name) const {
  const TensorInfo& t = require(name);
  return {reinterpret_cast<const char*>(data_ + t.begin), static_cast<size_t>(t.nbytes())};
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo& t = require(name);
  const uint8_t* src = data_ + t.begin;
  if (t.dtype == at::kBool) {  // any byte but 0/1 would be an invalid C++ bool
    for (uint64_t i = 0; i < t.nbytes(); ++i) {
      if (src[i] > 1) fail("{}: tensor '{}' (BOOL) holds byte {} at element {}", path_, name, src[i], i);
    }
  }
  at::Tensor out = at::empty(t.shape, at::TensorOptions().dtype(t.dtype));
  if (t.nbytes() > 0) std::memcpy(out.data_ptr(), src, t.nbytes());
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writer

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == kMetadataKey) fail("{}: cannot save a tensor named '{}'", path, name);
    if (!seen.insert(name).second) fail("{}: tensor '{}' is given twice", path, name);
    if (!t.defined()) fail("{}: tensor '{}' is undefined", path, name);
    const char* dtype = safetensors_dtype_name(t.scalar_type());
    if (!dtype) {
      fail("{}: tensor '{}' has dtype {}, which safetensors files of dsk cannot hold (supported: {})", path, name,
           c10::toString(t.scalar_type()), supported_dtype_list());
    }
    uint64_t nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", dtype}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail("{}: cannot encode the header (tensor names and metadata must be UTF-8): {}", path, e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();

  AtomicFile out(path);
  out.write(&header_len, 8);
  out.write(text.data(), text.size());
  for (const auto& [name, t] : tensors) {
    if (t.numel() == 0) continue;
    at::Tensor c = t.detach();
    if (!c.device().is_cpu()) c = c.cpu();
    c = c.contiguous();
    out.write(c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size());
  }
  out.commit();
}

}  // namespace dsk::ckpt
