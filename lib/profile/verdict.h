// The bottleneck verdict of a profile and its config-level advice (docs/profiling.md has the
// rules and thresholds). Pure: numbers in, verdict out, so the rules are unit-tested on
// synthetic profiles.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace dsk::profile {

struct VerdictInput {
  std::string stage;           // finetune | eval | generate
  bool cuda = false;
  std::string dtype = "fp32";  // the run's compute dtype
  // Shares of the measured wall time, in [0, 1].
  double data = 0, communication = 0, checkpoint = 0, eval = 0, other = 0;
  double mfu = 0;              // achieved / peak FLOP/s
  double matmul_share = 0;     // of operator self time (CPU ops, or device kernels on GPU)
  double mean_op_us = 0;       // mean self time per operator call
  int64_t batch_tokens = 0;    // tokens per step (batch x sequence)
  double memory_share = 0;     // peak memory / memory available (0: unknown)
  int world = 1;
  bool activation_checkpointing = false;
  // Whether the stage's schema declares a key: advice names only keys the config accepts.
  std::function<bool(const std::string&)> has_key;
};

struct Verdict {
  std::string bound;    // "data loading", "communication", "checkpointing", "evaluation", "compute",
                        // "memory bandwidth", "overhead (small operators)"
  std::string reason;   // the numbers behind it
  std::vector<std::string> advice;
};

// Thresholds (shares of wall time / of operator self time).
constexpr double kDataBound = 0.20;
constexpr double kCommBound = 0.20;
constexpr double kCheckpointBound = 0.20;
constexpr double kEvalBound = 0.25;
constexpr double kComputeMfu = 0.40;       // MFU at or above this with matmuls dominating: compute bound
constexpr double kMatmulDominant = 0.50;   // matmul share of operator self time
constexpr double kSmallOpUs = 50.0;        // mean operator self time under this (CPU): overhead bound
constexpr double kSmallKernelUs = 10.0;    // (GPU)
constexpr double kMemoryPressure = 0.80;   // peak memory over this share: advise activation checkpointing

Verdict decide(const VerdictInput& in);

}  // namespace dsk::profile
