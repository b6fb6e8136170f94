// Packing documents into windows and the eval sliding-window protocol.
#include "data/pack.h"

#include <map>

#include "data_test_util.h"

using namespace dsk::data;
using dsk::test::error_of;
using Catch::Matchers::Contains;

namespace {

// A document whose ids are first, first+1, ...; mask 1 except where `masked` says.
Document seq_doc(int32_t first, int n, std::vector<int> masked = {}) {
  Document d;
  for (int i = 0; i < n; ++i) {
    d.ids.push_back(first + i);
    d.mask.push_back(1);
  }
  for (int i : masked) d.mask[i] = 0;
  return d;
}

std::vector<int32_t> window_ids(const Windows& w, int64_t k) {
  return std::vector<int32_t>(w.window(k), w.window(k) + w.seq_len + 1);
}
std::vector<uint8_t> window_mask(const Windows& w, int64_t k) {
  return std::vector<uint8_t>(w.window_mask(k), w.window_mask(k) + w.seq_len);
}

}  // namespace

TEST_CASE("pack: windows of seq_len + 1, cut every seq_len tokens, final partial dropped", "[data][pack]") {
  // Stream 10..20 (11 tokens), seq_len 4: windows start at 0 and 4; (11 - 1) / 4 = 2 full ones.
  std::vector<Document> docs = {seq_doc(10, 5), seq_doc(15, 6)};
  Windows w = pack_documents(docs, 4, true, true);
  REQUIRE(w.count() == 2);
  CHECK(w.tokens.size() == 2 * 5);
  CHECK(window_ids(w, 0) == std::vector<int32_t>{10, 11, 12, 13, 14});
  CHECK(window_ids(w, 1) == std::vector<int32_t>{14, 15, 16, 17, 18});
  CHECK(w.loss_tokens() == 8);
  // Targets are the inputs shifted by one: target j of window k is stream[4k + j + 1].
  for (int64_t k = 0; k < w.count(); ++k)
    for (int j = 0; j < 4; ++j) CHECK(w.window(k)[j + 1] == 10 + 4 * k + j + 1);

  // Eval (no drop): the partial window is padded with kPadId and mask 0.
  Windows e = pack_documents(docs, 4, true, false);
  REQUIRE(e.count() == 3);
  CHECK(window_ids(e, 2) == std::vector<int32_t>{18, 19, 20, kPadId, kPadId});
  CHECK(window_mask(e, 2) == std::vector<uint8_t>{1, 1, 0, 0});
  CHECK(e.loss_tokens() == 10);  // every token but the first is a target once

  // An exact fit has no partial window.
  CHECK(pack_documents({seq_doc(0, 9)}, 4, true, false).count() == 2);
  CHECK(pack_documents({seq_doc(0, 1)}, 4, true, false).count() == 0);
}

TEST_CASE("pack: BOS/EOS placement and masks from real documents", "[data][pack]") {
  dsk::test::FakeTokenizer tok;
  auto path = dsk::test::write_scratch("data_pack_bos", "t.jsonl",
                                       "{\"text\": \"ab\"}\n{\"prompt\": \"P\", \"response\": \"cd\"}\n");
  DataSpec spec;
  spec.path = path;
  spec.format = "jsonl";
  auto docs = load_documents(spec, tok);
  // Stream: BOS a b EOS | BOS P c d EOS  (9 tokens); seq_len 8 -> one window.
  Windows w = pack_documents(docs, 8, true, true);
  REQUIRE(w.count() == 1);
  const int32_t a = 'a' + 3, b = 'b' + 3, P = 'P' + 3, c = 'c' + 3, d = 'd' + 3;
  CHECK(window_ids(w, 0) == std::vector<int32_t>{1, a, b, 2, 1, P, c, d, 2});
  // Targets: a b EOS BOS P c d EOS -> BOS and the prompt token P are not scored.
  CHECK(window_mask(w, 0) == std::vector<uint8_t>{1, 1, 1, 0, 0, 1, 1, 1});
}

