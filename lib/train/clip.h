// Gradient clipping by the global L2 norm (torch.nn.utils.clip_grad_norm_ semantics).
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

namespace dsk::train {

// The L2 norm of all gradients together (parameters without a grad are skipped; 0 when none
// has one). When max_norm > 0 and the norm exceeds it, every gradient is scaled in place by
// max_norm / (norm + 1e-6). Returns the norm before clipping; max_norm <= 0 only measures.
// A non-finite norm is returned as is (the caller decides whether to skip the step); with
// max_norm > 0 the gradients are then scaled by a non-finite factor, as in PyTorch.
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

// The same over gradients spread across processes (ZeRO-1: each rank holds the summed gradients
// of the parameters it owns): `sum_across` turns this rank's float32 sum of squared norms (a
// one-element tensor) into the sum over all ranks in place. Every rank must call it.
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm,
                      const std::function<void(at::Tensor&)>& sum_across);

}  // namespace dsk::train
