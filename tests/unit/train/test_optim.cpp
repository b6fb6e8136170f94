// Optimizers and gradient clipping against independent references (optim_ref.py: torch 1.13 for
// AdamW, SGD and clip_grad_norm_; numpy transcriptions of the papers for Lion and Adafactor),
// plus checkpoint round trips, registry parsing and the weight-decay grouping rule.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <random>

#include "core/error.h"
#include "test_util.h"
#include "train/clip.h"
#include "train/optim.h"

using dsk::train::HParams;
using dsk::train::NamedParams;
using Catch::Matchers::Contains;

namespace {

// ---------------------------------------------------------------------------------------------
// Reference cases: generated here, written to files, run through optim_ref.py once.

struct Case {
  std::string id, optimizer, dtype;
  HParams hp;
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  int steps = 10;
  std::vector<double> lrs;
  std::vector<std::pair<int, int>> skip;  // (step, param) with no grad
  double max_norm = 0;                    // clip cases
  std::vector<std::vector<double>> init;                // [param][elem]
  std::vector<std::vector<std::vector<double>>> grads;  // [step][param][elem]
  std::vector<double> ref;                              // optim_ref.py output
};

const std::vector<std::pair<std::string, std::vector<int64_t>>> kShapes = {
    {"model.layers.0.self_attn.q_proj.weight", {6, 5}},
    {"model.layers.0.input_layernorm.weight", {7}},
    {"model.layers.0.mlp.experts", {2, 3, 4}},
    {"model.scale", {}},
};

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

void generate(Case& c) {
  if (c.shapes.empty()) c.shapes = kShapes;
  std::mt19937_64 rng(std::hash<std::string>{}(c.id));
  std::normal_distribution<double> normal(0.0, 1.0);
  for (const auto& [name, shape] : c.shapes) {
    std::vector<double> v(numel(shape));
    for (auto& x : v) x = 0.5 * normal(rng);
    c.init.push_back(v);
  }
  for (int s = 0; s < c.steps; ++s) {
    std::vector<std::vector<double>> step;
    for (const auto& [name, shape] : c.shapes) {
      std::vector<double> g(numel(shape));
      for (auto& x : g) x = (0.3 + 0.1 * s) * normal(rng);
      step.push_back(g);
    }
    c.grads.push_back(step);
  }
  if (c.lrs.empty())
    for (int s = 0; s < c.steps; ++s) c.lrs.push_back(1e-2 * (1.0 - 0.05 * s));
}

std::vector<Case> make_cases() {
  std::vector<Case> cs;
  auto add = [&](std::string id, std::string opt, std::string dtype, HParams hp, double lr_scale = 1.0) {
    Case c;
    c.id = std::move(id);
    c.optimizer = std::move(opt);
    c.dtype = std::move(dtype);
    c.hp = std::move(hp);
    c.skip = {{3, 0}, {4, 1}, {4, 3}};
    for (int s = 0; s < c.steps; ++s) c.lrs.push_back(lr_scale * 1e-2 * (1.0 - 0.05 * s));
    cs.push_back(std::move(c));
  };
  const HParams adamw = {{"betas", "[0.8, 0.95]"}, {"eps", "1e-6"}, {"weight_decay", "0.1"}};
  add("adamw_f32", "adamw", "float32", adamw);
  add("adamw_f64", "adamw", "float64", adamw);
  add("adamw_f32_defaults", "adamw", "float32", {});
  add("adamw_f32_decay_all", "adamw", "float32", {{"weight_decay", "0.2"}, {"weight_decay_all", "true"}});
  const HParams nesterov = {{"momentum", "0.9"}, {"nesterov", "true"}, {"weight_decay", "0.05"}};
  add("sgd_f32_nesterov", "sgd", "float32", nesterov, 5);
  add("sgd_f64_nesterov", "sgd", "float64", nesterov, 5);
  const HParams damp = {{"momentum", "0.8"}, {"dampening", "0.1"}, {"weight_decay", "0.05"}};
  add("sgd_f32_dampening", "sgd", "float32", damp, 5);
  add("sgd_f64_dampening", "sgd", "float64", damp, 5);
  add("sgd_f32_plain", "sgd", "float32", {}, 5);
  const HParams lion = {{"betas", "0.9,0.99"}, {"weight_decay", "0.5"}};
  add("lion_f32", "lion", "float32", lion, 0.1);
  add("lion_f64", "lion", "float64", lion, 0.1);
  add("adafactor_f32_defaults", "adafactor", "float32", {});
  add("adafactor_f64_defaults", "adafactor", "float64", {});
  add("adafactor_f64_beta1_scale", "adafactor", "float64",
      {{"beta1", "0.9"}, {"weight_decay", "0.1"}, {"scale_parameter", "true"}, {"clip_threshold", "0.5"}}, 10);
  add("adafactor_f64_relative_warmup", "adafactor", "float64",
      {{"relative_step", "true"}, {"warmup_init", "true"}, {"scale_parameter", "true"}});
  add("adafactor_f32_relative", "adafactor", "float32", {{"relative_step", "true"}, {"decay_rate", "-0.5"}});
  for (const auto& [id, max_norm] : {std::pair<const char*, double>{"clip_clipped", 0.5}, {"clip_unclipped", 1e6},
                                      {"clip_measure", 0.0}}) {
    Case c;
    c.id = id;
    c.optimizer = "clip";
    c.dtype = "float32";
    c.steps = 1;
    c.max_norm = max_norm;
    c.skip = {{0, 2}};
    cs.push_back(std::move(c));
  }
  for (auto& c : cs) generate(c);
  return cs;
}

void write_doubles(const std::filesystem::path& path, const std::vector<const std::vector<double>*>& parts) {
  std::ofstream f(path, std::ios::binary);
  for (const auto* p : parts) f.write(reinterpret_cast<const char*>(p->data()), p->size() * sizeof(double));
}

std::vector<double> read_doubles(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) return {};
  std::vector<double> v(static_cast<size_t>(f.tellg()) / sizeof(double));
  f.seekg(0);
  f.read(reinterpret_cast<char*>(v.data()), v.size() * sizeof(double));
  return v;
}

