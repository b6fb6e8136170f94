// Byte-level BPE (GPT-2, Llama-3, Qwen2): the parsed description of a tokenizer (BpeSpec, built by
// hf_json.cpp from tokenizer.json or vocab.json + merges.txt) and the tokenizer made from it.
// Internal to lib/tokenizer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/error.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"

namespace dsk::tok {

// tokenizer.json "added_tokens": split out of the text before pre-tokenization, never merged.
struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;      // BOS/EOS/chat markers (is_special); others are plain added words
  bool lstrip = false;       // also swallows the whitespace on its left
  bool rstrip = false;       // also swallows the whitespace on its right
  bool single_word = false;  // only matches when not inside a word
};

struct BpeSpec {
  std::string source;  // file name(s), for error messages
  std::unordered_map<std::string, int32_t> vocab;                 // byte-level token -> id
  std::vector<std::pair<std::string, std::string>> merges;        // in rank order
  std::vector<AddedToken> added;
  PreTokenizer pre_tokenizer;
  bool ignore_merges = false;  // a word that is itself in the vocab is one token
  std::string unk_token;       // "" when none: bytes missing from the vocab are dropped
  std::string bos_token, eos_token;  // "" when none
};

// Runtime error naming spec.source when merges or special tokens reference unknown tokens.
std::unique_ptr<Tokenizer> make_bpe_tokenizer(BpeSpec spec);

// Parsers (hf_json.cpp). Runtime errors name the file and what is wrong.
BpeSpec parse_hf_tokenizer_json(const std::string& json_path);
BpeSpec parse_gpt2_vocab_merges(const std::string& vocab_json_path, const std::string& merges_txt_path);

// Thrown by parse_hf_tokenizer_json for a well-formed tokenizer.json of a kind we do not
// implement (Unigram, WordPiece, Metaspace BPE): load_tokenizer then tries tokenizer.model.
class UnsupportedTokenizer : public Error {
 public:
  explicit UnsupportedTokenizer(std::string message) : Error(Kind::Runtime, std::move(message)) {}
};

}  // namespace dsk::tok
