// Data sources: text, JSONL and token files -> tokenized documents with loss masks.
#include "data/source.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "core/error.h"
#include "core/fs.h"
#include "tokenizer/tokenizer.h"

namespace dsk::data {
namespace {

using nlohmann::json;

const std::vector<std::string> kFormats = {"text", "jsonl", "tokens"};
const std::vector<std::string> kTemplates = {"none", "chatml", "llama2", "alpaca"};

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string s;
  for (size_t i = 0; i < items.size(); ++i) s += (i ? sep : "") + items[i];
  return s;
}

// "\n\n" -> "\\n\\n" for messages.
std::string escaped(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else out += c;
  }
  return out;
}

bool is_line_break(char c) { return c == '\n' || c == '\r'; }
bool is_blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isspace(c) != 0; });
}

// Offset of the first byte that is not well-formed UTF-8, or npos.
size_t find_invalid_utf8(const std::string& s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > n) return i;
    uint32_t cp = len == 1 ? c : c & (0x7F >> len);
    for (size_t k = 1; k < len; ++k) {
      auto b = static_cast<unsigned char>(s[i + k]);
      if ((b >> 6) != 0x2) return i;
      cp = (cp << 6) | (b & 0x3F);
    }
    bool overlong = (len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
    if (overlong || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string::npos;
}

int line_of(const std::string& s, size_t offset) {
  return 1 + static_cast<int>(std::count(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(offset), '\n'));
}

std::string read_text(const std::string& path) {
  std::string text = fs::read_file(path, "data file");
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // UTF-8 byte order mark
  size_t bad = find_invalid_utf8(text);
  if (bad != std::string::npos) {
    fail_usage_hint(fmt::format("{}:{}: invalid UTF-8 at byte offset {}", path, line_of(text, bad), bad),
                    "convert the file to UTF-8 (e.g. iconv -t UTF-8)");
  }
  return text;
}

[[noreturn]] void fail_line(const std::string& where, const std::string& what) {
  fail_usage_hint(where + ": " + what,
                  "each line must be one JSON object with a text field, prompt/response fields, or "
                  "messages [{role, content}] (docs/data.md)");
}

const std::string& string_field(const json& obj, const std::string& field, const std::string& where) {
  const json& v = obj.at(field);
  if (!v.is_string()) fail_line(where, fmt::format("field \"{}\" is a {}, expected a string", field, v.type_name()));
  return v.get_ref<const std::string&>();
}

std::vector<Message> parse_messages(const json& arr, const std::string& field, const std::string& where) {
  if (!arr.is_array()) fail_line(where, fmt::format("field \"{}\" is a {}, expected an array", field, arr.type_name()));
  std::vector<Message> out;
  for (size_t i = 0; i < arr.size(); ++i) {
    const json& m = arr[i];
    std::string at = fmt::format("{}[{}]", field, i);
    if (!m.is_object()) fail_line(where, fmt::format("{} is a {}, expected an object {{role, content}}", at, m.type_name()));
    for (const char* k : {"role", "content"}) {
      if (!m.contains(k)) fail_line(where, fmt::format("{} has no \"{}\"", at, k));
      if (!m.at(k).is_string()) fail_line(where, fmt::format("{}.{} is a {}, expected a string", at, k, m.at(k).type_name()));
    }
    out.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
  }
  return out;
}

// One JSONL object -> segments (where = "path:line").
std::vector<Segment> line_segments(const json& obj, const DataSpec& spec, const std::string& where) {
  if (!obj.is_object()) fail_line(where, fmt::format("expected a JSON object, got a {}", obj.type_name()));
  if (obj.contains(spec.messages_field))
    return render_chat(parse_messages(obj.at(spec.messages_field), spec.messages_field, where), spec.chat_template);
  bool has_prompt = obj.contains(spec.prompt_field), has_response = obj.contains(spec.response_field);
  if (has_prompt || has_response) {
    if (!has_prompt || !has_response) {
      fail_line(where, fmt::format("has \"{}\" but no \"{}\"", has_prompt ? spec.prompt_field : spec.response_field,
                                   has_prompt ? spec.response_field : spec.prompt_field));
    }
    return render_chat({{"user", string_field(obj, spec.prompt_field, where)},
                        {"assistant", string_field(obj, spec.response_field, where)}},
                       spec.chat_template);
  }
  if (obj.contains(spec.text_field)) return {{Segment::Kind::Text, string_field(obj, spec.text_field, where), true}};
  std::vector<std::string> keys;
  for (const auto& item : obj.items()) keys.push_back("\"" + item.key() + "\"");
  fail_line(where, fmt::format("no \"{}\", \"{}\"/\"{}\" or \"{}\" field (it has: {})", spec.text_field, spec.prompt_field,
                               spec.response_field, spec.messages_field, keys.empty() ? "nothing" : join(keys, ", ")));
}

// Tokens file -> documents: each EOS id ends one.
std::vector<Document> token_documents(const std::vector<int32_t>& ids, const tok::Tokenizer& tok) {
  std::vector<Document> docs;
  Document cur;
  for (int32_t id : ids) {
    cur.ids.push_back(id);
    cur.mask.push_back(id == tok.bos_id() ? 0 : 1);
    if (id == tok.eos_id()) docs.push_back(std::move(cur)), cur = Document();
  }
  if (!cur.ids.empty()) docs.push_back(std::move(cur));
  return docs;
}

void add_text(std::vector<Segment>& s, std::string text, bool loss = false) {
  s.push_back({Segment::Kind::Text, std::move(text), loss});
}
void add_special(std::vector<Segment>& s, std::string text, bool loss = false) {
  s.push_back({Segment::Kind::Special, std::move(text), loss});
}

[[noreturn]] void fail_role(const std::string& tmpl, const std::string& role, size_t i) {
  fail_usage_hint(fmt::format("chat template {}: message {} has role \"{}\"", tmpl, i, role),
                  "use the roles system (first message only), user and assistant, or chat_template: chatml");
}

}  // namespace

