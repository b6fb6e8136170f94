// dsk generate: KV-cache decoding; generated text streams to stdout, stats to stderr.
#include <torch/csrc/autograd/grad_mode.h>

#include <cstdio>

#include "core/error.h"
#include "core/log.h"
#include "models/generate.h"
#include "stages/common.h"
#include "stages/stages.h"

namespace dsk::stages {

int run_generate(const config::Config& cfg) {
  Runtime rt = setup_runtime(cfg);
  if (!rt.comm->is_main()) {
    log::warn("generate runs on rank 0 only; rank {} has nothing to do", rt.comm->rank());
    return 0;
  }
  auto tok = load_tokenizer_for(cfg);
  models::LoadedModel lm = load_model_for(cfg, rt);
  lm.model->eval();
  torch::NoGradGuard no_grad;

  std::vector<int32_t> ids;
  if (tok->bos_id() >= 0) ids.push_back(tok->bos_id());
  for (int32_t id : tok->encode(cfg.get_string("generate.prompt"))) ids.push_back(id);

  models::SampleOptions opt;
  opt.max_new_tokens = static_cast<int>(cfg.get_int("generate.max_new_tokens"));
  opt.temperature = cfg.get_float("generate.temperature");
  opt.top_k = static_cast<int>(cfg.get_int("generate.top_k"));
  opt.top_p = cfg.get_float("generate.top_p");
  opt.seed = static_cast<uint64_t>(cfg.get_int("seed"));

  // generate.num_samples > 1: independent samples (seeds seed, seed + 1, ...), each followed by
  // a blank line — how one builds a text set from the model itself (data-free QAT/distillation).
  const int64_t samples = cfg.get_int("generate.num_samples");
  if (samples < 1) fail_usage_hint("generate.num_samples must be >= 1", "set generate.num_samples=1");
  int64_t total = 0;
  double t0 = now_s();
  for (int64_t n = 0; n < samples; ++n) {
    opt.seed = static_cast<uint64_t>(cfg.get_int("seed") + n);
    int32_t prev = ids.empty() ? -1 : ids.back();
    auto out = models::generate(lm.model, ids, opt, tok->eos_id(), [&](int32_t id) {
      std::string piece = tok->decode_piece(prev, id);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      prev = id;
    });
    std::fputs(samples > 1 ? "\n\n" : "\n", stdout);
    std::fflush(stdout);
    total += static_cast<int64_t>(out.size());
  }
  double dt = now_s() - t0;
  log::info("generated {} tokens in {:.2f}s ({:.1f} tok/s)", total, dt, dt > 0 ? total / dt : 0.0);
  return 0;
}

}  // namespace dsk::stages
