// dsk profile: warm-up + measured steps of finetune, eval or generate under LibTorch's profiler
// and dsk's phase timers, then report.html, summary.json and trace.json in output_dir
// (docs/profiling.md).
//
// Shape: check the profile keys and output_dir -> run the stage's steps (finetune: the real
// Trainer with a PhaseTimer in its hooks and no artifacts; eval: one batch per step; generate:
// one sequence per step), measuring after the warm-up -> measure the peak FLOP/s -> summary
// (phases, throughput, MFU, top operators, memory, verdict) -> trace.json, summary.json,
// report.html, each written atomically -> one JSON line on stdout.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/cuda.h>
#include <torch/version.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"
#include "data/dataset.h"
#include "models/generate.h"
#include "profile/flops.h"
#include "profile/ops.h"
#include "profile/phases.h"
#include "profile/report.h"
#include "profile/trace.h"
#include "profile/verdict.h"
#include "stages/common.h"
#include "stages/evaluate.h"
#include "stages/run_dir.h"
#include "stages/stages.h"
#include "stages/trainer.h"
#include "train/loss.h"

namespace dsk::stages {
namespace {

namespace stdfs = std::filesystem;
using profile::Phase;
using Json = nlohmann::ordered_json;

const std::vector<std::string> kProfiledStages = {"finetune", "eval", "generate"};

// ---------------------------------------------------------------------------
// Which stage a profile config is for: profile.stage from the overrides (last wins), else from
// the file. Empty when unset; `where` gets "file:line" when the file sets it.
std::string find_profile_stage(const std::string& path, const std::vector<std::string>& overrides, std::string& where,
                               bool& readable) {
  std::string stage;
  bool from_override = false;
  for (const auto& o : overrides) {
    if (o == "~profile.stage" || o == "~profile") {
      stage.clear(), from_override = true;
    } else if (o.rfind("profile.stage=", 0) == 0) {
      stage = YAML::Load(o.substr(14)).as<std::string>(""), from_override = true;
    } else if (o.rfind("profile=", 0) == 0) {
      YAML::Node n = YAML::Load(o.substr(8));
      if (n.IsMap() && n["stage"]) stage = n["stage"].as<std::string>(""), from_override = true;
    }
  }
  readable = true;
  if (from_override) {
    where = "command line";
    return stage;
  }
  try {
    YAML::Node root = YAML::LoadFile(path);
    if (root.IsMap() && root["profile"] && root["profile"].IsMap() && root["profile"]["stage"]) {
      YAML::Node n = root["profile"]["stage"];
      where = fmt::format("{}:{}", path, n.Mark().line + 1);
      return n.IsScalar() ? n.as<std::string>() : "";
    }
    where = path;
  } catch (const YAML::Exception&) {
    readable = false;  // load_config reports the problem with its location
  }
  return "";
}

// ---------------------------------------------------------------------------
// The profile keys, checked before anything is loaded or written.
struct ProfileOptions {
  std::string stage;
  int64_t warmup = 0, steps = 0, top_ops = 0;
  bool record_shapes = true;
  int memory_interval_ms = 10;
  stdfs::path out;
};

ProfileOptions profile_options(const config::Config& cfg) {
  ProfileOptions o;
  o.stage = cfg.get_string("profile.stage");
  o.warmup = cfg.get_int("profile.warmup_steps");
  o.steps = cfg.get_int("profile.steps");
  o.top_ops = cfg.get_int("profile.top_ops");
  o.record_shapes = cfg.get_bool("profile.record_shapes");
  o.memory_interval_ms = static_cast<int>(cfg.get_int("profile.memory_interval_ms"));
  o.out = cfg.get_string("output_dir");
  if (o.steps < 1)
    fail_usage_hint(fmt::format("profile.steps is {}: a profile measures at least one step", o.steps),
                    "set profile.steps=5 (any number >= 1)");
  if (o.warmup < 0)
    fail_usage_hint(fmt::format("profile.warmup_steps is {}", o.warmup), "set profile.warmup_steps=2 (or 0)");
  if (o.top_ops < 1) fail_usage_hint("profile.top_ops must be >= 1", "set profile.top_ops=25");
  if (o.memory_interval_ms < 1)
    fail_usage_hint("profile.memory_interval_ms must be >= 1", "set profile.memory_interval_ms=10");
  if (cfg.has("profile.peak_flops") && !(cfg.get_float("profile.peak_flops") > 0))
    fail_usage_hint("profile.peak_flops must be > 0", "give the device's FLOP/s, e.g. 9.89e14, or leave it unset");
  if (cfg.declares("resume") && cfg.get_string("resume") != "false")
    fail_usage_hint("resume is set: a profile always starts fresh in its own output_dir",
                    "remove resume (profile a fresh run)");
  std::error_code ec;
  if (stdfs::exists(o.out, ec) && !stdfs::is_directory(o.out, ec))
    fail_usage_hint(fmt::format("output_dir '{}' exists and is not a directory", o.out.string()),
                    "choose a new directory for the profile, e.g. output_dir=runs/profile-x");
  if (stdfs::is_directory(o.out, ec) && !stdfs::is_empty(o.out, ec))
    fail_usage_hint(fmt::format("output_dir '{}' already holds files", o.out.string()),
                    "choose a new or empty output_dir: a profile never writes over earlier results");
  return o;
}

// ---------------------------------------------------------------------------
// What is measured, and what the stage tells the summary about its work.
struct Session {
  Session(const config::Config& c, ProfileOptions o) : cfg(c), opt(std::move(o)) {}
  const config::Config& cfg;
  ProfileOptions opt;
  bool main_rank = true;
  bool cuda = false;
  profile::PhaseTimer timer;
  profile::OpProfiler ops;
  std::unique_ptr<profile::MemorySampler> memory;
  std::vector<profile::OpEvent> events;
  double measure_start_us = 0, measure_end_us = 0;

