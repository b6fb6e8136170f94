// Data sources: a file named by the config -> tokenized documents with a per-token loss mask.
//
//   text    UTF-8 file cut into documents by a separator ("\n\n", "\n", "<|endoftext|>", "")
//   jsonl   one JSON object per line: a text field, prompt/response fields, or messages
//           [{role, content}], rendered by a chat template; loss only on response tokens
//   tokens  pre-tokenized little-endian ids: .u16/.bin16 = uint16, .bin/.i32 = int32
//
// Invariants: every Document has ids.size() == mask.size(); mask[i] = 1 when ids[i] counts as
// a loss target; BOS is never a target. docs/data.md documents every rule exactly.
// No LibTorch here: the trainer turns windows into tensors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dsk::tok {
class Tokenizer;
}

namespace dsk::data {

// One data source (`data.train` or `data.eval` in a config).
struct DataSpec {
  std::string path;
  std::string format = "text";            // text | jsonl | tokens
  std::string separator = "\n\n";         // text: document separator; "" = whole file
  std::string text_field = "text";        // jsonl: plain-text field
  std::string prompt_field = "prompt";    // jsonl: prompt field (no loss)
  std::string response_field = "response";  // jsonl: response field (loss)
  std::string messages_field = "messages";  // jsonl: [{role, content}] field
  std::string chat_template = "none";     // none | chatml | llama2 | alpaca
  bool add_bos = true;                    // text/jsonl: BOS before each document
  bool add_eos = true;                    // text/jsonl: EOS after each document
};

// A tokenized document. mask[i] = 1: ids[i] is a loss target (when it is predicted).
struct Document {
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
  size_t size() const { return ids.size(); }
};

// Loads, renders and tokenizes every document of `spec`. Usage errors (exit 2): unknown
// format/template, missing file, malformed JSONL line ("path:line: ..."), an id >= vocab,
// and an empty dataset. Runtime error: a tokens file whose size is not a multiple of its width.
std::vector<Document> load_documents(const DataSpec& spec, const tok::Tokenizer& tok);

// Checks format and chat_template names (usage error naming the bad value).
void validate_spec(const DataSpec& spec);

// ---------------------------------------------------------------------------
// Building blocks, exposed for tests and tools.

// Text format: splits on `separator` ("" = one document), strips line breaks (\r, \n) at both
// ends of each document and drops documents that are then whitespace-only. CRLF -> LF first
// (in both text and separator).
std::vector<std::string> split_text(const std::string& text, const std::string& separator);

// A piece of a rendered chat document. Text is encoded by Tokenizer::encode; Special is a
// marker such as "<|im_start|>" looked up by Tokenizer::token_to_id (encoded as text when the
// tokenizer has no such token); Bos/Eos are the tokenizer's ids (skipped when it has none).
struct Segment {
  enum class Kind { Text, Special, Bos, Eos };
  Kind kind = Kind::Text;
  std::string text;
  bool loss = false;
};
struct Message {
  std::string role;  // system | user | assistant (chatml accepts any role)
  std::string content;
};
// Renders messages by `chat_template` (none|chatml|llama2|alpaca); loss on assistant turns.
// Usage error for a role the template cannot express.
std::vector<Segment> render_chat(const std::vector<Message>& messages, const std::string& chat_template);
// The rendered text ("<s>"/"</s>" stand for Bos/Eos); for tests and docs.
std::string segments_text(const std::vector<Segment>& segments);
// Tokenizes segments into a document, adding BOS/EOS by the flags. The final EOS is a loss
// target when the last non-empty segment is.
Document tokenize_segments(const std::vector<Segment>& segments, const tok::Tokenizer& tok, bool add_bos,
                           bool add_eos);

// Tokens format: element width from the file extension (2 for .u16/.bin16, 4 for .bin/.i32);
// usage error for any other extension.
int token_width(const std::string& path);
// Reads every id, checking each against vocab_size (usage error naming the position).
std::vector<int32_t> read_tokens_file(const std::string& path, int32_t vocab_size);
// Writes ids atomically with the width given by the extension (usage error when an id does
// not fit it).
void write_tokens_file(const std::string& path, const std::vector<int32_t>& ids);

}  // namespace dsk::data