struct Reference {
  std::vector<Case> cases;
  std::string error;  // non-empty when optim_ref.py failed
};

const Reference& reference() {
  static const Reference ref = [] {
    Reference r;
    r.cases = make_cases();
    auto dir = dsk::test::scratch_dir("optim_ref");
    nlohmann::json list = nlohmann::json::array();
    for (const auto& c : r.cases) {
      nlohmann::json j = {{"id", c.id}, {"optimizer", c.optimizer}, {"dtype", c.dtype}, {"hparams", c.hp},
                          {"steps", c.steps}, {"lrs", c.lrs}, {"skip", c.skip}, {"max_norm", c.max_norm}};
      for (const auto& [name, shape] : c.shapes) j["params"].push_back({{"name", name}, {"shape", shape}});
      list.push_back(j);
      std::vector<const std::vector<double>*> parts;
      for (const auto& v : c.init) parts.push_back(&v);
      for (const auto& step : c.grads)
        for (const auto& v : step) parts.push_back(&v);
      write_doubles(dir / (c.id + ".in.bin"), parts);
    }
    std::ofstream(dir / "cases.json") << list.dump(1);
    const std::string script = std::string(DSK_SOURCE_DIR) + "/tests/unit/train/optim_ref.py";
    auto res = dsk::test::run_cmd("/usr/bin/python3 " + script + " " + dir.string());
    if (res.exit_code != 0) r.error = "optim_ref.py failed (exit " + std::to_string(res.exit_code) + "): " + res.err;
    for (auto& c : r.cases) c.ref = read_doubles(dir / (c.id + ".out.bin"));
    return r;
  }();
  return ref;
}

const Case& reference_case(const std::string& id) {
  const Reference& r = reference();
  if (!r.error.empty()) FAIL(r.error);
  for (const auto& c : r.cases)
    if (c.id == id) return c;
  FAIL("no case " << id);
  throw std::logic_error("unreachable");
}

at::ScalarType dtype_of(const Case& c) { return c.dtype == "float32" ? at::kFloat : at::kDouble; }

at::Tensor tensor_of(const std::vector<double>& v, const std::vector<int64_t>& shape, at::ScalarType dt) {
  return at::from_blob(const_cast<double*>(v.data()), shape, at::kDouble).to(dt).clone();
}

