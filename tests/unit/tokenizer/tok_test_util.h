// Helpers shared by the tokenizer tests: writing files, and a small hand-written tokenizer.json.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>

#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode.h"

namespace dsk::test {

inline void write_text(const std::filesystem::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
  REQUIRE(out.good());
}

inline std::string read_text(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE(in.good());
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Ids of the tiny tokenizer below: byte b is id b; merges give 256.. in order; added 300..
namespace tiny {
inline constexpr int32_t k34 = 256, k12 = 257, k45 = 258, kLtBar = 259, kSpaceW = 260;
inline constexpr int32_t kBegin = 300, kEot = 301, kTag = 302, kTagPair = 303, kEnd = 304;
}  // namespace tiny

// A Llama-3-shaped tokenizer.json: Split(Llama-3 regex) + ByteLevel(use_regex false), merges in
// array form, BOS from a TemplateProcessing post_processor, special and plain added tokens.
inline nlohmann::json tiny_tokenizer_json() {
  using nlohmann::json;
  json vocab = json::object();
  const auto& b2u = dsk::tok::unicode::byte_to_unicode();
  for (int b = 0; b < 256; ++b) vocab[b2u[b]] = b;
  json merges = json::array();
  int next = 256;
  for (auto [a, b] : {std::pair{"3", "4"}, {"1", "2"}, {"4", "5"}, {"<", "|"}, {"Ġ", "w"}}) {
    merges.push_back(json::array({a, b}));
    vocab[std::string(a) + b] = next++;
  }
  vocab["Ġworld"] = next++;  // reachable only through ignore_merges: no merge builds it
  const auto added = [](int id, const char* content, bool special) {
    return json{{"id", id},          {"content", content}, {"single_word", false}, {"lstrip", false},
                {"rstrip", false},   {"normalized", false}, {"special", special}};
  };
  json j;
  j["version"] = "1.0";
  j["added_tokens"] = json::array({added(tiny::kBegin, "<|begin_of_text|>", true),
                                   added(tiny::kEot, "<|eot_id|>", true), added(tiny::kTag, "<tag>", false),
                                   added(tiny::kTagPair, "<tag></tag>", false),
                                   added(tiny::kEnd, "<|end_of_text|>", true)});
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       json::array({json{{"type", "Split"},
                         {"pattern", {{"Regex", dsk::tok::kLlama3Pattern}}},
                         {"behavior", "Isolated"},
                         {"invert", false}},
                    json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}})}};
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", json::array({json{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                              json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
      {"special_tokens",
       {{"<|begin_of_text|>", {{"id", "<|begin_of_text|>"}, {"ids", {tiny::kBegin}}, {"tokens", {"<|begin_of_text|>"}}}}}}};
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  j["model"] = {{"type", "BPE"},     {"dropout", nullptr},   {"unk_token", nullptr}, {"fuse_unk", false},
                {"byte_fallback", false}, {"ignore_merges", false}, {"vocab", vocab}, {"merges", merges}};
  return j;
}

}  // namespace dsk::test
