// TensorBoard event files: CRC-32C vectors, and a file written by EventWriter decoded back by an
// independent reader here (bitwise CRC, protobuf wire-format parser).
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <map>
#include <random>

#include "test_util.h"
#include "train/tfevents.h"

namespace {

// Bit-at-a-time CRC-32C: the definition, no tables.
uint32_t crc32c_bitwise(const unsigned char* p, size_t n) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return ~crc;
}

uint32_t mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

// ---------------------------------------------------------------------------------------------
// A minimal protobuf reader: fields of one message as (number, wire type, value bytes / integer).

struct Field {
  int number = 0;
  int wire = 0;
  uint64_t varint = 0;  // wire 0
  std::string bytes;    // wire 1, 2, 5 (raw little-endian for 1 and 5)
};

uint64_t read_varint(const std::string& s, size_t& pos) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    REQUIRE(pos < s.size());
    const auto b = static_cast<unsigned char>(s[pos++]);
    v |= static_cast<uint64_t>(b & 0x7F) << shift;
    if (!(b & 0x80)) return v;
  }
  FAIL("varint too long");
  return 0;
}

std::vector<Field> parse_message(const std::string& s) {
  std::vector<Field> out;
  size_t pos = 0;
  while (pos < s.size()) {
    const uint64_t key = read_varint(s, pos);
    Field f;
    f.number = static_cast<int>(key >> 3);
    f.wire = static_cast<int>(key & 7);
    switch (f.wire) {
      case 0: f.varint = read_varint(s, pos); break;
      case 1: REQUIRE(pos + 8 <= s.size()); f.bytes = s.substr(pos, 8); pos += 8; break;
      case 5: REQUIRE(pos + 4 <= s.size()); f.bytes = s.substr(pos, 4); pos += 4; break;
      case 2: {
        const uint64_t len = read_varint(s, pos);
        REQUIRE(pos + len <= s.size());
        f.bytes = s.substr(pos, len);
        pos += len;
        break;
      }
      default: FAIL("unexpected wire type " << f.wire);
    }
    out.push_back(f);
  }
  return out;
}

template <typename T>
T le(const std::string& b) {
  REQUIRE(b.size() == sizeof(T));
  T v;
  std::memcpy(&v, b.data(), sizeof(T));
  return v;
}

struct Event {
  double wall_time = 0;
  int64_t step = -1;
  std::string file_version;
  std::vector<std::pair<std::string, float>> values;
  int session_status = 0;
};

// Reads every record, checking both CRCs of each, and decodes the events.
std::vector<Event> read_events(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<Event> events;
  size_t pos = 0;
  while (pos < data.size()) {
    REQUIRE(pos + 12 <= data.size());
    const auto* p = reinterpret_cast<const unsigned char*>(data.data() + pos);
    const auto len = le<uint64_t>(data.substr(pos, 8));
    CHECK(le<uint32_t>(data.substr(pos + 8, 4)) == mask(crc32c_bitwise(p, 8)));
    REQUIRE(pos + 12 + len + 4 <= data.size());
    const std::string payload = data.substr(pos + 12, len);
    CHECK(le<uint32_t>(data.substr(pos + 12 + len, 4)) ==
          mask(crc32c_bitwise(reinterpret_cast<const unsigned char*>(payload.data()), len)));
    pos += 12 + len + 4;
    Event ev;
    for (const Field& fld : parse_message(payload)) {
      if (fld.number == 1 && fld.wire == 1) ev.wall_time = le<double>(fld.bytes);
      else if (fld.number == 2 && fld.wire == 0) ev.step = static_cast<int64_t>(fld.varint);
      else if (fld.number == 3 && fld.wire == 2) ev.file_version = fld.bytes;
      else if (fld.number == 5 && fld.wire == 2) {
        for (const Field& v : parse_message(fld.bytes)) {
          REQUIRE((v.number == 1 && v.wire == 2));  // Summary.value
          std::string tag;
          float value = NAN;
          for (const Field& x : parse_message(v.bytes)) {
            if (x.number == 1 && x.wire == 2) tag = x.bytes;
            else if (x.number == 2 && x.wire == 5) value = le<float>(x.bytes);
            else FAIL("unexpected Summary.Value field " << x.number);
          }
          ev.values.emplace_back(tag, value);
        }
      } else if (fld.number == 6 && fld.wire == 2) {
        for (const Field& x : parse_message(fld.bytes))
          if (x.number == 1 && x.wire == 0) ev.session_status = static_cast<int>(x.varint);
      } else {
        FAIL("unexpected Event field " << fld.number << " wire " << fld.wire);
      }
    }
    events.push_back(ev);
  }
  CHECK(pos == data.size());
  return events;
}

}  // namespace

