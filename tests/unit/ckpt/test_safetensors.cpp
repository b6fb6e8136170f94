// safetensors: round trips of every dtype, an independent Python writer/checker
// (safetensors_ref.py), and corrupt files that must fail with the file and tensor named.
#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "ckpt/safetensors.h"
#include "core/error.h"
#include "ckpt_test_util.h"

using dsk::ckpt::SafetensorsFile;
using dsk::ckpt::save_safetensors;
using Catch::Matchers::Contains;
namespace stdfs = std::filesystem;
using dsk::test::error_of;
using dsk::test::put;
using dsk::test::slurp;

namespace {

using Named = std::vector<std::pair<std::string, at::Tensor>>;

struct Spec {
  const char* name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
};
// The same list as SPECS in safetensors_ref.py.
const std::vector<Spec> kSpecs = {
    {"f64", at::kDouble, {2, 3}}, {"f32", at::kFloat, {4, 5}},  {"f16", at::kHalf, {3, 7}},
    {"bf16", at::kBFloat16, {5, 3}}, {"i64", at::kLong, {6}},   {"i32", at::kInt, {2, 2, 2}},
    {"i16", at::kShort, {9}},     {"i8", at::kChar, {3, 3}},    {"u8", at::kByte, {10}},
    {"bool", at::kBool, {7}},     {"scalar", at::kFloat, {}},   {"empty", at::kBFloat16, {0, 4}},
};

// The values safetensors_ref.py computes: k = 0, 1, ... in row-major order.
at::Tensor reference(const Spec& s) {
  int64_t n = 1;
  for (int64_t d : s.shape) n *= d;
  at::Tensor k = at::arange(n, at::kDouble).reshape(s.shape);
  if (s.dtype == at::kBool) return k.to(at::kLong).remainder(3).eq(0);
  if (at::isFloatingType(s.dtype)) return (k * 0.1 - 3.0).to(s.dtype);
  if (s.dtype == at::kByte) return (k.to(at::kLong) * 7).remainder(256).to(s.dtype);
  return (k.to(at::kLong) - 5).to(s.dtype);
}

Named reference_tensors() {
  Named out;
  for (const auto& s : kSpecs) out.emplace_back(s.name, reference(s));
  return out;
}

std::string script() { return std::string(DSK_SOURCE_DIR) + "/tests/unit/ckpt/safetensors_ref.py"; }

std::string raw_bytes(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

uint64_t header_len_of(const std::string& file_bytes) {
  uint64_t n = 0;
  std::memcpy(&n, file_bytes.data(), 8);
  return n;
}

// A file with the given header text (padded to 8) and `data_bytes` zero bytes of data.
std::string make_raw(const stdfs::path& dir, const std::string& header, size_t data_bytes) {
  std::string text = header;
  text.append((8 - text.size() % 8) % 8, ' ');
  uint64_t n = text.size();
  std::string bytes(reinterpret_cast<const char*>(&n), 8);
  bytes += text + std::string(data_bytes, '\0');
  stdfs::path p = dir / "raw.safetensors";
  put(p, bytes);
  return p.string();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Round trips

TEST_CASE("every dtype, a 0-d and an empty tensor round-trip bit for bit", "[ckpt][safetensors]") {
  auto dir = dsk::test::scratch_dir("st_roundtrip");
  Named tensors = reference_tensors();
  const float inf = std::numeric_limits<float>::infinity();
  at::Tensor special = at::tensor({0.0f, -0.0f, inf, -inf, std::nanf(""), 1e-45f, 3.4e38f});
  tensors.emplace_back("special_f32", special);
  const std::string p = (dir / "a.safetensors").string();
  save_safetensors(p, tensors);

  auto f = SafetensorsFile::open(p);
  REQUIRE(f->tensors().size() == tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, want] = tensors[i];
    INFO("tensor " << name);
    const auto& info = f->tensors()[i];  // file order = the order given
    CHECK(info.name == name);
    CHECK(info.dtype == want.scalar_type());
    CHECK(info.shape == want.sizes().vec());
    CHECK(info.nbytes() == static_cast<uint64_t>(want.numel() * want.element_size()));
    at::Tensor got = f->tensor(name);
    CHECK(got.scalar_type() == want.scalar_type());
    CHECK(got.sizes() == want.sizes());
    CHECK(raw_bytes(got) == raw_bytes(want));
    CHECK(std::string(f->bytes(name)) == raw_bytes(want));
  }
  CHECK(f->tensor("scalar").dim() == 0);
  CHECK(f->tensor("empty").numel() == 0);
  CHECK(std::isnan(f->tensor("special_f32")[4].item<float>()));
  CHECK(std::signbit(f->tensor("special_f32")[1].item<float>()));
  CHECK(f->metadata().empty());
  CHECK(f->find("nope") == nullptr);
  REQUIRE_THROWS_WITH(f->tensor("nope"), Contains("no tensor named 'nope'") && Contains(p));
}

TEST_CASE("metadata round-trips - none gives no __metadata__ entry", "[ckpt][safetensors]") {
  auto dir = dsk::test::scratch_dir("st_metadata");
  const std::map<std::string, std::string> meta = {
      {"format", "pt"}, {"dsk_version", "0.1.0"}, {"config_hash", "ab12"}, {"note", "quotes \" and\nnewline, ünïcode"}};
  const std::string p = (dir / "m.safetensors").string();
  save_safetensors(p, {{"w", at::ones({2})}}, meta);
  CHECK(SafetensorsFile::open(p)->metadata() == meta);

  const std::string q = (dir / "n.safetensors").string();
  save_safetensors(q, {{"w", at::ones({2})}});
  std::string bytes = slurp(q);
  auto header = nlohmann::json::parse(bytes.substr(8, header_len_of(bytes)));
  CHECK_FALSE(header.contains("__metadata__"));
}

TEST_CASE("the header is padded with spaces to a multiple of 8 bytes", "[ckpt][safetensors]") {
  auto dir = dsk::test::scratch_dir("st_align");
  for (int len = 1; len <= 9; ++len) {
    const std::string name(len, 'x');
    const std::string p = (dir / (name + ".safetensors")).string();
    save_safetensors(p, {{name, at::ones({3}, at::kBFloat16)}});
    std::string bytes = slurp(p);
    uint64_t n = header_len_of(bytes);
    INFO("name length " << len);
    CHECK(n % 8 == 0);
    std::string text = bytes.substr(8, n);
    size_t json_end = text.find_last_of('}');
    CHECK(text.find_first_not_of(' ', json_end + 1) == std::string::npos);
    CHECK(n - json_end - 1 < 8);
    CHECK(bytes.size() == 8 + n + 6);
  }
}

TEST_CASE("the writer stores views contiguously and in the order given", "[ckpt][safetensors]") {
  auto dir = dsk::test::scratch_dir("st_views");
  at::Tensor base = at::arange(24, at::kFloat).reshape({4, 6});
  Named tensors = {{"z_transposed", base.t()},
                   {"a_sliced", base.slice(/*dim=*/1, 1, 5, 2)},
                   {"m_expanded", at::arange(3, at::kFloat).to(at::kHalf).expand({2, 3})}};
  const std::string p = (dir / "v.safetensors").string();
  save_safetensors(p, tensors);
  auto f = SafetensorsFile::open(p);
  for (size_t i = 0; i < tensors.size(); ++i) {
    CHECK(f->tensors()[i].name == tensors[i].first);
    CHECK(at::equal(f->tensor(tensors[i].first), tensors[i].second));
  }
  CHECK(f->tensors()[0].begin == 0);
  CHECK(f->tensors()[1].begin == f->tensors()[0].end);
}

TEST_CASE("the writer rejects bad input and leaves the old file in place", "[ckpt][safetensors]") {
  auto dir = dsk::test::scratch_dir("st_writer_errors");
  const std::string p = (dir / "w.safetensors").string();
  save_safetensors(p, {{"old", at::ones({2})}});
  REQUIRE_THROWS_WITH(save_safetensors(p, {{"c", at::ones({2}, at::kComplexFloat)}}),
                      Contains("tensor 'c'") && Contains("ComplexFloat"));
  REQUIRE_THROWS_WITH(save_safetensors(p, {{"a", at::ones({1})}, {"a", at::ones({1})}}), Contains("'a' is given twice"));
  REQUIRE_THROWS_WITH(save_safetensors(p, {{"", at::ones({1})}}), Contains("cannot save a tensor named ''"));
  REQUIRE_THROWS_WITH(save_safetensors(p, {{"u", at::Tensor()}}), Contains("'u' is undefined"));
  auto f = SafetensorsFile::open(p);
  CHECK(f->find("old") != nullptr);
  CHECK(f->tensors().size() == 1);

  save_safetensors(p, {{"new", at::zeros({3})}});  // replaces the old file
  CHECK(SafetensorsFile::open(p)->find("new") != nullptr);
  int files = 0;
  for (const auto& e : stdfs::directory_iterator(dir)) files += e.is_regular_file();
  CHECK(files == 1);  // no temporary left behind
}

// ---------------------------------------------------------------------------------------------
// An independent implementation: Python writes, we read; we write, Python reads.

TEST_CASE("a file written by Python (by hand, data in another order) reads back", "[ckpt][safetensors][python]") {
  auto dir = dsk::test::scratch_dir("st_python_write");
  for (const char* variant : {"", " --unpadded"}) {
    INFO("variant '" << variant << "'");
    const std::string p = (dir / "py.safetensors").string();
    auto r = dsk::test::run_cmd("/usr/bin/python3 " + script() + " write " + p + variant);
    REQUIRE(r.exit_code == 0);
    auto f = SafetensorsFile::open(p);
    CHECK(f->metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"writer", "python"}});
    REQUIRE(f->tensors().size() == kSpecs.size());
    CHECK(f->tensors().front().name == "empty");  // tensors() follows the data, written in reverse
    CHECK(f->tensors().back().name == "f64");
    for (const auto& s : kSpecs) {
      INFO("tensor " << s.name);
      at::Tensor got = f->tensor(s.name);
      CHECK(got.scalar_type() == s.dtype);
      CHECK(got.sizes().vec() == s.shape);
      CHECK(raw_bytes(got) == raw_bytes(reference(s)));
    }
  }
}