void validate_spec(const DataSpec& spec) {
  if (std::find(kFormats.begin(), kFormats.end(), spec.format) == kFormats.end())
    fail_usage_hint(fmt::format("unknown data format \"{}\"", spec.format), "use one of: " + join(kFormats, ", "));
  if (std::find(kTemplates.begin(), kTemplates.end(), spec.chat_template) == kTemplates.end())
    fail_usage_hint(fmt::format("unknown chat template \"{}\"", spec.chat_template),
                    "use one of: " + join(kTemplates, ", "));
}

// ---------------------------------------------------------------------------
// Text

namespace {

std::string crlf_to_lf(const std::string& raw) {
  std::string text;
  text.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i)
    if (!(raw[i] == '\r' && i + 1 < raw.size() && raw[i + 1] == '\n')) text += raw[i];
  return text;
}

}  // namespace

std::vector<std::string> split_text(const std::string& raw, const std::string& separator_raw) {
  const std::string text = crlf_to_lf(raw), separator = crlf_to_lf(separator_raw);

  std::vector<std::string> docs;
  auto add = [&](size_t b, size_t e) {
    while (b < e && is_line_break(text[b])) ++b;
    while (e > b && is_line_break(text[e - 1])) --e;
    std::string doc = text.substr(b, e - b);
    if (!is_blank(doc)) docs.push_back(std::move(doc));
  };
  if (separator.empty()) {
    add(0, text.size());
    return docs;
  }
  size_t start = 0;
  for (size_t hit; (hit = text.find(separator, start)) != std::string::npos; start = hit + separator.size())
    add(start, hit);
  add(start, text.size());
  return docs;
}

// ---------------------------------------------------------------------------
// Chat templates

