// Optimizers: the shared state layout and checkpoint map, the four update rules, the registry.
//
// Each rule has a fused single-pass kernel for float32 contiguous CPU tensors (reads p, g and the
// state once, writes them once) and an in-place ATen path for every other dtype or device.
#include "train/optim.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <set>
#include <unordered_set>

#include "core/error.h"

namespace dsk::train {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per parallel_for chunk

std::string shape_str(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? "," : "") + std::to_string(sizes[i]);
  return s + "]";
}

// The gradient of a parameter, or an undefined tensor when it has none.
at::Tensor grad_of(const std::string& name, const at::Tensor& p) {
  const at::Tensor& g = p.grad();
  if (!g.defined()) return g;
  DSK_CHECK(g.layout() == at::kStrided, "optimizer: parameter '{}' has a sparse gradient (unsupported)", name);
  DSK_CHECK(g.sizes() == p.sizes(), "optimizer: gradient of '{}' has shape {}, expected {}", name,
            shape_str(g.sizes()), shape_str(p.sizes()));
  return g;
}

// True when the fused float32 CPU loop applies; makes `g` contiguous when it is not.
bool use_fused(const at::Tensor& p, at::Tensor& g) {
  if (!p.device().is_cpu() || p.scalar_type() != at::kFloat || !p.is_contiguous()) return false;
  if (!g.device().is_cpu() || g.scalar_type() != at::kFloat) return false;
  if (!g.is_contiguous()) g = g.contiguous();
  return true;
}

// Runs body(begin, end) over [0, n) on the intra-op thread pool. Elementwise, so the result does
// not depend on the number of threads.
template <typename F>
void for_elements(int64_t n, const F& body) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) { body(b, e); });
}

// ---------------------------------------------------------------------------------------------
// Fused float32 kernels over [0, n): one pass over p, g and the state. Plain loops that GCC
// vectorizes (SSE2; they are memory-bound), except AdamW whose sqrt only vectorizes with
// -fno-math-errno: it has an explicit AVX2 version, chosen at run time. Every version performs
// the same IEEE operations in the same order (no FMA), so results are bit-identical across x86
// machines; the order mirrors PyTorch's eager ops.

#if defined(__GNUC__) && !defined(__clang__)
#define DSK_VEC_KERNEL __attribute__((optimize("O3")))
#else
#define DSK_VEC_KERNEL
#endif

struct AdamWScalars {
  float decay, b1, one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, neg_step_size;
};

void adamw_kernel_scalar(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                         int64_t n, const AdamWScalars& k) {
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = m[i] * k.b1 + k.one_minus_b1 * gi;
    const float vi = v[i] * k.b2 + k.one_minus_b2 * gi * gi;
    const float denom = std::sqrt(vi) / k.bc2_sqrt + k.eps;
    p[i] = p[i] * k.decay + k.neg_step_size * mi / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DSK_HAVE_AVX2_KERNELS 1
__attribute__((target("avx2"))) void adamw_kernel_avx2(float* p, const float* g, float* m, float* v, int64_t n,
                                                       const AdamWScalars& k) {
  const __m256 decay = _mm256_set1_ps(k.decay), b1 = _mm256_set1_ps(k.b1), c1 = _mm256_set1_ps(k.one_minus_b1),
               b2 = _mm256_set1_ps(k.b2), c2 = _mm256_set1_ps(k.one_minus_b2), bc2 = _mm256_set1_ps(k.bc2_sqrt),
               eps = _mm256_set1_ps(k.eps), step = _mm256_set1_ps(k.neg_step_size);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gi = _mm256_loadu_ps(g + i);
    const __m256 mi = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(m + i), b1), _mm256_mul_ps(c1, gi));
    const __m256 vi = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(v + i), b2), _mm256_mul_ps(_mm256_mul_ps(c2, gi), gi));
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2), eps);
    const __m256 pi = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(p + i), decay),
                                    _mm256_div_ps(_mm256_mul_ps(step, mi), denom));
    _mm256_storeu_ps(p + i, pi);
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
  }
  adamw_kernel_scalar(p + i, g + i, m + i, v + i, n - i, k);
}
#endif

void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, const AdamWScalars& k) {
#ifdef DSK_HAVE_AVX2_KERNELS
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return adamw_kernel_avx2(p, g, m, v, n, k);
#endif
  adamw_kernel_scalar(p, g, m, v, n, k);
}

