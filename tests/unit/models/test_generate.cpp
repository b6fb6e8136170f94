// KV-cache generation and sampling.
#include <ATen/ATen.h>

#include <array>

#include "models/generate.h"
#include "models_test_util.h"
#include "test_util.h"

using namespace dsk;
using namespace dsk::models;
using dsk::test::error_of;
using dsk::test::random_model;
using dsk::test::tiny_config;

namespace {

// Greedy decoding without a cache: the full sequence is re-run for every token.
std::vector<int32_t> greedy_reference(Llama& m, std::vector<int32_t> ids, int n) {
  at::NoGradGuard no_grad;
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    std::vector<int64_t> ids64(ids.begin(), ids.end());
    at::Tensor logits = m->forward(at::tensor(ids64, at::kLong).view({1, -1}));
    int32_t next = static_cast<int32_t>(logits[0][-1].argmax().item<int64_t>());
    out.push_back(next);
    ids.push_back(next);
  }
  return out;
}

}  // namespace

TEST_CASE("greedy KV-cache generation equals re-running the full sequence", "[generate]") {
  Llama m = random_model(tiny_config(RopeStyle::Interleaved), 40);
  SampleOptions opt;
  opt.max_new_tokens = 25;
  std::vector<int32_t> streamed;
  auto out = generate(m, {1, 5, 9}, opt, /*eos_id=*/-1, [&](int32_t t) { streamed.push_back(t); });
  CHECK(out.size() == 25);
  CHECK(out == greedy_reference(m, {1, 5, 9}, 25));
  CHECK(streamed == out);
}

TEST_CASE("generation stops at EOS, max_new_tokens and the model's maximum length", "[generate]") {
  Llama m = random_model(tiny_config(), 41);
  SampleOptions opt;
  opt.max_new_tokens = 10;
  auto ref = generate(m, {1}, opt, -1);
  REQUIRE(ref.size() == 10);
  // Stop at the first occurrence of the third token; EOS itself is not returned.
  int32_t eos = ref[2];
  size_t first = std::find(ref.begin(), ref.end(), eos) - ref.begin();
  auto stopped = generate(m, {1}, opt, eos);
  CHECK(stopped == std::vector<int32_t>(ref.begin(), ref.begin() + first));

  opt.max_new_tokens = 100;  // max_position_embeddings 40: prompt 30 leaves 10
  std::vector<int32_t> prompt(30, 3);
  CHECK(generate(m, prompt, opt, -1).size() == 10);
  auto e = error_of([&] { generate(m, std::vector<int32_t>(40, 3), opt, -1); });
  CHECK(e.kind() == Error::Kind::Usage);
  e = error_of([&] { generate(m, {}, opt, -1); });
  CHECK(e.kind() == Error::Kind::Usage);
  opt.top_p = 0.0;
  e = error_of([&] { generate(m, {1}, opt, -1); });
  CHECK(e.message() == "generate: top_p must be in (0, 1], got 0");
}

TEST_CASE("sampling is deterministic per seed - top_k 1 is greedy", "[generate]") {
  Llama m = random_model(tiny_config(), 42);
  m->train();
  SampleOptions opt;
  opt.max_new_tokens = 30;
  opt.temperature = 1.0;
  opt.seed = 7;
  auto a = generate(m, {1}, opt, -1);
  auto b = generate(m, {1}, opt, -1);
  CHECK(a == b);
  opt.seed = 8;
  CHECK(generate(m, {1}, opt, -1) != a);
  CHECK(m->is_training());  // mode restored

  SampleOptions greedy;
  greedy.max_new_tokens = 30;
  opt.top_k = 1;
  CHECK(generate(m, {1}, opt, -1) == generate(m, {1}, greedy, -1));
}

TEST_CASE("sample_token: temperature, top-k, top-p", "[generate]") {
  // probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1
  std::array<float, 4> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  auto freq = [&](SampleOptions o, int n = 20000) {
    SampleRng rng(123);
    std::array<double, 4> f{};
    for (int i = 0; i < n; ++i) f[sample_token(logits.data(), 4, o, rng)] += 1.0 / n;
    return f;
  };
  SampleOptions o;
  o.temperature = 1.0;
  auto f = freq(o);
  CHECK(f[0] == Approx(0.5).margin(0.015));
  CHECK(f[1] == Approx(0.3).margin(0.015));
  CHECK(f[3] == Approx(0.05).margin(0.01));

  o.top_k = 2;  // renormalized: 0.625, 0.375
  f = freq(o);
  CHECK(f[0] == Approx(0.625).margin(0.015));
  CHECK(f[2] + f[3] == 0.0);

  o.top_k = 0;
  o.top_p = 0.7;  // 0.5 < 0.7 <= 0.8: keeps the top two
  f = freq(o);
  CHECK(f[0] == Approx(0.625).margin(0.015));
  CHECK(f[2] + f[3] == 0.0);

  o.top_k = 3;
  o.top_p = 0.5;  // after top-k: 0.526, 0.316, 0.158 -> the first alone reaches 0.5
  f = freq(o, 1000);
  CHECK(f[1] + f[2] + f[3] == 0.0);

  o = SampleOptions{};
  o.temperature = 0.25;  // sharpened: 0.5^4 : 0.3^4 ... -> ~0.87 for the first
  f = freq(o);
  CHECK(f[0] == Approx(0.0625 / (0.0625 + 0.0081 + 0.00050625 + 0.00000625)).margin(0.015));

  o.temperature = 0.0;
  SampleRng rng(1);
  std::array<float, 4> tie = {1.0f, 3.0f, 3.0f, 0.0f};
  CHECK(sample_token(tie.data(), 4, o, rng) == 1);
}