std::vector<Segment> render_chat(const std::vector<Message>& messages, const std::string& tmpl) {
  std::vector<Segment> s;
  const size_t n = messages.size();
  if (tmpl == "none") {
    for (const auto& m : messages) add_text(s, m.content, m.role == "assistant");
  } else if (tmpl == "chatml") {
    for (size_t i = 0; i < n; ++i) {
      bool loss = messages[i].role == "assistant";
      if (i > 0) add_text(s, "\n");
      add_special(s, "<|im_start|>");
      add_text(s, messages[i].role + "\n");
      add_text(s, messages[i].content, loss);
      add_special(s, "<|im_end|>", loss);
    }
  } else if (tmpl == "llama2") {
    std::string system;
    for (size_t i = 0; i < n; ++i) {
      const auto& m = messages[i];
      if (m.role == "system" && i == 0) {
        system = "<<SYS>>\n" + m.content + "\n<</SYS>>\n\n";
      } else if (m.role == "user") {
        add_text(s, "[INST] " + system + m.content + " [/INST]");
        system.clear();
      } else if (m.role == "assistant") {
        add_text(s, " " + m.content, true);
        if (i + 1 < n) {
          s.push_back({Segment::Kind::Eos, "", true});
          s.push_back({Segment::Kind::Bos, "", false});
        }
      } else {
        fail_role(tmpl, m.role, i);
      }
    }
  } else if (tmpl == "alpaca") {
    for (size_t i = 0; i < n; ++i) {
      const auto& m = messages[i];
      if (m.role == "system" && i == 0) {
        add_text(s, m.content + "\n\n");
      } else if (m.role == "user") {
        add_text(s, "### Instruction:\n" + m.content + "\n\n### Response:\n");
      } else if (m.role == "assistant") {
        add_text(s, m.content, true);
        if (i + 1 < n) add_text(s, "\n\n");
      } else {
        fail_role(tmpl, m.role, i);
      }
    }
  } else {
    fail_usage_hint(fmt::format("unknown chat template \"{}\"", tmpl), "use one of: " + join(kTemplates, ", "));
  }
  return s;
}

std::string segments_text(const std::vector<Segment>& segments) {
  std::string out;
  for (const auto& seg : segments) {
    if (seg.kind == Segment::Kind::Bos) out += "<s>";
    else if (seg.kind == Segment::Kind::Eos) out += "</s>";
    else out += seg.text;
  }
  return out;
}

Document tokenize_segments(const std::vector<Segment>& segments, const tok::Tokenizer& tok, bool add_bos,
                           bool add_eos) {
  Document d;
  auto push = [&](int32_t id, bool loss) {
    d.ids.push_back(id);
    d.mask.push_back(loss ? 1 : 0);
  };
  const int32_t bos = tok.bos_id(), eos = tok.eos_id();
  if (add_bos && bos >= 0) push(bos, false);
  size_t content = 0;
  bool last_loss = false;
  for (const auto& seg : segments) {
    size_t before = d.ids.size();
    switch (seg.kind) {
      case Segment::Kind::Special: {
        int32_t id = tok.token_to_id(seg.text);
        if (id >= 0) {
          push(id, seg.loss);
          break;
        }
        [[fallthrough]];  // the tokenizer has no such token: plain text
      }
      case Segment::Kind::Text:
        if (!seg.text.empty())
          for (int32_t id : tok.encode(seg.text, false, false)) push(id, seg.loss);
        break;
      case Segment::Kind::Bos:
        if (bos >= 0) push(bos, false);
        break;
      case Segment::Kind::Eos:
        if (eos >= 0) push(eos, seg.loss);
        break;
    }
    if (d.ids.size() > before) {
      if (seg.kind != Segment::Kind::Bos) last_loss = seg.loss;
      if (seg.kind == Segment::Kind::Text || seg.kind == Segment::Kind::Special) content += d.ids.size() - before;
    }
  }
  if (content == 0) return Document();
  if (add_eos && eos >= 0) push(eos, last_loss);
  return d;
}

// ---------------------------------------------------------------------------
// Token files

int token_width(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  if (ext == ".u16" || ext == ".bin16") return 2;
  if (ext == ".bin" || ext == ".i32") return 4;
  fail_usage_hint(fmt::format("tokens file '{}': cannot tell the id width from the extension \"{}\"", path, ext),
                  "name it *.u16 or *.bin16 (little-endian uint16) or *.bin or *.i32 (little-endian int32)");
}