NamedParams make_params(const Case& c) {
  NamedParams ps;
  for (size_t i = 0; i < c.shapes.size(); ++i) {
    at::Tensor t = tensor_of(c.init[i], c.shapes[i].second, dtype_of(c));
    t.set_requires_grad(true);
    ps.emplace_back(c.shapes[i].first, t);
  }
  return ps;
}

bool skipped(const Case& c, int step, int param) {
  for (const auto& [s, p] : c.skip)
    if (s == step && p == param) return true;
  return false;
}

void set_grads(const Case& c, const NamedParams& ps, int step) {
  for (size_t i = 0; i < ps.size(); ++i) {
    if (skipped(c, step, static_cast<int>(i)))
      ps[i].second.mutable_grad().reset();
    else
      ps[i].second.mutable_grad() = tensor_of(c.grads[step][i], c.shapes[i].second, dtype_of(c));
  }
}

// Runs steps [from, to) of the case on `opt`.
void run_steps(const Case& c, dsk::train::Optimizer& opt, const NamedParams& ps, int from, int to) {
  for (int s = from; s < to; ++s) {
    set_grads(c, ps, s);
    opt.set_lr(c.lrs[s]);
    opt.step();
  }
}

// max |a - b| / max |b|: the error relative to the tensor's scale.
double rel_err(const at::Tensor& a, const at::Tensor& b) {
  const double scale = std::max(b.abs().max().item<double>(), 1e-30);
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / scale;
}

void check_against_reference(const std::string& id, double tol) {
  const Case& c = reference_case(id);
  NamedParams ps = make_params(c);
  auto opt = dsk::train::make_optimizer(c.optimizer, c.hp, c.lrs[0], ps);
  run_steps(c, *opt, ps, 0, c.steps);
  size_t off = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    const int64_t n = numel(c.shapes[i].second);
    REQUIRE(c.ref.size() >= off + n);
    std::vector<double> slice(c.ref.begin() + off, c.ref.begin() + off + n);
    off += n;
    const at::Tensor want = tensor_of(slice, c.shapes[i].second, at::kDouble);
    INFO(id << " " << c.shapes[i].first);
    CHECK(rel_err(ps[i].second, want) <= tol);
    // Every parameter moved: the update is not silently a no-op.
    CHECK(rel_err(ps[i].second, tensor_of(c.init[i], c.shapes[i].second, at::kDouble)) > 1e-7);
  }
  CHECK(off == c.ref.size());
}

NamedParams small_params(at::ScalarType dt = at::kFloat) {
  NamedParams ps;
  auto gen = at::detail::createCPUGenerator(7);
  ps.emplace_back("w", at::randn({4, 3}, gen, at::kDouble).to(dt).set_requires_grad(true));
  ps.emplace_back("b", at::randn({3}, gen, at::kDouble).to(dt).set_requires_grad(true));
  return ps;
}

void set_formula_grads(const NamedParams& ps, int step) {
  for (size_t i = 0; i < ps.size(); ++i) {
    const at::Tensor& p = ps[i].second;
    at::Tensor idx = at::arange(p.numel(), at::kDouble).reshape(p.sizes());
    p.mutable_grad() = at::sin(idx * 0.7 + step * 1.3 + static_cast<double>(i)).to(p.scalar_type());
  }
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const dsk::Error& e) {
    return e.message();
  }
  return "";
}

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST_CASE("AdamW matches torch.optim.AdamW", "[optim][reference]") {
  check_against_reference("adamw_f32", 1e-6);  // fused float32 path
  check_against_reference("adamw_f64", 1e-12);  // ATen path
  check_against_reference("adamw_f32_defaults", 1e-6);
  check_against_reference("adamw_f32_decay_all", 1e-6);
}

TEST_CASE("SGD matches torch.optim.SGD", "[optim][reference]") {
  check_against_reference("sgd_f32_nesterov", 1e-6);
  check_against_reference("sgd_f64_nesterov", 1e-12);
  check_against_reference("sgd_f32_dampening", 1e-6);
  check_against_reference("sgd_f64_dampening", 1e-12);
  check_against_reference("sgd_f32_plain", 1e-6);
}

TEST_CASE("Lion matches the paper's update rule", "[optim][reference]") {
  check_against_reference("lion_f32", 1e-6);
  check_against_reference("lion_f64", 1e-12);
}

