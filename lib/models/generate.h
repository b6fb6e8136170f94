// Text generation with a KV cache: greedy, temperature, top-k, top-p, seeded.
//
// Each step turns the last position's logits into a distribution, in this order:
//   temperature  p = softmax(logits / temperature)        (temperature 0: greedy argmax, lowest id on ties)
//   top-k        keep the k most probable tokens           (0: off)
//   top-p        keep the smallest most-probable prefix whose renormalized mass reaches top_p (1: off)
// and draws from what is left, renormalized, with a SplitMix64 stream seeded by `seed`: the same
// model, prompt and options give the same tokens on every platform.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "models/llama.h"

namespace dsk::models {

struct SampleOptions {
  int max_new_tokens = 128;  /// upper bound on generated tokens
  double temperature = 0.0;  /// 0 = greedy
  int top_k = 0;             /// 0 = off
  double top_p = 1.0;        /// 1 = off
  uint64_t seed = 0;         /// sampling stream
};

// A small deterministic generator (SplitMix64).
class SampleRng {
 public:
  explicit SampleRng(uint64_t seed) : state_(seed) {}
  uint64_t next_u64();
  double next_double();  // uniform in [0, 1)

 private:
  uint64_t state_;
};

// The token picked from logits [V] under `opt` (usage error on invalid options).
int32_t sample_token(const float* logits, int64_t vocab, const SampleOptions& opt, SampleRng& rng);

// Generates after `prompt_ids` (at least one token, usually starting with BOS) and returns the new
// tokens, calling on_token for each as it is chosen. Stops at eos_id (which is neither returned nor
// passed to on_token; -1: never), after max_new_tokens, or when prompt + output reach the model's
// max_position_embeddings. Runs in eval mode without gradients; the model's mode is restored.
std::vector<int32_t> generate(Llama& model, const std::vector<int32_t>& prompt_ids, const SampleOptions& opt,
                              int32_t eos_id, std::function<void(int32_t)> on_token = {});

}  // namespace dsk::models