  // At the first warm-up step: the device is known.
  void begin(const Runtime& rt) {
    if (memory) return;
    cuda = rt.device.is_cuda();
    main_rank = rt.comm->is_main();
    if (cuda) timer.set_sync([] { torch::cuda::synchronize(); });
    memory = std::make_unique<profile::MemorySampler>(
        opt.memory_interval_ms, cuda ? profile::cuda_memory_reader(rt.device.index() < 0 ? 0 : rt.device.index())
                                     : std::function<std::pair<int64_t, int64_t>()>{});
  }
  void start_measuring() {
    if (cuda) torch::cuda::synchronize();
    if (main_rank) ops.start(opt.record_shapes, cuda);
    timer.set_measuring(true);
    measure_start_us = profile::steady_us();
  }
  void stop_measuring() {
    if (!timer.measuring()) return;
    timer.set_measuring(false);
    measure_end_us = profile::steady_us();
    if (memory) memory->stop();            // before the profiler's own post-processing
    if (ops.active()) events = ops.stop();
  }
};

struct Workload {
  c10::Device device = c10::Device(c10::kCPU);
  at::ScalarType compute_dtype = at::kFloat;
  int world = 1;
  int64_t tokens = 0;           // tokens processed in the measured steps (this process)
  int64_t batch_tokens = 0;     // per step
  double flops_per_token = 0;
  std::string flops_formula;
  bool activation_checkpointing = false;
  Json model = Json::object();  // path, layers, dim, parameters
};

// Parameters that take part in matrix products: 2-D weights but the embedding table, plus the
// classifier when it is tied to the embeddings. {trainable, frozen}.
std::pair<int64_t, int64_t> matmul_params(const models::Llama& model) {
  int64_t trainable = 0, frozen = 0;
  bool has_lm_head = false;
  for (auto& p : model->named_parameters()) {
    const std::string& name = p.key();
    if (name.find("lm_head") != std::string::npos) has_lm_head = true;
    if (p.value().dim() != 2 || name.find("embed_tokens") != std::string::npos) continue;
    (p.value().requires_grad() ? trainable : frozen) += p.value().numel();
  }
  if (!has_lm_head) {
    const at::Tensor& w = model->classifier_weight();
    (w.requires_grad() ? trainable : frozen) += w.numel();
  }
  return {trainable, frozen};
}

Json model_json(const models::LoadedModel& lm, int64_t matmul_trainable, int64_t matmul_frozen) {
  int64_t all = 0;
  for (auto& p : lm.model->parameters()) all += p.numel();
  return {{"path", lm.path},
          {"layers", lm.config.num_hidden_layers},
          {"hidden_size", lm.config.hidden_size},
          {"parameters", all},
          {"matmul_parameters_trainable", matmul_trainable},
          {"matmul_parameters_frozen", matmul_frozen}};
}

// ---------------------------------------------------------------------------
// The stages' steps.

int profile_finetune(Session& s, Workload& w) {
  TrainHooks hooks;
  hooks.stage = "profile";
  hooks.phases = &s.timer;
  hooks.max_steps = s.opt.warmup + s.opt.steps;
  hooks.artifacts = false;
  hooks.before_step = [&](Trainer& t, int64_t done) {
    if (done == 0) s.begin(t.rt);
    if (done == s.opt.warmup) s.start_measuring();
  };
  Trainer t(s.cfg, hooks);
  const int code = t.run();
  s.stop_measuring();
  if (code != 0) return code;
  const int64_t seq_len = s.cfg.get_int("data.seq_len");
  auto [trainable, frozen] = matmul_params(t.lm.model);
  w.device = t.rt.device;
  w.compute_dtype = t.amp_dtype;
  w.world = t.world;
  w.batch_tokens = s.cfg.get_int("batch_size") * t.grad_accum * seq_len;
  w.tokens = w.batch_tokens * s.timer.steps();
  w.flops_per_token = profile::train_flops_per_token(trainable, frozen, t.lm.config.num_hidden_layers,
                                                     t.lm.config.hidden_size, seq_len);
  w.flops_formula = fmt::format("6·N_trainable + 4·N_frozen + 12·L·d·T per token (N_trainable {}, N_frozen {}, L {}, "
                                "d {}, T {})", trainable, frozen, t.lm.config.num_hidden_layers,
                                t.lm.config.hidden_size, seq_len);
  w.activation_checkpointing = s.cfg.get_bool("activation_checkpointing");
  w.model = model_json(t.lm, trainable, frozen);
  return 0;
}

// Model, tokenizer and runtime for eval / generate, and the claimed output_dir.
struct Inference {
  Runtime rt;
  std::unique_ptr<tok::Tokenizer> tok;
  models::LoadedModel lm;
};

Inference load_for_inference(const config::Config& cfg) {
  Inference in;
  in.rt = setup_runtime(cfg);
  in.tok = load_tokenizer_for(cfg);
  in.lm = load_model_for(cfg, in.rt);
  in.lm.model->eval();
  return in;
}

void claim_output(const Session& s) {
  if (!s.main_rank) return;
  prepare_output_dir(s.opt.out, "false");
  save_resolved_config(s.opt.out, s.cfg);
}

void fill_inference_workload(Workload& w, const Inference& in, int64_t context, const std::string& context_note) {
  auto [trainable, frozen] = matmul_params(in.lm.model);
  const int64_t n = trainable + frozen;
  w.device = in.rt.device;
  w.compute_dtype = in.rt.dtype;
  w.world = in.rt.comm->size();
  w.flops_per_token =
      profile::forward_flops_per_token(n, in.lm.config.num_hidden_layers, in.lm.config.hidden_size, context);
  w.flops_formula = fmt::format("2·N + 4·L·d·T per token, forward only (N {}, L {}, d {}, T {}: {})", n,
                                in.lm.config.num_hidden_layers, in.lm.config.hidden_size, context, context_note);
  w.model = model_json(in.lm, trainable, frozen);
}

int profile_eval(Session& s, Workload& w) {
  const auto& cfg = s.cfg;
  Inference in = load_for_inference(cfg);
  s.main_rank = in.rt.comm->is_main();
  const int64_t seq_len = checked_seq_len(cfg, in.lm);
  const int64_t batch_size = cfg.get_int("batch_size");
  if (batch_size < 1) fail_usage_hint("batch_size must be >= 1", "set batch_size=1 or more");
  data::DataOptions dopt;
  dopt.seq_len = static_cast<int>(seq_len);
  dopt.stride = static_cast<int>(cfg.get_int("data.stride"));
  data::Windows windows = data::prepare_eval_data(data_spec_from(cfg, "data.eval"), dopt, *in.tok);
  claim_output(s);
  log_resolved_config(cfg);

  torch::NoGradGuard no_grad;
  const int64_t n_batches = (windows.count() + batch_size - 1) / batch_size;
  if (n_batches == 0) fail_usage_hint("the eval data makes no window", "use a larger data.eval file");
  double nll_sum = 0;
  for (int64_t step = 0; step < s.opt.warmup + s.opt.steps; ++step) {
    if (step == 0) s.begin(in.rt);
    if (step == s.opt.warmup) s.start_measuring();
    profile::StepScope scope(&s.timer, step + 1);
    profile::enter_phase(&s.timer, Phase::Data);
    const int64_t first = (step % n_batches) * batch_size;
    const int64_t rows = std::min<int64_t>(batch_size, windows.count() - first);
    BatchTensors b = window_tensors(windows.window(first), windows.window_mask(first), rows, windows.seq_len,
                                    in.rt.device);
    profile::enter_phase(&s.timer, Phase::Forward);
    at::Tensor hidden = in.lm.model->hidden_states(b.inputs);  // [B, T, C]
    auto loss = train::chunked_cross_entropy(hidden, in.lm.model->classifier_weight(), b.targets);
    nll_sum += loss.loss.item<double>();
    if (s.timer.measuring()) w.tokens += rows * seq_len;
  }
  s.stop_measuring();
  log::debug("profile eval: mean batch nll {:.4f}", nll_sum / static_cast<double>(s.opt.warmup + s.opt.steps));
  w.batch_tokens = batch_size * seq_len;
  fill_inference_workload(w, in, seq_len, "data.seq_len");
  return 0;
}

int profile_generate(Session& s, Workload& w) {
  const auto& cfg = s.cfg;
  Inference in = load_for_inference(cfg);
  s.main_rank = in.rt.comm->is_main();
  std::vector<int32_t> ids;
  if (in.tok->bos_id() >= 0) ids.push_back(in.tok->bos_id());
  for (int32_t id : in.tok->encode(cfg.get_string("generate.prompt"))) ids.push_back(id);
  models::SampleOptions opt;
  opt.max_new_tokens = static_cast<int>(cfg.get_int("generate.max_new_tokens"));
  opt.temperature = cfg.get_float("generate.temperature");
  opt.top_k = static_cast<int>(cfg.get_int("generate.top_k"));
  opt.top_p = cfg.get_float("generate.top_p");
  if (opt.max_new_tokens < 1) fail_usage_hint("generate.max_new_tokens must be >= 1", "set it to 128, say");
  if (ids.empty()) fail_usage_hint("generate.prompt is empty and the tokenizer has no BOS", "give a prompt");
  claim_output(s);
  log_resolved_config(cfg);

  torch::NoGradGuard no_grad;
  int64_t positions = 0, sequences = 0;  // for the mean attended context
  double context_sum = 0;
  for (int64_t step = 0; step < s.opt.warmup + s.opt.steps; ++step) {
    if (step == 0) s.begin(in.rt);
    if (step == s.opt.warmup) s.start_measuring();
    profile::StepScope scope(&s.timer, step + 1);
    profile::enter_phase(&s.timer, Phase::Forward);  // prefill, decoding and sampling of one sequence
    opt.seed = static_cast<uint64_t>(cfg.get_int("seed") + step);
    auto out = models::generate(in.lm.model, ids, opt, in.tok->eos_id());
    if (s.timer.measuring()) {
      const int64_t n = static_cast<int64_t>(ids.size() + out.size());
      w.tokens += n;
      positions += n, ++sequences;
      context_sum += static_cast<double>(n) * static_cast<double>(n + 1) / 2.0;  // position p attends to p + 1
    }
  }
  s.stop_measuring();
  w.batch_tokens = sequences > 0 ? positions / sequences : 0;
  const int64_t context = positions > 0 ? std::llround(context_sum / static_cast<double>(positions)) : 1;
  fill_inference_workload(w, in, context, "the mean attended context of the measured sequences");
  return 0;
}

// ---------------------------------------------------------------------------
// The summary: every number the report shows.

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(line.find_first_not_of(' ', colon + 1));
    }
  return "unknown";
}

