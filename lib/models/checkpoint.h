// Activation checkpointing: run a block without keeping its activations, and recompute it in the
// backward pass (the reentrant scheme of torch.utils.checkpoint). Only the block's input is kept.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <vector>

namespace dsk::models {

// out = fn(x), differentiable with respect to x and `params` (the tensors fn reads that need
// gradients). fn must be a pure function of x, params and the global CPU generator: the
// generator's state at the forward is restored for the recomputation (dropout masks match) and
// put back afterwards. Without grad mode, or when nothing needs a gradient, simply fn(x).
at::Tensor checkpoint(std::function<at::Tensor(const at::Tensor&)> fn, const at::Tensor& x,
                      const std::vector<at::Tensor>& params);

}  // namespace dsk::models