TEST_CASE("pack: false gives one truncated/padded window per document", "[data][pack]") {
  std::vector<Document> docs = {seq_doc(10, 3), seq_doc(20, 9, {1}), seq_doc(40, 1), seq_doc(50, 5)};
  Windows w = pack_documents(docs, 4, false, true);
  REQUIRE(w.count() == 3);  // the 1-token document has no target
  CHECK(window_ids(w, 0) == std::vector<int32_t>{10, 11, 12, kPadId, kPadId});
  CHECK(window_mask(w, 0) == std::vector<uint8_t>{1, 1, 0, 0});
  CHECK(window_ids(w, 1) == std::vector<int32_t>{20, 21, 22, 23, 24});  // truncated to seq_len + 1
  CHECK(window_mask(w, 1) == std::vector<uint8_t>{0, 1, 1, 1});         // id 21 masked in the doc
  CHECK(window_ids(w, 2) == std::vector<int32_t>{50, 51, 52, 53, 54});
  CHECK(window_mask(w, 2) == std::vector<uint8_t>{1, 1, 1, 1});
}

TEST_CASE("eval windows score every target exactly once with the documented context", "[data][eval]") {
  for (int n : {2, 3, 9, 10, 11, 17, 40}) {
    for (int L : {1, 4, 8}) {
      for (int stride : {0, 1, 2, 3, L}) {
        if (stride > L) continue;
        INFO("n " << n << " seq_len " << L << " stride " << stride);
        Document s = seq_doc(100, n);
        Windows w = make_eval_windows(s, L, stride);
        const int S = stride == 0 ? L : stride;
        std::map<int64_t, int> scored;
        for (int64_t k = 0; k < w.count(); ++k) {
          const int64_t start = k * S;
          for (int j = 0; j <= L; ++j) {
            int64_t p = start + j;
            CHECK(w.window(k)[j] == (p < n ? 100 + p : kPadId));
          }
          for (int j = 0; j < L; ++j) {
            if (!w.window_mask(k)[j]) continue;
            ++scored[start + j + 1];
            if (k > 0) CHECK(j >= L - S);  // at least seq_len - stride tokens of context
          }
        }
        CHECK(scored.size() == static_cast<size_t>(n - 1));
        for (const auto& [pos, times] : scored) {
          CHECK(pos >= 1);
          CHECK(pos < n);
          CHECK(times == 1);
        }
        // No window past the one that scores the last target.
        if (w.count() >= 2) CHECK((w.count() - 2) * S + L < n - 1);
      }
    }
  }
}

TEST_CASE("eval windows: stride 0 equals padded packing - masked tokens are not scored", "[data][eval]") {
  Document s = seq_doc(5, 23, {0, 7, 8});
  Windows e = make_eval_windows(s, 6, 0);
  Windows p = pack_documents({s}, 6, true, false);
  CHECK(e.tokens == p.tokens);
  CHECK(e.mask == p.mask);
  CHECK(e.loss_tokens() == 22 - 2);  // positions 7 and 8 masked; 0 is never a target
  CHECK(make_eval_windows(s, 6, 2).loss_tokens() == 20);
  CHECK(make_eval_windows(seq_doc(0, 1), 6).count() == 0);

  auto err = error_of([&] { make_eval_windows(s, 6, 7); });
  CHECK(err.exit_code() == dsk::kExitUsage);
  CHECK_THAT(err.message(), Contains("stride 7"));
  CHECK_THAT(error_of([&] { pack_documents({s}, 0, true, true); }).hint(), Contains("data.seq_len"));
}

TEST_CASE("windows fingerprint changes with tokens, mask and seq_len", "[data][pack]") {
  Windows a = pack_documents({seq_doc(0, 20)}, 4, true, true);
  Windows b = a;
  CHECK(a.fingerprint() == b.fingerprint());
  b.mask[3] = 0;
  CHECK(a.fingerprint() != b.fingerprint());
  b = a;
  b.tokens[7] += 1;
  CHECK(a.fingerprint() != b.fingerprint());
  CHECK(pack_documents({seq_doc(0, 20)}, 3, true, true).fingerprint() != a.fingerprint());
}
