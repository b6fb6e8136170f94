// Token cross-entropy with ignored targets, plain and chunked over the lm_head.
//
// Both return the mean over the targets that are not ignore_index, and their count (so that
// gradient accumulation can weight micro-batches by tokens). With no counted target the loss is
// 0 with a zero gradient, not NaN. fp16/bf16 logits are reduced in float32.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace dsk::train {

constexpr int64_t kIgnoreIndex = -100;

struct LossResult {
  at::Tensor loss;    // 0-dim, differentiable: sum of -log p(target) / max(count, 1)
  int64_t count = 0;  // targets != ignore_index
};

// logits [..., V], targets [...] int64 with values in [0, V) or ignore_index.
LossResult cross_entropy(const at::Tensor& logits, const at::Tensor& targets,
                         int64_t ignore_index = kIgnoreIndex);

// The same value and gradients as cross_entropy(hidden @ weight^T, targets) without holding the
// [N, V] logits: rows are processed `chunk_rows` at a time (0: about 8M logits per chunk). When
// gradients are needed they are computed chunk by chunk during the forward pass and kept
// ([N, H] for hidden, [V, H] for weight), so backward only scales them.
// hidden [..., H], weight [V, H] (lm_head), targets [...] int64.
LossResult chunked_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                 int64_t chunk_rows = 0, int64_t ignore_index = kIgnoreIndex);

// Knowledge distillation on logits: the divergence between the teacher's and the student's
// next-token distributions at temperature T, averaged over the scored tokens (targets !=
// ignore_index) and multiplied by T^2 (Hinton et al.: keeps gradient magnitudes comparable
// across temperatures). Forward KL(teacher || student) is the usual choice; reverse KL(student
// || teacher) is mode-seeking; Jensen-Shannon is symmetric and bounded.
enum class Divergence { ForwardKL, ReverseKL, JensenShannon };
Divergence divergence_from(const std::string& name);  // "forward_kl" | "reverse_kl" | "js"

// student_logits, teacher_logits [..., V] (the teacher's without gradient), targets [...].
LossResult distill_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits, const at::Tensor& targets,
                        Divergence kind = Divergence::ForwardKL, double temperature = 1.0,
                        int64_t ignore_index = kIgnoreIndex);

// The same divergence restricted to the teacher's k most likely tokens (distill.top_k): both
// distributions are renormalized over that set (student logits gathered at the teacher's
// indices), so only [..., k] teacher values and indices need to be kept.
// teacher_topk_values / teacher_topk_indices [..., k] (int64).
LossResult distill_loss_topk(const at::Tensor& student_logits, const at::Tensor& teacher_topk_values,
                             const at::Tensor& teacher_topk_indices, const at::Tensor& targets,
                             Divergence kind = Divergence::ForwardKL, double temperature = 1.0,
                             int64_t ignore_index = kIgnoreIndex);

// Hidden-state matching (distill.hidden): student [..., C] (already projected to the teacher's
// width) against teacher [..., C], averaged over the positions whose target is scored.
//   mse:    mean over channels of (s - t)^2 (TinyBERT)
//   cosine: 1 - cos(s, t) (DistilBERT)
enum class HiddenLoss { MSE, Cosine };
HiddenLoss hidden_loss_from(const std::string& name);  // "mse" | "cosine"
LossResult hidden_state_loss(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& targets,
                             HiddenLoss kind, int64_t ignore_index = kIgnoreIndex);

}  // namespace dsk::train
