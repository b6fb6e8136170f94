// SentencePiece .model files through libsentencepiece (the reference implementation). Streaming
// decode follows llama2.c: "▁" is a space, the space is dropped from the first word after BOS
// (or at the start), byte pieces "<0x0A>" stand for their byte.
#include <sentencepiece_processor.h>

#include "core/error.h"
#include "core/fs.h"
#include "tokenizer/tokenizer.h"

namespace dsk::tok {

namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) : path_(path) {
    fs::require_file(path, "tokenizer");
    const auto status = sp_.Load(path);
    if (!status.ok()) {
      std::string why = status.ToString();
      if (why.find("ParseFromArray") != std::string::npos) why = "protobuf parse failed (truncated or corrupt?)";
      fail("tokenizer '{}' is not a valid SentencePiece model: {}", path, why);
    }
    const int n = sp_.GetPieceSize();
    if (n <= 0) fail("tokenizer '{}' is not a valid SentencePiece model: it has no pieces", path);
    surface_.resize(n);
    control_.resize(n);
    for (int id = 0; id < n; ++id) {
      control_[id] = sp_.IsControl(id);
      surface_[id] = surface_of(id);
    }
  }

  std::vector<int32_t> encode(const std::string& text, bool add_bos, bool add_eos) const override {
    std::vector<int> pieces;
    const auto status = sp_.Encode(text, &pieces);
    if (!status.ok()) fail("tokenizer '{}': encoding failed: {}", path_, status.ToString());
    std::vector<int32_t> ids;
    ids.reserve(pieces.size() + 2);
    if (add_bos && bos_id() >= 0) ids.push_back(bos_id());
    ids.insert(ids.end(), pieces.begin(), pieces.end());
    if (add_eos && eos_id() >= 0) ids.push_back(eos_id());
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    for (int32_t id : ids) check_id(id);
    std::string out;
    const auto status = sp_.Decode(std::vector<int>(ids.begin(), ids.end()), &out);
    if (!status.ok()) fail("tokenizer '{}': decoding failed: {}", path_, status.ToString());
    return out;
  }

  std::string decode_piece(int32_t prev, int32_t id) const override {
    check_id(id);
    const std::string& s = surface_[id];
    const bool at_start = prev < 0 || (prev < vocab_size() && control_[prev]);
    if (at_start && !s.empty() && s[0] == ' ' && !sp_.IsByte(id)) return s.substr(1);
    return s;
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(surface_.size()); }
  int32_t bos_id() const override { return sp_.bos_id(); }
  int32_t eos_id() const override { return sp_.eos_id(); }

  int32_t token_to_id(const std::string& token) const override {
    const int id = sp_.PieceToId(token);
    if (id == sp_.unk_id() && sp_.IdToPiece(id) != token) return -1;
    return id;
  }

  std::string id_to_token(int32_t id) const override {
    check_id(id);
    return sp_.IdToPiece(id);
  }

  bool is_special(int32_t id) const override {
    check_id(id);
    return control_[id];
  }

 private:
  void check_id(int32_t id) const {
    if (id < 0 || id >= vocab_size())
      fail("token id {} is out of range [0, {}) of tokenizer '{}'", id, vocab_size(), path_);
  }

  // What the piece contributes in the middle of a text.
  std::string surface_of(int id) const {
    if (sp_.IsControl(id)) return "";
    if (sp_.IsUnknown(id)) return " \xE2\x81\x87 ";  // " ⁇ ", libsentencepiece's unknown surface
    const std::string piece = sp_.IdToPiece(id);
    if (sp_.IsByte(id)) {  // "<0x0A>"
      return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
    }
    static const std::string kSpace = "\xE2\x96\x81";  // "▁"
    std::string out;
    for (size_t i = 0; i < piece.size();) {
      if (piece.compare(i, kSpace.size(), kSpace) == 0) {
        out += ' ';
        i += kSpace.size();
      } else {
        out += piece[i++];
      }
    }
    return out;
  }

  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;
  std::vector<std::string> surface_;  // id -> text in the middle of a sequence
  std::vector<bool> control_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path) {
  return std::make_unique<SentencePieceTokenizer>(model_path);
}

}  // namespace dsk::tok
