#include "stages/common.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

#include "core/error.h"
#include "core/log.h"
#include "dist/env.h"

namespace dsk::stages {

Runtime setup_runtime(const config::Config& cfg) {
  Runtime rt;
  dist::DistEnv env = dist::detect_env();
  int64_t threads = cfg.get_int("threads");
  if (threads < 0) fail_usage_hint("threads must be >= 0", "use 0 for all cores");
  rt.threads = threads > 0 ? static_cast<int>(threads) : static_cast<int>(std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN)));
  at::set_num_threads(rt.threads);
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  log::debug("runtime: {} threads, OMP_WAIT_POLICY={}", rt.threads, wait_policy ? wait_policy : "(unset)");
  at::manual_seed(static_cast<uint64_t>(cfg.get_int("seed")));

  const std::string& device = cfg.get_string("device");
  bool has_cuda = torch::cuda::is_available();
  if (device == "cuda" && !has_cuda)
    fail_usage_hint("device is cuda but no CUDA device is available (or this LibTorch is CPU-only)",
                    "set device=cpu or device=auto");
  rt.device = (device == "cuda" || (device == "auto" && has_cuda)) ? c10::Device(c10::kCUDA) : c10::Device(c10::kCPU);
  // One GPU per rank on a node: LOCAL_RANK picks it (Slurm: SLURM_LOCALID).
  if (rt.device.is_cuda() && env.distributed()) {
    const auto count = static_cast<int>(torch::cuda::device_count());
    rt.device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank % std::max(count, 1)));
  }

  // The process group, after the device: NCCL on CUDA, Gloo on CPU (dist.backend=auto).
  if (env.distributed()) {
    log::set_rank(env.rank);
    dist::CommOptions copt;
    if (cfg.has("dist.timeout_s")) {
      double t = cfg.get_float("dist.timeout_s");
      if (!(t > 0)) fail_usage_hint("dist.timeout_s must be > 0", "set dist.timeout_s=300 (the default)");
      copt.timeout = std::chrono::milliseconds(static_cast<int64_t>(t * 1000.0));
    }
    if (cfg.has("dist.backend")) copt.backend = cfg.get_string("dist.backend");
    copt.device = rt.device;
    rt.comm = dist::Comm::connect(env, copt);
    log::info("rank {} of {} ({} backend, from {} variables)", env.rank, env.world_size, rt.comm->backend(),
              env.source);
  } else {
    rt.comm = dist::Comm::single();
  }

  const std::string& dtype = cfg.get_string("dtype");
  rt.dtype = dtype == "bf16" ? at::kBFloat16 : dtype == "fp16" ? at::kHalf : at::kFloat;
  if (rt.dtype == at::kHalf && rt.device.is_cpu())
    fail_usage_hint("dtype fp16 is not supported on CPU", "use dtype=bf16 or dtype=fp32 on CPU");
  return rt;
}

std::unique_ptr<tok::Tokenizer> load_tokenizer_for(const config::Config& cfg, const std::string& model_key) {
  if (cfg.has("tokenizer.path") && !cfg.get_string("tokenizer.path").empty())
    return tok::load_tokenizer(cfg.get_string("tokenizer.path"));
  const std::string& model = cfg.get_string(model_key);
  if (std::filesystem::is_directory(model)) return tok::load_tokenizer(model);
  fail_usage_hint(fmt::format("tokenizer.path is unset and {} '{}' is not a directory holding one", model_key, model),
                  "set tokenizer.path to the tokenizer.model / tokenizer.json file");
}

models::LoadedModel load_model_for(const config::Config& cfg, const Runtime& rt, const std::string& model_key) {
  return models::load_model(cfg.get_string(model_key), rt.dtype, rt.device);
}

data::DataSpec data_spec_from(const config::Config& cfg, const std::string& prefix) {
  data::DataSpec s;
  s.path = cfg.get_string(prefix + ".path");
  s.format = cfg.get_string(prefix + ".format");
  s.separator = cfg.get_string(prefix + ".separator");
  s.text_field = cfg.get_string(prefix + ".text_field");
  s.prompt_field = cfg.get_string(prefix + ".prompt_field");
  s.response_field = cfg.get_string(prefix + ".response_field");
  s.messages_field = cfg.get_string(prefix + ".messages_field");
  s.chat_template = cfg.get_string(prefix + ".chat_template");
  s.add_bos = cfg.get_bool("data.add_bos");
  s.add_eos = cfg.get_bool("data.add_eos");
  return s;
}

void log_resolved_config(const config::Config& cfg) {
  std::string yaml = cfg.to_yaml();
  log::info("resolved config (hash {}):\n{}", cfg.hash(), yaml.substr(0, yaml.size() ? yaml.size() - 1 : 0));
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::map<std::string, std::string> artifact_metadata(const config::Config& cfg, const std::string& stage) {
  return {{"format", "pt"}, {"dsk_version", DSK_VERSION}, {"dsk_stage", stage}, {"config_hash", cfg.hash()}};
}

void copy_tokenizer_from(const std::string& src, const std::filesystem::path& dir) {
  namespace stdfs = std::filesystem;
  const stdfs::path p(src);
  std::error_code ec;
  auto copy = [&](const stdfs::path& from, const stdfs::path& to) {
    stdfs::copy_file(from, to, stdfs::copy_options::overwrite_existing, ec);
    if (ec) fail("copying tokenizer '{}' into '{}': {}", from.string(), dir.string(), ec.message());
  };
  if (stdfs::is_directory(p, ec)) {
    bool any = false;
    for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"})
      if (stdfs::exists(p / name, ec)) copy(p / name, dir / name), any = true;
    if (!any) log::warn("'{}' holds no tokenizer file: '{}' gets none (set tokenizer.path)", src, dir.string());
    return;
  }
  if (!stdfs::is_regular_file(p, ec) || (p.extension() != ".json" && p.extension() != ".model")) {
    // e.g. a llama2.c .bin model, which holds no tokenizer
    log::warn("no tokenizer at '{}': '{}' gets none (set tokenizer.path)", src, dir.string());
    return;
  }
  copy(p, dir / (p.extension() == ".json" ? "tokenizer.json" : "tokenizer.model"));
}

void copy_tokenizer(const config::Config& cfg, const std::filesystem::path& dir, const std::string& model_key) {
  copy_tokenizer_from(cfg.has("tokenizer.path") ? cfg.get_string("tokenizer.path") : cfg.get_string(model_key), dir);
}

int64_t checked_seq_len(const config::Config& cfg, const models::LoadedModel& lm) {
  const int64_t seq_len = cfg.get_int("data.seq_len");
  if (seq_len < 1 || seq_len > lm.config.max_position_embeddings)
    fail_usage_hint(fmt::format("data.seq_len {} is outside 1..{} (the model's max_position_embeddings)", seq_len,
                                lm.config.max_position_embeddings),
                    fmt::format("set data.seq_len to at most {}", lm.config.max_position_embeddings));
  return seq_len;
}

}  // namespace dsk::stages
