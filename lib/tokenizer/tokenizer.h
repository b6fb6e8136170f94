// Tokenizer — text <-> token ids. Two implementations behind one interface:
//   SentencePiece .model files (libsentencepiece)       -> tokenizer/sentencepiece.cpp
//   Hugging Face tokenizer.json byte-level BPE (GPT-2,  -> tokenizer/bpe.cpp
//   Llama-3, Qwen2), and GPT-2 vocab.json + merges.txt
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dsk::tok {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Encodes text; optionally prepends BOS / appends EOS when the tokenizer has them.
  virtual std::vector<int32_t> encode(const std::string& text, bool add_bos = false,
                                      bool add_eos = false) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  // The text one token contributes when decoded after `prev` (for streaming output).
  virtual std::string decode_piece(int32_t prev, int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when absent
  virtual int32_t eos_id() const = 0;  // -1 when absent
  // Id of a special / added token by its text ("<|im_start|>"), -1 when absent.
  virtual int32_t token_to_id(const std::string& token) const = 0;
};

// Loads by file type: "*.model" -> SentencePiece, "tokenizer.json" -> BPE,
// a directory -> its tokenizer.json or tokenizer.model. Usage error when missing/unknown,
// runtime error when the file is corrupt.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

}  // namespace dsk::tok