Json machine_json(const Workload& w) {
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  std::error_code ec;
  auto blas = stdfs::read_symlink("/etc/alternatives/libblas.so.3-x86_64-linux-gnu", ec);
  const char* wait = std::getenv("OMP_WAIT_POLICY");
  Json m = {{"hostname", host},
            {"cpu", cpu_model()},
            {"logical_cores", static_cast<int64_t>(std::thread::hardware_concurrency())},
            {"threads", static_cast<int64_t>(at::get_num_threads())},
            {"memory_gib", static_cast<double>(profile::total_memory_bytes()) / (1 << 30)},
            {"device", w.device.str()},
            {"compute_dtype", c10::toString(w.compute_dtype)},
            {"processes", w.world},
            {"libtorch", TORCH_VERSION},
            {"blas", ec ? std::string("unknown") : blas.string()},
            {"omp_wait_policy", wait ? wait : "(unset)"}};
  if (w.device.is_cuda()) m["cuda_devices"] = static_cast<int64_t>(torch::cuda::device_count());
  return m;
}

double safe_div(double a, double b) { return b > 0 ? a / b : 0.0; }

Json memory_json(const Session& s) {
  auto samples = s.memory ? s.memory->samples() : std::vector<profile::MemorySample>{};
  const double t0 = samples.empty() ? 0.0 : samples.front().t_us;
  int64_t peak = 0, peak_measured = 0, peak_device = -1;
  for (const auto& m : samples) {
    peak = std::max(peak, m.rss);
    if (m.t_us >= s.measure_start_us && m.t_us <= s.measure_end_us) peak_measured = std::max(peak_measured, m.rss);
    peak_device = std::max(peak_device, m.device);
  }
  const double mib = 1 << 20;
  // At most ~1000 points for the chart: the largest RSS of each bucket of consecutive samples.
  const size_t stride = std::max<size_t>(1, (samples.size() + 999) / 1000);
  Json points = Json::array();
  for (size_t i = 0; i < samples.size(); i += stride) {
    size_t best = i;
    for (size_t j = i; j < std::min(samples.size(), i + stride); ++j)
      if (samples[j].rss > samples[best].rss) best = j;
    const auto& m = samples[best];
    Json device = m.device >= 0 ? Json(m.device / mib) : Json(nullptr);
    points.push_back(Json::array({(m.t_us - t0) / 1e6, m.rss / mib, device}));
  }
  return {{"peak_rss_mib", peak / mib},
          {"peak_rss_measured_mib", peak_measured / mib},
          {"peak_device_mib", peak_device >= 0 ? Json(peak_device / mib) : Json(nullptr)},
          {"measured_start_s", (s.measure_start_us - t0) / 1e6},
          {"measured_end_s", (s.measure_end_us - t0) / 1e6},
          {"sample_interval_ms", s.opt.memory_interval_ms},
          {"samples", std::move(points)}};
}

