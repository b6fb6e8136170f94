// Cross-entropy: the plain form over materialized logits, and a chunked form whose custom
// autograd function computes the lm_head gradients chunk by chunk in the forward pass.
#include "train/loss.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

#include "core/error.h"

namespace dsk::train {
namespace {

constexpr int64_t kChunkElements = int64_t{1} << 23;  // logits per chunk when chunk_rows = 0

bool is_low_precision(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// Flattened targets [N]; checks dtype, size and range. Returns the counted targets.
int64_t check_targets(const at::Tensor& targets, int64_t rows, int64_t vocab, int64_t ignore_index) {
  DSK_CHECK(targets.scalar_type() == at::kLong, "cross_entropy: targets must be int64, got {}",
            c10::toString(targets.scalar_type()));
  DSK_CHECK(targets.numel() == rows, "cross_entropy: {} targets for {} rows", targets.numel(), rows);
  const at::Tensor valid = targets.ne(ignore_index);
  const bool bad = (valid & (targets.lt(0) | targets.ge(vocab))).any().item<bool>();
  DSK_CHECK(!bad, "cross_entropy: a target is outside [0, {}) and is not ignore_index {}", vocab, ignore_index);
  return valid.sum().item<int64_t>();
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// loss = sum over counted rows of (logsumexp(h W^T) - (h W^T)[target]) / max(count, 1).
struct ChunkedCrossEntropy : torch::autograd::Function<ChunkedCrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden /*[N,H]*/,
                            const at::Tensor& weight /*[V,H]*/, const at::Tensor& targets /*[N]*/, int64_t chunk,
                            int64_t ignore_index, int64_t count, bool need_hidden, bool need_weight) {
    const int64_t n_rows = hidden.size(0);
    const at::ScalarType ct = is_low_precision(hidden.scalar_type()) ? at::kFloat : hidden.scalar_type();
    at::Tensor sum = at::zeros({}, hidden.options().dtype(ct));
    at::Tensor grad_hidden = need_hidden ? at::empty_like(hidden) : at::Tensor();                     // [N,H]
    at::Tensor grad_weight = need_weight ? at::zeros(weight.sizes(), weight.options().dtype(ct)) : at::Tensor();  // [V,H]
    const at::Tensor weight_t = weight.t();  // [H,V]
    for (int64_t start = 0; start < n_rows; start += chunk) {
      const int64_t n = std::min(chunk, n_rows - start);
      const at::Tensor h = hidden.narrow(0, start, n);   // [n,H]
      const at::Tensor t = targets.narrow(0, start, n);  // [n]
      at::Tensor logits = at::mm(h, weight_t);           // [n,V]
      if (logits.scalar_type() != ct) logits = logits.to(ct);
      const at::Tensor valid = t.ne(ignore_index);                             // [n]
      const at::Tensor safe_t = t.masked_fill(valid.logical_not(), 0).unsqueeze(1);  // [n,1]
      const at::Tensor lse = at::logsumexp(logits, 1);                         // [n]
      const at::Tensor nll = lse - logits.gather(1, safe_t).squeeze(1);         // [n]
      sum.add_(at::where(valid, nll, at::zeros({}, nll.options())).sum());
      if (!need_hidden && !need_weight) continue;
      // d(sum)/d(logits) = softmax - onehot(target) on counted rows, 0 elsewhere; in place.
      const at::Tensor validf = valid.to(ct).unsqueeze(1);  // [n,1]
      logits.sub_(lse.unsqueeze(1)).exp_();
      logits.scatter_add_(1, safe_t, validf.neg());
      logits.mul_(validf);
      if (need_hidden) {
        at::Tensor gh = grad_hidden.narrow(0, start, n);
        at::mm_out(gh, logits.to(hidden.scalar_type()), weight);  // [n,H]
      }
      if (need_weight) grad_weight.addmm_(logits.t(), h.to(ct));  // [V,H]
    }
    if (ctx) {
      ctx->saved_data["grad_hidden"] = grad_hidden;
      ctx->saved_data["grad_weight"] = grad_weight;
      ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
      ctx->saved_data["count"] = count;
    }
    return sum / static_cast<double>(std::max<int64_t>(count, 1));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const at::Tensor scale = grad_out[0] / static_cast<double>(std::max<int64_t>(ctx->saved_data["count"].toInt(), 1));
    at::Tensor gh = ctx->saved_data["grad_hidden"].toTensor();
    at::Tensor gw = ctx->saved_data["grad_weight"].toTensor();
    variable_list out(8);
    if (gh.defined()) out[0] = gh * scale.to(gh.scalar_type());
    if (gw.defined()) {
      const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
      out[1] = (gw * scale.to(gw.scalar_type())).to(dtype);
    }
    return out;
  }
};

}  // namespace

LossResult cross_entropy(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index) {
  DSK_CHECK(logits.dim() >= 1, "cross_entropy: logits must have a vocabulary dimension");
  const int64_t vocab = logits.size(-1);
  at::Tensor lg = logits.reshape({-1, vocab});  // [N,V]
  if (is_low_precision(lg.scalar_type())) lg = lg.to(at::kFloat);
  const at::Tensor t = targets.reshape({-1});  // [N]
  LossResult r;
  r.count = check_targets(t, lg.size(0), vocab, ignore_index);
  const at::Tensor sum = at::nll_loss(at::log_softmax(lg, 1), t, {}, at::Reduction::Sum, ignore_index);
  r.loss = sum / static_cast<double>(std::max<int64_t>(r.count, 1));
  return r;
}

LossResult chunked_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                 int64_t chunk_rows, int64_t ignore_index) {
  DSK_CHECK(weight.dim() == 2, "chunked_cross_entropy: weight must be [V, H]");
  DSK_CHECK(hidden.dim() >= 1 && hidden.size(-1) == weight.size(1),
            "chunked_cross_entropy: hidden size {} does not match weight [{}, {}]", hidden.size(-1), weight.size(0),
            weight.size(1));
  const at::Tensor h = hidden.reshape({-1, weight.size(1)});  // [N,H]
  const at::Tensor t = targets.reshape({-1});                 // [N]
  const int64_t vocab = weight.size(0);
  LossResult r;
  r.count = check_targets(t, h.size(0), vocab, ignore_index);
  const int64_t chunk = chunk_rows > 0 ? chunk_rows : std::max<int64_t>(1, kChunkElements / std::max<int64_t>(vocab, 1));
  const bool grad = at::GradMode::is_enabled();
  const bool need_h = grad && h.requires_grad();
  const bool need_w = grad && weight.requires_grad();
  if (!need_h && !need_w) {
    at::NoGradGuard no_grad;
    r.loss = ChunkedCrossEntropy::forward(nullptr, h, weight, t, chunk, ignore_index, r.count, false, false);
    return r;
  }
  r.loss = ChunkedCrossEntropy::apply(h, weight, t, chunk, ignore_index, r.count, need_h, need_w);
  return r;
}

