// Learning-rate schedules (formulas in schedule.h and docs/training.md).
#include "train/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace dsk::train {
namespace {

constexpr double kPi = 3.14159265358979323846;

double cosine_factor(double r, double p) { return r + (1 - r) * 0.5 * (1 + std::cos(kPi * p)); }

}  // namespace

const std::vector<ComponentInfo>& schedule_registry() {
  static const ParamSpec warmup{"warmup_steps", "int", "0",
                                "updates of linear warmup from lr/warmup_steps up to lr (0: none)"};
  static const ParamSpec min_ratio{"min_lr_ratio", "float", "0.0", "final lr as a fraction of the peak lr"};
  static const std::vector<ComponentInfo> reg = {
      {"constant", "lr after warmup", {warmup}},
      {"linear", "linear decay from lr to min_lr_ratio*lr at max_steps", {warmup, min_ratio}},
      {"cosine", "half-cosine decay from lr to min_lr_ratio*lr at max_steps", {warmup, min_ratio}},
      {"cosine_restarts",
       "cosine decay restarted every cycle (SGDR); cycles grow by cycle_mult",
       {warmup, min_ratio,
        {"cycle_steps", "int", "0", "cosine_restarts: updates in the first cycle (0: max_steps - warmup_steps)"},
        {"cycle_mult", "float", "1.0", "cosine_restarts: each cycle is cycle_mult times longer than the last"}}},
  };
  return reg;
}

Schedule::Schedule(const std::string& name, const HParams& hparams, double peak_lr, int64_t total_steps)
    : peak_lr_(peak_lr), total_(total_steps) {
  const ComponentInfo& info = find_component(schedule_registry(), name, "schedule");
  HParamReader r(info, hparams, "schedule");
  if (!(std::isfinite(peak_lr) && peak_lr >= 0)) fail_usage("optim.lr = {} is out of range (want >= 0)", peak_lr);
  if (total_steps < 1) fail_usage("max_steps = {} is out of range (want >= 1)", total_steps);
  warmup_ = r.get_int("warmup_steps");
  if (warmup_ < 0) fail_usage("schedule.warmup_steps = {} is out of range (want >= 0)", warmup_);
  if (name == "constant") {
    kind_ = Kind::Constant;
    return;
  }
  min_ratio_ = r.get_float("min_lr_ratio");
  if (!(min_ratio_ >= 0 && min_ratio_ <= 1))
    fail_usage("schedule.min_lr_ratio = {} is out of range (want [0, 1])", min_ratio_);
  if (name == "linear") {
    kind_ = Kind::Linear;
  } else if (name == "cosine") {
    kind_ = Kind::Cosine;
  } else {
    kind_ = Kind::CosineRestarts;
    cycle_ = r.get_int("cycle_steps");
    mult_ = r.get_float("cycle_mult");
    if (cycle_ < 0) fail_usage("schedule.cycle_steps = {} is out of range (want >= 0)", cycle_);
    if (cycle_ == 0) cycle_ = std::max<int64_t>(1, total_ - warmup_);
    if (!(mult_ >= 1)) fail_usage("schedule.cycle_mult = {} is out of range (want >= 1)", mult_);
  }
}

double Schedule::lr_at(int64_t step) const {
  if (step < 0) step = 0;
  if (step < warmup_) return peak_lr_ * static_cast<double>(step + 1) / static_cast<double>(warmup_);
  const double s = static_cast<double>(step - warmup_);
  switch (kind_) {
    case Kind::Constant:
      return peak_lr_;
    case Kind::Linear:
    case Kind::Cosine: {
      const double span = static_cast<double>(std::max<int64_t>(1, total_ - warmup_));
      const double p = std::min(1.0, s / span);
      return peak_lr_ * (kind_ == Kind::Linear ? min_ratio_ + (1 - min_ratio_) * (1 - p) : cosine_factor(min_ratio_, p));
    }
    case Kind::CosineRestarts: {
      const double c = static_cast<double>(cycle_);
      double start = 0, len = c;
      if (mult_ == 1.0) {
        start = std::floor(s / c) * c;
      } else {
        // Cycle i starts at c * (mult^i - 1) / (mult - 1); take i from the closed form, then
        // correct it by one where rounding put it on the wrong side of a boundary.
        double i = std::floor(std::log1p(s * (mult_ - 1) / c) / std::log(mult_));
        auto begin = [&](double k) { return c * (std::pow(mult_, k) - 1) / (mult_ - 1); };
        if (begin(i) > s) i -= 1;
        if (begin(i + 1) <= s) i += 1;
        start = begin(i);
        len = c * std::pow(mult_, i);
      }
      return peak_lr_ * cosine_factor(min_ratio_, (s - start) / len);
    }
  }
  return peak_lr_;
}

}  // namespace dsk::train
