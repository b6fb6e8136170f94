// Byte-level BPE encode/decode. encode: split out added tokens (leftmost, longest first) ->
// pre-tokenize each remaining segment -> map each word's bytes to their single-byte tokens ->
// merge adjacent pairs by rank (lowest first, leftmost on ties) -> ids. Words are cached.
#include "tokenizer/bpe.h"

#include <algorithm>
#include <cctype>
#include <array>
#include <mutex>
#include <queue>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace dsk::tok {

namespace {

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_word_byte(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u >= 0x80 || std::isalnum(u) || c == '_';
}

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(BpeSpec spec);

  std::vector<int32_t> encode(const std::string& text, bool add_bos, bool add_eos) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::string decode_piece(int32_t prev, int32_t id) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos_id() const override { return bos_; }
  int32_t eos_id() const override { return eos_; }
  int32_t token_to_id(const std::string& token) const override;
  std::string id_to_token(int32_t id) const override;
  bool is_special(int32_t id) const override;
  VocabularyExport export_vocabulary() const override;

 private:
  struct Merge {
    int32_t rank;
    int32_t id;  // the merged token
  };

  void check_id(int32_t id) const;
  void encode_segment(std::string_view text, std::vector<int32_t>& out) const;
  void encode_word(const std::string& word, std::vector<int32_t>& out) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
  // The added token matching at text[pos] (longest), or nullptr.
  const AddedToken* added_at(std::string_view text, size_t pos) const;

  std::string source_;
  std::unordered_map<std::string, int32_t> vocab_;  // byte-level string -> id (model + added)
  std::vector<std::string> tokens_;                  // id -> byte-level string ("" unassigned)
  std::vector<std::string> bytes_;                   // id -> the raw bytes it decodes to
  std::vector<bool> special_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_id_;  // single-byte token of each byte, -1 when absent
  std::vector<AddedToken> added_;     // sorted longest first
  std::array<bool, 256> added_first_byte_{};
  PreTokenizer pre_;
  bool ignore_merges_;
  int32_t unk_ = -1, bos_ = -1, eos_ = -1;

  static constexpr size_t kCacheMaxEntries = 1 << 18;
  static constexpr size_t kCacheMaxWordBytes = 64;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

BpeTokenizer::BpeTokenizer(BpeSpec spec)
    : source_(std::move(spec.source)),
      vocab_(std::move(spec.vocab)),
      added_(std::move(spec.added)),
      pre_(std::move(spec.pre_tokenizer)),
      ignore_merges_(spec.ignore_merges) {
  int32_t max_id = -1;
  for (const auto& [tok, id] : vocab_) {
    if (id < 0) fail("tokenizer '{}': vocab token '{}' has negative id {}", source_, tok, id);
    max_id = std::max(max_id, id);
  }
  for (const auto& a : added_) {
    if (a.id < 0) fail("tokenizer '{}': added token '{}' has negative id {}", source_, a.content, a.id);
    if (a.content.empty()) fail("tokenizer '{}': added token with id {} has empty content", source_, a.id);
    max_id = std::max(max_id, a.id);
  }
  tokens_.assign(static_cast<size_t>(max_id + 1), "");
  for (const auto& [tok, id] : vocab_) tokens_[id] = tok;
  for (const auto& a : added_) {
    tokens_[a.id] = a.content;
    vocab_[a.content] = a.id;
  }
  bytes_.resize(tokens_.size());
  for (size_t i = 0; i < tokens_.size(); ++i) bytes_[i] = unicode::byte_level_decode(tokens_[i]);
  special_.assign(tokens_.size(), false);
  for (const auto& a : added_) special_[a.id] = a.special;

  const auto& b2u = unicode::byte_to_unicode();
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(b2u[b]);
    byte_id_[b] = it == vocab_.end() ? -1 : it->second;
  }

  const auto find = [&](const std::string& tok, const char* what) {
    auto it = vocab_.find(tok);
    if (it == vocab_.end()) fail("tokenizer '{}': {} '{}' is not in the vocab", source_, what, tok);
    return it->second;
  };
  merges_.reserve(spec.merges.size() * 2);
  for (size_t r = 0; r < spec.merges.size(); ++r) {
    const auto& [a, b] = spec.merges[r];
    const auto ref = [&](const std::string& t) {
      auto it = vocab_.find(t);
      if (it == vocab_.end())
        fail("tokenizer '{}': merge #{} '{} {}' references token '{}' that is not in the vocab", source_, r, a, b, t);
      return it->second;
    };
    const int32_t ia = ref(a), ib = ref(b), iab = ref(a + b);
    merges_.insert_or_assign(pair_key(ia, ib), Merge{static_cast<int32_t>(r), iab});  // a repeat: the last wins, as in HF
  }
  if (!spec.unk_token.empty()) unk_ = find(spec.unk_token, "unk_token");
  if (!spec.bos_token.empty()) bos_ = find(spec.bos_token, "BOS token");
  if (!spec.eos_token.empty()) eos_ = find(spec.eos_token, "EOS token");
  for (int32_t id : {bos_, eos_})
    if (id >= 0) special_[id] = true;

  std::stable_sort(added_.begin(), added_.end(),
                   [](const AddedToken& x, const AddedToken& y) { return x.content.size() > y.content.size(); });
  for (const auto& a : added_) added_first_byte_[static_cast<uint8_t>(a.content[0])] = true;
}

void BpeTokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= vocab_size()) fail("token id {} is out of range [0, {}) of tokenizer '{}'", id, vocab_size(), source_);
}