struct SGDScalars {
  float weight_decay, momentum, one_minus_dampening, neg_lr;
};

// buf == nullptr: no momentum. first: the buffer starts as d (PyTorch clones it).
template <bool kDecay, bool kNesterov, bool kFirst>
DSK_VEC_KERNEL void sgd_momentum_kernel(float* __restrict p, const float* __restrict g, float* __restrict buf,
                                         int64_t n, SGDScalars k) {
  for (int64_t i = 0; i < n; ++i) {
    const float d = kDecay ? g[i] + k.weight_decay * p[i] : g[i];
    const float b = kFirst ? d : buf[i] * k.momentum + k.one_minus_dampening * d;
    buf[i] = b;
    p[i] = p[i] + k.neg_lr * (kNesterov ? d + k.momentum * b : b);
  }
}

DSK_VEC_KERNEL void sgd_plain_kernel(float* __restrict p, const float* __restrict g, int64_t n, SGDScalars k) {
  for (int64_t i = 0; i < n; ++i) p[i] = p[i] + k.neg_lr * (g[i] + k.weight_decay * p[i]);
}

struct LionScalars {
  float decay, b1, one_minus_b1, b2, one_minus_b2, neg_lr;
};

DSK_VEC_KERNEL void lion_kernel(float* __restrict p, const float* __restrict g, float* __restrict m, int64_t n,
                                 LionScalars k) {
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i], mi = m[i];
    const float c = mi * k.b1 + k.one_minus_b1 * gi;
    const float sign = static_cast<float>(c > 0.f) - static_cast<float>(c < 0.f);
    p[i] = p[i] * k.decay + k.neg_lr * sign;
    m[i] = mi * k.b2 + k.one_minus_b2 * gi;
  }
}

void check_range(bool ok, const char* key, double value, const char* want) {
  if (!ok) fail_usage("optim.{} = {} is out of range (want {})", key, value, want);
}

bool is_low_precision(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Base: parameters, groups, state map.

Optimizer::~Optimizer() = default;

Optimizer::Optimizer(const NamedParams& params, double lr, double weight_decay, bool weight_decay_all)
    : lr_(lr) {
  check_range(std::isfinite(lr) && lr >= 0, "lr", lr, ">= 0");
  check_range(std::isfinite(weight_decay) && weight_decay >= 0, "weight_decay", weight_decay, ">= 0");
  ParamGroup decay, no_decay;
  decay.weight_decay = weight_decay;
  std::unordered_set<std::string> names;
  std::unordered_set<const void*> impls;
  for (const auto& [name, p] : params) {
    DSK_CHECK(p.defined(), "optimizer: parameter '{}' is undefined", name);
    DSK_CHECK(names.insert(name).second, "optimizer: parameter '{}' is listed twice", name);
    DSK_CHECK(impls.insert(p.unsafeGetTensorImpl()).second,
              "optimizer: parameter '{}' is the same tensor as an earlier one (list tied weights once)", name);
    DSK_CHECK(p.is_floating_point(), "optimizer: parameter '{}' is not floating point", name);
    const bool decays = weight_decay_all || p.dim() >= 2;
    ParamGroup& g = decays ? decay : no_decay;
    g.names.push_back(name);
    g.params.push_back(p);
    ParamState st;
    st.name = name;
    st.param = p;
    st.weight_decay = decays ? weight_decay : 0.0;
    states_.push_back(std::move(st));
  }
  if (!decay.params.empty()) groups_.push_back(std::move(decay));
  if (!no_decay.params.empty()) groups_.push_back(std::move(no_decay));
}

void Optimizer::add_slot(size_t i, const std::string& slot, at::IntArrayRef sizes, at::ScalarType dtype) {
  const at::Tensor& p = states_[i].param;
  auto opts = p.options().dtype(dtype == at::ScalarType::Undefined ? p.scalar_type() : dtype);
  states_[i].slots.emplace_back(slot, at::zeros(sizes, opts));
}

at::Tensor Optimizer::scratch_like(const at::Tensor& like) {
  for (auto& buf : scratch_) {
    if (buf.scalar_type() != like.scalar_type() || buf.device() != like.device()) continue;
    if (buf.numel() < like.numel()) buf = at::empty({like.numel()}, like.options());
    return buf.narrow(0, 0, like.numel()).view(like.sizes());
  }
  scratch_.push_back(at::empty({std::max<int64_t>(like.numel(), 1)}, like.options()));
  return scratch_.back().narrow(0, 0, like.numel()).view(like.sizes());
}

void Optimizer::zero_grad(bool set_to_none) {
  for (auto& s : states_) {
    at::Tensor& g = s.param.mutable_grad();
    if (!g.defined()) continue;
    if (set_to_none) {
      g.reset();
    } else {
      g = g.detach();
      g.zero_();
    }
  }
}

std::vector<std::pair<std::string, at::Tensor>> Optimizer::state_tensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& s : states_) {
    out.emplace_back(s.name + ".step", at::scalar_tensor(s.step, at::kLong));
    for (const auto& [slot, t] : s.slots) out.emplace_back(s.name + "." + slot, t);
  }
  return out;
}

