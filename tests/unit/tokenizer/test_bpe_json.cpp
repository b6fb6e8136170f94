// tokenizer.json features on a small hand-written file (Llama-3 shape), and the pre-tokenizer
// regexes and Split behaviours on their own.
#include "core/error.h"
#include "test_util.h"
#include "tok_test_util.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"

using dsk::tok::split_isolated;
using Strings = std::vector<std::string>;
using Ids = std::vector<int32_t>;
namespace tiny = dsk::test::tiny;

namespace {

std::unique_ptr<dsk::tok::Tokenizer> load_tiny(const std::string& name, const nlohmann::json& j) {
  const auto dir = dsk::test::scratch_dir(name);
  dsk::test::write_text(dir / "tokenizer.json", j.dump(2));
  return dsk::tok::load_tokenizer((dir / "tokenizer.json").string());
}

int32_t byte(char c) { return static_cast<unsigned char>(c); }  // tiny: byte b is id b

}  // namespace

TEST_CASE("tokenizer.json: special tokens are split out and never merged", "[tokenizer][bpe][json]") {
  auto tok = load_tiny("tok_tiny_special", dsk::test::tiny_tokenizer_json());
  CHECK(tok->vocab_size() == tiny::kEnd + 1);
  CHECK(tok->encode("<|") == Ids{tiny::kLtBar});  // the merge that would eat a special token's start
  CHECK(tok->encode("<|eot_id|>") == Ids{tiny::kEot});
  CHECK(tok->encode("hi<|eot_id|>there") ==
        Ids{byte('h'), byte('i'), tiny::kEot, byte('t'), byte('h'), byte('e'), byte('r'), byte('e')});
  CHECK(tok->encode("<|eot_id|><|eot_id|>") == Ids{tiny::kEot, tiny::kEot});
  CHECK(tok->encode("<|eot_id") == Ids{tiny::kLtBar, byte('e'), byte('o'), byte('t'), byte('_'), byte('i'), byte('d')});
  // longest first: "<tag></tag>" wins over "<tag>" at the same place
  CHECK(tok->encode("<tag></tag>") == Ids{tiny::kTagPair});
  CHECK(tok->encode("<tag>x</tag>") ==
        Ids{tiny::kTag, byte('x'), byte('<'), byte('/'), byte('t'), byte('a'), byte('g'), byte('>')});
  CHECK(tok->token_to_id("<|eot_id|>") == tiny::kEot);
  CHECK(tok->is_special(tiny::kEot));
  CHECK_FALSE(tok->is_special(tiny::kTag));
  CHECK(tok->id_to_token(tiny::kBegin - 1).empty());  // an unassigned id in the gap

  const std::string text = "a<|begin_of_text|>b ünï 😀\n<tag>12345<|eot_id|>";
  CHECK(tok->decode(tok->encode(text)) == text);
}

TEST_CASE("tokenizer.json: BOS from the post_processor, EOS by name", "[tokenizer][bpe][json]") {
  auto tok = load_tiny("tok_tiny_bos", dsk::test::tiny_tokenizer_json());
  CHECK(tok->bos_id() == tiny::kBegin);
  CHECK(tok->eos_id() == tiny::kEnd);
  CHECK(tok->encode("x", true, true) == Ids{tiny::kBegin, byte('x'), tiny::kEnd});
  CHECK(tok->encode("x", false, false) == Ids{byte('x')});

  // tokenizer_config.json beside it wins: eos_token as an object, bos_token null
  const auto dir = dsk::test::scratch_dir("tok_tiny_config");
  dsk::test::write_text(dir / "tokenizer.json", dsk::test::tiny_tokenizer_json().dump());
  dsk::test::write_text(dir / "tokenizer_config.json",
                        R"({"bos_token": null, "eos_token": {"content": "<|eot_id|>", "special": true}})");
  auto chat = dsk::tok::load_tokenizer(dir.string());
  CHECK(chat->bos_id() == -1);
  CHECK(chat->eos_id() == tiny::kEot);
}

