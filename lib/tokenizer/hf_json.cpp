// Parsers that turn Hugging Face tokenizer.json, or GPT-2 vocab.json + merges.txt, into a BpeSpec.
// Every error names the file; formats we do not implement raise UnsupportedTokenizer.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "tokenizer/bpe.h"

namespace dsk::tok {

namespace {

using json = nlohmann::json;

// "[json.exception.parse_error.101] parse error at ..." -> "parse error at ..."
std::string json_message(const json::exception& e) {
  std::string m = e.what();
  const size_t p = m.find("] ");
  return p == std::string::npos ? m : m.substr(p + 2);
}

json read_json(const std::string& path, std::string_view what) {
  const std::string text = fs::read_file(path, what);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail("{} '{}' is not valid JSON (truncated or corrupt?): {}", what, path, json_message(e));
  }
}

[[noreturn]] void unsupported(const std::string& path, const std::string& what) {
  throw UnsupportedTokenizer(fmt::format(
      "tokenizer '{}': {}; only byte-level BPE tokenizer.json files are supported (use the "
      "SentencePiece tokenizer.model for Llama-2 style tokenizers)",
      path, what));
}

std::string type_of(const json& j) { return j.is_object() && j.contains("type") ? j.at("type").get<std::string>() : ""; }

bool flag(const json& j, const char* key, bool fallback) {
  return j.contains(key) && !j.at(key).is_null() ? j.at(key).get<bool>() : fallback;
}

std::shared_ptr<Regex> make_regex(const std::string& pattern, bool literal, const std::string& path) {
  try {
    return std::make_shared<Regex>(pattern, literal);
  } catch (const Error& e) {
    throw e.context(fmt::format("tokenizer '{}'", path));
  }
}

SplitBehavior parse_behavior(const std::string& b, const std::string& path) {
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  fail("tokenizer '{}': unknown Split behavior '{}'", path, b);
}

// Adds the steps of one pre_tokenizer entry; byte_level is set when a ByteLevel step is seen.
void add_pre_tokenizer(const json& p, PreTokenizer& pre, bool& byte_level, const std::string& path) {
  const std::string type = type_of(p);
  if (type == "Sequence") {
    for (const auto& sub : p.at("pretokenizers")) add_pre_tokenizer(sub, pre, byte_level, path);
  } else if (type == "ByteLevel") {
    byte_level = true;
    if (flag(p, "add_prefix_space", true)) pre.add_prefix_space();
    if (flag(p, "use_regex", true))
      pre.add_split(make_regex(kGpt2Pattern, false, path), SplitBehavior::Isolated, false);
  } else if (type == "Split") {
    const json& pat = p.at("pattern");
    std::shared_ptr<Regex> re;
    if (pat.contains("Regex")) {
      re = make_regex(pat.at("Regex").get<std::string>(), false, path);
    } else if (pat.contains("String")) {
      re = make_regex(pat.at("String").get<std::string>(), /*literal=*/true, path);
    } else {
      fail("tokenizer '{}': Split pattern needs \"Regex\" or \"String\", got {}", path, pat.dump());
    }
    pre.add_split(std::move(re), parse_behavior(p.at("behavior").get<std::string>(), path), flag(p, "invert", false));
  } else if (type == "Digits") {
    const char* pattern = flag(p, "individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)";
    pre.add_split(make_regex(pattern, false, path), SplitBehavior::Isolated, false);
  } else {
    unsupported(path, fmt::format("pre_tokenizer type '{}'", type));
  }
}

// Accepts null, a step of the `allowed` type, or a Sequence (steps under `list_key`) of those:
// the normalizer ("NFC", not applied: docs/tokenizers.md) and the decoder ("ByteLevel").
void check_steps(const json& j, const char* section, const char* list_key, const char* allowed,
                 const std::string& path) {
  if (j.is_null()) return;
  const std::string type = type_of(j);
  if (type == "Sequence") {
    for (const auto& sub : j.at(list_key)) check_steps(sub, section, list_key, allowed, path);
  } else if (type != allowed) {
    unsupported(path, fmt::format("{} type '{}'", section, type));
  }
}

// The token behind a TemplateProcessing item {"SpecialToken": {"id": "<s>"}}, "" for others.
std::string template_special(const json& item, const json& special_tokens) {
  if (!item.contains("SpecialToken")) return "";
  const std::string name = item.at("SpecialToken").at("id").get<std::string>();
  if (special_tokens.is_object() && special_tokens.contains(name)) {
    const json& toks = special_tokens.at(name).value("tokens", json::array());
    if (toks.size() == 1) return toks.at(0).get<std::string>();
  }
  return name;
}

// BOS / EOS from the post_processor: the special tokens it puts before / after a single sequence.
void bos_eos_from_post_processor(const json& p, std::string& bos, std::string& eos) {
  if (p.is_null()) return;
  const std::string type = type_of(p);
  if (type == "Sequence") {
    for (const auto& sub : p.at("processors")) bos_eos_from_post_processor(sub, bos, eos);
  } else if (type == "TemplateProcessing") {
    const json& single = p.at("single");
    const json special = p.value("special_tokens", json::object());
    if (!single.empty()) {
      if (bos.empty()) bos = template_special(single.front(), special);
      if (eos.empty() && single.size() > 1) eos = template_special(single.back(), special);
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    if (bos.empty()) bos = p.at("cls").at(0).get<std::string>();
    if (eos.empty()) eos = p.at("sep").at(0).get<std::string>();
  }
}

// Well-known names, for files whose post_processor does not say.
void bos_eos_by_name(BpeSpec& spec) {
  const auto known = [&](const std::string& t) {
    if (spec.vocab.count(t)) return true;
    for (const auto& a : spec.added)
      if (a.content == t) return true;
    return false;
  };
  const auto pick = [&](std::string& slot, std::initializer_list<const char*> names) {
    if (!slot.empty()) return;
    for (const char* n : names)
      if (known(n)) {
        slot = n;
        return;
      }
  };
  pick(spec.bos_token, {"<|begin_of_text|>", "<|startoftext|>", "<s>", "<bos>"});
  pick(spec.eos_token, {"<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>"});
}

// tokenizer_config.json beside the tokenizer: its bos_token / eos_token, when present, win.
void bos_eos_from_config(const std::filesystem::path& config_path, BpeSpec& spec) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(config_path, ec)) return;
  const json cfg = read_json(config_path.string(), "tokenizer config");
  try {
    const auto slot = [&](const char* key, std::string& out) {
      if (!cfg.is_object() || !cfg.contains(key)) return;
      const json& v = cfg.at(key);
      if (v.is_null()) {
        out.clear();
      } else if (v.is_string()) {
        out = v.get<std::string>();
      } else {
        out = v.at("content").get<std::string>();
      }
    };
    slot("bos_token", spec.bos_token);
    slot("eos_token", spec.eos_token);
  } catch (const json::exception& e) {
    fail("tokenizer config '{}': unexpected structure: {}", config_path.string(), json_message(e));
  }
}

std::pair<std::string, std::string> parse_merge(const json& m, size_t index, const std::string& path) {
  if (m.is_array()) {
    if (m.size() != 2) fail("tokenizer '{}': merge #{} must hold two tokens, got {}", path, index, m.dump());
    return {m.at(0).get<std::string>(), m.at(1).get<std::string>()};
  }
  const std::string s = m.get<std::string>();
  const size_t sp = s.find(' ');
  if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
    fail("tokenizer '{}': merge #{} '{}' is not two tokens separated by one space", path, index, s);
  return {s.substr(0, sp), s.substr(sp + 1)};
}

BpeSpec spec_from_json(const json& j, const std::string& path) {
  if (!j.is_object() || !j.contains("model")) fail("tokenizer '{}': no \"model\" object; is this a tokenizer.json?", path);
  const json& model = j.at("model");
  const std::string type = type_of(model);
  if (!(type == "BPE" || (type.empty() && model.contains("merges"))))
    unsupported(path, fmt::format("model type '{}'", type));
  if (flag(model, "byte_fallback", false)) unsupported(path, "BPE with byte_fallback (a SentencePiece-style BPE)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(key) && model.at(key).is_string() && !model.at(key).get<std::string>().empty())
      unsupported(path, fmt::format("BPE with {}", key));

  BpeSpec spec;
  spec.source = path;
  bool byte_level = false;
  if (j.contains("pre_tokenizer") && !j.at("pre_tokenizer").is_null())
    add_pre_tokenizer(j.at("pre_tokenizer"), spec.pre_tokenizer, byte_level, path);
  if (!byte_level) unsupported(path, "pre_tokenizer has no ByteLevel step (not a byte-level BPE)");
  check_steps(j.value("normalizer", json()), "normalizer", "normalizers", "NFC", path);
  check_steps(j.value("decoder", json()), "decoder", "decoders", "ByteLevel", path);

  const json& vocab = model.at("vocab");
  if (!vocab.is_object()) fail("tokenizer '{}': model.vocab is not an object of token -> id", path);
  spec.vocab.reserve(vocab.size());
  for (const auto& [tok, id] : vocab.items()) spec.vocab.emplace(tok, id.get<int32_t>());
  const json& merges = model.at("merges");
  spec.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) spec.merges.push_back(parse_merge(merges.at(i), i, path));
  spec.ignore_merges = flag(model, "ignore_merges", false);
  if (model.contains("unk_token") && model.at("unk_token").is_string()) spec.unk_token = model.at("unk_token").get<std::string>();

  if (j.contains("added_tokens") && !j.at("added_tokens").is_null()) {
    for (const auto& a : j.at("added_tokens")) {
      AddedToken t;
      t.id = a.at("id").get<int32_t>();
      t.content = a.at("content").get<std::string>();
      t.special = flag(a, "special", false);
      t.lstrip = flag(a, "lstrip", false);
      t.rstrip = flag(a, "rstrip", false);
      t.single_word = flag(a, "single_word", false);
      spec.added.push_back(std::move(t));
    }
  }
  bos_eos_from_post_processor(j.value("post_processor", json()), spec.bos_token, spec.eos_token);
  bos_eos_by_name(spec);
  return spec;
}

}  // namespace