Json build_summary(const Session& s, const Workload& w, const profile::PeakFlops& peak) {
  const auto& t = s.timer;
  const double wall = t.wall_us() / 1e6;
  Json phases = Json::array();
  double named = 0;
  for (int i = 0; i < profile::kPhaseCount; ++i) {
    const auto p = static_cast<Phase>(i);
    if (p == Phase::Other) continue;
    named += t.phase_us(p) / 1e6;
  }
  for (int i = 0; i < profile::kPhaseCount; ++i) {
    const auto p = static_cast<Phase>(i);
    const double sec = p == Phase::Other ? std::max(0.0, wall - named) : t.phase_us(p) / 1e6;
    phases.push_back({{"name", profile::phase_name(p)}, {"seconds", sec}, {"fraction", safe_div(sec, wall)}});
  }
  const double tokens_per_s = safe_div(static_cast<double>(w.tokens), wall);
  const double flops_per_s = w.flops_per_token * tokens_per_s;

  // Operators: device kernels weigh for the verdict when there are any, else CPU operators.
  const bool device_ops = std::any_of(s.events.begin(), s.events.end(), [](const auto& e) { return e.device; });
  auto all = profile::aggregate_ops(s.events, 0);
  double self_total = 0, matmul_self = 0;
  int64_t calls = 0;
  for (const auto& o : all) {
    if (o.device != device_ops) continue;
    self_total += o.self_us, calls += o.calls;
    if (profile::is_matmul_op(o.name)) matmul_self += o.self_us;
  }
  Json top = Json::array();
  for (size_t i = 0; i < all.size() && static_cast<int64_t>(i) < s.opt.top_ops; ++i) {
    const auto& o = all[i];
    top.push_back({{"name", o.name},
                   {"shapes", o.shapes.empty() ? "-" : o.shapes},
                   {"device", o.device ? "cuda" : "cpu"},
                   {"calls", o.calls},
                   {"self_ms", o.self_us / 1e3},
                   {"self_fraction", safe_div(o.self_us, self_total)},
                   {"total_ms", o.total_us / 1e3}});
  }
  // The same by operator name, all shapes together (the verdict's operator classes at a glance).
  std::vector<profile::OpEvent> unshaped = s.events;
  for (auto& e : unshaped) e.shapes.clear();
  Json by_name = Json::array();
  for (const auto& o : profile::aggregate_ops(unshaped, 10))
    by_name.push_back({{"name", o.name},
                       {"device", o.device ? "cuda" : "cpu"},
                       {"matmul", profile::is_matmul_op(o.name) ? "yes" : "no"},
                       {"calls", o.calls},
                       {"self_ms", o.self_us / 1e3},
                       {"self_fraction", safe_div(o.self_us, self_total)}});
  Json memory = memory_json(s);

  profile::VerdictInput vin;
  vin.stage = s.opt.stage;
  vin.cuda = w.device.is_cuda();
  vin.dtype = s.cfg.get_string("dtype");
  auto share = [&](Phase p) { return safe_div(t.phase_us(p) / 1e6, wall); };
  vin.data = share(Phase::Data);
  vin.communication = share(Phase::Communication);
  vin.checkpoint = share(Phase::Checkpoint);
  vin.eval = share(Phase::Eval);
  vin.other = safe_div(std::max(0.0, wall - named), wall);
  vin.mfu = safe_div(flops_per_s, peak.flops);
  vin.matmul_share = safe_div(matmul_self, self_total);
  vin.mean_op_us = safe_div(self_total, static_cast<double>(calls));
  vin.batch_tokens = w.batch_tokens;
  const double peak_mem = w.device.is_cuda() && !memory["peak_device_mib"].is_null()
                              ? 0.0  // device capacity is not read here: no memory-pressure rule on GPU
                              : memory["peak_rss_mib"].get<double>() * (1 << 20);
  vin.memory_share = safe_div(peak_mem, static_cast<double>(profile::total_memory_bytes()));
  vin.world = w.world;
  vin.activation_checkpointing = w.activation_checkpointing;
  vin.has_key = [&](const std::string& k) { return s.cfg.declares(k); };
  profile::Verdict v = profile::decide(vin);

  std::vector<double> step_s;
  for (double us : t.step_us()) step_s.push_back(us / 1e6);
  return {{"format", "dsk-profile"},
          {"format_version", 1},
          {"dsk_version", DSK_VERSION},
          {"stage", s.opt.stage},
          {"config_hash", s.cfg.hash()},
          {"steps", {{"warmup", s.opt.warmup}, {"measured", t.steps()}}},
          {"wall_s", wall},
          {"step_s", step_s},
          {"step_mean_s", safe_div(wall, static_cast<double>(t.steps()))},
          {"phases", phases},
          {"named_phases_s", named},
          {"named_phases_fraction", safe_div(named, wall)},
          {"tokens", w.tokens},
          {"tokens_per_step", w.batch_tokens},
          {"tokens_per_s", tokens_per_s},
          {"flops_per_token", w.flops_per_token},
          {"flops_formula", w.flops_formula},
          {"flops_per_s", flops_per_s},
          {"peak_flops_per_s", peak.flops},
          {"peak_method", peak.method},
          {"mfu", vin.mfu},
          {"ops_total_calls", calls},
          {"ops_device", device_ops ? "cuda" : "cpu"},
          {"mean_op_us", vin.mean_op_us},
          {"matmul_share", vin.matmul_share},
          {"top_ops", top},
          {"ops_by_name", by_name},
          {"memory", memory},
          {"verdict", {{"bound", v.bound}, {"reason", v.reason}, {"advice", v.advice}}},
          {"model", w.model},
          {"machine", machine_json(w)},
          {"config_yaml", s.cfg.to_yaml()},
          {"files", {{"report", "report.html"}, {"summary", "summary.json"}, {"trace", "trace.json"}}}};
}

}  // namespace