TEST_CASE("a file written by us passes the Python checker", "[ckpt][safetensors][python]") {
  auto dir = dsk::test::scratch_dir("st_python_check");
  const std::string p = (dir / "ours.safetensors").string();
  save_safetensors(p, reference_tensors(), {{"format", "pt"}, {"writer", "dsk"}});
  auto r = dsk::test::run_cmd("/usr/bin/python3 " + script() + " check " + p);
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out == "OK\n");

  // The checker is not vacuous: a different value fails it.
  Named changed = reference_tensors();
  changed[3].second = changed[3].second.clone();
  changed[3].second.view(-1)[0] = 42;
  save_safetensors(p, changed, {{"format", "pt"}, {"writer", "dsk"}});
  r = dsk::test::run_cmd("/usr/bin/python3 " + script() + " check " + p);
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Contains("bf16"));
}

// ---------------------------------------------------------------------------------------------
// Corrupt files: each a runtime dsk::Error naming the file and, where there is one, the tensor.

TEST_CASE("a missing file or a directory is a usage error", "[ckpt][safetensors][corrupt]") {
  auto dir = dsk::test::scratch_dir("st_missing");
  const std::string p = (dir / "absent.safetensors").string();
  auto e = error_of([&] { SafetensorsFile::open(p); });
  CHECK(e.exit_code() == dsk::kExitUsage);
  CHECK_THAT(e.message(), Contains(p) && Contains("does not exist"));
  e = error_of([&] { SafetensorsFile::open(dir.string()); });
  CHECK(e.exit_code() == dsk::kExitUsage);
  CHECK_THAT(e.message(), Contains("not a regular file"));
}