TEST_CASE("Adafactor matches the paper / transformers update rule", "[optim][reference]") {
  check_against_reference("adafactor_f32_defaults", 1e-6);
  check_against_reference("adafactor_f64_defaults", 1e-12);
  check_against_reference("adafactor_f64_beta1_scale", 1e-12);
  check_against_reference("adafactor_f64_relative_warmup", 1e-12);
  check_against_reference("adafactor_f32_relative", 1e-6);
}

TEST_CASE("clip_grad_norm matches torch.nn.utils.clip_grad_norm_", "[clip][reference]") {
  for (const char* id : {"clip_clipped", "clip_unclipped", "clip_measure"}) {
    const Case& c = reference_case(id);
    INFO(id << " max_norm " << c.max_norm);
    NamedParams ps = make_params(c);
    set_grads(c, ps, 0);
    std::vector<at::Tensor> params;
    for (auto& [n, p] : ps) params.push_back(p);
    const double norm = dsk::train::clip_grad_norm(params, c.max_norm);
    REQUIRE(!c.ref.empty());
    CHECK(norm == Approx(c.ref[0]).epsilon(1e-6));
    size_t off = 1;
    for (size_t i = 0; i < ps.size(); ++i) {
      if (skipped(c, 0, static_cast<int>(i))) {
        CHECK_FALSE(ps[i].second.grad().defined());
        continue;
      }
      const int64_t n = numel(c.shapes[i].second);
      std::vector<double> slice(c.ref.begin() + off, c.ref.begin() + off + n);
      off += n;
      CHECK(rel_err(ps[i].second.grad(), tensor_of(slice, c.shapes[i].second, at::kDouble)) <= 1e-6);
    }
    CHECK(off == c.ref.size());
    if (c.max_norm > 0 && c.max_norm < norm) {
      std::vector<at::Tensor> grads;
      for (auto& p : params)
        if (p.grad().defined()) grads.push_back(p.grad().reshape(-1));
      CHECK(at::cat(grads).norm().item<double>() == Approx(c.max_norm).epsilon(1e-5));
    }
  }
}

TEST_CASE("clip_grad_norm edge cases", "[clip]") {
  NamedParams ps = small_params();
  std::vector<at::Tensor> params = {ps[0].second, ps[1].second};
  CHECK(dsk::train::clip_grad_norm(params, 1.0) == 0.0);  // no grads at all
  ps[0].second.mutable_grad() = at::full({4, 3}, 2.0);
  const at::Tensor before = ps[0].second.grad().clone();
  // 12 elements of 2: norm sqrt(48); max_norm <= 0 only measures.
  CHECK(dsk::train::clip_grad_norm(params, 0.0) == Approx(std::sqrt(48.0)));
  CHECK(at::equal(ps[0].second.grad(), before));
  CHECK(dsk::train::clip_grad_norm(params, 100.0) == Approx(std::sqrt(48.0)));
  CHECK(at::equal(ps[0].second.grad(), before));
}

TEST_CASE("clip_grad_norm over gradients split across ranks equals the whole", "[clip]") {
  // Two "ranks" own half the tensors each; sum_across adds the other half's sum of squares.
  auto grads = [] {
    std::vector<at::Tensor> ps;
    for (int i = 0; i < 4; ++i) {
      at::Tensor p = at::zeros({3 + i}).requires_grad_(true);
      p.mutable_grad() = at::sin(at::arange(3 + i, at::kFloat) + i) * 3;
      ps.push_back(p);
    }
    return ps;
  };
  std::vector<at::Tensor> whole = grads(), split = grads();
  const double want = dsk::train::clip_grad_norm(whole, 1.0);
  std::vector<at::Tensor> mine = {split[0], split[2]}, theirs = {split[1], split[3]};
  float their_sq = 0;
  for (auto& p : theirs) their_sq += p.grad().norm().item<float>() * p.grad().norm().item<float>();
  int calls = 0;
  const double got = dsk::train::clip_grad_norm(mine, 1.0, [&](at::Tensor& sq) {
    ++calls;
    sq.add_(their_sq);
  });
  CHECK(calls == 1);
  CHECK(got == Approx(want).epsilon(1e-6));
  REQUIRE(want > 1.0);
  CHECK(rel_err(split[0].grad(), whole[0].grad()) <= 1e-6);
  CHECK(rel_err(split[2].grad(), whole[2].grad()) <= 1e-6);
  // a rank that owns no gradient still takes part in the sum
  std::vector<at::Tensor> none = {at::zeros({2}).requires_grad_(true)};
  calls = 0;
  CHECK(dsk::train::clip_grad_norm(none, 1.0, [&](at::Tensor& sq) { ++calls, sq.add_(4.0f); }) == Approx(2.0));
  CHECK(calls == 1);
}

