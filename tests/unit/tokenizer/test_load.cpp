// load_tokenizer: detection by path, and errors that name the file (usage = exit 2 for a
// missing path, runtime = exit 1 for a corrupt or unsupported file).
#include <filesystem>

#include "core/error.h"
#include "test_util.h"
#include "tok_test_util.h"
#include "tokenizer/tokenizer.h"

using Catch::Matchers::Contains;
using dsk::tok::load_tokenizer;

namespace {

// The error load_tokenizer(path) raises; fails the test when it loads.
dsk::Error load_error(const std::string& path) {
  try {
    load_tokenizer(path);
  } catch (const dsk::Error& e) {
    return e;
  }
  FAIL("expected loading '" << path << "' to fail");
  throw;  // unreachable
}

void copy(const std::string& from, const std::filesystem::path& to) {
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing);
}

}  // namespace

TEST_CASE("load_tokenizer detects the format from the path", "[tokenizer][load]") {
  const std::string model = dsk::test::data_path("tok512.model");
  CHECK(load_tokenizer(model)->vocab_size() == 512);

  const auto sp_dir = dsk::test::scratch_dir("tok_load_sp_dir");
  copy(model, sp_dir / "tokenizer.model");
  CHECK(load_tokenizer(sp_dir.string())->vocab_size() == 512);

  // tokenizer.json wins over tokenizer.model in a directory
  const auto both = dsk::test::scratch_dir("tok_load_both");
  copy(model, both / "tokenizer.model");
  dsk::test::write_text(both / "tokenizer.json", dsk::test::tiny_tokenizer_json().dump());
  CHECK(load_tokenizer(both.string())->vocab_size() == dsk::test::tiny::kEnd + 1);

  // ... unless it is a kind we do not implement (Llama-2's Metaspace BPE): then tokenizer.model
  auto j = dsk::test::tiny_tokenizer_json();
  j["model"]["byte_fallback"] = true;
  dsk::test::write_text(both / "tokenizer.json", j.dump());
  CHECK(load_tokenizer(both.string())->vocab_size() == 512);
}

TEST_CASE("a missing tokenizer is a usage error naming the path", "[tokenizer][load][errors]") {
  const std::string missing = "/nonexistent/dsk-test/tokenizer.model";
  const auto e = load_error(missing);
  CHECK(e.kind() == dsk::Error::Kind::Usage);
  CHECK(e.exit_code() == dsk::kExitUsage);
  CHECK_THAT(e.message(), Contains(missing));
  CHECK_FALSE(e.hint().empty());

  const auto empty_dir = dsk::test::scratch_dir("tok_load_empty_dir");
  const auto d = load_error(empty_dir.string());
  CHECK(d.kind() == dsk::Error::Kind::Usage);
  CHECK_THAT(d.message(), Contains(empty_dir.string()));

  const auto odd = empty_dir / "tokenizer.bin";
  dsk::test::write_text(odd, "x");
  const auto o = load_error(odd.string());
  CHECK(o.kind() == dsk::Error::Kind::Usage);
  CHECK_THAT(o.message(), Contains(odd.string()));
}

TEST_CASE("a truncated tokenizer.json is a runtime error naming the file", "[tokenizer][load][errors]") {
  const auto dir = dsk::test::scratch_dir("tok_load_truncated");
  const std::string full = dsk::test::tiny_tokenizer_json().dump();
  const auto path = dir / "tokenizer.json";
  dsk::test::write_text(path, full.substr(0, full.size() / 2));
  const auto e = load_error(path.string());
  CHECK(e.kind() == dsk::Error::Kind::Runtime);
  CHECK(e.exit_code() == dsk::kExitRuntime);
  CHECK_THAT(e.message(), Contains(path.string()) && Contains("not valid JSON"));

  dsk::test::write_text(path, R"({"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": [1, 2]}})");
  const auto s = load_error(path.string());
  CHECK(s.kind() == dsk::Error::Kind::Runtime);
  CHECK_THAT(s.message(), Contains(path.string()) && Contains("model.vocab"));

  dsk::test::write_text(path, R"({"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {}}})");
  CHECK_THAT(load_error(path.string()).message(), Contains(path.string()) && Contains("merges"));
}