const config::Schema& profile_schema_for(const std::string& config_path, const std::vector<std::string>& overrides) {
  std::string where;
  bool readable = true;
  std::string stage;
  try {
    stage = find_profile_stage(config_path, overrides, where, readable);
  } catch (const YAML::Exception& e) {
    fail_usage_hint(fmt::format("profile.stage on the command line: {}", e.what()), "write profile.stage=finetune");
  }
  if (!readable) return profile_schema();  // load_config reports the file's problem
  if (stage.empty())
    fail_usage_hint(fmt::format("{}: profile.stage is not set: a profile config names the stage to profile", where),
                    "add profile: {stage: finetune} (or eval, generate), or pass profile.stage=finetune");
  if (std::find(kProfiledStages.begin(), kProfiledStages.end(), stage) == kProfiledStages.end()) {
    const std::string guess = config::did_you_mean(stage, kProfiledStages);
    fail_usage_hint(fmt::format("{}: profile.stage '{}' is not a stage dsk profile runs{}", where, stage,
                                guess.empty() ? "" : "; did you mean '" + guess + "'?"),
                    "set profile.stage to finetune, eval or generate");
  }
  return profile_schema_for_stage(stage);
}

int run_profile(const config::Config& cfg) {
  Session s(cfg, profile_options(cfg));
  Workload w;
  int code = 0;
  if (s.opt.stage == "finetune") code = profile_finetune(s, w);
  else if (s.opt.stage == "eval") code = profile_eval(s, w);
  else code = profile_generate(s, w);
  if (code != 0 || !s.main_rank) return code;

  profile::PeakFlops peak;
  if (cfg.has("profile.peak_flops")) {
    peak.flops = cfg.get_float("profile.peak_flops");
    peak.method = "given by profile.peak_flops";
  } else {
    log::info("profile: measuring the peak FLOP/s ({} matmuls on {})", c10::toString(w.compute_dtype), w.device.str());
    peak = profile::measure_peak_flops(w.device, w.compute_dtype);
  }
  Json summary = build_summary(s, w, peak);

  profile::TraceInput trace;
  trace.ops = std::move(s.events);
  trace.phases = s.timer.intervals();
  if (s.memory) trace.memory = s.memory->samples();
  trace.epoch_offset_us = profile::epoch_offset_us();
  trace.pid = static_cast<int>(::getpid());
  trace.process_name = "dsk profile " + s.opt.stage;
  fs::write_file_atomic(s.opt.out / "trace.json", profile::chrome_trace(trace).dump());
  fs::write_file_atomic(s.opt.out / "summary.json", summary.dump(2) + "\n");
  fs::write_file_atomic(s.opt.out / "report.html", profile::render_report_html(summary));

  log::info("profile: {} bound ({}); {:.0f} tokens/s, MFU {:.2f}%; report: {}",
            summary["verdict"]["bound"].get<std::string>(), summary["verdict"]["reason"].get<std::string>(),
            summary["tokens_per_s"].get<double>(), 100.0 * summary["mfu"].get<double>(),
            (s.opt.out / "report.html").string());
  Json line = {{"stage", "profile"},
               {"profiled", s.opt.stage},
               {"steps", s.timer.steps()},
               {"wall_s", summary["wall_s"]},
               {"tokens_per_s", summary["tokens_per_s"]},
               {"mfu", summary["mfu"]},
               {"bound", summary["verdict"]["bound"]},
               {"output_dir", s.opt.out.string()}};
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace dsk::stages
