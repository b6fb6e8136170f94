#include "models/generate.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace dsk::models {

uint64_t SampleRng::next_u64() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double SampleRng::next_double() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

namespace {

void check_options(const SampleOptions& o) {
  if (o.max_new_tokens < 0) fail_usage("generate: max_new_tokens must be >= 0, got {}", o.max_new_tokens);
  if (!(o.temperature >= 0.0) || !std::isfinite(o.temperature))
    fail_usage("generate: temperature must be >= 0, got {}", o.temperature);
  if (o.top_k < 0) fail_usage("generate: top_k must be >= 0 (0 = off), got {}", o.top_k);
  if (!(o.top_p > 0.0 && o.top_p <= 1.0)) fail_usage("generate: top_p must be in (0, 1], got {}", o.top_p);
}

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return static_cast<int32_t>(best);
}

}  // namespace

int32_t sample_token(const float* logits, int64_t V, const SampleOptions& opt, SampleRng& rng) {
  check_options(opt);
  if (opt.temperature == 0.0) return argmax(logits, V);

  // temperature: p_i proportional to exp((l_i - max) / T), in double
  const float mx = logits[argmax(logits, V)];
  std::vector<double> p(V);
  for (int64_t i = 0; i < V; ++i) p[i] = std::exp((static_cast<double>(logits[i]) - mx) / opt.temperature);

  // candidates, most probable first (ties: lower id first)
  std::vector<int32_t> cand(V);
  std::iota(cand.begin(), cand.end(), 0);
  auto more_probable = [&](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); };
  const bool use_k = opt.top_k > 0 && opt.top_k < V;
  const bool use_p = opt.top_p < 1.0;
  if (use_k) {
    std::partial_sort(cand.begin(), cand.begin() + opt.top_k, cand.end(), more_probable);
    cand.resize(opt.top_k);
  } else if (use_p) {
    std::sort(cand.begin(), cand.end(), more_probable);
  }
  double mass = 0.0;
  for (int32_t i : cand) mass += p[i];
  if (use_p) {  // top-p over the distribution renormalized after top-k
    double cum = 0.0;
    size_t keep = 0;
    while (keep < cand.size()) {
      cum += p[cand[keep++]];
      if (cum >= opt.top_p * mass) break;
    }
    cand.resize(keep);
    mass = cum;
  }
  double u = rng.next_double() * mass;
  double cum = 0.0;
  for (int32_t i : cand) {
    cum += p[i];
    if (u < cum) return i;
  }
  return cand.back();  // rounding: u landed at the very end
}

std::vector<int32_t> generate(Llama& model, const std::vector<int32_t>& prompt_ids, const SampleOptions& opt,
                              int32_t eos_id, std::function<void(int32_t)> on_token) {
  check_options(opt);
  if (prompt_ids.empty()) fail_usage("generate: the prompt is empty (it needs at least a BOS token)");
  const int64_t P = static_cast<int64_t>(prompt_ids.size());
  const int64_t max_len = model->config().max_position_embeddings;
  if (P >= max_len)
    fail_usage("generate: the prompt has {} tokens, the model's maximum length is {}: nothing left to generate", P,
               max_len);
  const int64_t n_new = std::min<int64_t>(opt.max_new_tokens, max_len - P);
  std::vector<int32_t> out;
  if (n_new <= 0) return out;

  const bool was_training = model->is_training();
  model->eval();
  struct RestoreMode {
    Llama& m;
    bool training;
    ~RestoreMode() { m->train(training); }
  } restore{model, was_training};
  at::NoGradGuard no_grad;

  SampleRng rng(opt.seed);
  const int64_t V = model->config().vocab_size;
  KVCache cache = model->make_cache(1, P + n_new - 1);  // the last token is never fed back
  std::vector<int64_t> ids(prompt_ids.begin(), prompt_ids.end());
  at::Tensor tokens = at::tensor(ids, at::kLong).view({1, P});                  // [1, P]
  at::Tensor hidden = model->hidden_states(tokens, &cache);                      // [1, P, C]
  at::Tensor logits = model->logits(hidden.select(1, P - 1));                   // [1, V]
  for (int64_t step = 0; step < n_new; ++step) {
    at::Tensor l = logits.to(at::kCPU).contiguous();
    int32_t next = sample_token(l.data_ptr<float>(), V, opt, rng);
    if (next == eos_id) break;
    out.push_back(next);
    if (on_token) on_token(next);
    if (step + 1 == n_new) break;
    at::Tensor t = at::full({1, 1}, static_cast<int64_t>(next), at::TensorOptions().dtype(at::kLong));  // [1, 1]
    logits = model->forward(t, &cache).select(1, 0);                                                    // [1, V]
  }
  return out;
}

}  // namespace dsk::models