TEST_CASE("fused float32 path agrees with the ATen path", "[optim]") {
  // A transposed (non-contiguous) parameter takes the ATen path; its contiguous twin the fused one.
  for (const char* name : {"adamw", "sgd", "lion"}) {
    INFO(name);
    auto gen = at::detail::createCPUGenerator(3);
    at::Tensor base = at::randn({5, 6}, gen);
    at::Tensor fused = base.t().contiguous().set_requires_grad(true);  // [6,5] contiguous
    at::Tensor strided = base.clone().t().set_requires_grad(true);     // [6,5] non-contiguous leaf
    REQUIRE_FALSE(strided.is_contiguous());
    HParams hp = {{"weight_decay", "0.1"}};
    if (std::string(name) == "sgd") hp = {{"momentum", "0.9"}, {"nesterov", "true"}, {"weight_decay", "0.1"}};
    auto a = dsk::train::make_optimizer(name, hp, 1e-2, {{"p", fused}});
    auto b = dsk::train::make_optimizer(name, hp, 1e-2, {{"p", strided}});
    for (int s = 0; s < 8; ++s) {
      at::Tensor g = at::sin(at::arange(30, at::kFloat).reshape({6, 5}) * 0.3 + s);
      fused.mutable_grad() = g.clone();
      strided.mutable_grad() = g.clone();
      a->step();
      b->step();
    }
    CHECK(rel_err(fused, strided) <= 1e-6);
    CHECK(rel_err(fused, base.t()) > 1e-3);
  }
}

TEST_CASE("state round trip resumes bit-identically", "[optim][checkpoint]") {
  const std::vector<std::pair<std::string, HParams>> configs = {
      {"adamw", {{"weight_decay", "0.1"}}},
      {"sgd", {{"momentum", "0.9"}, {"nesterov", "true"}}},
      {"sgd", {{"momentum", "0.9"}, {"dampening", "0.5"}}},
      {"lion", {{"weight_decay", "0.1"}}},
      {"adafactor", {{"beta1", "0.9"}, {"scale_parameter", "true"}}},
  };
  for (at::ScalarType dt : {at::kFloat, at::kDouble}) {
    for (const auto& [name, hp] : configs) {
      INFO(name << " " << c10::toString(dt));
      NamedParams a = small_params(dt), b = small_params(dt);
      auto oa = dsk::train::make_optimizer(name, hp, 1e-2, a);
      auto ob = dsk::train::make_optimizer(name, hp, 1e-2, b);
      for (int s = 0; s < 10; ++s) {
        set_formula_grads(a, s);
        oa->set_lr(1e-2 / (1 + s));
        oa->step();
      }
      for (int s = 0; s < 5; ++s) {
        set_formula_grads(b, s);
        ob->set_lr(1e-2 / (1 + s));
        ob->step();
      }
      // "Checkpoint": copies of the parameters and of the optimizer state; then a fresh process.
      std::map<std::string, at::Tensor> saved;
      for (const auto& [k, t] : ob->state_tensors()) saved[k] = t.clone();
      NamedParams c;
      for (const auto& [n, p] : b) c.emplace_back(n, p.detach().clone().set_requires_grad(true));
      auto oc = dsk::train::make_optimizer(name, hp, 1e-2, c);
      oc->load_state_tensors(saved);
      CHECK(saved.at("w.step").item<int64_t>() == 5);
      for (int s = 5; s < 10; ++s) {
        set_formula_grads(c, s);
        oc->set_lr(1e-2 / (1 + s));
        oc->step();
      }
      for (size_t i = 0; i < a.size(); ++i) CHECK(at::equal(a[i].second, c[i].second));
      auto sa = oa->state_tensors(), sc = oc->state_tensors();
      REQUIRE(sa.size() == sc.size());
      for (size_t i = 0; i < sa.size(); ++i) {
        CHECK(sa[i].first == sc[i].first);
        CHECK(at::equal(sa[i].second, sc[i].second));
      }
    }
  }
}