std::vector<int32_t> read_tokens_file(const std::string& path, int32_t vocab_size) {
  const int width = token_width(path);
  const std::string bytes = fs::read_file(path, "data file");
  if (bytes.size() % width != 0) {
    fail("tokens file '{}': {} bytes is not a multiple of {} ({}-bit ids): the file is truncated or has "
         "another width", path, bytes.size(), width, width * 8);
  }
  const size_t n = bytes.size() / width;
  std::vector<int32_t> ids(n);
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char* p = b + i * width;
    uint32_t u = width == 2 ? uint32_t(p[0]) | uint32_t(p[1]) << 8
                            : uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
    auto id = static_cast<int32_t>(u);
    if (id < 0 || id >= vocab_size) {
      fail_usage_hint(fmt::format("tokens file '{}': id {} at position {} (byte offset {}) is outside the vocabulary "
                                  "[0, {})", path, id, i, i * width, vocab_size),
                      "the file was made with another tokenizer or width; re-tokenize it with this model's tokenizer");
    }
    ids[i] = id;
  }
  return ids;
}

void write_tokens_file(const std::string& path, const std::vector<int32_t>& ids) {
  const int width = token_width(path);
  std::string bytes(ids.size() * width, '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    int32_t id = ids[i];
    if (id < 0 || (width == 2 && id > 0xFFFF))
      fail_usage("tokens file '{}': id {} at position {} does not fit {}-bit ids", path, id, i, width * 8);
    auto u = static_cast<uint32_t>(id);
    for (int k = 0; k < width; ++k) bytes[i * width + k] = static_cast<char>((u >> (8 * k)) & 0xFF);
  }
  fs::write_file_atomic(path, bytes);
}

// ---------------------------------------------------------------------------

std::vector<Document> load_documents(const DataSpec& spec, const tok::Tokenizer& tok) {
  validate_spec(spec);
  std::vector<Document> docs;
  std::string empty_reason;
  if (spec.format == "tokens") {
    docs = token_documents(read_tokens_file(spec.path, tok.vocab_size()), tok);
    empty_reason = "the file holds no token ids";
  } else if (spec.format == "text") {
    for (const auto& text : split_text(read_text(spec.path), spec.separator)) {
      Document d = tokenize_segments({{Segment::Kind::Text, text, true}}, tok, spec.add_bos, spec.add_eos);
      if (!d.ids.empty()) docs.push_back(std::move(d));
    }
    empty_reason = fmt::format("no non-blank document after splitting on separator \"{}\"", escaped(spec.separator));
  } else {
    const std::string text = fs::read_file(spec.path, "data file");
    size_t start = 0;
    for (int line_no = 1; start < text.size(); ++line_no) {
      size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      std::string line = text.substr(start, end - start);
      start = end + 1;
      if (is_blank(line)) continue;
      std::string where = fmt::format("{}:{}", spec.path, line_no);
      json obj;
      try {
        obj = json::parse(line);
      } catch (const json::exception& e) {
        std::string msg = e.what();
        size_t cut = msg.find("] ");
        fail_line(where, "invalid JSON: " + (cut == std::string::npos ? msg : msg.substr(cut + 2)));
      }
      Document d = tokenize_segments(line_segments(obj, spec, where), tok, spec.add_bos, spec.add_eos);
      if (!d.ids.empty()) docs.push_back(std::move(d));
    }
    empty_reason = "no line with non-empty text";
  }
  if (docs.empty()) {
    fail_usage_hint(fmt::format("data file '{}' is an empty dataset: {}", spec.path, empty_reason),
                    spec.format == "text" ? "check the file and its separator (\"\\n\\n\" blank line, \"\\n\" one per "
                                            "line, \"\" whole file), or its format"
                                          : "check the file and its format (text, jsonl or tokens)");
  }
  return docs;
}

}  // namespace dsk::data
