// Global-norm gradient clipping: per-gradient norms, stacked, normed once, one sync.
#include "train/clip.h"

#include <ATen/ATen.h>

namespace dsk::train {
namespace {

// The defined gradients and their float32 norms.
void gradient_norms(const std::vector<at::Tensor>& params, std::vector<at::Tensor>& grads, std::vector<at::Tensor>& norms) {
  for (const auto& p : params) {
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    grads.push_back(g);
    norms.push_back(g.norm().to(at::kFloat));
  }
}

// PyTorch: clip_coef = max_norm / (total + 1e-6), clamped to 1; multiplying by 1 is a no-op.
double scale_to(std::vector<at::Tensor>& grads, const at::Tensor& total, double max_norm) {
  const double total_norm = total.item<double>();
  if (max_norm > 0) {
    const at::Tensor coef = ((total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
    if (!(coef.item<double>() >= 1.0))
      for (auto& g : grads) g.mul_(coef.to(g.device(), g.scalar_type()));
  }
  return total_norm;
}

}  // namespace

double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads, norms;
  gradient_norms(params, grads, norms);
  if (grads.empty()) return 0.0;
  const at::Device dev = norms.front().device();
  for (auto& n : norms) n = n.to(dev);
  return scale_to(grads, at::stack(norms).norm(), max_norm);  // float32 scalar, as in PyTorch
}

double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm,
                      const std::function<void(at::Tensor&)>& sum_across) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads, norms;
  gradient_norms(params, grads, norms);
  for (auto& n : norms) n = n.to(at::kCPU);
  at::Tensor sq = norms.empty() ? at::zeros({1}, at::kFloat) : at::stack(norms).square().sum().reshape({1});
  sum_across(sq);
  return scale_to(grads, sq.sqrt().reshape({}), max_norm);
}

}  // namespace dsk::train