TEST_CASE("crc32c test vectors", "[tfevents]") {
  CHECK(dsk::train::crc32c("123456789", 9) == 0xE3069283u);
  CHECK(dsk::train::crc32c("", 0) == 0u);
  // RFC 3720 (iSCSI) B.4: 32 bytes of zeros, of ones, incrementing, decrementing.
  unsigned char buf[32];
  std::memset(buf, 0, 32);
  CHECK(dsk::train::crc32c(buf, 32) == 0x8A9136AAu);
  std::memset(buf, 0xFF, 32);
  CHECK(dsk::train::crc32c(buf, 32) == 0x62A8AB43u);
  for (int i = 0; i < 32; ++i) buf[i] = static_cast<unsigned char>(i);
  CHECK(dsk::train::crc32c(buf, 32) == 0x46DD794Eu);
  for (int i = 0; i < 32; ++i) buf[i] = static_cast<unsigned char>(31 - i);
  CHECK(dsk::train::crc32c(buf, 32) == 0x113FDB5Cu);
}

TEST_CASE("crc32c agrees with the bitwise definition at every length and offset", "[tfevents]") {
  std::mt19937 rng(1);
  std::vector<unsigned char> data(300);
  for (auto& b : data) b = static_cast<unsigned char>(rng());
  for (size_t off = 0; off < 8; ++off) {
    for (size_t n = 0; n + off <= 200; n += 1) {
      INFO("offset " << off << " length " << n);
      REQUIRE(dsk::train::crc32c(data.data() + off, n) == crc32c_bitwise(data.data() + off, n));
    }
  }
  // Continuing a CRC equals one pass over the concatenation.
  const uint32_t part = dsk::train::crc32c(data.data(), 100);
  CHECK(dsk::train::crc32c(data.data() + 100, 150, part) == crc32c_bitwise(data.data(), 250));
  CHECK(dsk::train::masked_crc32c("123456789", 9) == mask(0xE3069283u));
}

TEST_CASE("event file decodes to what was written", "[tfevents]") {
  auto dir = dsk::test::scratch_dir("tfevents");
  std::filesystem::path path;
  const double t0 = static_cast<double>(std::time(nullptr));
  {
    dsk::train::EventWriter w(dir / "tb");
    path = w.path();
    w.add_scalars(1, {{"train/loss", 2.5}, {"train/lr", 3e-4}});
    w.add_scalar("train/loss", 2.25, 2);
    w.add_scalars(300, {{"eval/loss", 1.0 / 3.0}, {"train/grad_norm", 12345.678}});
    w.add_session_start(301);
    // Flushed after each write: the file is complete while the writer is still open.
    auto events = read_events(path);
    CHECK(events.size() == 5);
  }
  const std::string name = path.filename().string();
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  // events.out.tfevents.<time>.<host>.<pid>.0 (the host name may itself contain dots)
  const std::string prefix = "events.out.tfevents.";
  REQUIRE(name.rfind(prefix, 0) == 0);
  const std::string rest = name.substr(prefix.size());
  const size_t first_dot = rest.find('.');
  const size_t last_dot = rest.rfind('.');
  const size_t pid_dot = rest.rfind('.', last_dot - 1);
  REQUIRE((first_dot != std::string::npos && pid_dot > first_dot));
  CHECK(std::abs(std::stod(rest.substr(0, first_dot)) - t0) <= 5);
  CHECK(rest.substr(first_dot + 1, pid_dot - first_dot - 1) == host);
  CHECK(rest.substr(pid_dot + 1, last_dot - pid_dot - 1) == std::to_string(getpid()));
  CHECK(rest.substr(last_dot) == ".0");

  auto events = read_events(path);
  REQUIRE(events.size() == 5);
  CHECK(events[0].file_version == "brain.Event:2");
  CHECK(events[0].values.empty());
  for (const auto& e : events) CHECK(std::abs(e.wall_time - t0) <= 5);
  CHECK(events[1].step == 1);
  REQUIRE(events[1].values.size() == 2);
  CHECK(events[1].values[0] == std::pair<std::string, float>{"train/loss", 2.5f});
  CHECK(events[1].values[1] == std::pair<std::string, float>{"train/lr", 3e-4f});
  CHECK(events[2].step == 2);
  CHECK(events[2].values == std::vector<std::pair<std::string, float>>{{"train/loss", 2.25f}});
  CHECK(events[3].step == 300);
  CHECK(events[3].values[0].second == static_cast<float>(1.0 / 3.0));
  CHECK(events[3].values[1].second == 12345.678f);
  CHECK(events[4].step == 301);
  CHECK(events[4].session_status == 1);
  CHECK(events[4].values.empty());

  // A second writer in the same directory never reuses the file.
  dsk::train::EventWriter a(dir / "tb"), b(dir / "tb");
  CHECK(a.path() != b.path());
  CHECK(a.path() != path);
}

TEST_CASE("tfrecord framing of an empty and a large record", "[tfevents]") {
  for (size_t n : {size_t{0}, size_t{1}, size_t{70000}}) {
    const std::string data(n, 'x');
    const std::string rec = dsk::train::tfrecord(data);
    REQUIRE(rec.size() == n + 16);
    CHECK(le<uint64_t>(rec.substr(0, 8)) == n);
    CHECK(le<uint32_t>(rec.substr(8, 4)) == mask(crc32c_bitwise(reinterpret_cast<const unsigned char*>(rec.data()), 8)));
    CHECK(rec.substr(12, n) == data);
    CHECK(le<uint32_t>(rec.substr(12 + n, 4)) ==
          mask(crc32c_bitwise(reinterpret_cast<const unsigned char*>(data.data()), n)));
  }
}