Divergence divergence_from(const std::string& name) {
  if (name == "forward_kl") return Divergence::ForwardKL;
  if (name == "reverse_kl") return Divergence::ReverseKL;
  if (name == "js") return Divergence::JensenShannon;
  fail_usage_hint(fmt::format("'{}' is not a divergence", name), "use forward_kl, reverse_kl or js");
}

namespace {

// Per row: the divergence between two log-distributions [N, V] -> [N].
at::Tensor divergence(const at::Tensor& ls, const at::Tensor& lt, Divergence kind) {
  switch (kind) {
    case Divergence::ForwardKL: return (lt.exp() * (lt - ls)).sum(-1);
    case Divergence::ReverseKL: return (ls.exp() * (ls - lt)).sum(-1);
    case Divergence::JensenShannon: {
      at::Tensor lm = at::logsumexp(at::stack({ls, lt}), 0) - std::log(2.0);  // log((p_s + p_t) / 2)
      return 0.5 * ((lt.exp() * (lt - lm)).sum(-1) + (ls.exp() * (ls - lm)).sum(-1));
    }
  }
  return {};
}

}  // namespace

LossResult distill_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits, const at::Tensor& targets,
                        Divergence kind, double temperature, int64_t ignore_index) {
  DSK_CHECK(student_logits.sizes() == teacher_logits.sizes(), "distill_loss: student logits {} vs teacher {}",
            fmt::join(student_logits.sizes(), "x"), fmt::join(teacher_logits.sizes(), "x"));
  DSK_CHECK(temperature > 0, "distill_loss: temperature must be > 0");
  const int64_t V = student_logits.size(-1);
  at::Tensor mask = targets.reshape({-1}).ne(ignore_index);  // [N]
  const int64_t count = mask.sum().item<int64_t>();
  at::Tensor ls = at::log_softmax(student_logits.reshape({-1, V}).to(at::kFloat) / temperature, -1);
  at::Tensor lt = at::log_softmax(teacher_logits.detach().reshape({-1, V}).to(at::kFloat) / temperature, -1);
  at::Tensor loss = (divergence(ls, lt, kind) * mask.to(at::kFloat)).sum() *
                    (temperature * temperature / std::max<int64_t>(count, 1));
  return {loss, count};
}

