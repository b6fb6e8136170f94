// dsk export end to end: stories260K as GGUF loaded by llama.cpp itself (node-llama-cpp, the
// prebuilt CPU binary that scripts/setup installs under .cache/node-llama-cpp), which must tokenize
// the PROVENANCE sentence to dsk's ids and greedy-generate dsk's text; Q8_0/Q4_0 files (with the
// F16 fallback for rows of 172) load and generate; a dsk quantize checkpoint maps into Q8_0; bad
// input is refused with exit 2. A missing node-llama-cpp fails these tests, it never skips them.
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include <ATen/ATen.h>

#include "models/loader.h"

#include "export_test_util.h"
#include "stage_util.h"
#include "test_util.h"
#include "unit/models/models_test_util.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using dsk::test::run_cmd;
using nlohmann::json;

namespace {

const char* kSentence = "Once upon a time, there was a little girl named Lily.";
const std::vector<int> kSentenceIds = {403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426};
constexpr int kNewTokens = 100;

std::string node_llama_cpp_dir() {
  return dsk::test::node_package_dir("DSK_NODE_LLAMA_CPP_DIR", "node-llama-cpp",
                                     "node_modules/node-llama-cpp/dist/index.js", "node-llama-cpp@3.21.1");
}

std::string quote(const std::string& s) { return "'" + s + "'"; }

dsk::test::CmdResult export_gguf(const fs::path& out, const std::string& overrides) {
  return run_cmd(dsk::test::in_repo(dsk::test::dsk_bin() + " export configs/stories260k/export-gguf.yaml output=" +
                                    out.string() + " threads=2 " + overrides));
}

json llama_cpp(const fs::path& gguf, int max_new = kNewTokens, const std::string& cases = "") {
  auto r = run_cmd("node " + dsk::test::src("tests/stages/llama_cpp_check.mjs") + " " + quote(node_llama_cpp_dir()) +
                   " " + quote(gguf.string()) + " " + quote(kSentence) + " " + std::to_string(max_new) +
                   (cases.empty() ? "" : " " + quote(cases)));
  INFO("node stderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  return json::parse(r.out);
}

// dsk generate's greedy story from BOS (the same model and tokenizer as the export config).
std::string dsk_story(const std::string& overrides = "") {
  auto r = run_cmd(dsk::test::in_repo(dsk::test::dsk_bin() + " generate configs/stories260k/generate.yaml threads=2 "
                                      "generate.max_new_tokens=" + std::to_string(kNewTokens) + " " + overrides));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  return r.out;
}

// Leading spaces (SentencePiece's dummy prefix) and the final newline do not count.
std::string trimmed(std::string s) {
  while (!s.empty() && (s.front() == ' ')) s.erase(0, 1);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

size_t common_prefix(const std::string& a, const std::string& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

}  // namespace

TEST_CASE("export: stories260K as GGUF F32 and BF16 tokenizes and greedy-generates in llama.cpp as dsk does",
          "[stages][export]") {
  node_llama_cpp_dir();  // fail first, clearly, when llama.cpp is missing
  fs::path dir = dsk::test::scratch_dir("export-llama-cpp");
  const std::string story = trimmed(dsk_story());
  REQUIRE(story.rfind("Once upon a time", 0) == 0);
  for (const std::string dtype : {"f32", "bf16"}) {
    INFO("export.dtype " << dtype);
    fs::path out = dir / ("stories260k-" + dtype + ".gguf");
    auto r = export_gguf(out, "export.dtype=" + dtype);
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    json summary = json::parse(r.out);
    CHECK(summary["output"] == out.string());
    CHECK(summary["tensors"] == 47);
    json got = llama_cpp(out);
    CHECK(got["bos"] == 1);
    CHECK(got["eos"] == 2);
    CHECK(got["ids"].get<std::vector<int>>() == kSentenceIds);
    const std::string text = trimmed(got["generated_text"].get<std::string>());
    WARN(dtype << ": llama.cpp generated " << got["generated"].size() << " tokens; first " << common_prefix(text, story)
               << " of " << story.size() << " characters equal dsk's");
    CHECK(text == story);
  }
}

TEST_CASE("export: Q8_0 and Q4_0 files (down_proj kept F16) load and generate in llama.cpp", "[stages][export]") {
  node_llama_cpp_dir();
  fs::path dir = dsk::test::scratch_dir("export-quant-llama-cpp");
  const std::string story = trimmed(dsk_story());
  for (const std::string dtype : {"q8_0", "q4_0"}) {
    INFO("export.dtype " << dtype);
    fs::path out = dir / ("stories260k-" + dtype + ".gguf");
    auto r = export_gguf(out, "export.dtype=" + dtype);
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    CHECK_THAT(r.err, Contains("blk.0.ffn_down.weight") && Contains("F16"));  // the fallback is logged
    json summary = json::parse(r.out);
    CHECK(summary["tensor_types"]["F16"] == 5);
    CHECK(summary["tensor_types"]["F32"] == 11);
    json got = llama_cpp(out);
    CHECK(got["ids"].get<std::vector<int>>() == kSentenceIds);
    const std::string text = trimmed(got["generated_text"].get<std::string>());
    WARN(dtype << ": \"" << text.substr(0, 80) << "...\" (" << got["generated"].size() << " tokens; first "
               << common_prefix(text, story) << " characters equal dsk's fp32 story)");
    CHECK(got["generated"].size() >= 20);
    CHECK(text.rfind("Once upon a time", 0) == 0);
  }
}

TEST_CASE("export: a dsk quantize int8 g32 checkpoint maps into Q8_0 blocks and runs in llama.cpp, dequantized F32 equals dsk",
          "[stages][export]") {
  node_llama_cpp_dir();
  fs::path dir = dsk::test::scratch_dir("export-from-quantized");
  dsk::test::quantize_stories(dir / "q8");
  fs::path out = dir / "q8.gguf";
  auto r = export_gguf(out, "model.path=" + (dir / "q8" / "model").string() + " export.dtype=q8_0");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.err, Contains("codes (exact)"));
  json got = llama_cpp(out);
  CHECK(got["ids"].get<std::vector<int>>() == kSentenceIds);
  const std::string text = trimmed(got["generated_text"].get<std::string>());
  const std::string story = trimmed(dsk_story("model.path=" + (dir / "q8" / "model").string()));
  WARN("int8 g32 checkpoint as Q8_0: first " << common_prefix(text, story) << " of " << story.size()
                                             << " characters equal dsk generate on the same checkpoint");
  CHECK(text.rfind("Once upon a time", 0) == 0);
  // The same Half-layout checkpoint dequantized to F32: q/k rows permuted back to llama.cpp's
  // interleaved layout, so llama.cpp's greedy text equals dsk's on that checkpoint exactly.
  fs::path out32 = dir / "q8-dequantized-f32.gguf";
  auto r32 = export_gguf(out32, "model.path=" + (dir / "q8" / "model").string() + " export.dtype=f32");
  INFO(r32.err);
  REQUIRE(r32.exit_code == 0);
  CHECK_THAT(r32.err, Contains("dequantized from int8 g32 sym"));
  CHECK(trimmed(llama_cpp(out32)["generated_text"].get<std::string>()) == story);
  // an asymmetric checkpoint has zero points Q8_0 cannot hold: refused with the reason, exit 2
  dsk::test::quantize_stories(dir / "q4a", "quant.bits=4 quant.symmetric=false");
  auto ra = export_gguf(dir / "q4a.gguf", "model.path=" + (dir / "q4a" / "model").string() + " export.dtype=q4_0");
  CHECK(ra.exit_code == 2);
  CHECK_THAT(ra.err, Contains("asymmetric") && Contains("export.dtype f16"));
  CHECK(!fs::exists(dir / "q4a.gguf"));
  // the same checkpoint dequantized to F16 is fine
  auto rf = export_gguf(dir / "q4a-f16.gguf", "model.path=" + (dir / "q4a" / "model").string() + " export.dtype=f16");
  INFO(rf.err);
  CHECK(rf.exit_code == 0);
}

TEST_CASE("export: bad input (unsupported dtype or format, existing output) exits 2 with a clear message",
          "[stages][export]") {
  fs::path dir = dsk::test::scratch_dir("export-bad-input");
  auto bad_dtype = export_gguf(dir / "a.gguf", "export.dtype=q5_k");
  CHECK(bad_dtype.exit_code == 2);
  CHECK_THAT(bad_dtype.err, Contains("export.dtype") && Contains("q8_0"));
  CHECK(!fs::exists(dir / "a.gguf"));
  auto bad_format = export_gguf(dir / "a.gguf", "export.format=tflite");
  CHECK(bad_format.exit_code == 2);
  CHECK_THAT(bad_format.err, Contains("export.format"));

  fs::path existing = dir / "exists.gguf";
  dsk::test::check_existing_output(existing, export_gguf);
  CHECK(dsk::test::slurp(existing).substr(0, 4) == "GGUF");
}

TEST_CASE("export: a GPT-2 byte-level BPE vocabulary tokenizes in llama.cpp as llama.cpp's own conformance ids",
          "[stages][export]") {
  node_llama_cpp_dir();
  fs::path dir = dsk::test::scratch_dir("export-bpe");
  // a small random Llama over GPT-2's 50,257 tokens, with vocab.json + merges.txt beside it
  {
    auto c = dsk::test::llama_shape(32, 64, 1, 4, 2, 50257, 128);
    c.tie_word_embeddings = true;
    dsk::models::Llama m(c);
    dsk::models::save_model_hf((dir / "gpt2-llama").string(), m, {});
    fs::copy_file(dsk::test::data_path("gpt2_vocab.json"), dir / "gpt2-llama" / "vocab.json");
    fs::copy_file(dsk::test::data_path("gpt2_merges.txt"), dir / "gpt2-llama" / "merges.txt");
  }
  fs::path out = dir / "gpt2.gguf";
  auto r = export_gguf(out, "model.path=" + (dir / "gpt2-llama").string() + " ~tokenizer.path export.dtype=f16");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  json got = llama_cpp(out, 0, dsk::test::data_path("ggml-vocab-gpt-2.gguf.inp"));
  std::istringstream lines(dsk::test::slurp(dsk::test::data_path("ggml-vocab-gpt-2.gguf.out")));
  const auto& many = got["ids_many"];
  size_t i = 0, equal = 0;
  for (std::string line; std::getline(lines, line); ++i) {
    REQUIRE(i < many.size());
    std::vector<int> expect;
    std::istringstream ids(line);
    for (int id; ids >> id;) expect.push_back(id);
    INFO("entry " << i);
    CHECK(many[i].get<std::vector<int>>() == expect);
    equal += many[i].get<std::vector<int>>() == expect;
  }
  CHECK(i == many.size());
  WARN("GPT-2 BPE in llama.cpp: " << equal << " of " << i << " conformance entries give the expected ids");
}