TEST_CASE("merges referencing unknown tokens are a runtime error naming file and token", "[tokenizer][load][errors]") {
  const auto dir = dsk::test::scratch_dir("tok_load_bad_merges");
  auto j = dsk::test::tiny_tokenizer_json();
  j["model"]["merges"].push_back(nlohmann::json::array({"zz", "q"}));
  const auto path = dir / "tokenizer.json";
  dsk::test::write_text(path, j.dump());
  const auto e = load_error(path.string());
  CHECK(e.kind() == dsk::Error::Kind::Runtime);
  CHECK_THAT(e.message(), Contains(path.string()) && Contains("'zz'"));

  // merges.txt: a line that is not two tokens, and a merge of unknown tokens
  dsk::test::write_text(dir / "vocab.json", R"({"a": 0, "b": 1, "ab": 2})");
  dsk::test::write_text(dir / "merges.txt", "#version: 0.2\na b\na b c\n");
  const auto m = load_error((dir / "vocab.json").string());
  CHECK_THAT(m.message(), Contains((dir / "merges.txt").string()) && Contains("line 3"));
  dsk::test::write_text(dir / "merges.txt", "a b\nab x\n");
  const auto u = load_error((dir / "vocab.json").string());
  CHECK_THAT(u.message(), Contains((dir / "vocab.json").string()) && Contains("'x'"));
}

TEST_CASE("a corrupt .model is a runtime error naming the file", "[tokenizer][load][errors]") {
  const auto dir = dsk::test::scratch_dir("tok_load_corrupt_model");
  const std::string good = dsk::test::read_text(dsk::test::data_path("tok512.model"));
  for (const auto& [name, bytes] : {std::pair<std::string, std::string>{"garbage.model", "this is not a protobuf \xff\xfe"},
                                    {"truncated.model", good.substr(0, good.size() / 2)},
                                    {"empty.model", ""}}) {
    const auto path = dir / name;
    dsk::test::write_text(path, bytes);
    const auto e = load_error(path.string());
    INFO(e.message());
    CHECK(e.kind() == dsk::Error::Kind::Runtime);
    CHECK_THAT(e.message(), Contains(path.string()));
  }
}

TEST_CASE("tokenizer.json kinds we do not implement are refused by name", "[tokenizer][load][errors]") {
  const auto dir = dsk::test::scratch_dir("tok_load_unsupported");
  const auto path = dir / "tokenizer.json";
  auto j = dsk::test::tiny_tokenizer_json();
  j["model"]["type"] = "WordPiece";
  dsk::test::write_text(path, j.dump());
  CHECK_THAT(load_error(path.string()).message(), Contains(path.string()) && Contains("WordPiece"));

  j = dsk::test::tiny_tokenizer_json();
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}};
  dsk::test::write_text(path, j.dump());
  CHECK_THAT(load_error(path.string()).message(), Contains(path.string()) && Contains("Metaspace"));

  j = dsk::test::tiny_tokenizer_json();
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "Lowercase"}}}}};
  dsk::test::write_text(path, j.dump());
  CHECK_THAT(load_error(path.string()).message(), Contains("normalizer type 'Lowercase'"));
  j["normalizer"] = {{"type", "NFC"}};  // Qwen2's: accepted (input assumed NFC)
  dsk::test::write_text(path, j.dump());
  CHECK(load_tokenizer(path.string())->vocab_size() == dsk::test::tiny::kEnd + 1);

  j = dsk::test::tiny_tokenizer_json();
  j["decoder"] = {{"type", "Sequence"}, {"decoders", {{{"type", "ByteFallback"}}}}};
  dsk::test::write_text(path, j.dump());
  CHECK_THAT(load_error(path.string()).message(), Contains("decoder type 'ByteFallback'"));

  j = dsk::test::tiny_tokenizer_json();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  dsk::test::write_text(path, j.dump());
  CHECK_THAT(load_error(path.string()).message(), Contains(path.string()) && Contains("(unclosed"));
}