TEST_CASE("a file truncated anywhere fails at open", "[ckpt][safetensors][corrupt]") {
  auto dir = dsk::test::scratch_dir("st_truncated");
  const std::string good = (dir / "good.safetensors").string();
  save_safetensors(good, {{"model.embed_tokens.weight", at::ones({8, 4})},
                          {"model.layers.3.mlp.up_proj.weight", at::ones({16, 4}, at::kBFloat16)},
                          {"model.norm.weight", at::ones({4})}});
  const std::string bytes = slurp(good);
  const uint64_t n = header_len_of(bytes);
  const std::string p = (dir / "cut.safetensors").string();
  auto open_cut = [&](size_t keep) {
    put(p, bytes.substr(0, keep));
    auto e = error_of([&] { SafetensorsFile::open(p); });
    CHECK(e.exit_code() == dsk::kExitRuntime);
    CHECK_THAT(e.message(), Contains(p));
    return e.message();
  };
  for (size_t keep : {0, 3, 7}) {
    INFO("kept " << keep);
    CHECK_THAT(open_cut(keep), Contains("fewer than the 8-byte header length"));
  }
  for (size_t keep : {size_t{8}, size_t{8 + n / 2}, size_t{8 + n - 1}}) {
    INFO("kept " << keep);
    CHECK_THAT(open_cut(keep), Contains("runs past the end") && Contains("file truncated?"));
  }
  // Data: embed_tokens holds [0, 128), up_proj [128, 256), norm [256, 272).
  CHECK_THAT(open_cut(8 + n + 100), Contains("tensor 'model.embed_tokens.weight' needs bytes [0, 128)") &&
                                        Contains("data section has 100 bytes (file truncated?)"));
  CHECK_THAT(open_cut(8 + n + 200), Contains("tensor 'model.layers.3.mlp.up_proj.weight' needs bytes [128, 256)"));
  CHECK_THAT(open_cut(bytes.size() - 1), Contains("tensor 'model.norm.weight' needs bytes [256, 272)"));
  put(p, bytes);
  CHECK(SafetensorsFile::open(p)->tensors().size() == 3);
}

