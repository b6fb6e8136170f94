// SentencePiece .model files, read and run by our own code (not libsentencepiece).
//
// Why not the library: Debian's libsentencepiece carries its own protobuf 3.14 runtime with
// exported symbols, and LibTorch loads the system libprotobuf 3.21; in one process the two
// clash (a crash in static initialisation, or protobuf's version check aborting). The format is
// small, so we parse the ModelProto ourselves and implement the two encoders Llama-family
// models use (BPE and unigram), checked against Debian's python3-sentencepiece in the tests.
//
// ModelProto fields read (sentencepiece_model.proto):
//   1 pieces {1 piece, 2 score, 3 type}   type: 1 normal, 2 unknown, 3 control, 4 user-defined,
//                                              5 unused, 6 byte
//   2 trainer_spec {3 model_type (1 unigram, 2 bpe), 35 byte_fallback, 40 unk_id, 41 bos_id,
//                   42 eos_id, 24 treat_whitespace_as_suffix}
//   3 normalizer_spec {1 name, 2 precompiled_charsmap, 3 add_dummy_prefix,
//                      4 remove_extra_whitespaces, 5 escape_whitespaces}
// Normalization: only rule sets without a precompiled character map ("identity" and
// user rules without a map) are supported; nmt_nfkc models are refused with a clear error.
//
// Streaming decode follows llama2.c: "▁" is a space, the space is dropped from the first word
// after BOS (or at the start), byte pieces "<0x0A>" stand for their byte.
#include <algorithm>
#include <cmath>
#include <iterator>
#include <cstring>
#include <limits>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "core/fs.h"
#include "tokenizer/tokenizer.h"

namespace dsk::tok {

namespace {

const std::string kSpace = "\xE2\x96\x81";  // "▁"

enum PieceType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// ---------------------------------------------------------------------------
// A minimal protobuf wire-format reader (varint, 32/64-bit, length-delimited).

struct Reader {
  const uint8_t* p;
  const uint8_t* end;
  const std::string& path;

  bool done() const { return p >= end; }

  [[noreturn]] void corrupt(const char* what) const {
    fail("tokenizer '{}' is not a valid SentencePiece model: {} (truncated or corrupt?)", path, what);
  }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) corrupt("varint runs past the end");
      uint8_t b = *p++;
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    corrupt("varint longer than 10 bytes");
  }

  Reader sub() {
    uint64_t n = varint();
    if (n > static_cast<uint64_t>(end - p)) corrupt("a field's length runs past the end");
    Reader r{p, p + n, path};
    p += n;
    return r;
  }

  std::string bytes() {
    Reader r = sub();
    return std::string(reinterpret_cast<const char*>(r.p), r.end - r.p);
  }

  float fixed32_float() {
    if (end - p < 4) corrupt("a float runs past the end");
    float f;
    std::memcpy(&f, p, 4);
    p += 4;
    return f;
  }

  void skip(uint32_t wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1:
        if (end - p < 8) corrupt("a fixed64 runs past the end");
        p += 8;
        break;
      case 2: sub(); break;
      case 5:
        if (end - p < 4) corrupt("a fixed32 runs past the end");
        p += 4;
        break;
      default: corrupt("unknown wire type");
    }
  }
};

struct Piece {
  std::string text;
  float score = 0;
  int type = kNormal;
};