TEST_CASE("tokenizer.json: the Llama-3 Split groups digits by three", "[tokenizer][bpe][json]") {
  auto tok = load_tiny("tok_tiny_digits", dsk::test::tiny_tokenizer_json());
  // "123" "45": merge "3 4" (rank 0) cannot cross the group boundary
  CHECK(tok->encode("12345") == Ids{tiny::k12, byte('3'), tiny::k45});
  CHECK(tok->encode("1234567") == Ids{tiny::k12, byte('3'), tiny::k45, byte('6'), byte('7')});
  CHECK(tok->encode(" world") == Ids{tiny::kSpaceW, byte('o'), byte('r'), byte('l'), byte('d')});

  // The same vocab under the GPT-2 regex (one digit run): "34" merges first.
  auto j = dsk::test::tiny_tokenizer_json();
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  auto gpt2_style = load_tiny("tok_tiny_gpt2_regex", j);
  CHECK(gpt2_style->encode("12345") == Ids{tiny::k12, tiny::k34, byte('5')});
  // add_prefix_space puts a space before each segment
  j["pre_tokenizer"]["add_prefix_space"] = true;
  auto prefixed = load_tiny("tok_tiny_prefix", j);
  CHECK(prefixed->encode("world") == Ids{tiny::kSpaceW, byte('o'), byte('r'), byte('l'), byte('d')});
}

TEST_CASE("tokenizer.json: ignore_merges takes whole words from the vocab", "[tokenizer][bpe][json]") {
  auto j = dsk::test::tiny_tokenizer_json();
  j["model"]["ignore_merges"] = true;
  auto tok = load_tiny("tok_tiny_ignore_merges", j);
  const int32_t world = tok->token_to_id("Ġworld");
  REQUIRE(world >= 0);
  CHECK(tok->encode(" world") == Ids{world});
  CHECK(tok->encode(" worlds") == Ids{tiny::kSpaceW, byte('o'), byte('r'), byte('l'), byte('d'), byte('s')});
}

TEST_CASE("tokenizer.json: merges as \"a b\" strings equal merges as arrays", "[tokenizer][bpe][json]") {
  auto j = dsk::test::tiny_tokenizer_json();
  auto& merges = j["model"]["merges"];
  for (auto& m : merges) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  auto tok = load_tiny("tok_tiny_string_merges", j);
  CHECK(tok->encode("12345 world<|") == Ids{tiny::k12, byte('3'), tiny::k45, tiny::kSpaceW, byte('o'), byte('r'),
                                            byte('l'), byte('d'), tiny::kLtBar});
}

TEST_CASE("pre-tokenizer patterns of GPT-2, Llama-3 and Qwen2", "[tokenizer][pretokenize]") {
  CHECK(split_isolated(dsk::tok::kGpt2Pattern, "Hello world's 1234567!!  ok\n") ==
        Strings{"Hello", " world", "'s", " 1234567", "!!", " ", " ok", "\n"});
  CHECK(split_isolated(dsk::tok::kLlama3Pattern, "1234567") == Strings{"123", "456", "7"});
  CHECK(split_isolated(dsk::tok::kLlama3Pattern, "I'M here,\n\n  now") ==
        Strings{"I", "'M", " here", ",\n\n", " ", " now"});
  CHECK(split_isolated(dsk::tok::kLlama3Pattern, "x  \n\ty") == Strings{"x", "  \n", "\ty"});
  CHECK(split_isolated(dsk::tok::kQwen2Pattern, "a123") == Strings{"a", "1", "2", "3"});
  CHECK(split_isolated(dsk::tok::kGpt2Pattern, "ünï Ωμέγα 漢字") == Strings{"ünï", " Ωμέγα", " 漢字"});
  CHECK(split_isolated(dsk::tok::kGpt2Pattern, "").empty());
}

TEST_CASE("Split behaviours follow Hugging Face's examples", "[tokenizer][pretokenize]") {
  using dsk::tok::SplitBehavior;
  const auto split = [](SplitBehavior b, bool invert = false) {
    dsk::tok::PreTokenizer pre;
    pre.add_split(std::make_shared<dsk::tok::Regex>("-", /*literal=*/true), b, invert);
    Strings out;
    pre.split("the-final--countdown", out);
    return out;
  };
  CHECK(split(SplitBehavior::Isolated) == Strings{"the", "-", "final", "-", "-", "countdown"});
  CHECK(split(SplitBehavior::Removed) == Strings{"the", "final", "countdown"});
  CHECK(split(SplitBehavior::MergedWithPrevious) == Strings{"the-", "final-", "-", "countdown"});
  CHECK(split(SplitBehavior::MergedWithNext) == Strings{"the", "-final", "-", "-countdown"});
  CHECK(split(SplitBehavior::Contiguous) == Strings{"the", "-", "final", "--", "countdown"});
  CHECK(split(SplitBehavior::Removed, /*invert=*/true) == Strings{"-", "-", "-"});
  CHECK_THROWS_AS(dsk::tok::Regex("(unclosed"), dsk::Error);
}