void Optimizer::load_state_tensors(const std::map<std::string, at::Tensor>& state) {
  auto find = [&](const std::string& key) -> const at::Tensor& {
    auto it = state.find(key);
    if (it == state.end() || !it->second.defined())
      fail("{} optimizer state: missing '{}' (checkpoint from a different optimizer or model?)", name(), key);
    return it->second;
  };
  std::set<std::string> expected;
  std::vector<int64_t> steps;
  std::vector<std::pair<at::Tensor*, const at::Tensor*>> copies;
  for (auto& s : states_) {
    const std::string step_key = s.name + ".step";
    const at::Tensor& st = find(step_key);
    expected.insert(step_key);
    DSK_CHECK(st.numel() == 1, "{} optimizer state: '{}' has shape {}, expected a scalar", name(), step_key,
              shape_str(st.sizes()));
    const double step = st.to(at::kDouble).item<double>();
    DSK_CHECK(step >= 0 && step == std::floor(step) && step < 9.0e15,
              "{} optimizer state: '{}' = {} is not a step count", name(), step_key, step);
    steps.push_back(static_cast<int64_t>(step));
    for (auto& [slot, t] : s.slots) {
      const std::string key = s.name + "." + slot;
      const at::Tensor& src = find(key);
      expected.insert(key);
      DSK_CHECK(src.sizes() == t.sizes(), "{} optimizer state: '{}' has shape {}, expected {}", name(), key,
                shape_str(src.sizes()), shape_str(t.sizes()));
      DSK_CHECK(src.is_floating_point(), "{} optimizer state: '{}' is not floating point", name(), key);
      copies.emplace_back(&t, &src);
    }
  }
  for (const auto& kv : state)
    DSK_CHECK(expected.count(kv.first), "{} optimizer state: unexpected '{}' (not a slot of any parameter)",
              name(), kv.first);
  at::NoGradGuard no_grad;
  for (auto& [dst, src] : copies) dst->copy_(*src);
  for (size_t i = 0; i < states_.size(); ++i) states_[i].step = steps[i];
}

// ---------------------------------------------------------------------------------------------
// AdamW (PyTorch semantics, decoupled weight decay, bias correction):
//   p *= 1 - lr*wd;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
//   p += -(lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)

AdamW::AdamW(const NamedParams& params, double lr, const AdamWOptions& o)
    : Optimizer(params, lr, o.weight_decay, o.weight_decay_all), opt_(o) {
  check_range(o.beta1 >= 0 && o.beta1 < 1, "betas[0]", o.beta1, "[0, 1)");
  check_range(o.beta2 >= 0 && o.beta2 < 1, "betas[1]", o.beta2, "[0, 1)");
  check_range(o.eps >= 0, "eps", o.eps, ">= 0");
  for (size_t i = 0; i < states_.size(); ++i) {
    add_slot(i, "exp_avg", states_[i].param.sizes());
    add_slot(i, "exp_avg_sq", states_[i].param.sizes());
  }
}