BpeSpec parse_hf_tokenizer_json(const std::string& path) {
  const json j = read_json(path, "tokenizer");
  BpeSpec spec;
  try {
    spec = spec_from_json(j, path);
  } catch (const json::exception& e) {
    fail("tokenizer '{}': unexpected tokenizer.json structure: {}", path, json_message(e));
  }
  bos_eos_from_config(std::filesystem::path(path).parent_path() / "tokenizer_config.json", spec);
  return spec;
}

BpeSpec parse_gpt2_vocab_merges(const std::string& vocab_path, const std::string& merges_path) {
  const json vocab = read_json(vocab_path, "vocab");
  const std::string merges = fs::read_file(merges_path, "merges");
  BpeSpec spec;
  spec.source = vocab_path + " + " + merges_path;
  if (!vocab.is_object()) fail("vocab '{}': expected an object of token -> id", vocab_path);
  try {
    for (const auto& [tok, id] : vocab.items()) spec.vocab.emplace(tok, id.get<int32_t>());
  } catch (const json::exception& e) {
    fail("vocab '{}': {}", vocab_path, json_message(e));
  }
  std::istringstream in(merges);
  std::string line;
  for (size_t lineno = 1; std::getline(in, line); ++lineno) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (lineno == 1 && line.rfind("#version", 0) == 0)) continue;
    const size_t sp = line.find(' ');
    if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
      fail("merges '{}' line {}: '{}' is not two tokens separated by one space", merges_path, lineno, line);
    spec.merges.emplace_back(line.substr(0, sp), line.substr(sp + 1));
  }
  // GPT-2's only special token, <|endoftext|>, lives in vocab.json: any "<|...|>" entry is one.
  for (const auto& [tok, id] : spec.vocab) {
    if (tok.size() > 4 && tok.rfind("<|", 0) == 0 && tok.compare(tok.size() - 2, 2, "|>") == 0)
      spec.added.push_back(AddedToken{tok, id, /*special=*/true});
  }
  spec.pre_tokenizer.add_split(std::make_shared<Regex>(kGpt2Pattern), SplitBehavior::Isolated, false);
  bos_eos_by_name(spec);
  return spec;
}

}  // namespace dsk::tok
