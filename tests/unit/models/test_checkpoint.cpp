// Activation checkpointing: the same gradients as the plain backward (full and LoRA with
// dropout, whose masks the recomputation must reproduce), and no graph outside training.
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "models/checkpoint.h"
#include "models/lora.h"
#include "models_test_util.h"

using namespace dsk::models;
using dsk::test::random_model;
using dsk::test::random_tokens;
using dsk::test::tiny_config;

namespace {

// Gradients of a loss over the logits, by name, with the generator seeded the same way.
std::map<std::string, at::Tensor> grads(Llama& m, const at::Tensor& tokens, bool recompute) {
  m->zero_grad();
  m->train();
  m->activation_checkpointing = recompute;
  at::manual_seed(99);
  at::Tensor logits = m->forward(tokens);
  (logits.logsumexp(-1).mean() - logits.select(-1, 3).mean()).backward();
  std::map<std::string, at::Tensor> out;
  for (auto& item : m->named_parameters())
    if (item.value().grad().defined()) out[item.key()] = item.value().grad().clone();
  return out;
}

void require_same(const std::map<std::string, at::Tensor>& a, const std::map<std::string, at::Tensor>& b) {
  REQUIRE(a.size() == b.size());
  REQUIRE(!a.empty());
  for (auto& [name, g] : a) {
    INFO(name);
    REQUIRE(b.count(name));
    CHECK(g.abs().sum().item<double>() > 0.0);
    CHECK(at::allclose(g, b.at(name), 1e-6, 1e-7));
  }
}

}  // namespace

TEST_CASE("activation checkpointing: the gradients of every weight are those of the plain backward",
          "[checkpoint]") {
  for (bool tied : {false, true}) {
    INFO("tied " << tied);
    Llama m = random_model(tiny_config(RopeStyle::Half, tied), 31);
    at::Tensor tokens = random_tokens(2, 11, 61, 32);
    auto plain = grads(m, tokens, false);
    auto recomputed = grads(m, tokens, true);
    CHECK(plain.size() == m->parameters().size());
    require_same(plain, recomputed);
  }
}

TEST_CASE("activation checkpointing with LoRA dropout: the recomputation draws the same masks", "[checkpoint]") {
  Llama m = random_model(tiny_config(), 33);
  LoraSpec spec;
  spec.target_modules = {"q_proj", "v_proj", "down_proj"};
  spec.dropout = 0.5;
  apply_lora(m, spec);
  {
    at::NoGradGuard no_grad;
    at::manual_seed(34);
    for (auto& t : lora_parameters(m)) t.normal_(0.0, 0.3);
  }
  at::Tensor tokens = random_tokens(2, 9, 61, 35);
  auto plain = grads(m, tokens, false);
  auto recomputed = grads(m, tokens, true);
  CHECK(plain.size() == lora_parameters(m).size());
  require_same(plain, recomputed);
  // The generator continues as if nothing had been recomputed.
  m->activation_checkpointing = false;
  at::manual_seed(99);
  m->forward(tokens);
  at::Tensor after_plain = at::rand({4});
  m->activation_checkpointing = true;
  at::manual_seed(99);
  m->forward(tokens).sum().backward();
  at::Tensor after_recompute = at::rand({4});
  CHECK(at::equal(after_plain, after_recompute));
}

TEST_CASE("checkpoint(): a plain call without grad mode or trainable inputs", "[checkpoint]") {
  at::Tensor w = at::randn({3, 3}).requires_grad_(true);
  auto fn = [&](const at::Tensor& x) { return x.matmul(w).tanh(); };
  at::Tensor x = at::randn({2, 3});
  {
    at::NoGradGuard no_grad;
    CHECK(!checkpoint(fn, x, {w}).requires_grad());
  }
  at::Tensor y = checkpoint(fn, x, {w});
  REQUIRE(y.requires_grad());
  CHECK(y.grad_fn()->name() == "dsk::CheckpointBackward");
  y.sum().backward();
  at::Tensor g = w.grad().clone();
  w.mutable_grad().reset();
  fn(x).sum().backward();
  CHECK(at::allclose(g, w.grad()));
  at::Tensor frozen = at::randn({3, 3});
  auto fn2 = [&](const at::Tensor& v) { return v.matmul(frozen); };
  CHECK(checkpoint(fn2, x, {}).grad_fn() == nullptr);
}
