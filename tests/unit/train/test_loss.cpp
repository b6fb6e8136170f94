// Cross-entropy: the plain loss against a direct float64 formula, and the chunked lm_head loss
// against the plain one (value and both gradients) for many chunk sizes.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <functional>

#include "core/error.h"
#include "test_util.h"
#include "train/loss.h"

using dsk::train::chunked_cross_entropy;
using dsk::train::cross_entropy;
using Catch::Matchers::Contains;

namespace {

double rel_err(const at::Tensor& a, const at::Tensor& b) {
  const double scale = std::max(b.abs().max().item<double>(), 1e-30);
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / scale;
}

struct Problem {
  at::Tensor hidden;   // [B,T,H]
  at::Tensor weight;   // [V,H]
  at::Tensor targets;  // [B,T]
};

Problem make_problem(at::ScalarType dt, int64_t B = 3, int64_t T = 11, int64_t H = 16, int64_t V = 37) {
  auto gen = at::detail::createCPUGenerator(11);
  Problem p;
  p.hidden = at::randn({B, T, H}, gen, at::kDouble).to(dt);
  p.weight = (at::randn({V, H}, gen, at::kDouble) * 0.5).to(dt);
  p.targets = at::randint(0, V, {B, T}, gen, at::kLong);
  // Ignored targets, including a whole row.
  p.targets.index_put_({0, 0}, -100);
  p.targets.index_put_({1, 5}, -100);
  p.targets.index_put_({2}, -100);
  return p;
}

}  // namespace

TEST_CASE("cross_entropy is the mean NLL over counted targets", "[loss]") {
  auto gen = at::detail::createCPUGenerator(5);
  at::Tensor logits = at::randn({2, 4, 9}, gen, at::kDouble);
  at::Tensor targets = at::randint(0, 9, {2, 4}, gen, at::kLong);
  targets.index_put_({1, 2}, -100);
  auto r = cross_entropy(logits, targets);
  CHECK(r.count == 7);
  double sum = 0;
  auto lg = logits.reshape({8, 9});
  auto t = targets.reshape({8});
  for (int64_t i = 0; i < 8; ++i) {
    const int64_t ti = t[i].item<int64_t>();
    if (ti == -100) continue;
    double mx = lg[i].max().item<double>(), z = 0;
    for (int64_t v = 0; v < 9; ++v) z += std::exp(lg[i][v].item<double>() - mx);
    sum += mx + std::log(z) - lg[i][ti].item<double>();
  }
  CHECK(r.loss.item<double>() == Approx(sum / 7).epsilon(1e-12));
  CHECK(r.loss.dim() == 0);
}

TEST_CASE("cross_entropy with nothing counted is 0 with a zero gradient", "[loss]") {
  for (bool chunked : {false, true}) {
    at::Tensor h = at::randn({2, 3, 4}).set_requires_grad(true);
    at::Tensor w = at::randn({5, 4}).set_requires_grad(true);
    at::Tensor t = at::full({2, 3}, -100, at::kLong);
    auto r = chunked ? chunked_cross_entropy(h, w, t, 2) : cross_entropy(at::matmul(h, w.t()), t);
    CHECK(r.count == 0);
    CHECK(r.loss.item<double>() == 0.0);
    r.loss.backward();
    CHECK(h.grad().abs().sum().item<double>() == 0.0);
    CHECK_FALSE(at::isnan(w.grad()).any().item<bool>());
  }
}

TEST_CASE("chunked cross-entropy equals the plain one: value and gradients", "[loss]") {
  for (at::ScalarType dt : {at::kDouble, at::kFloat}) {
    const double tol = dt == at::kDouble ? 1e-12 : 1e-6;
    Problem p = make_problem(dt);
    at::Tensor h0 = p.hidden.clone().set_requires_grad(true);
    at::Tensor w0 = p.weight.clone().set_requires_grad(true);
    auto plain = cross_entropy(at::matmul(h0, w0.t()), p.targets);
    plain.loss.backward();
    CHECK(plain.count == 3 * 11 - 11 - 2);
    for (int64_t chunk : {1, 4, 7, 33, 1000, 0}) {
      INFO(c10::toString(dt) << " chunk " << chunk);
      at::Tensor h = p.hidden.clone().set_requires_grad(true);
      at::Tensor w = p.weight.clone().set_requires_grad(true);
      auto r = chunked_cross_entropy(h, w, p.targets, chunk);
      CHECK(r.count == plain.count);
      CHECK(rel_err(r.loss, plain.loss) <= tol);
      (r.loss * 2.5).backward();  // a non-unit upstream gradient is honoured
      CHECK(rel_err(h.grad(), h0.grad() * 2.5) <= tol);
      CHECK(rel_err(w.grad(), w0.grad() * 2.5) <= tol);
    }
  }
}

