// Learning-rate schedules: constant, linear, cosine, cosine_restarts (SGDR), each after a linear
// warmup. lr_at(step) is a pure function of the step, so resuming needs no schedule state.
//
// `step` counts the optimizer updates already taken (0 for the first update). Formulas, with
// W = warmup_steps, T = total_steps, r = min_lr_ratio, p = clamp((step - W) / max(1, T - W), 0, 1):
//   warmup (step < W):  lr * (step + 1) / W
//   constant:           lr
//   linear:             lr * (r + (1 - r) * (1 - p))
//   cosine:             lr * (r + (1 - r) * (1 + cos(pi * p)) / 2)
//   cosine_restarts:    cosine within each cycle; cycle i lasts C * mult^i steps (C = cycle_steps,
//                       0: T - W), so the lr returns to its peak at every cycle boundary.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "train/registry.h"

namespace dsk::train {

class Schedule {
 public:
  enum class Kind { Constant, Linear, Cosine, CosineRestarts };

  // Usage errors name "schedule.<key>".
  Schedule(const std::string& name, const HParams& hparams, double peak_lr, int64_t total_steps);

  // The learning rate of the update that follows `step` updates.
  double lr_at(int64_t step) const;

  Kind kind() const { return kind_; }
  double peak_lr() const { return peak_lr_; }
  int64_t total_steps() const { return total_; }
  int64_t warmup_steps() const { return warmup_; }
  double min_lr_ratio() const { return min_ratio_; }
  int64_t cycle_steps() const { return cycle_; }  // resolved (never 0)
  double cycle_mult() const { return mult_; }

 private:
  Kind kind_;
  double peak_lr_;
  int64_t total_, warmup_;
  double min_ratio_ = 0.0;
  int64_t cycle_ = 1;
  double mult_ = 1.0;
};

// name, description and keys of "constant", "linear", "cosine", "cosine_restarts".
const std::vector<ComponentInfo>& schedule_registry();

inline Schedule make_schedule(const std::string& name, const HParams& hparams, double peak_lr,
                              int64_t total_steps) {
  return Schedule(name, hparams, peak_lr, total_steps);
}

}  // namespace dsk::train
