// Packing: tokenized documents -> fixed windows of seq_len + 1 tokens with a target mask.
//
// A window w holds seq_len + 1 ids: inputs = w[0:seq_len], targets = w[1:seq_len+1].
// mask[j] = 1 when target w[j+1] counts in the loss (0 for prompt tokens, BOS and padding).
//   pack_documents      training/eval windows: the document stream cut every seq_len tokens
//                       (consecutive windows share one token), or one document per window
//   make_eval_windows   the `dsk eval` protocol: strided sliding windows, every target
//                       scored exactly once (docs/data.md)
#pragma once

#include <cstdint>
#include <vector>

#include "data/source.h"

namespace dsk::data {

struct Windows {
  int seq_len = 0;
  std::vector<int32_t> tokens;  // (count, seq_len + 1)
  std::vector<uint8_t> mask;    // (count, seq_len)

  int64_t count() const { return seq_len > 0 ? static_cast<int64_t>(mask.size()) / seq_len : 0; }
  const int32_t* window(int64_t i) const { return tokens.data() + i * (seq_len + 1); }
  const uint8_t* window_mask(int64_t i) const { return mask.data() + i * seq_len; }
  int64_t loss_tokens() const;  // number of mask entries equal to 1
  // FNV-1a hash of seq_len, tokens and mask: a checkpoint records it to detect changed data.
  uint64_t fingerprint() const;
};

// Pad id used past the end of a document/stream (always masked).
inline constexpr int32_t kPadId = 0;

// All documents back to back, masks included.
Document concat_documents(const std::vector<Document>& docs);

// pack = true: the concatenated stream is cut into windows starting every seq_len tokens
// (window k = stream[k*seq_len, k*seq_len + seq_len]). The final partial window is dropped
// when drop_last (training), else padded with kPadId and mask 0 (eval).
// pack = false: one window per document holding its first seq_len + 1 tokens (the rest is
// dropped), padded; documents with fewer than 2 tokens give no window.
Windows pack_documents(const std::vector<Document>& docs, int seq_len, bool pack, bool drop_last);

// Sliding windows over one stream with `stride` (0 = seq_len: non-overlapping). Window k
// starts at k*stride; the first window scores all its targets, each later one only its last
// `stride` targets, so every stream position 1..n-1 with stream.mask = 1 is scored exactly
// once, with at least seq_len - stride tokens of context except in the first window.
Windows make_eval_windows(const Document& stream, int seq_len, int stride = 0);

}  // namespace dsk::data