TEST_CASE("chunked cross-entropy with a frozen lm_head and without grad mode", "[loss]") {
  Problem p = make_problem(at::kFloat);
  at::Tensor h = p.hidden.clone().set_requires_grad(true);
  auto r = chunked_cross_entropy(h, p.weight, p.targets, 5);
  r.loss.backward();
  at::Tensor h0 = p.hidden.clone().set_requires_grad(true);
  cross_entropy(at::matmul(h0, p.weight.t()), p.targets).loss.backward();
  CHECK(rel_err(h.grad(), h0.grad()) <= 1e-6);

  at::NoGradGuard no_grad;
  auto eval = chunked_cross_entropy(p.hidden, p.weight, p.targets, 3);
  CHECK_FALSE(eval.loss.requires_grad());
  CHECK(rel_err(eval.loss, r.loss.detach()) <= 1e-6);
}

TEST_CASE("cross-entropy rejects bad targets", "[loss]") {
  auto message = [](const std::function<void()>& fn) -> std::string {
    try {
      fn();
    } catch (const dsk::Error& e) {
      return e.message();
    }
    return "";
  };
  at::Tensor logits = at::randn({4, 6});
  CHECK_THAT(message([&] { cross_entropy(logits, at::tensor(std::vector<int64_t>{0, 1, 6, 2})); }),
             Contains("outside [0, 6)"));
  CHECK_THAT(message([&] { cross_entropy(logits, at::tensor(std::vector<int64_t>{0, 1, 2, 3}).to(at::kInt)); }),
             Contains("targets must be int64"));
  CHECK_THAT(message([&] { chunked_cross_entropy(at::randn({4, 5}), at::randn({6, 4}), at::zeros({4}, at::kLong)); }),
             Contains("hidden size 5 does not match"));
  CHECK_THAT(message([&] { cross_entropy(logits, at::zeros({3}, at::kLong)); }), Contains("3 targets for 4 rows"));
}

TEST_CASE("distill_loss: KL, reverse KL and JS against float64 formulas, masking and the T^2 scale", "[loss][distill]") {
  at::manual_seed(5);
  at::Tensor s = at::randn({2, 3, 7}, at::kDouble), t = at::randn({2, 3, 7}, at::kDouble);
  at::Tensor targets = at::tensor({1, 2, -100, 0, -100, 6}, at::kLong).view({2, 3});
  at::Tensor keep = targets.reshape({-1}).ne(-100);
  for (double T : {1.0, 2.0}) {
    INFO("temperature " << T);
    at::Tensor ps = at::softmax(s.reshape({-1, 7}) / T, -1), pt = at::softmax(t.reshape({-1, 7}) / T, -1);
    at::Tensor m = (ps + pt) / 2;
    auto mean_kept = [&](const at::Tensor& per) { return per.masked_select(keep).mean().item<double>() * T * T; };
    const double fwd = mean_kept((pt * (pt.log() - ps.log())).sum(-1));
    const double rev = mean_kept((ps * (ps.log() - pt.log())).sum(-1));
    const double js = mean_kept(0.5 * ((pt * (pt.log() - m.log())).sum(-1) + (ps * (ps.log() - m.log())).sum(-1)));
    using dsk::train::Divergence;
    auto got = [&](Divergence d) { return dsk::train::distill_loss(s.to(at::kFloat), t.to(at::kFloat), targets, d, T); };
    CHECK(got(Divergence::ForwardKL).count == 4);
    CHECK(got(Divergence::ForwardKL).loss.item<double>() == Approx(fwd).epsilon(1e-5));
    CHECK(got(Divergence::ReverseKL).loss.item<double>() == Approx(rev).epsilon(1e-5));
    CHECK(got(Divergence::JensenShannon).loss.item<double>() == Approx(js).epsilon(1e-5));
    CHECK(fwd != Approx(rev).epsilon(1e-3));  // the two directions differ on these logits
  }
  // identical distributions: zero loss; the gradient reaches the student only
  at::Tensor st = s.to(at::kFloat).requires_grad_(true);
  at::Tensor te = s.to(at::kFloat).requires_grad_(true);
  auto r = dsk::train::distill_loss(st, te, targets);
  CHECK(std::abs(r.loss.item<double>()) < 1e-6);
  r.loss.backward();
  CHECK(st.grad().defined());
  CHECK_FALSE(te.grad().defined());
  CHECK(dsk::train::divergence_from("js") == dsk::train::Divergence::JensenShannon);
  auto e = dsk::test::error_of([] { dsk::train::divergence_from("kl2"); });
  CHECK(e.message().find("'kl2'") != std::string::npos);
  CHECK(e.hint().find("forward_kl") != std::string::npos);
  CHECK(e.exit_code() == 2);
}

