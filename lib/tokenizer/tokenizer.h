// Tokenizer — text <-> token ids. Two implementations behind one interface:
//   SentencePiece .model files (our own reader)         -> tokenizer/sentencepiece.cpp
//   Hugging Face tokenizer.json byte-level BPE (GPT-2,  -> tokenizer/bpe.cpp, tokenizer/hf_json.cpp
//   Llama-3, Qwen2), and GPT-2 vocab.json + merges.txt
// File detection, BOS/EOS rules and special tokens: docs/tokenizers.md.
//
// Invariants: a loaded tokenizer is immutable and its methods are safe to call from several
// threads at once. decode() of any id sequence equals the concatenation of decode_piece() over it
// (first token with prev = -1) whenever the result is valid UTF-8.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dsk::tok {

// The whole vocabulary as a format converter needs it (GGUF's tokenizer.ggml.* keys, docs/export.md).
struct VocabularyExport {
  enum class Kind { SentencePiece, ByteLevelBpe };
  Kind kind = Kind::SentencePiece;
  std::vector<std::string> tokens;  // id -> piece text as stored ("▁Once", "<0x0A>", "ĠHello"); "" unassigned
  std::vector<float> scores;        // id -> score (SentencePiece; BPE: 0)
  // id -> SentencePiece piece type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
  // (BPE: special added tokens 3, other added tokens 4, unassigned ids 5, the rest 1).
  std::vector<int32_t> types;
  std::vector<std::string> merges;  // BPE: "left right" in rank order; SentencePiece: empty
  int32_t unk_id = -1;
  bool add_dummy_prefix = false;    // SentencePiece: a space is prepended to the text
  std::vector<std::string> split_patterns;  // BPE: the pre-tokenizer's regexes, in order
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Encodes text; optionally prepends BOS / appends EOS when the tokenizer has them.
  // Special / added tokens written in the text ("<|endoftext|>") become their ids (BPE).
  virtual std::vector<int32_t> encode(const std::string& text, bool add_bos = false,
                                      bool add_eos = false) const = 0;
  // Runtime error for an id outside [0, vocab_size()).
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  // The text one token contributes when decoded after `prev` (for streaming output);
  // prev = -1 for the first token. SentencePiece drops the leading space of the first
  // word after BOS / at the start; byte pieces (<0x0A>) give their byte.
  virtual std::string decode_piece(int32_t prev, int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when absent
  virtual int32_t eos_id() const = 0;  // -1 when absent
  // Id of a special / added token by its text ("<|im_start|>"), -1 when absent.
  virtual int32_t token_to_id(const std::string& token) const = 0;
  // The vocabulary entry of an id as stored in the file ("▁Once", "ĠHello"); "" when unassigned.
  virtual std::string id_to_token(int32_t id) const = 0;
  // True for control / special tokens (BOS, EOS, "<|eot_id|>"): stop or skip them when generating.
  virtual bool is_special(int32_t id) const = 0;
  // Every piece with its score and type, and the BPE merges (for exporters). The default is a
  // runtime error: a tokenizer kind without it cannot be exported.
  virtual VocabularyExport export_vocabulary() const;
};

// Loads by file type: "*.model" -> SentencePiece, "*.json" -> BPE (tokenizer.json, or a GPT-2
// vocab.json with merges.txt beside it), a directory -> its tokenizer.json, else tokenizer.model,
// else vocab.json + merges.txt. Usage error (exit 2) when missing/unknown, runtime error (exit 1)
// naming the file when it is corrupt.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// The loaders behind load_tokenizer, for callers that know the format.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path);
// Hugging Face tokenizer.json (model.type "BPE", byte-level). Reads tokenizer_config.json beside
// it, when present, for bos_token / eos_token.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& json_path);
// GPT-2 style vocab.json + merges.txt (optional "#version" first line); GPT-2 pre-tokenizer.
std::unique_ptr<Tokenizer> load_gpt2_tokenizer(const std::string& vocab_json_path,
                                               const std::string& merges_txt_path);

}  // namespace dsk::tok