const AddedToken* BpeTokenizer::added_at(std::string_view text, size_t pos) const {
  if (!added_first_byte_[static_cast<uint8_t>(text[pos])]) return nullptr;
  for (const auto& a : added_) {
    if (text.compare(pos, a.content.size(), a.content) != 0) continue;
    if (a.single_word) {
      const size_t end = pos + a.content.size();
      if ((pos > 0 && is_word_byte(text[pos - 1])) || (end < text.size() && is_word_byte(text[end]))) continue;
    }
    return &a;
  }
  return nullptr;
}

std::vector<int32_t> BpeTokenizer::encode(const std::string& raw, bool add_bos, bool add_eos) const {
  std::vector<int32_t> ids;
  ids.reserve(raw.size() / 3 + 2);
  if (add_bos && bos_ >= 0) ids.push_back(bos_);
  std::string sanitized;
  std::string_view text(raw);
  if (!unicode::is_valid_utf8(text)) {
    sanitized = unicode::sanitize_utf8(text);
    text = sanitized;
  }
  size_t seg_begin = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const AddedToken* a = added_.empty() ? nullptr : added_at(text, pos);
    if (!a) {
      ++pos;
      continue;
    }
    size_t seg_end = pos;
    size_t next = pos + a->content.size();
    if (a->lstrip)
      while (seg_end > seg_begin && is_ascii_space(text[seg_end - 1])) --seg_end;
    if (a->rstrip)
      while (next < text.size() && is_ascii_space(text[next])) ++next;
    encode_segment(text.substr(seg_begin, seg_end - seg_begin), ids);
    ids.push_back(a->id);
    seg_begin = pos = next;
  }
  encode_segment(text.substr(seg_begin), ids);
  if (add_eos && eos_ >= 0) ids.push_back(eos_);
  return ids;
}

void BpeTokenizer::encode_segment(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::vector<std::string> words;
  pre_.split(text, words);
  for (const auto& w : words) encode_word(w, out);
}

void BpeTokenizer::encode_word(const std::string& word, std::vector<int32_t>& out) const {
  const bool cacheable = word.size() <= kCacheMaxWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  if (ignore_merges_) {
    auto it = vocab_.find(unicode::byte_level_encode(word));
    if (it != vocab_.end()) ids.push_back(it->second);
  }
  if (ids.empty()) merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kCacheMaxEntries) cache_.clear();
    cache_.emplace(word, std::move(ids));
  }
}

void BpeTokenizer::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // neighbours in the list, -1 at the ends
    bool alive;
  };
  std::vector<Symbol> syms;
  syms.reserve(word.size());
  for (char c : word) {
    int32_t id = byte_id_[static_cast<uint8_t>(c)];
    if (id < 0) {
      if (unk_ < 0) continue;  // Hugging Face drops bytes it cannot represent when there is no unk
      id = unk_;
    }
    const auto n = static_cast<int32_t>(syms.size());
    syms.push_back({id, n - 1, -1, true});
    if (n > 0) syms[n - 1].next = n;
  }
  if (syms.empty()) return;

  struct Candidate {
    int32_t rank, pos, right, left_id, right_id, new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  const auto push = [&](int32_t left) {
    const int32_t right = syms[left].next;
    if (right < 0) return;
    auto it = merges_.find(pair_key(syms[left].id, syms[right].id));
    if (it == merges_.end()) return;
    queue.push({it->second.rank, left, right, syms[left].id, syms[right].id, it->second.id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) push(i);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = syms[c.pos];
    if (!left.alive || left.next != c.right || left.id != c.left_id) continue;
    Symbol& right = syms[c.right];
    if (!right.alive || right.id != c.right_id) continue;
    left.id = c.new_id;
    left.next = right.next;
    if (right.next >= 0) syms[right.next].prev = c.pos;
    right.alive = false;
    if (left.prev >= 0) push(left.prev);
    push(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    check_id(id);
    out += bytes_[id];
  }
  return out;
}

std::string BpeTokenizer::decode_piece(int32_t /*prev*/, int32_t id) const {
  check_id(id);
  return bytes_[id];
}

int32_t BpeTokenizer::token_to_id(const std::string& token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

std::string BpeTokenizer::id_to_token(int32_t id) const {
  check_id(id);
  return tokens_[id];
}

bool BpeTokenizer::is_special(int32_t id) const {
  check_id(id);
  return special_[id];
}

VocabularyExport BpeTokenizer::export_vocabulary() const {
  VocabularyExport v;
  v.kind = VocabularyExport::Kind::ByteLevelBpe;
  v.tokens = tokens_;
  v.scores.assign(tokens_.size(), 0.0f);
  v.types.assign(tokens_.size(), 1);
  for (size_t i = 0; i < tokens_.size(); ++i)
    if (tokens_[i].empty()) v.types[i] = 5;
  for (const auto& a : added_) v.types[a.id] = a.special ? 3 : 4;
  std::vector<std::pair<int32_t, std::string>> ranked;
  ranked.reserve(merges_.size());
  for (const auto& [key, m] : merges_) {
    const auto a = static_cast<int32_t>(key >> 32), b = static_cast<int32_t>(key & 0xffffffffu);
    ranked.emplace_back(m.rank, tokens_[a] + " " + tokens_[b]);
  }
  std::sort(ranked.begin(), ranked.end());
  for (auto& r : ranked) v.merges.push_back(std::move(r.second));
  v.unk_id = unk_;
  v.split_patterns = pre_.patterns();
  return v;
}

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(BpeSpec spec) { return std::make_unique<BpeTokenizer>(std::move(spec)); }

}  // namespace dsk::tok
