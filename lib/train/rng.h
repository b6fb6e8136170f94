// Random-number state for checkpoints: the torch default CPU generator (dropout, init) and the
// std::mt19937_64 that shuffles data, each captured as a uint8 tensor and restored from one.
#pragma once

#include <ATen/core/Tensor.h>

#include <random>

namespace dsk::train {

// The default CPU generator's state (uint8 [5056] in LibTorch 1.13).
at::Tensor rng_state();
// dsk::fail when `state` is not a state of this LibTorch's CPU generator.
void set_rng_state(const at::Tensor& state);

// The engine's standard text form, as uint8 bytes.
at::Tensor mt19937_state(const std::mt19937_64& gen);
// dsk::fail when `state` does not parse as an mt19937_64 state.
void set_mt19937_state(std::mt19937_64& gen, const at::Tensor& state);

}  // namespace dsk::train
