// load_tokenizer: picks the implementation from the path (docs/tokenizers.md, "File detection").
#include <filesystem>

#include "core/error.h"
#include "core/log.h"
#include "tokenizer/bpe.h"
#include "tokenizer/tokenizer.h"

namespace dsk::tok {

namespace stdfs = std::filesystem;

namespace {

constexpr const char* kPathHint =
    "point tokenizer.path at a tokenizer.model (SentencePiece) or tokenizer.json (Hugging Face) file, "
    "or at a directory holding one";

bool is_file(const stdfs::path& p) {
  std::error_code ec;
  return stdfs::is_regular_file(p, ec);
}

std::unique_ptr<Tokenizer> load_json(const stdfs::path& p) {
  const stdfs::path merges = p.parent_path() / "merges.txt";
  if (p.filename() == "vocab.json" && is_file(merges)) return load_gpt2_tokenizer(p.string(), merges.string());
  return load_hf_tokenizer(p.string());
}

std::unique_ptr<Tokenizer> load_directory(const stdfs::path& dir) {
  const stdfs::path json = dir / "tokenizer.json", model = dir / "tokenizer.model";
  if (is_file(json)) {
    if (!is_file(model)) return load_hf_tokenizer(json.string());
    try {
      return load_hf_tokenizer(json.string());
    } catch (const UnsupportedTokenizer& e) {
      log::info("{}; using {} instead", e.message(), model.string());
      return load_sentencepiece(model.string());
    }
  }
  if (is_file(model)) return load_sentencepiece(model.string());
  if (is_file(dir / "vocab.json") && is_file(dir / "merges.txt"))
    return load_gpt2_tokenizer((dir / "vocab.json").string(), (dir / "merges.txt").string());
  fail_usage_hint(fmt::format("tokenizer directory '{}' holds no tokenizer.json, tokenizer.model or "
                              "vocab.json + merges.txt", dir.string()),
                  kPathHint);
}

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& json_path) {
  return make_bpe_tokenizer(parse_hf_tokenizer_json(json_path));
}

std::unique_ptr<Tokenizer> load_gpt2_tokenizer(const std::string& vocab_json_path, const std::string& merges_txt_path) {
  return make_bpe_tokenizer(parse_gpt2_vocab_merges(vocab_json_path, merges_txt_path));
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  const stdfs::path p(path);
  std::error_code ec;
  if (path.empty() || !stdfs::exists(p, ec))
    fail_usage_hint(fmt::format("tokenizer '{}' does not exist", path), kPathHint);
  if (stdfs::is_directory(p, ec)) return load_directory(p);
  const std::string ext = p.extension().string();
  if (ext == ".model") return load_sentencepiece(path);
  if (ext == ".json") return load_json(p);
  fail_usage_hint(fmt::format("cannot tell the tokenizer type of '{}' from its name", path),
                  "use a *.model (SentencePiece) or *.json (Hugging Face tokenizer.json) file");
}

VocabularyExport Tokenizer::export_vocabulary() const {
  fail("this tokenizer cannot list its vocabulary for export (only SentencePiece and byte-level BPE can)");
}

}  // namespace dsk::tok
