// Packing documents into windows of seq_len + 1 tokens, and the eval sliding-window protocol.
#include "data/pack.h"

#include <algorithm>

#include "core/error.h"
#include "core/log.h"

namespace dsk::data {
namespace {

void check_seq_len(int seq_len) {
  if (seq_len < 1) fail_usage_hint(fmt::format("seq_len is {}", seq_len), "set data.seq_len to at least 1");
}

// Appends the window src[start, start + seq_len] (padded past the end). The target at source
// position p = start + j + 1 keeps src.mask[p] when first_scored <= p < len, else 0.
void append_window(Windows& w, const Document& src, int64_t start, int64_t len, int64_t first_scored) {
  const int64_t L = w.seq_len;
  for (int64_t j = 0; j <= L; ++j) {
    int64_t p = start + j;
    w.tokens.push_back(p < len ? src.ids[p] : kPadId);
  }
  for (int64_t j = 0; j < L; ++j) {
    int64_t p = start + j + 1;
    w.mask.push_back(p >= first_scored && p < len ? src.mask[p] : 0);
  }
}

}  // namespace

int64_t Windows::loss_tokens() const { return std::count(mask.begin(), mask.end(), uint8_t{1}); }

uint64_t Windows::fingerprint() const {
  uint64_t h = 0xcbf29ce484222325ULL;
  auto mix = [&h](uint32_t v, int bytes) {
    for (int k = 0; k < bytes; ++k) h = (h ^ ((v >> (8 * k)) & 0xFF)) * 0x100000001b3ULL;
  };
  mix(static_cast<uint32_t>(seq_len), 4);
  for (int32_t t : tokens) mix(static_cast<uint32_t>(t), 4);
  for (uint8_t m : mask) mix(m, 1);
  return h;
}

Document concat_documents(const std::vector<Document>& docs) {
  Document out;
  size_t n = 0;
  for (const auto& d : docs) n += d.size();
  out.ids.reserve(n);
  out.mask.reserve(n);
  for (const auto& d : docs) {
    out.ids.insert(out.ids.end(), d.ids.begin(), d.ids.end());
    out.mask.insert(out.mask.end(), d.mask.begin(), d.mask.end());
  }
  return out;
}

Windows pack_documents(const std::vector<Document>& docs, int seq_len, bool pack, bool drop_last) {
  check_seq_len(seq_len);
  Windows w;
  w.seq_len = seq_len;
  const int64_t L = seq_len;
  if (!pack) {
    int64_t truncated = 0;
    for (const auto& d : docs) {
      const auto n = static_cast<int64_t>(d.size());
      if (n < 2) continue;
      if (n > L + 1) ++truncated;
      append_window(w, d, 0, std::min(n, L + 1), 1);
    }
    if (truncated > 0)
      log::warn("data: {} of {} documents are longer than seq_len + 1 = {} tokens and were truncated (pack: false)",
                truncated, docs.size(), L + 1);
    return w;
  }
  const Document stream = concat_documents(docs);
  const auto n = static_cast<int64_t>(stream.size());
  if (n < 2) return w;
  int64_t count = (n - 1) / L;
  if (!drop_last && (n - 1) % L != 0) ++count;
  for (int64_t k = 0; k < count; ++k) append_window(w, stream, k * L, n, k * L + 1);
  return w;
}

Windows make_eval_windows(const Document& stream, int seq_len, int stride) {
  check_seq_len(seq_len);
  if (stride == 0) stride = seq_len;
  if (stride < 1 || stride > seq_len)
    fail_usage_hint(fmt::format("eval stride {} is outside [1, seq_len = {}]", stride, seq_len),
                    "set data.stride between 1 and data.seq_len (0 = seq_len: non-overlapping windows)");
  Windows w;
  w.seq_len = seq_len;
  const int64_t L = seq_len, S = stride, n = static_cast<int64_t>(stream.size());
  if (n < 2) return w;
  for (int64_t k = 0;; ++k) {
    const int64_t start = k * S;
    append_window(w, stream, start, n, k == 0 ? 1 : start + L - S + 1);
    if (start + L >= n - 1) break;
  }
  return w;
}

}  // namespace dsk::data
