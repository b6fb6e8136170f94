// TFRecord framing, CRC-32C and the protobuf wire encoding of the few Event fields we write.
#include "train/tfevents.h"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>

#include "core/error.h"

namespace dsk::train {
namespace {

// ---------------------------------------------------------------------------------------------
// CRC-32C, slicing by 8: table[k][b] is the CRC of byte b followed by k zero bytes.

using CrcTables = std::array<std::array<uint32_t, 256>, 8>;

CrcTables make_crc_tables() {
  CrcTables t{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t c = b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
    t[0][b] = c;
  }
  for (int k = 1; k < 8; ++k)
    for (uint32_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFF];
  return t;
}

const CrcTables& crc_tables() {
  static const CrcTables t = make_crc_tables();
  return t;
}

// ---------------------------------------------------------------------------------------------
// Protobuf wire format: key = (field << 3) | wire type; 0 varint, 1 fixed64, 2 bytes, 5 fixed32.

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_key(std::string& out, int field, int wire) { put_varint(out, (static_cast<uint64_t>(field) << 3) | wire); }
template <typename T>
void put_le(std::string& out, T v) {
  unsigned char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // x86-64 and aarch64 are little-endian
  out.append(reinterpret_cast<const char*>(b), sizeof(T));
}
void put_double(std::string& out, int field, double v) { put_key(out, field, 1), put_le(out, v); }
void put_float(std::string& out, int field, float v) { put_key(out, field, 5), put_le(out, v); }
void put_int64(std::string& out, int field, int64_t v) { put_key(out, field, 0), put_varint(out, static_cast<uint64_t>(v)); }
void put_bytes(std::string& out, int field, std::string_view v) {
  put_key(out, field, 2);
  put_varint(out, v.size());
  out.append(v.data(), v.size());
}

double wall_time() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

std::string hostname() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == 0) return "localhost";
  return buf;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size, uint32_t crc) {
  const CrcTables& t = crc_tables();
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  while (size >= 8) {
    uint32_t lo = crc ^ (uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24);
    crc = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^ t[3][p[4]] ^
          t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]];
    p += 8;
    size -= 8;
  }
  while (size--) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xFF];
  return ~crc;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t c = crc32c(data, size);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string tfrecord(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  put_le<uint64_t>(out, data.size());
  put_le<uint32_t>(out, masked_crc32c(out.data(), 8));
  out.append(data.data(), data.size());
  put_le<uint32_t>(out, masked_crc32c(data.data(), data.size()));
  return out;
}

EventWriter::EventWriter(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail("cannot create TensorBoard directory {}: {}", dir.string(), ec.message());
  const std::string base = "events.out.tfevents." + std::to_string(static_cast<long long>(std::time(nullptr))) +
                           "." + hostname() + "." + std::to_string(static_cast<long long>(getpid())) + ".";
  for (int n = 0; !file_; ++n) {
    path_ = dir / (base + std::to_string(n));
    file_ = std::fopen(path_.c_str(), "wbx");  // exclusive: never append to another writer's file
    if (!file_ && errno != EEXIST) fail("cannot create {}: {}", path_.string(), std::strerror(errno));
  }
  std::string ev;
  put_double(ev, 1, wall_time());
  put_bytes(ev, 3, "brain.Event:2");
  write_event(ev);
}

EventWriter::~EventWriter() {
  if (file_) std::fclose(file_);
}

void EventWriter::write_event(const std::string& event) {
  const std::string rec = tfrecord(event);
  if (std::fwrite(rec.data(), 1, rec.size(), file_) != rec.size() || std::fflush(file_) != 0)
    fail("cannot write {}: {}", path_.string(), std::strerror(errno));
}

void EventWriter::add_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values) {
  std::string summary;
  for (const auto& [tag, v] : values) {
    std::string value;
    put_bytes(value, 1, tag);
    put_float(value, 2, static_cast<float>(v));
    put_bytes(summary, 1, value);
  }
  std::string ev;
  put_double(ev, 1, wall_time());
  put_int64(ev, 2, step);
  put_bytes(ev, 5, summary);
  write_event(ev);
}

void EventWriter::add_session_start(int64_t step) {
  std::string session_log;
  put_int64(session_log, 1, 1);  // status: START
  std::string ev;
  put_double(ev, 1, wall_time());
  put_int64(ev, 2, step);
  put_bytes(ev, 6, session_log);
  write_event(ev);
}

}  // namespace dsk::train
