// GPTQ packing: round trips over every width, group size and ragged shape; the packed words
// against AutoGPTQ's layout written out word by word; hand-computed bit patterns; and malformed
// tensors in both directions, which must fail naming the tensor.
//
// LibTorch before Catch2: c10's logging header defines a CHECK macro of its own.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "core/error.h"
#include "quant/pack.h"
#include "test_util.h"

using Catch::Matchers::Contains;
using dsk::quant::dequantize;
using dsk::quant::GptqTensors;
using dsk::quant::pack_gptq;
using dsk::quant::QWeight;
using dsk::quant::unpack_gptq;
using dsk::test::error_of;

namespace {

int64_t num_groups(int64_t K, int64_t group_size) { return group_size > 0 ? (K + group_size - 1) / group_size : 1; }

// A QWeight with random codes, random positive float16-exact scales (one for all rows when
// per-tensor) and zero points 2^(bits-1) (symmetric) or random, including 0 and 2^bits - 1.
QWeight random_qweight(int bits, int64_t group_size, int64_t N, int64_t K, bool symmetric, std::mt19937& rng) {
  const int64_t G = num_groups(K, group_size);
  const int maxq = (1 << bits) - 1;
  std::uniform_int_distribution<int> code(0, maxq);
  std::uniform_real_distribution<float> scale(1e-3f, 2.0f);
  QWeight w;
  w.bits = bits;
  w.group_size = group_size;
  w.q = at::empty({N, K}, at::kByte);
  w.scales = at::empty({N, G}, at::kFloat);
  w.zeros = at::empty({N, G}, at::kInt);
  w.g_idx = at::empty({K}, at::kInt);
  for (int64_t i = 0; i < N * K; ++i) w.q.data_ptr<uint8_t>()[i] = static_cast<uint8_t>(code(rng));
  const float shared = static_cast<float>(at::Half(scale(rng)));
  for (int64_t i = 0; i < N * G; ++i) {
    w.scales.data_ptr<float>()[i] = group_size == -1 ? shared : static_cast<float>(at::Half(scale(rng)));
    w.zeros.data_ptr<int32_t>()[i] = symmetric ? 1 << (bits - 1) : code(rng);
  }
  if (!symmetric) {
    w.zeros.data_ptr<int32_t>()[0] = 0;  // min == 0 in asymmetric RTN: the v1 wrap case
    w.zeros.data_ptr<int32_t>()[N * G - 1] = maxq;
  }
  for (int64_t k = 0; k < K; ++k) w.g_idx.data_ptr<int32_t>()[k] = static_cast<int32_t>(group_size > 0 ? k / group_size : 0);
  return w;
}

uint32_t word(const at::Tensor& t, int64_t r, int64_t c) { return static_cast<uint32_t>(t[r][c].item<int32_t>()); }

// AutoGPTQ's packing of `codes` (a multiple of 32 / bits, of 32 for 3 bits), spelled out the
// way its QuantLinear.pack describes it: for 2/4/8 bits value j of word i is element
// i * (32 / bits) + j at bit j * bits; for 3 bits each 32 elements fill 3 words, 10 per word at
// bits 3j, 3j + 1, 3j + 2, with elements 10 and 21 split over a word boundary.
std::vector<uint32_t> autogptq_words(const std::vector<uint32_t>& c, int bits) {
  std::vector<uint32_t> w;
  if (bits != 3) {
    const size_t per = 32 / bits;
    for (size_t i = 0; i < c.size() / per; ++i) {
      uint32_t x = 0;
      for (size_t j = 0; j < per; ++j) x |= c[i * per + j] << (j * bits);
      w.push_back(x);
    }
    return w;
  }
  for (size_t b = 0; b < c.size(); b += 32) {
    uint32_t w0 = 0, w1 = 0, w2 = 0;
    for (int j = 0; j < 10; ++j) w0 |= c[b + j] << (3 * j);
    w0 |= c[b + 10] << 30;
    w1 |= (c[b + 10] >> 2) & 1;
    for (int j = 0; j < 10; ++j) w1 |= c[b + 11 + j] << (3 * j + 1);
    w1 |= c[b + 21] << 31;
    w2 |= (c[b + 21] >> 1) & 3;
    for (int j = 0; j < 10; ++j) w2 |= c[b + 22 + j] << (3 * j + 2);
    w.insert(w.end(), {w0, w1, w2});
  }
  return w;
}

// A QWeight of one group, zero points 2^(bits-1), scales 1, with the given codes [N, K].
QWeight with_codes(int bits, const std::vector<std::vector<int>>& codes) {
  const int64_t N = static_cast<int64_t>(codes.size()), K = static_cast<int64_t>(codes[0].size());
  QWeight w;
  w.bits = bits;
  w.group_size = 0;
  w.q = at::empty({N, K}, at::kByte);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) w.q.data_ptr<uint8_t>()[n * K + k] = static_cast<uint8_t>(codes[n][k]);
  }
  w.scales = at::ones({N, 1}, at::kFloat);
  w.zeros = at::full({N, 1}, 1 << (bits - 1), at::kInt);
  w.g_idx = at::zeros({K}, at::kInt);
  return w;
}

}  // namespace