TEST_CASE("distill_loss_topk: the divergence over the teacher's top-k tokens, both renormalized", "[loss][distill]") {
  at::manual_seed(6);
  at::Tensor s = at::randn({2, 3, 9}, at::kDouble), t = at::randn({2, 3, 9}, at::kDouble);
  at::Tensor targets = at::tensor({1, -100, 3, 0, 5, -100}, at::kLong).view({2, 3});
  at::Tensor keep = targets.reshape({-1}).ne(-100);
  const int64_t k = 4;
  const double T = 2.0;
  auto [values, indices] = at::topk(t, k, -1);
  // float64 reference: gather both at the teacher's indices, softmax over the k, forward KL
  at::Tensor sk = s.gather(-1, indices).reshape({-1, k}) / T, tk = values.reshape({-1, k}) / T;
  at::Tensor ps = at::softmax(sk, -1), pt = at::softmax(tk, -1);
  const double fwd = (pt * (pt.log() - ps.log())).sum(-1).masked_select(keep).mean().item<double>() * T * T;
  const double rev = (ps * (ps.log() - pt.log())).sum(-1).masked_select(keep).mean().item<double>() * T * T;
  using dsk::train::Divergence;
  auto got = [&](Divergence d) {
    return dsk::train::distill_loss_topk(s.to(at::kFloat), values.to(at::kFloat), indices, targets, d, T);
  };
  CHECK(got(Divergence::ForwardKL).count == 4);
  CHECK(got(Divergence::ForwardKL).loss.item<double>() == Approx(fwd).epsilon(1e-5));
  CHECK(got(Divergence::ReverseKL).loss.item<double>() == Approx(rev).epsilon(1e-5));
  // k = V: the full-vocabulary loss
  auto [all_v, all_i] = at::topk(t, 9, -1);
  CHECK(dsk::train::distill_loss_topk(s.to(at::kFloat), all_v.to(at::kFloat), all_i, targets).loss.item<double>() ==
        Approx(dsk::train::distill_loss(s.to(at::kFloat), t.to(at::kFloat), targets).loss.item<double>()).epsilon(1e-5));
}

TEST_CASE("hidden_state_loss: MSE and cosine distance over the scored positions", "[loss][distill]") {
  at::manual_seed(7);
  at::Tensor s = at::randn({2, 3, 5}, at::kDouble), t = at::randn({2, 3, 5}, at::kDouble);
  at::Tensor targets = at::tensor({1, -100, 3, 0, 5, -100}, at::kLong).view({2, 3});
  at::Tensor keep = targets.reshape({-1}).ne(-100);
  at::Tensor S = s.reshape({-1, 5}), Tt = t.reshape({-1, 5});
  const double mse = (S - Tt).pow(2).mean(-1).masked_select(keep).mean().item<double>();
  const double cos = (1 - (S * Tt).sum(-1) / (S.norm(2, -1) * Tt.norm(2, -1))).masked_select(keep).mean().item<double>();
  using dsk::train::HiddenLoss;
  auto r = dsk::train::hidden_state_loss(s.to(at::kFloat), t.to(at::kFloat), targets, HiddenLoss::MSE);
  CHECK(r.count == 4);
  CHECK(r.loss.item<double>() == Approx(mse).epsilon(1e-5));
  CHECK(dsk::train::hidden_state_loss(s.to(at::kFloat), t.to(at::kFloat), targets, HiddenLoss::Cosine).loss.item<double>() ==
        Approx(cos).epsilon(1e-5));
  // the cosine distance ignores scale, MSE does not
  CHECK(dsk::train::hidden_state_loss((3 * s).to(at::kFloat), t.to(at::kFloat), targets, HiddenLoss::Cosine)
            .loss.item<double>() == Approx(cos).epsilon(1e-5));
  CHECK(dsk::train::hidden_loss_from("cosine") == HiddenLoss::Cosine);
  CHECK(dsk::test::error_of([] { dsk::train::hidden_loss_from("l1"); }).exit_code() == 2);
}
