#include "models/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <mutex>

namespace dsk::models {
namespace {

using torch::autograd::variable_list;

at::Tensor generator_state() {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_generator_state(const at::Tensor& state) {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// The backward node: recompute fn from the saved input with grad mode on, then differentiate
// the recomputed graph (a nested, reentrant backward) with respect to x and the parameters.
// The parameters' gradients go out through this node's edges, so each leaf's AccumulateGrad
// runs once, in the outer backward pass (data-parallel gradient hooks see one gradient).
struct CheckpointBackward : torch::autograd::Node {
  std::function<at::Tensor(const at::Tensor&)> fn;
  at::Tensor x;  // the block input, detached
  std::vector<at::Tensor> params;
  at::Tensor rng;

  variable_list apply(variable_list&& grads) override {
    variable_list none(1 + params.size());
    if (!grads[0].defined()) return none;
    at::Tensor input = x.detach().requires_grad_(true);
    const at::Tensor now = generator_state();
    set_generator_state(rng);
    at::Tensor out;
    {
      at::AutoGradMode enable(true);
      out = fn(input);
    }
    set_generator_state(now);
    variable_list inputs{input};
    inputs.insert(inputs.end(), params.begin(), params.end());
    return torch::autograd::grad({out}, inputs, {grads[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                 /*allow_unused=*/true);
  }

  void release_variables() override {
    x.reset();
    rng.reset();
  }
  std::string name() const override { return "dsk::CheckpointBackward"; }
};

}  // namespace

at::Tensor checkpoint(std::function<at::Tensor(const at::Tensor&)> fn, const at::Tensor& x,
                      const std::vector<at::Tensor>& params) {
  bool needs_grad = x.requires_grad();
  for (const auto& p : params) needs_grad = needs_grad || p.requires_grad();
  if (!at::GradMode::is_enabled() || !needs_grad) return fn(x);

  auto node = std::shared_ptr<CheckpointBackward>(new CheckpointBackward(), torch::autograd::deleteNode);
  node->rng = generator_state();
  at::Tensor out;
  {
    at::NoGradGuard no_grad;
    out = fn(x.detach());
  }
  node->fn = std::move(fn);
  node->x = x.detach();
  node->params = params;
  variable_list edges_of{x};
  edges_of.insert(edges_of.end(), params.begin(), params.end());
  node->set_next_edges(torch::autograd::collect_next_edges(edges_of));
  torch::autograd::create_gradient_edge(out, node);
  return out;
}

}  // namespace dsk::models