TEST_CASE("state keys and load validation", "[optim][checkpoint]") {
  NamedParams ps = small_params();
  auto opt = dsk::train::make_optimizer("adamw", {}, 1e-3, ps);
  std::vector<std::string> keys;
  for (const auto& [k, t] : opt->state_tensors()) keys.push_back(k);
  CHECK(keys == std::vector<std::string>{"w.step", "w.exp_avg", "w.exp_avg_sq", "b.step", "b.exp_avg", "b.exp_avg_sq"});

  set_formula_grads(ps, 0);
  opt->step();
  std::map<std::string, at::Tensor> good;
  for (const auto& [k, t] : opt->state_tensors()) good[k] = t.clone();
  const at::Tensor before = good.at("w.exp_avg").clone();
  good["w.exp_avg"] = at::full({4, 3}, 7.0);  // validates, but must not be copied while others fail

  auto bad = good;
  bad.erase("b.exp_avg_sq");
  CHECK_THAT(error_of([&] { opt->load_state_tensors(bad); }), Contains("missing 'b.exp_avg_sq'"));
  bad = good;
  bad["w.exp_avg"] = at::zeros({3, 4});
  CHECK_THAT(error_of([&] { opt->load_state_tensors(bad); }),
             Contains("'w.exp_avg' has shape [3,4], expected [4,3]"));
  bad = good;
  bad["w.momentum_buffer"] = at::zeros({4, 3});
  CHECK_THAT(error_of([&] { opt->load_state_tensors(bad); }), Contains("unexpected 'w.momentum_buffer'"));
  // Nothing was loaded by the failed attempts: the slot that did validate is unchanged.
  for (const auto& [k, t] : opt->state_tensors())
    if (k == "w.exp_avg") CHECK(at::equal(t, before));
  opt->load_state_tensors(good);
  for (const auto& [k, t] : opt->state_tensors())
    if (k == "w.exp_avg") CHECK(at::equal(t, at::full({4, 3}, 7.0)));

  auto sgd = dsk::train::make_optimizer("sgd", {{"momentum", "0.9"}}, 1e-3, small_params());
  std::map<std::string, at::Tensor> sgd_state;
  for (const auto& [k, t] : sgd->state_tensors()) sgd_state[k] = t;
  CHECK_THAT(error_of([&] { opt->load_state_tensors(sgd_state); }), Contains("missing 'w.exp_avg'"));

  // Plain SGD keeps only step counts.
  auto plain = dsk::train::make_optimizer("sgd", {}, 1e-3, small_params());
  CHECK(plain->state_tensors().size() == 2);
  // Adafactor factors >= 2-D parameters.
  auto af = dsk::train::make_optimizer("adafactor", {}, 1e-3, small_params());
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [k, t] : af->state_tensors()) shapes[k] = t.sizes().vec();
  CHECK(shapes.at("w.exp_avg_sq_row") == std::vector<int64_t>{4});
  CHECK(shapes.at("w.exp_avg_sq_col") == std::vector<int64_t>{3});
  CHECK(shapes.at("b.exp_avg_sq") == std::vector<int64_t>{3});
  CHECK(shapes.count("w.exp_avg") == 0);
}

TEST_CASE("parameters without a grad are skipped", "[optim]") {
  NamedParams ps = small_params();
  auto opt = dsk::train::make_optimizer("adamw", {{"weight_decay", "0.5"}}, 1e-2, ps);
  const at::Tensor b0 = ps[1].second.detach().clone();
  const at::Tensor w0 = ps[0].second.detach().clone();
  ps[0].second.mutable_grad() = at::ones({4, 3});
  opt->step();
  CHECK(at::equal(ps[1].second, b0));
  CHECK_FALSE(at::equal(ps[0].second, w0));
  std::map<std::string, int64_t> steps;
  for (const auto& [k, t] : opt->state_tensors())
    if (t.scalar_type() == at::kLong) steps[k] = t.item<int64_t>();
  CHECK(steps.at("w.step") == 1);
  CHECK(steps.at("b.step") == 0);

  opt->zero_grad(/*set_to_none=*/false);
  REQUIRE(ps[0].second.grad().defined());
  CHECK(ps[0].second.grad().abs().sum().item<double>() == 0.0);
  opt->zero_grad();
  CHECK_FALSE(ps[0].second.grad().defined());
}