TEST_CASE("pack: every width, group size and ragged shape round-trips", "[pack]") {
  std::mt19937 rng(1234);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{172, 64}, {64, 172}, {37, 5}, {1, 1}};  // {K, N}
  for (int bits : {2, 3, 4, 8}) {
    for (int64_t gs : {int64_t{-1}, int64_t{0}, int64_t{16}, int64_t{32}, int64_t{128}}) {
      for (auto [K, N] : shapes) {
        for (bool sym : {true, false}) {
          CAPTURE(bits, gs, K, N, sym);
          const QWeight w = random_qweight(bits, gs, N, K, sym, rng);
          const GptqTensors t = pack_gptq(w);
          const int64_t G = num_groups(K, gs);
          REQUIRE(t.qweight.sizes() == at::IntArrayRef({(K * bits + 31) / 32, N}));
          REQUIRE(t.qzeros.sizes() == at::IntArrayRef({G, (N * bits + 31) / 32}));
          REQUIRE(t.scales.sizes() == at::IntArrayRef({G, N}));
          REQUIRE(t.qweight.scalar_type() == at::kInt);
          REQUIRE(t.qzeros.scalar_type() == at::kInt);
          REQUIRE(t.scales.scalar_type() == at::kHalf);
          REQUIRE(t.g_idx.scalar_type() == at::kInt);
          REQUIRE(t.zero_wraps == w.zeros.eq(0).sum().item<int64_t>());

          // Padding bits of the last qweight row are zero.
          const int64_t used = (K * bits) % 32;
          if (used != 0) {
            for (int64_t n = 0; n < N; ++n) REQUIRE((word(t.qweight, t.qweight.size(0) - 1, n) >> used) == 0u);
          }

          const QWeight u = unpack_gptq(t, bits, K, N, gs);
          REQUIRE(u.bits == bits);
          REQUIRE(u.group_size == gs);
          REQUIRE(at::equal(u.q, w.q));
          REQUIRE(at::equal(u.zeros, w.zeros));
          REQUIRE(at::equal(u.g_idx, w.g_idx));
          REQUIRE(at::equal(u.scales, w.scales));
          REQUIRE(at::equal(dequantize(u), dequantize(w)));
        }
      }
    }
  }
}

TEST_CASE("pack: qweight and qzeros match AutoGPTQ's word layout", "[pack]") {
  std::mt19937 rng(99);
  for (int bits : {2, 3, 4, 8}) {
    CAPTURE(bits);
    const int64_t K = 128, N = 96;  // multiples of 32: no padding, AutoGPTQ's own shapes
    const QWeight w = random_qweight(bits, 32, N, K, false, rng);
    const GptqTensors t = pack_gptq(w);
    for (int64_t n = 0; n < N; ++n) {
      std::vector<uint32_t> col;
      for (int64_t k = 0; k < K; ++k) col.push_back(w.q[n][k].item<uint8_t>());
      const std::vector<uint32_t> ref = autogptq_words(col, bits);
      REQUIRE(static_cast<int64_t>(ref.size()) == t.qweight.size(0));
      for (size_t i = 0; i < ref.size(); ++i) REQUIRE(word(t.qweight, static_cast<int64_t>(i), n) == ref[i]);
    }
    const uint32_t mask = (1u << bits) - 1;
    for (int64_t g = 0; g < w.groups(); ++g) {
      std::vector<uint32_t> row;
      for (int64_t n = 0; n < N; ++n) row.push_back(static_cast<uint32_t>(w.zeros[n][g].item<int32_t>() - 1) & mask);
      const std::vector<uint32_t> ref = autogptq_words(row, bits);
      for (size_t i = 0; i < ref.size(); ++i) REQUIRE(word(t.qzeros, g, static_cast<int64_t>(i)) == ref[i]);
    }
  }
}

