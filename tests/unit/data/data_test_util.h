// Shared by the lib/data tests: a byte-level fake tokenizer (no dependency on lib/tokenizer's
// sources), scratch files, and catching a dsk::Error.
#pragma once

#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/dataset.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace dsk::test {

// Byte b -> id b + 3; BOS = 1, EOS = 2; "<|im_start|>" = 259, "<|im_end|>" = 260 (unless
// `specials` is false). encode() treats special strings as plain bytes, as a tokenizer that
// does not parse specials in text would.
class FakeTokenizer : public tok::Tokenizer {
 public:
  explicit FakeTokenizer(bool specials = true, bool bos_eos = true) : specials_(specials), bos_eos_(bos_eos) {}
  std::vector<int32_t> encode(const std::string& text, bool add_bos = false, bool add_eos = false) const override {
    std::vector<int32_t> ids;
    if (add_bos && bos_id() >= 0) ids.push_back(bos_id());
    for (unsigned char c : text) ids.push_back(c + 3);
    if (add_eos && eos_id() >= 0) ids.push_back(eos_id());
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) s += decode_piece(0, id);
    return s;
  }
  std::string decode_piece(int32_t, int32_t id) const override {
    if (id == 259) return "<|im_start|>";
    if (id == 260) return "<|im_end|>";
    if (id >= 3 && id < 259) return std::string(1, static_cast<char>(id - 3));
    return "";
  }
  int32_t vocab_size() const override { return 261; }
  int32_t bos_id() const override { return bos_eos_ ? 1 : -1; }
  int32_t eos_id() const override { return bos_eos_ ? 2 : -1; }
  int32_t token_to_id(const std::string& token) const override {
    if (!specials_) return -1;
    if (token == "<|im_start|>") return 259;
    if (token == "<|im_end|>") return 260;
    return -1;
  }
  std::string id_to_token(int32_t id) const override { return decode_piece(-1, id); }
  bool is_special(int32_t id) const override { return id == 1 || id == 2 || id == 259 || id == 260; }

 private:
  bool specials_, bos_eos_;
};

inline std::vector<int32_t> bytes_ids(const std::string& s) { return FakeTokenizer().encode(s); }

// Writes `content` to <scratch>/<test>.<pid>/<name> (the directory is kept); returns its path.
// The pid keeps test cases that ctest runs in parallel processes out of each other's files.
inline std::string write_scratch(const std::string& test, const std::string& name, const std::string& content) {
  std::filesystem::path dir = std::filesystem::path(DSK_TEST_TMP) / (test + "." + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string path = (dir / name).string();
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

// Runs fn, requires a dsk::Error, returns it.
inline Error error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e;
  }
  FAIL("expected a dsk::Error");
  return Error(Error::Kind::Runtime, "");
}

// The ids of `d` whose mask is 1.
inline std::vector<int32_t> loss_ids(const data::Document& d) {
  std::vector<int32_t> out;
  for (size_t i = 0; i < d.size(); ++i)
    if (d.mask[i]) out.push_back(d.ids[i]);
  return out;
}

}  // namespace dsk::test