LossResult distill_loss_topk(const at::Tensor& student_logits, const at::Tensor& teacher_topk_values,
                             const at::Tensor& teacher_topk_indices, const at::Tensor& targets, Divergence kind,
                             double temperature, int64_t ignore_index) {
  DSK_CHECK(teacher_topk_values.sizes() == teacher_topk_indices.sizes(),
            "distill_loss_topk: values {} vs indices {}", fmt::join(teacher_topk_values.sizes(), "x"),
            fmt::join(teacher_topk_indices.sizes(), "x"));
  DSK_CHECK(temperature > 0, "distill_loss_topk: temperature must be > 0");
  const int64_t V = student_logits.size(-1), k = teacher_topk_values.size(-1);
  at::Tensor mask = targets.reshape({-1}).ne(ignore_index);
  const int64_t count = mask.sum().item<int64_t>();
  at::Tensor idx = teacher_topk_indices.reshape({-1, k});
  at::Tensor s = student_logits.reshape({-1, V}).to(at::kFloat).gather(-1, idx);
  at::Tensor ls = at::log_softmax(s / temperature, -1);
  at::Tensor lt = at::log_softmax(teacher_topk_values.detach().reshape({-1, k}).to(at::kFloat) / temperature, -1);
  at::Tensor loss = (divergence(ls, lt, kind) * mask.to(at::kFloat)).sum() *
                    (temperature * temperature / std::max<int64_t>(count, 1));
  return {loss, count};
}

HiddenLoss hidden_loss_from(const std::string& name) {
  if (name == "mse") return HiddenLoss::MSE;
  if (name == "cosine") return HiddenLoss::Cosine;
  fail_usage_hint(fmt::format("unknown hidden-state loss '{}'", name), "use mse or cosine");
}

LossResult hidden_state_loss(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& targets,
                             HiddenLoss kind, int64_t ignore_index) {
  DSK_CHECK(student.sizes() == teacher.sizes(), "hidden_state_loss: student {} vs teacher {}",
            fmt::join(student.sizes(), "x"), fmt::join(teacher.sizes(), "x"));
  const int64_t C = student.size(-1);
  at::Tensor mask = targets.reshape({-1}).ne(ignore_index).to(at::kFloat);
  const int64_t count = static_cast<int64_t>(mask.sum().item<double>());
  at::Tensor s = student.reshape({-1, C}).to(at::kFloat), t = teacher.detach().reshape({-1, C}).to(at::kFloat);
  at::Tensor per_token = kind == HiddenLoss::MSE ? (s - t).pow(2).mean(-1)
                                                 : 1.0 - at::cosine_similarity(s, t, /*dim=*/1, /*eps=*/1e-8);
  return {(per_token * mask).sum() / static_cast<double>(std::max<int64_t>(count, 1)), count};
}

}  // namespace dsk::train
