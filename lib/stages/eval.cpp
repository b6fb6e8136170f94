// dsk eval: mean token NLL and perplexity over the documented sliding windows (docs/data.md).
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"
#include "data/dataset.h"
#include "stages/common.h"
#include "stages/evaluate.h"
#include "stages/stages.h"

namespace dsk::stages {

namespace stdfs = std::filesystem;

int run_eval(const config::Config& cfg) {
  Runtime rt = setup_runtime(cfg);
  auto tok = load_tokenizer_for(cfg);
  models::LoadedModel lm = load_model_for(cfg, rt);
  const int64_t seq_len = checked_seq_len(cfg, lm);
  const int64_t batch_size = cfg.get_int("batch_size");
  if (batch_size < 1) fail_usage_hint("batch_size must be >= 1", "set batch_size=1 or more");

  data::DataSpec spec = data_spec_from(cfg, "data.eval");
  data::DataOptions opt;
  opt.seq_len = static_cast<int>(seq_len);
  opt.stride = static_cast<int>(cfg.get_int("data.stride"));
  data::Windows windows = data::prepare_eval_data(spec, opt, *tok);

  stdfs::path out;
  const bool main_rank = rt.comm->is_main();
  if (cfg.has("output_dir") && main_rank) {
    out = cfg.get_string("output_dir");
    std::error_code ec;
    stdfs::create_directories(out, ec);
    if (ec) fail_usage_hint(fmt::format("cannot create output_dir '{}': {}", out.string(), ec.message()),
                            "choose a writable output_dir");
  }
  log_resolved_config(cfg);
  double t0 = now_s();
  EvalResult r = evaluate(lm.model, windows, static_cast<int>(batch_size), cfg.get_int("max_batches"), rt.comm.get());
  double dt = now_s() - t0;
  log::info("eval: nll {:.6f}, ppl {:.4f} over {} tokens in {} windows ({:.1f}s)", r.nll, r.ppl, r.tokens,
            windows.count(), dt);

  nlohmann::ordered_json result = {{"nll", r.nll},
                                   {"ppl", r.ppl},
                                   {"tokens", r.tokens},
                                   {"windows", windows.count()},
                                   {"seq_len", seq_len},
                                   {"stride", opt.stride > 0 ? opt.stride : seq_len},
                                   {"model", cfg.get_string("model.path")},
                                   {"data", spec.path},
                                   {"dsk_version", DSK_VERSION},
                                   {"config_hash", cfg.hash()}};
  if (!main_rank) return 0;  // rank 0 writes the results
  if (!out.empty()) fs::write_file_atomic(out / "eval.json", result.dump(2) + "\n");
  std::printf("%s\n", result.dump().c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace dsk::stages