size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xe) return 3;
  if ((c >> 3) == 0x1e) return 4;
  return 1;  // invalid lead byte: one byte on its own
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) : path_(path) {
    std::fill(std::begin(byte_to_id_), std::end(byte_to_id_), -1);
    std::string data = fs::read_file(path, "tokenizer");
    parse(data);
    if (pieces_.empty()) fail("tokenizer '{}' is not a valid SentencePiece model: it has no pieces", path);
    for (size_t i = 0; i < pieces_.size(); ++i) {
      const Piece& p = pieces_[i];
      int32_t id = static_cast<int32_t>(i);
      if (p.type == kNormal || p.type == kUserDefined || p.type == kUnused) {
        piece_to_id_.emplace(p.text, id);
        if (p.type == kUserDefined) user_defined_.push_back(id);
      } else {
        reserved_.emplace(p.text, id);
      }
      if (p.type == kByte && p.text.size() == 6 && p.text.compare(0, 3, "<0x") == 0)
        byte_to_id_[std::stoi(p.text.substr(3, 2), nullptr, 16)] = id;
      if (p.type == kUnknown) unk_id_ = id;
      if (p.type == kNormal || p.type == kUserDefined) min_score_ = std::min(min_score_, p.score);
    }
    auto check_special = [&](int32_t& id, const char* what) {
      if (id >= static_cast<int32_t>(pieces_.size())) fail("tokenizer '{}': {} id {} is out of range", path, what, id);
      if (id >= 0 && pieces_[id].type != kControl) id = -1;
    };
    check_special(bos_id_, "bos");
    check_special(eos_id_, "eos");
    if (unk_id_ < 0) fail("tokenizer '{}' is not a valid SentencePiece model: no unknown piece", path);
    if (byte_fallback_) {
      for (int b = 0; b < 256; ++b)
        if (byte_to_id_[b] < 0) fail("tokenizer '{}': byte_fallback is on but piece <0x{:02X}> is missing", path, b);
    }
    if (!charsmap_empty_ || (normalizer_name_ != "identity" && !normalizer_name_.empty() && normalizer_name_ != "user_defined"))
      fail_hint(fmt::format("tokenizer '{}' uses the '{}' normalizer, which dsk does not implement", path,
                            normalizer_name_),
                "use a model trained with normalization_rule_name=identity (as Llama's), or a tokenizer.json");
    if (model_type_ != 1 && model_type_ != 2)
      fail("tokenizer '{}': model type {} is not supported (only unigram and BPE)", path, model_type_);
    for (size_t i = 0; i < pieces_.size(); ++i) surface_.push_back(surface_of(static_cast<int32_t>(i)));
  }

  std::vector<int32_t> encode(const std::string& text, bool add_bos, bool add_eos) const override {
    std::vector<int32_t> ids;
    if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
    std::string norm = normalize(text);
    if (!norm.empty()) {
      if (model_type_ == 2)
        encode_bpe(norm, ids);
      else
        encode_unigram(norm, ids);
    }
    if (add_eos && eos_id_ >= 0) ids.push_back(eos_id_);
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    bool first = true;
    for (int32_t id : ids) {
      check_id(id);
      const Piece& p = pieces_[id];
      if (p.type == kControl) continue;
      std::string s = surface_[id];
      if (first && add_dummy_prefix_ && p.type != kByte && !s.empty() && s[0] == ' ') s.erase(0, 1);
      first = false;
      out += s;
    }
    return out;
  }

  std::string decode_piece(int32_t prev, int32_t id) const override {
    check_id(id);
    const std::string& s = surface_[id];
    const bool at_start = prev < 0 || (prev < vocab_size() && pieces_[prev].type == kControl);
    if (at_start && !s.empty() && s[0] == ' ' && pieces_[id].type != kByte) return s.substr(1);
    return s;
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }

  int32_t token_to_id(const std::string& token) const override {
    auto it = piece_to_id_.find(token);
    if (it != piece_to_id_.end()) return it->second;
    auto r = reserved_.find(token);
    return r != reserved_.end() ? r->second : -1;
  }

  std::string id_to_token(int32_t id) const override {
    check_id(id);
    return pieces_[id].text;
  }

  bool is_special(int32_t id) const override {
    check_id(id);
    return pieces_[id].type == kControl;
  }

  VocabularyExport export_vocabulary() const override {
    VocabularyExport v;
    v.kind = VocabularyExport::Kind::SentencePiece;
    for (const Piece& p : pieces_) {
      v.tokens.push_back(p.text);
      v.scores.push_back(p.score);
      v.types.push_back(p.type);
    }
    v.unk_id = unk_id_;
    v.add_dummy_prefix = add_dummy_prefix_;
    return v;
  }

 private:
  void parse(const std::string& data) {
    Reader r{reinterpret_cast<const uint8_t*>(data.data()), reinterpret_cast<const uint8_t*>(data.data()) + data.size(),
             path_};
    while (!r.done()) {
      uint64_t key = r.varint();
      uint32_t field = static_cast<uint32_t>(key >> 3), wire = key & 7;
      if (field == 1 && wire == 2) {
        Reader pr = r.sub();
        Piece piece;
        while (!pr.done()) {
          uint64_t k = pr.varint();
          uint32_t f = static_cast<uint32_t>(k >> 3), w = k & 7;
          if (f == 1 && w == 2) piece.text = pr.bytes();
          else if (f == 2 && w == 5) piece.score = pr.fixed32_float();
          else if (f == 3 && w == 0) piece.type = static_cast<int>(pr.varint());
          else pr.skip(w);
        }
        if (piece.type < kNormal || piece.type > kByte) r.corrupt("a piece has an unknown type");
        pieces_.push_back(std::move(piece));
      } else if (field == 2 && wire == 2) {
        Reader tr = r.sub();
        while (!tr.done()) {
          uint64_t k = tr.varint();
          uint32_t f = static_cast<uint32_t>(k >> 3), w = k & 7;
          if (w != 0) { tr.skip(w); continue; }
          uint64_t v = tr.varint();
          if (f == 3) model_type_ = static_cast<int>(v);
          else if (f == 35) byte_fallback_ = v != 0;
          else if (f == 41) bos_id_ = static_cast<int32_t>(static_cast<int64_t>(v));
          else if (f == 42) eos_id_ = static_cast<int32_t>(static_cast<int64_t>(v));
          else if (f == 24) suffix_ws_ = v != 0;
        }
      } else if (field == 3 && wire == 2) {
        Reader nr = r.sub();
        while (!nr.done()) {
          uint64_t k = nr.varint();
          uint32_t f = static_cast<uint32_t>(k >> 3), w = k & 7;
          if (f == 1 && w == 2) normalizer_name_ = nr.bytes();
          else if (f == 2 && w == 2) charsmap_empty_ = nr.bytes().empty();
          else if (f == 3 && w == 0) add_dummy_prefix_ = nr.varint() != 0;
          else if (f == 4 && w == 0) remove_extra_ws_ = nr.varint() != 0;
          else if (f == 5 && w == 0) escape_ws_ = nr.varint() != 0;
          else nr.skip(w);
        }
      } else {
        r.skip(wire);
      }
    }
  }

  // Identity normalization with SentencePiece's whitespace rules.
  std::string normalize(const std::string& text) const {
    std::string s = text;
    if (remove_extra_ws_) {
      std::string t;
      bool prev_space = true;  // drops leading spaces
      for (char c : s) {
        if (c == ' ') {
          if (!prev_space) t += c;
          prev_space = true;
        } else {
          t += c;
          prev_space = false;
        }
      }
      while (!t.empty() && t.back() == ' ') t.pop_back();
      s = t;
    }
    if (s.empty()) return s;
    if (add_dummy_prefix_) s = suffix_ws_ ? s + " " : " " + s;
    if (!escape_ws_) return s;
    std::string out;
    out.reserve(s.size() + s.size() / 2);
    for (char c : s) {
      if (c == ' ')
        out += kSpace;
      else
        out += c;
    }
    return out;
  }

  int32_t lookup(const std::string& s) const {
    auto it = piece_to_id_.find(s);
    if (it == piece_to_id_.end() || pieces_[it->second].type == kUnused) return -1;
    return it->second;
  }

  // Initial symbols: user-defined pieces (longest match) or single UTF-8 characters.
  std::vector<std::string> initial_symbols(const std::string& s) const {
    std::vector<std::string> out;
    for (size_t i = 0; i < s.size();) {
      size_t best = 0;
      for (int32_t id : user_defined_) {
        const std::string& u = pieces_[id].text;
        if (u.size() > best && s.compare(i, u.size(), u) == 0) best = u.size();
      }
      size_t n = best ? best : std::min(utf8_len(static_cast<unsigned char>(s[i])), s.size() - i);
      out.push_back(s.substr(i, n));
      i += n;
    }
    return out;
  }

  // A final symbol -> ids: its piece, else its bytes (byte_fallback), else unk.
  void emit(const std::string& sym, std::vector<int32_t>& ids) const {
    int32_t id = lookup(sym);
    if (id >= 0) {
      ids.push_back(id);
    } else if (byte_fallback_) {
      for (unsigned char c : sym) ids.push_back(byte_to_id_[c]);
    } else {
      ids.push_back(unk_id_);
    }
  }

  // BPE: repeatedly merge the adjacent pair whose concatenation is the highest-scoring piece
  // (leftmost on ties), as libsentencepiece's bpe_model.
  void encode_bpe(const std::string& s, std::vector<int32_t>& ids) const {
    std::vector<std::string> sym = initial_symbols(s);
    const int n = static_cast<int>(sym.size());
    std::vector<int> prev(n), next(n);
    for (int i = 0; i < n; ++i) {
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    struct Cand {
      float score;
      int left, right;
      size_t size;  // expected merged length, to detect stale entries
    };
    auto worse = [](const Cand& a, const Cand& b) {
      if (a.score != b.score) return a.score < b.score;
      return a.left > b.left;
    };
    std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> agenda(worse);
    auto push = [&](int l, int r) {
      if (l < 0 || r < 0) return;
      std::string merged = sym[l] + sym[r];
      int32_t id = lookup(merged);
      if (id < 0) return;
      agenda.push({pieces_[id].score, l, r, merged.size()});
    };
    for (int i = 0; i + 1 < n; ++i) push(i, i + 1);
    while (!agenda.empty()) {
      Cand c = agenda.top();
      agenda.pop();
      if (sym[c.left].empty() || sym[c.right].empty() || next[c.left] != c.right ||
          sym[c.left].size() + sym[c.right].size() != c.size)
        continue;
      sym[c.left] += sym[c.right];
      sym[c.right].clear();
      next[c.left] = next[c.right];
      if (next[c.right] >= 0) prev[next[c.right]] = c.left;
      push(prev[c.left], c.left);
      push(c.left, next[c.left]);
    }
    for (int i = 0; i >= 0 && i < n; i = next[i]) emit(sym[i], ids);
  }

  // Unigram: the segmentation with the highest total score (Viterbi); characters without a
  // piece cost min_score - 10 (libsentencepiece's unknown penalty).
  void encode_unigram(const std::string& s, std::vector<int32_t>& ids) const {
    const size_t n = s.size();
    const float unk_score = min_score_ - 10.0f;
    std::vector<float> best(n + 1, -std::numeric_limits<float>::infinity());
    std::vector<size_t> from(n + 1, 0);
    std::vector<int32_t> via(n + 1, -1);
    best[0] = 0;
    size_t max_len = 0;
    for (const auto& kv : piece_to_id_) max_len = std::max(max_len, kv.first.size());
    for (size_t i = 0; i < n; ++i) {
      if (best[i] == -std::numeric_limits<float>::infinity()) continue;
      if ((static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) continue;  // not a character start
      size_t clen = std::min(utf8_len(static_cast<unsigned char>(s[i])), n - i);
      bool any = false;
      for (size_t len = 1; len <= max_len && i + len <= n; ++len) {
        int32_t id = lookup(s.substr(i, len));
        if (id < 0) continue;
        float sc = pieces_[id].type == kUserDefined ? 0.0f : pieces_[id].score;
        if (len == clen) any = true;
        if (best[i] + sc > best[i + len]) {
          best[i + len] = best[i] + sc;
          from[i + len] = i;
          via[i + len] = id;
        }
      }
      if (!any && best[i] + unk_score > best[i + clen]) {
        best[i + clen] = best[i] + unk_score;
        from[i + clen] = i;
        via[i + clen] = -1;
      }
    }
    std::vector<std::pair<size_t, size_t>> spans;
    std::vector<int32_t> span_ids;
    for (size_t e = n; e > 0; e = from[e]) {
      spans.emplace_back(from[e], e);
      span_ids.push_back(via[e]);
    }
    for (size_t k = spans.size(); k-- > 0;) {
      if (span_ids[k] >= 0)
        ids.push_back(span_ids[k]);
      else
        emit(s.substr(spans[k].first, spans[k].second - spans[k].first), ids);
    }
  }

  void check_id(int32_t id) const {
    if (id < 0 || id >= vocab_size())
      fail("token id {} is out of range [0, {}) of tokenizer '{}'", id, vocab_size(), path_);
  }

  // What the piece contributes in the middle of a text.
  std::string surface_of(int32_t id) const {
    const Piece& p = pieces_[id];
    if (p.type == kControl) return "";
    if (p.type == kUnknown) return " \xE2\x81\x87 ";  // " ⁇ ", libsentencepiece's unknown surface
    if (p.type == kByte && p.text.size() == 6)
      return std::string(1, static_cast<char>(std::stoi(p.text.substr(3, 2), nullptr, 16)));
    std::string out;
    for (size_t i = 0; i < p.text.size();) {
      if (p.text.compare(i, kSpace.size(), kSpace) == 0) {
        out += ' ';
        i += kSpace.size();
      } else {
        out += p.text[i++];
      }
    }
    return out;
  }

  std::string path_;
  std::vector<Piece> pieces_;
  std::unordered_map<std::string, int32_t> piece_to_id_;  // normal, user-defined, unused
  std::unordered_map<std::string, int32_t> reserved_;     // control, unknown, byte
  std::vector<int32_t> user_defined_;
  int32_t byte_to_id_[256] = {};
  std::vector<std::string> surface_;
  int model_type_ = 1;  // unigram is the proto default
  bool byte_fallback_ = false;
  bool suffix_ws_ = false;
  int32_t unk_id_ = -1, bos_id_ = 1, eos_id_ = 2;
  std::string normalizer_name_;
  bool charsmap_empty_ = true;
  bool add_dummy_prefix_ = true, remove_extra_ws_ = true, escape_ws_ = true;
  float min_score_ = std::numeric_limits<float>::infinity();
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path) {
  return std::make_unique<SentencePieceTokenizer>(model_path);
}

}  // namespace dsk::tok