TEST_CASE("weight decay groups: >= 2-D only unless weight_decay_all", "[optim]") {
  NamedParams ps = small_params();
  auto opt = dsk::train::make_optimizer("adamw", {{"weight_decay", "0.1"}}, 1e-3, ps);
  REQUIRE(opt->groups().size() == 2);
  CHECK(opt->groups()[0].names == std::vector<std::string>{"w"});
  CHECK(opt->groups()[0].weight_decay == 0.1);
  CHECK(opt->groups()[1].names == std::vector<std::string>{"b"});
  CHECK(opt->groups()[1].weight_decay == 0.0);
  auto all = dsk::train::make_optimizer("adamw", {{"weight_decay", "0.1"}, {"weight_decay_all", "true"}}, 1e-3, ps);
  REQUIRE(all->groups().size() == 1);
  CHECK(all->groups()[0].names == std::vector<std::string>{"w", "b"});

  // With a zero gradient only decay moves a parameter: w shrinks, b does not.
  auto sgd = dsk::train::make_optimizer("sgd", {{"weight_decay", "0.5"}}, 0.1, ps);
  const at::Tensor w0 = ps[0].second.detach().clone(), b0 = ps[1].second.detach().clone();
  ps[0].second.mutable_grad() = at::zeros({4, 3});
  ps[1].second.mutable_grad() = at::zeros({3});
  sgd->step();
  CHECK(at::allclose(ps[0].second, w0 * 0.95));
  CHECK(at::equal(ps[1].second, b0));
}

TEST_CASE("optimizer registry declares parseable keys", "[optim][registry]") {
  const auto& reg = dsk::train::optimizer_registry();
  std::vector<std::string> names;
  for (const auto& c : reg) names.push_back(c.name);
  CHECK(names == std::vector<std::string>{"adamw", "sgd", "lion", "adafactor"});
  for (const auto& c : reg) {
    INFO(c.name);
    CHECK_FALSE(c.description.empty());
    HParams explicit_defaults;
    for (const auto& p : c.params) {
      CHECK((p.type == "float" || p.type == "bool" || p.type == "int" || p.type == "float_pair"));
      CHECK_FALSE(p.help.empty());
      explicit_defaults[p.key] = p.default_value;
    }
    CHECK(c.find("weight_decay") != nullptr);
    CHECK(c.find("weight_decay_all") != nullptr);
    CHECK(std::string(dsk::train::make_optimizer(c.name, {}, 1e-3, small_params())->name()) == c.name);
    CHECK(dsk::train::make_optimizer(c.name, explicit_defaults, 1e-3, small_params()) != nullptr);
  }
  // Keys of other optimizers (Config::section carries their defaults) are ignored.
  CHECK(dsk::train::make_optimizer("adamw", {{"momentum", "0.9"}, {"lr", "3e-4"}, {"name", "adamw"}}, 1e-3,
                                   small_params()) != nullptr);
}

TEST_CASE("optimizer hyper-parameter errors are usage errors naming the key", "[optim][registry]") {
  auto usage_error = [](const std::string& name, const HParams& hp) -> std::string {
    try {
      dsk::train::make_optimizer(name, hp, 1e-3, small_params());
    } catch (const dsk::Error& e) {
      CHECK(e.exit_code() == dsk::kExitUsage);
      return e.message();
    }
    return "";
  };
  CHECK_THAT(usage_error("adam", {}), Contains("unknown optimizer 'adam' (valid: adamw, sgd, lion, adafactor)"));
  CHECK_THAT(usage_error("adamw", {{"betas", "0.9"}}), Contains("optim.betas: expected two floats"));
  CHECK_THAT(usage_error("adamw", {{"betas", "[1.5, 0.9]"}}), Contains("optim.betas[0] = 1.5 is out of range"));
  CHECK_THAT(usage_error("adamw", {{"eps", "tiny"}}), Contains("optim.eps: expected a float, got 'tiny'"));
  CHECK_THAT(usage_error("sgd", {{"nesterov", "true"}}), Contains("optim.nesterov requires optim.momentum > 0"));
  CHECK_THAT(usage_error("sgd", {{"nesterov", "maybe"}}), Contains("optim.nesterov: expected true or false"));
  CHECK_THAT(usage_error("adafactor", {{"warmup_init", "true"}}), Contains("optim.warmup_init requires"));
  CHECK_THAT(usage_error("lion", {{"weight_decay", "-1"}}), Contains("optim.weight_decay = -1 is out of range"));
  CHECK(usage_error("adamw", {{"betas", "0.9,0.95"}}).empty());
}