TEST_CASE("pack: hand-computed bit patterns", "[pack]") {
  SECTION("4 bits: codes 0..7 and 8..15 down two columns") {
    QWeight w = with_codes(4, {{0, 1, 2, 3, 4, 5, 6, 7}, {8, 9, 10, 11, 12, 13, 14, 15}});
    w.zeros = at::tensor({8, 0}, at::kInt).reshape({2, 1});
    const GptqTensors t = pack_gptq(w);
    REQUIRE(t.qweight.sizes() == at::IntArrayRef({1, 2}));
    REQUIRE(word(t.qweight, 0, 0) == 0x76543210u);
    REQUIRE(word(t.qweight, 0, 1) == 0xFEDCBA98u);
    // Zero 8 is stored as 7, zero 0 as (0 - 1) & 15 = 15.
    REQUIRE(t.qzeros.sizes() == at::IntArrayRef({1, 1}));
    REQUIRE(word(t.qzeros, 0, 0) == 0xF7u);
    REQUIRE(t.zero_wraps == 1);
    const QWeight u = unpack_gptq(t, 4, 8, 2, 0);
    REQUIRE(u.zeros[0][0].item<int32_t>() == 8);
    REQUIRE(u.zeros[1][0].item<int32_t>() == 0);
  }
  SECTION("4 bits, ragged: three codes in one padded word") {
    const GptqTensors t = pack_gptq(with_codes(4, {{1, 2, 3}}));
    REQUIRE(t.qweight.sizes() == at::IntArrayRef({1, 1}));
    REQUIRE(word(t.qweight, 0, 0) == 0x321u);
  }
  SECTION("8 bits") {
    const GptqTensors t = pack_gptq(with_codes(8, {{0x01, 0x02, 0x03, 0xAB}, {0xFF, 0x00, 0x80, 0x7F}}));
    REQUIRE(word(t.qweight, 0, 0) == 0xAB030201u);
    REQUIRE(word(t.qweight, 0, 1) == 0x7F8000FFu);
    REQUIRE(word(t.qzeros, 0, 0) == 0x7F7Fu);  // zero 128 stored as 127, twice
  }
  SECTION("3 bits: codes e % 8 for e = 0..31 fill three words") {
    std::vector<int> codes;
    for (int e = 0; e < 32; ++e) codes.push_back(e % 8);
    const GptqTensors t = pack_gptq(with_codes(3, {codes}));
    REQUIRE(t.qweight.sizes() == at::IntArrayRef({3, 1}));
    REQUIRE(word(t.qweight, 0, 0) == 0x88FAC688u);
    REQUIRE(word(t.qweight, 1, 0) == 0xC688FAC6u);
    REQUIRE(word(t.qweight, 2, 0) == 0xFAC688FAu);
    REQUIRE(at::equal(unpack_gptq(t, 3, 32, 1, 0).q, with_codes(3, {codes}).q));
  }
  SECTION("3 bits, ragged: element 10 straddles the word boundary") {
    std::vector<int> codes(11, 0);
    codes[10] = 0b101;  // bits 30..32 of the stream
    const GptqTensors t = pack_gptq(with_codes(3, {codes}));
    REQUIRE(t.qweight.sizes() == at::IntArrayRef({2, 1}));
    REQUIRE(word(t.qweight, 0, 0) == 0x40000000u);
    REQUIRE(word(t.qweight, 1, 0) == 0x1u);
  }
  SECTION("dequantize: (q - zero) * scale") {
    QWeight w = with_codes(4, {{5, 8, 15}});
    w.scales.fill_(0.5f);
    const at::Tensor d = dequantize(w);
    REQUIRE(d.scalar_type() == at::kFloat);
    REQUIRE(at::equal(d, at::tensor({-1.5f, 0.0f, 3.5f}).reshape({1, 3})));
  }
}

TEST_CASE("pack: act-order g_idx, missing g_idx and padding bits on unpack", "[pack]") {
  std::mt19937 rng(7);
  const int64_t K = 172, N = 64, gs = 32;
  QWeight w = random_qweight(4, gs, N, K, true, rng);
  // desc_act: groups follow a permutation of the columns.
  std::vector<int32_t> perm(K);
  for (int64_t k = 0; k < K; ++k) perm[k] = static_cast<int32_t>(k / gs);
  std::shuffle(perm.begin(), perm.end(), rng);
  w.g_idx = at::tensor(perm, at::kInt);
  GptqTensors t = pack_gptq(w);
  REQUIRE(at::equal(unpack_gptq(t, 4, K, N, gs).g_idx, w.g_idx));
  REQUIRE(at::equal(dequantize(unpack_gptq(t, 4, K, N, gs)), dequantize(w)));

  SECTION("g_idx absent: k / group_size") {
    t.g_idx = at::Tensor();
    const QWeight u = unpack_gptq(t, 4, K, N, gs);
    REQUIRE(at::equal(u.g_idx, at::arange(K, at::kLong).div(gs, "floor").to(at::kInt)));
  }
  SECTION("garbage in the padding bits is ignored") {
    // K = 172 codes of 4 bits fill 21.5 words: the top 16 bits of the last one are padding.
    at::Tensor dirty = t.qweight.clone();
    dirty[21].bitwise_or_(static_cast<int32_t>(0xABCD0000u));
    t.qweight = dirty;
    REQUIRE(at::equal(unpack_gptq(t, 4, K, N, gs).q, w.q));
  }
}

