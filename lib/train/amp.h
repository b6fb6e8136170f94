// Mixed precision: autocast regions (fp32 master weights, matmuls in bf16/fp16) and the dynamic
// loss scaler that fp16 needs (torch.cuda.amp.GradScaler's rule).
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace dsk::train {

// While alive, ops on `device` that autocast lists (linear, matmul, ...) run in `dtype`;
// restores the previous state. dtype fp32 or an unsupported device: does nothing.
class AutocastGuard {
 public:
  AutocastGuard(c10::Device device, at::ScalarType dtype);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool active_ = false, cuda_ = false, prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kFloat;
};

// Dynamic loss scaling: multiply the loss by scale() before backward; then unscale() divides
// the gradients by it and says whether they are all finite. update(found_inf): on overflow the
// step is skipped and the scale halves; after `growth_interval` clean steps it doubles.
class LossScaler {
 public:
  explicit LossScaler(bool enabled, double init_scale = 65536.0, double growth = 2.0, double backoff = 0.5,
                      int growth_interval = 2000);
  bool enabled() const { return enabled_; }
  double scale() const { return enabled_ ? scale_ : 1.0; }
  // Divides every defined gradient by scale(); true when all are finite afterwards.
  bool unscale(const std::vector<at::Tensor>& params) const;
  void update(bool found_inf);
  int64_t skipped() const { return skipped_; }
  // For checkpoints.
  at::Tensor state() const;
  void load_state(const at::Tensor& state);

 private:
  bool enabled_;
  double scale_, growth_, backoff_;
  int growth_interval_;
  int good_steps_ = 0;
  int64_t skipped_ = 0;
};

}  // namespace dsk::train