TEST_CASE("optimizer rejects duplicate or tied parameters", "[optim]") {
  at::Tensor w = at::zeros({2, 2}).set_requires_grad(true);
  CHECK_THAT(error_of([&] { dsk::train::make_optimizer("adamw", {}, 1e-3, {{"a", w}, {"a", w.clone()}}); }),
             Contains("'a' is listed twice"));
  CHECK_THAT(error_of([&] { dsk::train::make_optimizer("adamw", {}, 1e-3, {{"a", w}, {"b", w}}); }),
             Contains("'b' is the same tensor"));
}

TEST_CASE("bf16 parameters update through the ATen path", "[optim]") {
  for (const char* name : {"adamw", "lion", "adafactor", "sgd"}) {
    INFO(name);
    at::Tensor p = at::ones({8, 4}, at::kBFloat16).set_requires_grad(true);
    auto opt = dsk::train::make_optimizer(name, {}, 0.05, {{"p", p}});
    p.mutable_grad() = at::ones({8, 4}, at::kBFloat16);
    opt->step();
    CHECK(p.scalar_type() == at::kBFloat16);
    CHECK(p.to(at::kFloat).max().item<float>() < 1.0f);  // moved against the gradient
  }
}

TEST_CASE("fused updates do not depend on the thread count", "[optim]") {
  const int saved = at::get_num_threads();
  std::vector<at::Tensor> results;
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    at::Tensor p = at::sin(at::arange(100003, at::kFloat)).set_requires_grad(true);  // several parallel chunks
    auto opt = dsk::train::make_optimizer("adamw", {{"weight_decay", "0.1"}, {"weight_decay_all", "true"}}, 1e-2,
                                          {{"p", p}});
    for (int s = 0; s < 3; ++s) {
      p.mutable_grad() = at::cos(at::arange(100003, at::kFloat) * (0.1 * (s + 1)));
      opt->step();
    }
    results.push_back(p.detach().clone());
  }
  at::set_num_threads(saved);
  CHECK(at::equal(results[0], results[1]));
}

// Perf mode (hidden; run with "[.bench]"): ms per step on ~25M float32 parameters, the shapes
// /usr/bin/python3 torch.optim.AdamW is timed on in docs/training.md. DSK_BENCH_THREADS sets threads.
TEST_CASE("optimizer step time", "[.bench]") {
  if (const char* t = std::getenv("DSK_BENCH_THREADS")) at::set_num_threads(std::atoi(t));
  NamedParams ps;
  for (int i = 0; i < 6; ++i) ps.emplace_back("w" + std::to_string(i), at::randn({4096, 1024}).set_requires_grad(true));
  for (int i = 0; i < 8; ++i) ps.emplace_back("b" + std::to_string(i), at::randn({1024}).set_requires_grad(true));
  for (auto& [n, p] : ps) p.mutable_grad() = at::randn_like(p);
  const std::vector<std::pair<std::string, HParams>> configs = {
      {"adamw", {{"weight_decay", "0.01"}}}, {"sgd", {{"momentum", "0.9"}}}, {"lion", {}}, {"adafactor", {}}};
  for (const auto& [name, hp] : configs) {
    auto opt = dsk::train::make_optimizer(name, hp, 1e-3, ps);
    for (int i = 0; i < 3; ++i) opt->step();
    const int n = 20;
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) opt->step();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / n;
    WARN(name << ": " << ms << " ms/step (" << at::get_num_threads() << " threads)");
    CHECK(ms > 0);
  }
}