void AdamW::step() {
  at::NoGradGuard no_grad;
  const double b1 = opt_.beta1, b2 = opt_.beta2, eps = opt_.eps;
  for (auto& s : states_) {
    at::Tensor g = grad_of(s.name, s.param);
    if (!g.defined()) continue;
    s.step += 1;
    at::Tensor& m = s.slots[0].second;
    at::Tensor& v = s.slots[1].second;
    const double step_size = lr_ / (1 - std::pow(b1, static_cast<double>(s.step)));
    const double bc2_sqrt = std::sqrt(1 - std::pow(b2, static_cast<double>(s.step)));
    const double decay = 1 - lr_ * s.weight_decay;
    if (use_fused(s.param, g)) {
      float* p = s.param.data_ptr<float>();
      const float* gp = g.data_ptr<float>();
      float* mp = m.data_ptr<float>();
      float* vp = v.data_ptr<float>();
      const AdamWScalars k{static_cast<float>(decay),        static_cast<float>(b1),
                           static_cast<float>(1 - b1),       static_cast<float>(b2),
                           static_cast<float>(1 - b2),       static_cast<float>(bc2_sqrt),
                           static_cast<float>(eps),          static_cast<float>(-step_size)};
      for_elements(s.param.numel(), [=](int64_t b, int64_t e) { adamw_kernel(p + b, gp + b, mp + b, vp + b, e - b, k); });
      s.param.unsafeGetTensorImpl()->bump_version();
    } else {
      if (s.weight_decay != 0) s.param.mul_(decay);
      m.mul_(b1).add_(g, 1 - b1);
      v.mul_(b2).addcmul_(g, g, 1 - b2);
      at::Tensor denom = scratch_like(v);
      at::sqrt_out(denom, v);
      denom.div_(bc2_sqrt).add_(eps);
      s.param.addcdiv_(m, denom, -step_size);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SGD (PyTorch semantics): d = g + wd*p;  buf = d on the first update, else
// buf = momentum*buf + (1-dampening)*d;  d = nesterov ? d + momentum*buf : buf;  p -= lr*d.

SGD::SGD(const NamedParams& params, double lr, const SGDOptions& o)
    : Optimizer(params, lr, o.weight_decay, o.weight_decay_all), opt_(o) {
  check_range(o.momentum >= 0, "momentum", o.momentum, ">= 0");
  check_range(o.dampening >= 0 && o.dampening <= 1, "dampening", o.dampening, "[0, 1]");
  if (o.nesterov && (o.momentum <= 0 || o.dampening != 0))
    fail_usage("optim.nesterov requires optim.momentum > 0 and optim.dampening = 0");
  if (o.momentum != 0)
    for (size_t i = 0; i < states_.size(); ++i) add_slot(i, "momentum_buffer", states_[i].param.sizes());
}

void SGD::step() {
  at::NoGradGuard no_grad;
  const double mom = opt_.momentum, damp = opt_.dampening;
  const bool nesterov = opt_.nesterov;
  for (auto& s : states_) {
    at::Tensor g = grad_of(s.name, s.param);
    if (!g.defined()) continue;
    s.step += 1;
    const bool first = s.step == 1;
    const double wd = s.weight_decay;
    at::Tensor* buf = mom != 0 ? &s.slots[0].second : nullptr;
    if (use_fused(s.param, g)) {
      float* p = s.param.data_ptr<float>();
      const float* gp = g.data_ptr<float>();
      float* bp = buf ? buf->data_ptr<float>() : nullptr;
      const SGDScalars k{static_cast<float>(wd), static_cast<float>(mom), static_cast<float>(1 - damp),
                         static_cast<float>(-lr_)};
      // One instantiation per (decay, nesterov, first) so that each loop is branch-free.
      using Kernel = void (*)(float*, const float*, float*, int64_t, SGDScalars);
      static constexpr Kernel kKernels[8] = {
          sgd_momentum_kernel<false, false, false>, sgd_momentum_kernel<false, false, true>,
          sgd_momentum_kernel<false, true, false>,  sgd_momentum_kernel<false, true, true>,
          sgd_momentum_kernel<true, false, false>,  sgd_momentum_kernel<true, false, true>,
          sgd_momentum_kernel<true, true, false>,   sgd_momentum_kernel<true, true, true>};
      const Kernel kernel = kKernels[(wd != 0) * 4 + nesterov * 2 + first];
      for_elements(s.param.numel(), [=](int64_t b, int64_t e) {
        if (bp)
          kernel(p + b, gp + b, bp + b, e - b, k);
        else
          sgd_plain_kernel(p + b, gp + b, e - b, k);
      });
      s.param.unsafeGetTensorImpl()->bump_version();
      continue;
    }
    at::Tensor d = g;
    if (wd != 0) {
      d = scratch_like(s.param);
      at::add_out(d, g, s.param, wd);
    }
    if (buf) {
      if (first)
        buf->copy_(d);
      else
        buf->mul_(mom).add_(d, 1 - damp);
      if (nesterov) {
        at::Tensor out = scratch_like(s.param);  // may be d itself: elementwise, so aliasing is fine
        at::add_out(out, d, *buf, mom);
        d = out;
      } else {
        d = *buf;
      }
    }
    s.param.add_(d, -lr_);
  }
}

// ---------------------------------------------------------------------------------------------
// Lion (Chen et al. 2023): p *= 1 - lr*wd;  p -= lr * sign(b1*m + (1-b1)*g);  m = b2*m + (1-b2)*g.

Lion::Lion(const NamedParams& params, double lr, const LionOptions& o)
    : Optimizer(params, lr, o.weight_decay, o.weight_decay_all), opt_(o) {
  check_range(o.beta1 >= 0 && o.beta1 <= 1, "betas[0]", o.beta1, "[0, 1]");
  check_range(o.beta2 >= 0 && o.beta2 <= 1, "betas[1]", o.beta2, "[0, 1]");
  for (size_t i = 0; i < states_.size(); ++i) add_slot(i, "exp_avg", states_[i].param.sizes());
}

void Lion::step() {
  at::NoGradGuard no_grad;
  const double b1 = opt_.beta1, b2 = opt_.beta2;
  for (auto& s : states_) {
    at::Tensor g = grad_of(s.name, s.param);
    if (!g.defined()) continue;
    s.step += 1;
    at::Tensor& m = s.slots[0].second;
    const double decay = 1 - lr_ * s.weight_decay;
    if (use_fused(s.param, g)) {
      float* p = s.param.data_ptr<float>();
      const float* gp = g.data_ptr<float>();
      float* mp = m.data_ptr<float>();
      const LionScalars k{static_cast<float>(decay),  static_cast<float>(b1),     static_cast<float>(1 - b1),
                          static_cast<float>(b2),     static_cast<float>(1 - b2), static_cast<float>(-lr_)};
      for_elements(s.param.numel(), [=](int64_t b, int64_t e) { lion_kernel(p + b, gp + b, mp + b, e - b, k); });
      s.param.unsafeGetTensorImpl()->bump_version();
    } else {
      if (s.weight_decay != 0) s.param.mul_(decay);
      at::Tensor c = scratch_like(m);
      at::mul_out(c, m, b1);
      c.add_(g, 1 - b1).sign_();
      s.param.add_(c, -lr_);
      m.mul_(b2).add_(g, 1 - b2);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Adafactor (Shazeer & Stern 2018, as in transformers.Adafactor). For update t of a parameter:
//   lr_t = (relative_step ? min(warmup_init ? 1e-6*t : 1e-2, 1/sqrt(t)) : lr)
//          * (scale_parameter ? max(eps2, RMS(p)) : 1)
//   beta2_t = 1 - t^decay_rate;  u = g^2 + eps1
//   >= 2-D: R = beta2_t*R + (1-beta2_t)*mean_last(u);  C = beta2_t*C + (1-beta2_t)*mean_second_last(u)
//           V = (R / mean_last(R)) outer C
//   else:   V = beta2_t*V + (1-beta2_t)*u
//   u = g / sqrt(V);  u /= max(1, RMS(u)/clip_threshold);  u *= lr_t
//   beta1 > 0: m = beta1*m + (1-beta1)*u; u = m
//   p -= lr_t*wd*p;  p -= u
// fp16/bf16 parameters are updated in float32 (state in float32) and written back.

Adafactor::Adafactor(const NamedParams& params, double lr, const AdafactorOptions& o)
    : Optimizer(params, lr, o.weight_decay, o.weight_decay_all), opt_(o) {
  check_range(o.eps1 >= 0, "eps1", o.eps1, ">= 0");
  check_range(o.eps2 >= 0, "eps2", o.eps2, ">= 0");
  check_range(o.clip_threshold > 0, "clip_threshold", o.clip_threshold, "> 0");
  check_range(o.decay_rate <= 0, "decay_rate", o.decay_rate, "<= 0");
  check_range(o.beta1 >= 0 && o.beta1 < 1, "beta1", o.beta1, "[0, 1)");
  if (o.warmup_init && !o.relative_step) fail_usage("optim.warmup_init requires optim.relative_step: true");
  for (size_t i = 0; i < states_.size(); ++i) {
    const at::Tensor& p = states_[i].param;
    const at::ScalarType dt = is_low_precision(p.scalar_type()) ? at::kFloat : p.scalar_type();
    if (o.beta1 > 0) add_slot(i, "exp_avg", p.sizes(), dt);
    if (p.dim() >= 2) {
      std::vector<int64_t> row(p.sizes().begin(), p.sizes().end() - 1);           // shape[:-1]
      std::vector<int64_t> col(p.sizes().begin(), p.sizes().end() - 2);           // shape[:-2] + shape[-1:]
      col.push_back(p.sizes().back());
      add_slot(i, "exp_avg_sq_row", row, dt);
      add_slot(i, "exp_avg_sq_col", col, dt);
    } else {
      add_slot(i, "exp_avg_sq", p.sizes(), dt);
    }
  }
}

void Adafactor::step() {
  at::NoGradGuard no_grad;
  const AdafactorOptions& o = opt_;
  for (auto& s : states_) {
    at::Tensor g = grad_of(s.name, s.param);
    if (!g.defined()) continue;
    s.step += 1;
    const bool low = is_low_precision(s.param.scalar_type());
    at::Tensor p = low ? s.param.to(at::kFloat) : s.param;
    if (g.scalar_type() != p.scalar_type()) g = g.to(p.scalar_type());
    const double t = static_cast<double>(s.step);

    double lr_t = o.relative_step ? std::min(o.warmup_init ? 1e-6 * t : 1e-2, 1.0 / std::sqrt(t)) : lr_;
    if (o.scale_parameter) {
      const double rms_p = p.norm().item<double>() / std::sqrt(static_cast<double>(std::max<int64_t>(p.numel(), 1)));
      lr_t *= std::max(o.eps2, rms_p);
    }
    const double beta2t = 1.0 - std::pow(t, o.decay_rate);

    size_t k = 0;
    at::Tensor* m = o.beta1 > 0 ? &s.slots[k++].second : nullptr;
    at::Tensor u = scratch_like(p);
    at::mul_out(u, g, g);
    u.add_(o.eps1);
    if (p.dim() >= 2) {
      at::Tensor& row = s.slots[k].second;      // shape[:-1]
      at::Tensor& col = s.slots[k + 1].second;  // shape[:-2] + shape[-1:]
      row.mul_(beta2t).add_(u.mean(-1), 1.0 - beta2t);
      col.mul_(beta2t).add_(u.mean(-2), 1.0 - beta2t);
      at::Tensor r = (row / row.mean(-1, /*keepdim=*/true)).rsqrt_().unsqueeze(-1);  // [..., R, 1]
      at::Tensor c = col.unsqueeze(-2).rsqrt();                                       // [..., 1, C]
      at::mul_out(u, r, c);
    } else {
      at::Tensor& v = s.slots[k].second;
      v.mul_(beta2t).add_(u, 1.0 - beta2t);
      at::rsqrt_out(u, v);
    }
    u.mul_(g);
    const double n = static_cast<double>(std::max<int64_t>(u.numel(), 1));
    u.div_((u.norm() / std::sqrt(n) / o.clip_threshold).clamp_min_(1.0));
    u.mul_(lr_t);
    if (m) {
      m->mul_(o.beta1).add_(u, 1 - o.beta1);
      u = *m;
    }
    if (s.weight_decay != 0) p.add_(p, -s.weight_decay * lr_t);
    p.sub_(u);
    if (low) s.param.copy_(p);
  }
}

// ---------------------------------------------------------------------------------------------
// Registry.

namespace {

const char* kWeightDecayHelp =
    "weight decay (adamw, lion, adafactor: decoupled, p -= lr*wd*p; sgd: L2 added to the gradient)";
const char* kWeightDecayAllHelp =
    "apply weight_decay to every parameter (default: only to >= 2-D ones, not to norms and biases)";

}  // namespace

const std::vector<ComponentInfo>& optimizer_registry() {
  static const std::vector<ComponentInfo> reg = {
      {"adamw",
       "Adam with decoupled weight decay and bias correction (PyTorch AdamW)",
       {{"betas", "float_pair", "[0.9, 0.999]", "Adam (beta1, beta2): decay of the first and second moments"},
        {"eps", "float", "1e-8", "added to sqrt(second moment) in the denominator"},
        {"weight_decay", "float", "0.0", kWeightDecayHelp},
        {"weight_decay_all", "bool", "false", kWeightDecayAllHelp}}},
      {"sgd",
       "stochastic gradient descent with optional (Nesterov) momentum (PyTorch SGD)",
       {{"momentum", "float", "0.0", "sgd: momentum factor (0: plain SGD)"},
        {"dampening", "float", "0.0", "sgd: dampening of the momentum update"},
        {"nesterov", "bool", "false", "sgd: Nesterov momentum (needs momentum > 0, dampening 0)"},
        {"weight_decay", "float", "0.0", kWeightDecayHelp},
        {"weight_decay_all", "bool", "false", kWeightDecayAllHelp}}},
      {"lion",
       "sign of an interpolated momentum (Chen et al. 2023); use a 3-10x smaller lr than AdamW",
       {{"betas", "float_pair", "[0.9, 0.99]",
         "lion (beta1, beta2): interpolation for the update, decay of the momentum"},
        {"weight_decay", "float", "0.0", kWeightDecayHelp},
        {"weight_decay_all", "bool", "false", kWeightDecayAllHelp}}},
      {"adafactor",
       "factored second moments, update clipping (transformers' Adafactor); external lr by default",
       {{"eps1", "float", "1e-30", "adafactor: added to the squared gradient"},
        {"eps2", "float", "1e-3", "adafactor: lower bound of the parameter RMS when scale_parameter"},
        {"clip_threshold", "float", "1.0", "adafactor: the update is scaled so its RMS is at most this"},
        {"decay_rate", "float", "-0.8", "adafactor: second-moment decay beta2_t = 1 - t^decay_rate"},
        {"beta1", "float", "0.0", "adafactor: first-moment decay of the update (0: no first moment)"},
        {"weight_decay", "float", "0.0", kWeightDecayHelp},
        {"weight_decay_all", "bool", "false", kWeightDecayAllHelp},
        {"scale_parameter", "bool", "false", "adafactor: scale the lr by max(eps2, RMS(parameter))"},
        {"relative_step", "bool", "false",
         "adafactor: time-dependent lr min(1e-2, 1/sqrt(t)) instead of optim.lr and the schedule"},
        {"warmup_init", "bool", "false", "adafactor: relative_step starts at 1e-6*t (needs relative_step)"}}},
  };
  return reg;
}

std::unique_ptr<Optimizer> make_optimizer(const std::string& name, const HParams& hparams, double lr,
                                          const NamedParams& params) {
  const ComponentInfo& info = find_component(optimizer_registry(), name, "optimizer");
  HParamReader r(info, hparams, "optim");
  if (name == "adamw") {
    AdamWOptions o;
    std::tie(o.beta1, o.beta2) = r.get_float_pair("betas");
    o.eps = r.get_float("eps");
    o.weight_decay = r.get_float("weight_decay");
    o.weight_decay_all = r.get_bool("weight_decay_all");
    return std::make_unique<AdamW>(params, lr, o);
  }
  if (name == "sgd") {
    SGDOptions o;
    o.momentum = r.get_float("momentum");
    o.dampening = r.get_float("dampening");
    o.nesterov = r.get_bool("nesterov");
    o.weight_decay = r.get_float("weight_decay");
    o.weight_decay_all = r.get_bool("weight_decay_all");
    return std::make_unique<SGD>(params, lr, o);
  }
  if (name == "lion") {
    LionOptions o;
    std::tie(o.beta1, o.beta2) = r.get_float_pair("betas");
    o.weight_decay = r.get_float("weight_decay");
    o.weight_decay_all = r.get_bool("weight_decay_all");
    return std::make_unique<Lion>(params, lr, o);
  }
  AdafactorOptions o;
  o.eps1 = r.get_float("eps1");
  o.eps2 = r.get_float("eps2");
  o.clip_threshold = r.get_float("clip_threshold");
  o.decay_rate = r.get_float("decay_rate");
  o.beta1 = r.get_float("beta1");
  o.weight_decay = r.get_float("weight_decay");
  o.weight_decay_all = r.get_bool("weight_decay_all");
  o.scale_parameter = r.get_bool("scale_parameter");
  o.relative_step = r.get_bool("relative_step");
  o.warmup_init = r.get_bool("warmup_init");
  return std::make_unique<Adafactor>(params, lr, o);
}

}  // namespace dsk::train