TEST_CASE("an absurd header length or a header that is not a JSON object fails", "[ckpt][safetensors][corrupt]") {
  auto dir = dsk::test::scratch_dir("st_bad_header");
  const std::string p = (dir / "h.safetensors").string();
  uint64_t huge = 200'000'000;
  put(p, std::string(reinterpret_cast<const char*>(&huge), 8) + std::string(64, ' '));
  REQUIRE_THROWS_WITH(SafetensorsFile::open(p), Contains(p) && Contains("header length 200000000 exceeds"));
  uint64_t past = 1000;
  put(p, std::string(reinterpret_cast<const char*>(&past), 8) + "{}      ");
  REQUIRE_THROWS_WITH(SafetensorsFile::open(p), Contains("header length 1000 runs past the end of the 16-byte file"));

  std::string q = make_raw(dir, "{\"w\": {\"dtype\": \"F32\", ", 0);
  REQUIRE_THROWS_WITH(SafetensorsFile::open(q), Contains(q) && Contains("header is not valid JSON"));
  q = make_raw(dir, "[1, 2, 3]", 0);
  REQUIRE_THROWS_WITH(SafetensorsFile::open(q), Contains(q) && Contains("header is a JSON array, expected an object"));
  q = make_raw(dir, std::string("{\"w\": 1}\xff"), 0);
  REQUIRE_THROWS_WITH(SafetensorsFile::open(q), Contains("header is not valid JSON"));
  q = make_raw(dir, R"({"__metadata__": {"step": 3}})", 0);
  REQUIRE_THROWS_WITH(SafetensorsFile::open(q), Contains("\"__metadata__\" entry 'step' is 3, expected a string"));
  CHECK(SafetensorsFile::open(make_raw(dir, "{}", 0))->tensors().empty());
}

