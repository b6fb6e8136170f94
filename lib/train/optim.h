// Optimizers: AdamW, SGD, Lion, Adafactor behind one small interface whose state is ours to
// checkpoint (and, later, to shard for ZeRO-1). Semantics follow PyTorch (AdamW, SGD), the Lion
// paper (Chen et al. 2023) and transformers' Adafactor; docs/training.md states each formula.
//
// Invariants:
//  - Parameters are named ("model.layers.0.self_attn.q_proj.weight"); optimizer state is the flat
//    map "<name>.<slot>" -> tensor, plus "<name>.step" (int64 scalar: updates this parameter got).
//  - Every state tensor is allocated at construction (zeros), so state_tensors() always lists the
//    same keys and a checkpoint taken at any step loads into a fresh optimizer of the same kind.
//  - step() updates only parameters with a defined grad(); the others keep their state and step.
//  - Weight decay applies to parameters with >= 2 dimensions (matrices, embeddings), not to
//    norms and biases, unless `weight_decay_all` is set.
//  - float32 contiguous CPU tensors take a fused single-pass kernel; other dtypes and devices use
//    in-place ATen ops. Either path is deterministic, so a resumed run continues bit-identically.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "train/registry.h"

namespace dsk::train {

using NamedParams = std::vector<std::pair<std::string, at::Tensor>>;
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

struct ParamGroup {
  std::vector<std::string> names;  // state keys are "<name>.<slot>"
  std::vector<at::Tensor> params;
  double weight_decay = 0.0;
};

class Optimizer {
 public:
  virtual ~Optimizer();
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  virtual const char* name() const = 0;
  // One update of every parameter that has a grad; uses the current lr().
  virtual void step() = 0;
  // set_to_none: drop the grads (the next backward allocates them); else zero them in place.
  void zero_grad(bool set_to_none = true);
  void set_lr(double lr) { lr_ = lr; }
  double lr() const { return lr_; }

  // The decay group (weight_decay as configured) first, then the no-decay group; empty groups
  // are omitted.
  const std::vector<ParamGroup>& groups() const { return groups_; }
  int64_t num_params() const { return static_cast<int64_t>(states_.size()); }

  // "<name>.<slot>" -> tensor, in parameter order. Slot tensors are the live state (copy them if
  // kept across step()); "<name>.step" is a fresh int64 scalar.
  std::vector<std::pair<std::string, at::Tensor>> state_tensors() const;
  // Restores what state_tensors() returned. Every key must be present with the same shape and no
  // other key may be: dsk::fail names the slot. Nothing changes unless all of it validates.
  void load_state_tensors(const std::map<std::string, at::Tensor>& state);

 protected:
  struct ParamState {
    std::string name;
    at::Tensor param;
    double weight_decay = 0.0;
    int64_t step = 0;
    std::vector<std::pair<std::string, at::Tensor>> slots;  // fixed at construction
  };

  Optimizer(const NamedParams& params, double lr, double weight_decay, bool weight_decay_all);
  // Declares state slot `slot` of parameter i: zeros of `sizes` on the parameter's device, in
  // `dtype` (Undefined: the parameter's). Subclass constructors call it in a fixed order.
  void add_slot(size_t i, const std::string& slot, at::IntArrayRef sizes,
                at::ScalarType dtype = at::ScalarType::Undefined);
  // A reusable buffer shaped like `like` (same dtype and device): no allocation per step.
  at::Tensor scratch_like(const at::Tensor& like);

  double lr_;
  std::vector<ParamGroup> groups_;
  std::vector<ParamState> states_;

 private:
  std::vector<at::Tensor> scratch_;
};

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // decoupled: p -= lr * wd * p
  bool weight_decay_all = false;
};

struct SGDOptions {
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
  double weight_decay = 0.0;  // L2, added to the gradient (PyTorch SGD)
  bool weight_decay_all = false;
};

struct LionOptions {
  double beta1 = 0.9, beta2 = 0.99;
  double weight_decay = 0.0;  // decoupled
  bool weight_decay_all = false;
};

struct AdafactorOptions {
  double eps1 = 1e-30;          // added to grad^2
  double eps2 = 1e-3;           // floor of the parameter RMS (scale_parameter)
  double clip_threshold = 1.0;  // update RMS clipping
  double decay_rate = -0.8;     // beta2_t = 1 - t^decay_rate
  double beta1 = 0.0;           // first moment of the update; 0 = none (no state)
  double weight_decay = 0.0;    // p -= lr_t * wd * p
  bool weight_decay_all = false;
  bool scale_parameter = false;  // lr_t *= max(eps2, RMS(p))
  bool relative_step = false;    // lr_t = min(warmup_init ? 1e-6 t : 1e-2, 1/sqrt(t)); ignores lr
  bool warmup_init = false;
};

class AdamW final : public Optimizer {
 public:
  AdamW(const NamedParams& params, double lr, const AdamWOptions& options = {});
  const char* name() const override { return "adamw"; }
  void step() override;

 private:
  AdamWOptions opt_;
};

class SGD final : public Optimizer {
 public:
  SGD(const NamedParams& params, double lr, const SGDOptions& options = {});
  const char* name() const override { return "sgd"; }
  void step() override;

 private:
  SGDOptions opt_;
};

class Lion final : public Optimizer {
 public:
  Lion(const NamedParams& params, double lr, const LionOptions& options = {});
  const char* name() const override { return "lion"; }
  void step() override;

 private:
  LionOptions opt_;
};

class Adafactor final : public Optimizer {
 public:
  Adafactor(const NamedParams& params, double lr, const AdafactorOptions& options = {});
  const char* name() const override { return "adafactor"; }
  void step() override;

 private:
  AdafactorOptions opt_;
};

// name, description, and every accepted key of "adamw", "sgd", "lion", "adafactor".
const std::vector<ComponentInfo>& optimizer_registry();

// Builds the optimizer `name` from registry hyper-parameters (YAML text; missing -> default).
// Usage errors name "optim.<key>".
std::unique_ptr<Optimizer> make_optimizer(const std::string& name, const HParams& hparams, double lr,
                                          const NamedParams& params);

}  // namespace dsk::train
