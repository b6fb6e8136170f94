#include "train/amp.h"


#include "core/error.h"
#include "core/torch_compat.h"

namespace dsk::train {

AutocastGuard::AutocastGuard(c10::Device device, at::ScalarType dtype) {
  if (dtype == at::kFloat || dtype == at::kDouble) return;
  active_ = true;
  cuda_ = device.is_cuda();
  const auto type = cuda_ ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  prev_enabled_ = compat::autocast_enabled(type);
  prev_dtype_ = compat::autocast_dtype(type);
  compat::set_autocast(type, true, dtype);
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();  // casts of the weights
  compat::set_autocast(cuda_ ? c10::DeviceType::CUDA : c10::DeviceType::CPU, prev_enabled_, prev_dtype_);
}

LossScaler::LossScaler(bool enabled, double init_scale, double growth, double backoff, int growth_interval)
    : enabled_(enabled), scale_(init_scale), growth_(growth), backoff_(backoff), growth_interval_(growth_interval) {
  DSK_CHECK(init_scale > 0 && growth > 1 && backoff > 0 && backoff < 1 && growth_interval > 0,
            "LossScaler: invalid settings");
}

bool LossScaler::unscale(const std::vector<at::Tensor>& params) const {
  at::NoGradGuard no_grad;
  bool finite = true;
  const double inv = 1.0 / scale();
  for (const auto& p : params) {
    at::Tensor g = p.grad();
    if (!g.defined()) continue;
    if (enabled_) g.mul_(inv);
    if (finite && !at::isfinite(g).all().item<bool>()) finite = false;
  }
  return finite;
}

void LossScaler::update(bool found_inf) {
  if (!enabled_) return;
  if (found_inf) {
    scale_ *= backoff_;
    good_steps_ = 0;
    ++skipped_;
    return;
  }
  if (++good_steps_ >= growth_interval_) {
    scale_ *= growth_;
    good_steps_ = 0;
  }
}

at::Tensor LossScaler::state() const {
  return at::tensor({scale_, static_cast<double>(good_steps_), static_cast<double>(skipped_)}, at::kDouble);
}

void LossScaler::load_state(const at::Tensor& state) {
  DSK_CHECK(state.numel() == 3, "loss scaler state: expected 3 numbers, got {}", state.numel());
  at::Tensor s = state.to(at::kDouble).contiguous();
  scale_ = s[0].item<double>();
  good_steps_ = static_cast<int>(s[1].item<double>());
  skipped_ = static_cast<int64_t>(s[2].item<double>());
  DSK_CHECK(scale_ > 0 && std::isfinite(scale_), "loss scaler state: scale {} is not a positive number", scale_);
}

}  // namespace dsk::train
