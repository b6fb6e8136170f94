// GPT-2 byte-level BPE: llama.cpp's ggml-vocab-gpt-2 conformance pairs (ids from Hugging Face
// tokenizers), through vocab.json + merges.txt and through an equivalent tokenizer.json.
#include <nlohmann/json.hpp>

#include <sstream>

#include "core/error.h"
#include "test_util.h"
#include "tok_test_util.h"
#include "tokenizer/tokenizer.h"

namespace {

struct VocabCase {
  std::string text;
  std::vector<int32_t> ids;
};

// .inp: each entry is followed by "\n__ggml_vocab_test__\n" (so an entry may itself end in
// newlines); .out: one line of space-separated ids per entry.
std::vector<VocabCase> read_ggml_vocab_cases(const std::string& stem) {
  const std::string inp = dsk::test::read_text(dsk::test::data_path(stem + ".inp"));
  const std::string out = dsk::test::read_text(dsk::test::data_path(stem + ".out"));
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<VocabCase> cases;
  size_t pos = 0;
  for (size_t next; (next = inp.find(sep, pos)) != std::string::npos; pos = next + sep.size())
    cases.push_back({inp.substr(pos, next - pos), {}});
  REQUIRE(pos == inp.size());
  std::istringstream lines(out);
  size_t i = 0;
  for (std::string line; std::getline(lines, line); ++i) {
    REQUIRE(i < cases.size());
    std::istringstream ids(line);
    for (int32_t id; ids >> id;) cases[i].ids.push_back(id);
  }
  REQUIRE(i == cases.size());
  return cases;
}

std::unique_ptr<dsk::tok::Tokenizer> gpt2() {
  return dsk::tok::load_gpt2_tokenizer(dsk::test::data_path("gpt2_vocab.json"), dsk::test::data_path("gpt2_merges.txt"));
}

std::string join(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += " " + std::to_string(id);
  return s;
}

// Every pair reproduced exactly; the failing ones are listed by index.
void check_cases(const dsk::tok::Tokenizer& tok, const std::vector<VocabCase>& cases) {
  std::string failures;
  size_t passed = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto got = tok.encode(cases[i].text);
    if (got == cases[i].ids) {
      ++passed;
    } else {
      failures += "\n#" + std::to_string(i) + " '" + cases[i].text + "'\n  expected" + join(cases[i].ids) +
                  "\n  got     " + join(got);
    }
  }
  INFO(passed << "/" << cases.size() << " pairs match" << failures);
  CHECK(passed == cases.size());
}

}  // namespace

TEST_CASE("GPT-2 vocab.json + merges.txt reproduces every ggml-vocab pair", "[tokenizer][bpe][conformance]") {
  const auto cases = read_ggml_vocab_cases("ggml-vocab-gpt-2.gguf");
  REQUIRE(cases.size() >= 45);
  CHECK(cases[2].text.empty());  // entries may be empty ...
  CHECK(cases[8].text == "\n\n");  // ... or end in newlines
  auto tok = gpt2();
  check_cases(*tok, cases);

  for (const auto& c : cases) {  // byte-level BPE is lossless
    INFO("text: " << c.text);
    CHECK(tok->decode(c.ids) == c.text);
    std::string streamed;
    for (int32_t id : c.ids) streamed += tok->decode_piece(-1, id);
    CHECK(streamed == c.text);
  }
}

TEST_CASE("GPT-2 as a tokenizer.json reproduces every ggml-vocab pair", "[tokenizer][bpe][conformance]") {
  using nlohmann::json;
  const json vocab = json::parse(dsk::test::read_text(dsk::test::data_path("gpt2_vocab.json")));
  std::istringstream merges_in(dsk::test::read_text(dsk::test::data_path("gpt2_merges.txt")));
  json merges = json::array();
  for (std::string line; std::getline(merges_in, line);) {
    const size_t sp = line.find(' ');
    if (sp == std::string::npos) continue;
    // both forms: "a b" strings and [a, b] arrays
    if (merges.size() % 2) {
      merges.push_back(line);
    } else {
      merges.push_back(json::array({line.substr(0, sp), line.substr(sp + 1)}));
    }
  }
  REQUIRE(merges.size() == 50000);
  json j;
  j["added_tokens"] = json::array({json{{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}}});
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  j["post_processor"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  j["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}};
  const auto dir = dsk::test::scratch_dir("tok_gpt2_json");
  dsk::test::write_text(dir / "tokenizer.json", j.dump());

  auto tok = dsk::tok::load_tokenizer(dir.string());
  CHECK(tok->vocab_size() == 50257);
  CHECK(tok->eos_id() == 50256);
  CHECK(tok->bos_id() == -1);
  check_cases(*tok, read_ggml_vocab_cases("ggml-vocab-gpt-2.gguf"));
}

TEST_CASE("GPT-2 special token, BOS/EOS and ids", "[tokenizer][bpe]") {
  auto tok = gpt2();
  CHECK(tok->vocab_size() == 50257);
  CHECK(tok->eos_id() == 50256);
  CHECK(tok->bos_id() == -1);
  CHECK(tok->token_to_id("<|endoftext|>") == 50256);
  CHECK(tok->is_special(50256));
  CHECK_FALSE(tok->is_special(15496));
  CHECK(tok->id_to_token(18435) == "ĠHello");
  // split out of the text, never merged with its neighbours
  CHECK(tok->encode("a<|endoftext|>b") == std::vector<int32_t>{64, 50256, 65});
  CHECK(tok->encode("Hello world", /*add_bos=*/true, /*add_eos=*/true) == std::vector<int32_t>{15496, 995, 50256});
  CHECK(tok->decode({15496, 50256, 995}) == "Hello<|endoftext|> world");
  CHECK_THROWS_AS(tok->decode({50257}), dsk::Error);
}

TEST_CASE("GPT-2 merges.txt with a #version line loads the same", "[tokenizer][bpe]") {
  const auto dir = dsk::test::scratch_dir("tok_gpt2_version");
  dsk::test::write_text(dir / "merges.txt", "#version: 0.2\n" + dsk::test::read_text(dsk::test::data_path("gpt2_merges.txt")));
  dsk::test::write_text(dir / "vocab.json", dsk::test::read_text(dsk::test::data_path("gpt2_vocab.json")));
  auto tok = dsk::tok::load_tokenizer(dir.string());  // a directory with vocab.json + merges.txt
  CHECK(tok->encode(" Hello World!") == std::vector<int32_t>{18435, 2159, 0});
  auto same = dsk::tok::load_tokenizer((dir / "vocab.json").string());
  CHECK(same->encode("Hello, world!") == std::vector<int32_t>{15496, 11, 995, 0});
}

TEST_CASE("GPT-2 invalid UTF-8 input becomes U+FFFD, as Hugging Face would see it", "[tokenizer][bpe]") {
  auto tok = gpt2();
  CHECK(tok->encode(std::string("a\xff") + "b") == tok->encode("a\xEF\xBF\xBD" "b"));
}

TEST_CASE("GPT-2 encodes all of tinyshakespeare", "[tokenizer][bpe][throughput]") {
  const std::string text = dsk::test::read_text(dsk::test::data_path("tinyshakespeare.txt"));
  auto tok = gpt2();
  const auto ids = tok->encode(text);
  CHECK(ids.size() > 250000);
  CHECK(ids.size() < 400000);
  CHECK(tok->decode(ids) == text);
}
