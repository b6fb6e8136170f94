// Gradient clipping by the global L2 norm (torch.nn.utils.clip_grad_norm_ semantics).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace dsk::train {

// The L2 norm of all gradients together (parameters without a grad are skipped; 0 when none
// has one). When max_norm > 0 and the norm exceeds it, every gradient is scaled in place by
// max_norm / (norm + 1e-6). Returns the norm before clipping; max_norm <= 0 only measures.
// A non-finite norm is returned as is (the caller decides whether to skip the step); with
// max_norm > 0 the gradients are then scaled by a non-finite factor, as in PyTorch.
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace dsk::train
