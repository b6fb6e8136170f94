// Verdict rules: see profile/verdict.h and docs/profiling.md.
#include "profile/verdict.h"

#include <fmt/format.h>

namespace dsk::profile {
namespace {

std::string pct(double x) { return fmt::format("{:.1f}%", 100.0 * x); }

}  // namespace

Verdict decide(const VerdictInput& in) {
  auto has = [&](const std::string& key) { return !in.has_key || in.has_key(key); };
  const bool training = in.stage == "finetune";
  Verdict v;
  auto advise = [&](const std::string& key, const std::string& text) {
    if (key.empty() || has(key)) v.advice.push_back(text);
  };
  const double small_op = in.cuda ? kSmallKernelUs : kSmallOpUs;

  if (in.data >= kDataBound) {
    v.bound = "data loading";
    v.reason = fmt::format("fetching batches takes {} of the step time (threshold {})", pct(in.data), pct(kDataBound));
    advise("data.train.format", "pre-tokenize the training set (`data.train.format: tokens`): batches are then slices "
                                "of a token array");
    advise("data.pack", "pack documents into full windows (`data.pack: true`): fewer, fuller batches");
    advise("batch_size", "raise `batch_size` so the fixed cost per batch is spread over more tokens");
  } else if (in.communication >= kCommBound) {
    v.bound = "communication";
    v.reason = fmt::format("collectives take {} of the step time over {} ranks (threshold {})", pct(in.communication),
                           in.world, pct(kCommBound));
    advise("grad_accum", "raise `grad_accum`: gradients are synchronized once per optimizer step, not per micro-batch");
    advise("batch_size", "raise `batch_size` so each all-reduce carries more work");
    advise("zero", "`zero: 1` shards the optimizer state: the memory it frees allows a larger `batch_size`");
    advise("dist.bucket_mb", "raise `dist.bucket_mb` (fewer, larger all-reduces) when there are many small buckets");
    v.advice.push_back("use fewer ranks (`dsk launch --nproc`) if the interconnect is slow");
  } else if (in.checkpoint >= kCheckpointBound) {
    v.bound = "checkpointing";
    v.reason = fmt::format("writing checkpoints takes {} of the step time", pct(in.checkpoint));
    advise("checkpoint.every", "raise `checkpoint.every`");
  } else if (in.eval >= kEvalBound) {
    v.bound = "evaluation";
    v.reason = fmt::format("periodic evaluation takes {} of the step time", pct(in.eval));
    advise("eval.every", "raise `eval.every`");
    advise("eval.max_batches", "lower `eval.max_batches`");
  } else if (in.matmul_share >= kMatmulDominant && in.mfu >= kComputeMfu) {
    v.bound = "compute";
    v.reason = fmt::format("matrix products take {} of operator time at {} MFU", pct(in.matmul_share), pct(in.mfu));
    if (in.dtype == "fp32")
      advise("dtype", in.cuda ? "`dtype: bf16` runs the matrix products on tensor cores (several times the fp32 peak)"
                              : "`dtype: bf16` is faster only on CPUs with bf16 matrix instructions (AMX, avx512_bf16)");
    v.advice.push_back("the hardware is used well: more speed comes from more or faster devices, or a smaller model");
  } else if (in.mean_op_us > 0 && in.mean_op_us < small_op) {
    v.bound = "overhead (small operators)";
    v.reason = fmt::format("operators average {:.1f} µs of self time (threshold {:.0f} µs) and MFU is {}: "
                           "dispatch and launch costs dominate",
                           in.mean_op_us, small_op, pct(in.mfu));
    advise("batch_size", fmt::format("raise `batch_size` ({} tokens per step now): larger operators amortize the "
                                     "per-operator cost", in.batch_tokens));
    advise("data.seq_len", "raise `data.seq_len` where the data has long enough documents");
    if (training) advise("grad_accum", "keep the effective batch with a lower `grad_accum` when raising `batch_size`");
    if (in.stage == "generate")
      v.advice.push_back("decoding runs one token per forward pass, so every operator is small: expected for "
                         "single-sequence generation (dsk generate does not batch requests)");
  } else if (in.matmul_share < kMatmulDominant) {
    v.bound = "memory bandwidth";
    v.reason = fmt::format("elementwise, copy and reduction operators take {} of operator time (matrix products "
                           "{}): they stream memory without much arithmetic",
                           pct(1.0 - in.matmul_share), pct(in.matmul_share));
    if (in.dtype == "fp32")
      advise("dtype", in.cuda ? "`dtype: bf16` halves the bytes each elementwise operator moves"
                              : "`dtype: bf16` halves the bytes moved, on CPUs with bf16 instructions");
    advise("batch_size", "raise `batch_size`: matrix products grow with it, per-weight work (optimizer) does not");
    v.advice.push_back("fused kernels (kernels/: RMSNorm, SwiGLU) cut passes over memory; docs/kernels.md");
  } else {
    v.bound = "compute";
    v.reason = fmt::format("matrix products take {} of operator time but reach only {} MFU: they are too small "
                           "to run at the peak",
                           pct(in.matmul_share), pct(in.mfu));
    advise("batch_size", fmt::format("raise `batch_size` ({} tokens per step now) for larger matrix products",
                                     in.batch_tokens));
    if (in.dtype == "fp32" && in.cuda) advise("dtype", "`dtype: bf16` for tensor cores");
  }
  if (in.memory_share >= kMemoryPressure) {
    if (training && !in.activation_checkpointing)
      advise("activation_checkpointing", fmt::format("peak memory is {} of what is available: "
                                                     "`activation_checkpointing: true` trades recomputation for "
                                                     "activation memory", pct(in.memory_share)));
    if (training && in.world > 1) advise("zero", "`zero: 1` shards the optimizer state over the ranks");
  }
  if (v.advice.empty()) v.advice.push_back("no config change is indicated");
  return v;
}

}  // namespace dsk::profile