TEST_CASE("pack: malformed QWeight fails naming the problem", "[pack]") {
  std::mt19937 rng(3);
  const QWeight good = random_qweight(4, 16, 8, 40, false, rng);
  auto err = [](const QWeight& w) { return error_of([&] { pack_gptq(w); }); };

  QWeight w = good;
  w.q = good.q.clone();
  w.q[2][5] = 16;
  dsk::Error e = err(w);
  REQUIRE(e.exit_code() == dsk::kExitRuntime);
  REQUIRE_THAT(e.message(), Contains("'q'") && Contains("16 at [2, 5]") && Contains("outside [0, 15]"));
  // dequantize validates the same way.
  REQUIRE_THAT(error_of([&] { dequantize(w); }).message(), Contains("'q'"));

  w = good;
  w.bits = 5;
  REQUIRE_THAT(err(w).message(), Contains("bits = 5"));

  w = good;
  w.zeros = good.zeros.clone();
  w.zeros[0][1] = 16;
  REQUIRE_THAT(err(w).message(), Contains("'zeros'") && Contains("zero point 16"));

  w = good;
  w.g_idx = good.g_idx.clone();
  w.g_idx[39] = 3;  // G = 3
  REQUIRE_THAT(err(w).message(), Contains("'g_idx'") && Contains("group 3") && Contains("outside [0, 2]"));

  w = good;
  w.scales = good.scales.narrow(1, 0, 2).contiguous();
  REQUIRE_THAT(err(w).message(), Contains("'scales' has shape [8, 2], expected [8, 3]"));

  w = good;
  w.zeros = good.zeros.to(at::kLong);
  REQUIRE_THAT(err(w).message(), Contains("'zeros' has dtype int64, expected int32"));

  w = good;
  w.scales = good.scales.clone();
  w.scales[1][1] = 1e6f;
  REQUIRE_THAT(err(w).message(), Contains("'scales'") && Contains("float16"));

  w = good;
  w.scales = good.scales.clone();
  w.scales[1][1] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THAT(err(w).message(), Contains("'scales'") && Contains("non-finite"));

  w = random_qweight(4, -1, 8, 40, true, rng);
  w.scales[3][0] = 7.0f;
  REQUIRE_THAT(err(w).message(), Contains("'scales'") && Contains("per-tensor"));
}

TEST_CASE("pack: malformed GPTQ tensors fail naming the tensor", "[pack]") {
  std::mt19937 rng(5);
  const int64_t K = 172, N = 64, gs = 32;
  const GptqTensors good = pack_gptq(random_qweight(4, gs, N, K, true, rng));
  auto err = [&](const GptqTensors& t, int bits = 4) { return error_of([&] { unpack_gptq(t, bits, K, N, gs); }); };

  GptqTensors t = good;
  t.qweight = good.qweight.narrow(0, 0, 21).contiguous();
  dsk::Error e = err(t);
  REQUIRE(e.exit_code() == dsk::kExitRuntime);
  REQUIRE_THAT(e.message(), Contains("'qweight' has shape [21, 64], expected [22, 64]") &&
                                Contains("ceil(K * bits / 32) = 22 rows for K = 172, bits = 4"));

  // The same tensors read as 8-bit: the row count gives it away.
  REQUIRE_THAT(err(good, 8).message(), Contains("'qweight'") && Contains("expected [43, 64]"));
  REQUIRE_THAT(err(good, 6).message(), Contains("bits = 6"));

  t = good;
  t.qweight = at::Tensor();
  REQUIRE_THAT(err(t).message(), Contains("'qweight' is missing"));

  t = good;
  t.qzeros = good.qzeros.narrow(1, 0, 7).contiguous();
  REQUIRE_THAT(err(t).message(), Contains("'qzeros' has shape [6, 7], expected [6, 8]"));

  t = good;
  t.scales = good.scales.to(at::kFloat);
  REQUIRE_THAT(err(t).message(), Contains("'scales' has dtype float32, expected float16"));

  t = good;
  t.scales = good.scales.narrow(0, 0, 5).contiguous();
  REQUIRE_THAT(err(t).message(), Contains("'scales' has shape [5, 64], expected [6, 64]"));

  t = good;
  t.g_idx = good.g_idx.clone();
  t.g_idx[100] = 6;
  REQUIRE_THAT(err(t).message(), Contains("'g_idx'") && Contains("group 6 at [100]"));

  t = good;
  t.g_idx = good.g_idx.to(at::kLong);
  REQUIRE_THAT(err(t).message(), Contains("'g_idx' has dtype int64, expected int32"));
}