TEST_CASE("bad tensor entries fail with the tensor named", "[ckpt][safetensors][corrupt]") {
  auto dir = dsk::test::scratch_dir("st_bad_entries");
  auto open_error = [&](const std::string& header, size_t data_bytes) {
    std::string p = make_raw(dir, header, data_bytes);
    auto e = error_of([&] { SafetensorsFile::open(p); });
    CHECK(e.exit_code() == dsk::kExitRuntime);
    CHECK_THAT(e.message(), Contains(p));
    return e.message();
  };
  const std::string w = "model.layers.3.mlp.up_proj.weight";
  CHECK_THAT(open_error(R"({"model.layers.3.mlp.up_proj.weight": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})", 2),
             Contains("tensor '" + w + "' has dtype 'F8_E4M3'") && Contains("supported: F64, F32"));
  CHECK_THAT(open_error(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", 24),
             Contains("tensor 'w' has 20 bytes in data_offsets [0, 20) but shape [2,3] of F32 needs 24 bytes"));
  CHECK_THAT(open_error(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 12),
             Contains("tensor 'w' needs bytes [0, 16) but the file's data section has 12 bytes"));
  CHECK_THAT(open_error(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                            "b": {"dtype": "I32", "shape": [2], "data_offsets": [12, 20]}})", 20),
             Contains("tensor 'b' at bytes [12, 20) overlaps tensor 'a' at [0, 16)"));
  CHECK_THAT(open_error(R"({"b": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]},
                            "a": {"dtype": "U8", "shape": [4], "data_offsets": [3, 7]}})", 8),
             Contains("overlaps"));
  CHECK_THAT(open_error(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 8),
             Contains("tensor 'w' has data_offsets [8, 4] with begin after end"));
  CHECK_THAT(open_error(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4),
             Contains("tensor 'w' has shape entry -1, expected a non-negative integer"));
  CHECK_THAT(open_error(R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 4]}})", 4),
             Contains("tensor 'w' has shape entry 2.5"));
  CHECK_THAT(open_error(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}})", 4),
             Contains("tensor 'w' has shape [4294967296,4294967296] whose size overflows 64 bits"));
  CHECK_THAT(open_error(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", 8),
             Contains("tensor 'w' has data_offsets [0,4,8], expected [begin, end]"));
  CHECK_THAT(open_error(R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", 4), Contains("tensor 'w' has no \"dtype\""));
  CHECK_THAT(open_error(R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", 4), Contains("tensor 'w' has no \"shape\""));
  CHECK_THAT(open_error(R"({"w": {"dtype": "F32", "shape": [1]}})", 4), Contains("tensor 'w' has no \"data_offsets\""));
  CHECK_THAT(open_error(R"({"w": [0, 4]})", 4), Contains("tensor 'w' has header entry [0,4], expected an object"));

  // Empty tensors hold no bytes and overlap nothing; holes between tensors are allowed.
  auto f = SafetensorsFile::open(make_raw(dir, R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [4, 4]},
      "b": {"dtype": "I8", "shape": [2], "data_offsets": [12, 14]}})", 16));
  CHECK(f->tensors().size() == 3);
  CHECK(f->tensor("e").sizes().vec() == std::vector<int64_t>{0, 3});
}

TEST_CASE("a BOOL tensor holding a byte other than 0 or 1 fails when read", "[ckpt][safetensors][corrupt]") {
  auto dir = dsk::test::scratch_dir("st_bad_bool");
  std::string p = make_raw(dir, R"({"mask": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]}})", 0);
  put(p, slurp(p) + std::string("\x01\x00\x02", 3));
  auto f = SafetensorsFile::open(p);
  REQUIRE_THROWS_WITH(f->tensor("mask"), Contains(p) && Contains("tensor 'mask' (BOOL) holds byte 2 at element 2"));
}
