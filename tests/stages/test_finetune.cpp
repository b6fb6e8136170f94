// dsk finetune / eval / generate end to end on the real stories260K model.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include <ATen/ATen.h>

#include "ckpt/safetensors.h"
#include "stage_util.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using dsk::test::in_repo;
using dsk::test::run_cmd;
using dsk::test::slurp;
using dsk::test::src;
using dsk::test::tensors;
using nlohmann::json;

namespace {

std::string dsk_exe() { return dsk::test::dsk_bin(); }

// A short LoRA run on Shakespeare (overrides on top of the quickstart config).
std::string short_run(const fs::path& out, const std::string& extra = "") {
  return dsk_exe() + " finetune configs/stories260k/lora-shakespeare.yaml output_dir=" + out.string() +
         " max_steps=24 batch_size=4 data.seq_len=64 eval.every=0 eval.max_batches=2 checkpoint.every=8 threads=1 " +
         extra;
}

std::vector<std::string> loss_values(const fs::path& metrics) {
  std::vector<std::string> out;
  std::ifstream in(metrics);
  std::string line;
  static const std::regex loss("\"loss\":([^,}]+)");
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_search(line, m, loss)) out.push_back(m[1].str());
  }
  return out;
}

void require_same_tensors(const fs::path& a, const fs::path& b) {
  auto ta = tensors(a), tb = tensors(b);
  REQUIRE(ta.size() == tb.size());
  REQUIRE(!ta.empty());
  for (auto& [name, t] : ta) {
    INFO(name);
    REQUIRE(tb.count(name));
    CHECK(at::equal(t, tb.at(name)));
  }
}

bool wait_for(const fs::path& p, double seconds) {
  auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(p)) {
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > seconds) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

}  // namespace

TEST_CASE("quickstart: LoRA on Shakespeare cuts held-out NLL by 25% and writes every artifact", "[stages][quickstart]") {
  auto d = dsk::test::scratch_dir("quickstart");
  auto r = run_cmd(in_repo(dsk_exe() + " finetune configs/stories260k/lora-shakespeare.yaml output_dir=" + (d / "run").string()));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  json summary = json::parse(r.out);  // stdout is exactly one JSON line
  double before = summary.at("eval_nll_before"), after = summary.at("eval_nll");
  CHECK(after <= 0.75 * before);
  CHECK_THAT(r.err, Contains("eval before training") && Contains("eval after training"));

  fs::path run = d / "run";
  CHECK(fs::exists(run / "config.yaml"));
  CHECK(loss_values(run / "metrics.jsonl").size() == summary.at("steps").get<size_t>());
  bool has_events = false;
  for (auto& e : fs::directory_iterator(run))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0 && fs::file_size(e.path()) > 100) has_events = true;
  CHECK(has_events);
  // PEFT adapter
  json adapter = json::parse(slurp(run / "adapter" / "adapter_config.json"));
  CHECK(adapter.at("peft_type") == "LORA");
  CHECK(adapter.at("r") == 16);
  auto lora = tensors(run / "adapter" / "adapter_model.safetensors");
  CHECK(lora.count("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
  // merged model: a Hugging Face directory dsk loads back; it scores the held-out text like the run did
  json config = json::parse(slurp(run / "model" / "config.json"));
  CHECK(config.at("model_type") == "llama");
  CHECK(fs::exists(run / "model" / "model.safetensors"));
  CHECK(fs::exists(run / "model" / "tokenizer.model"));
  // Checkpoints: keep_last 2
  int ckpts = 0;
  for (auto& e : fs::directory_iterator(run / "checkpoints")) ckpts += e.path().filename().string().rfind("step-", 0) == 0;
  CHECK(ckpts == 2);
}

TEST_CASE("same seed, same config: byte-identical losses", "[stages][determinism]") {
  auto d = dsk::test::scratch_dir("determinism");
  auto a = run_cmd(in_repo(short_run(d / "a")));
  auto b = run_cmd(in_repo(short_run(d / "b")));
  INFO(a.err << b.err);
  REQUIRE(a.exit_code == 0);
  REQUIRE(b.exit_code == 0);
  auto la = loss_values(d / "a" / "metrics.jsonl"), lb = loss_values(d / "b" / "metrics.jsonl");
  CHECK(la.size() == 24);
  CHECK(la == lb);
  require_same_tensors(d / "a" / "adapter" / "adapter_model.safetensors", d / "b" / "adapter" / "adapter_model.safetensors");
  // A different seed changes the run.
  auto c = run_cmd(in_repo(short_run(d / "c", "seed=1")));
  REQUIRE(c.exit_code == 0);
  CHECK(loss_values(d / "c" / "metrics.jsonl") != la);
}

TEST_CASE("kill -9 mid-run, then resume=auto: same weights as an uninterrupted run", "[stages][resume]") {
  auto d = dsk::test::scratch_dir("kill9");
  auto whole = run_cmd(in_repo(short_run(d / "whole", "max_steps=40")));
  REQUIRE(whole.exit_code == 0);

  pid_t pid = dsk::test::spawn(short_run(d / "killed", "max_steps=40"), (d / "killed.log").string());
  bool reached = wait_for(d / "killed" / "checkpoints" / "step-16" / "state.json", 300);
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  REQUIRE(reached);
  CHECK(WIFSIGNALED(status));
  CHECK_FALSE(fs::exists(d / "killed" / "adapter"));

  // Without resume the half-finished run is refused, untouched.
  auto refused = run_cmd(in_repo(short_run(d / "killed", "max_steps=40")));
  CHECK(refused.exit_code == 2);
  auto resumed = run_cmd(in_repo(short_run(d / "killed", "max_steps=40 resume=auto")));
  INFO(resumed.err);
  REQUIRE(resumed.exit_code == 0);
  CHECK_THAT(resumed.err, Contains("resumed from"));
  require_same_tensors(d / "whole" / "adapter" / "adapter_model.safetensors",
                       d / "killed" / "adapter" / "adapter_model.safetensors");
  // metrics.jsonl has every step once, with the uninterrupted run's losses.
  CHECK(loss_values(d / "killed" / "metrics.jsonl") == loss_values(d / "whole" / "metrics.jsonl"));
}

TEST_CASE("SIGTERM saves a checkpoint and exits 143 and SIGINT exits 130", "[stages][signals]") {
  auto d = dsk::test::scratch_dir("sigterm");
  for (auto [sig, code] : {std::pair<int, int>{SIGTERM, 143}, {SIGINT, 130}}) {
    fs::path out = d / std::to_string(sig);
    pid_t pid = dsk::test::spawn(short_run(out, "max_steps=100000"), (d / (std::to_string(sig) + ".log")).string());
    REQUIRE(wait_for(out / "checkpoints" / "step-8" / "state.json", 300));
    kill(pid, sig);
    int status = 0;
    waitpid(pid, &status, 0);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == code);
    CHECK_THAT(slurp(d / (std::to_string(sig) + ".log")), Contains("interrupted: saved checkpoint"));
    // The newest complete checkpoint is the one the signal wrote: step 8 or later (the signal can
    // arrive before step 9 finishes, and then the step-8 checkpoint is rewritten).
    int newest = 0;
    for (auto& e : fs::directory_iterator(out / "checkpoints")) {
      std::string n = e.path().filename().string();
      if (n.rfind("step-", 0) == 0 && fs::exists(e.path() / "state.json")) newest = std::max(newest, std::stoi(n.substr(5)));
    }
    CHECK(newest >= 8);
    CHECK(json::parse(slurp(out / "checkpoints" / ("step-" + std::to_string(newest)) / "state.json")).at("step") == newest);
  }
}

TEST_CASE("generate: greedy story from stories260K", "[stages][generate]") {
  auto r = run_cmd(in_repo(dsk_exe() + " generate configs/stories260k/generate.yaml generate.max_new_tokens=40"));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.rfind("Once upon a time, there was a little girl named Lily.", 0) == 0);
  CHECK_THAT(r.err, Contains("tok/s"));
  // Sampling is seeded: same seed same text, another seed another text.
  std::string sample = dsk_exe() + " generate configs/stories260k/generate.yaml generate.temperature=1.0 generate.top_p=0.9 generate.max_new_tokens=60 ";
  auto s1 = run_cmd(in_repo(sample + "seed=1")), s2 = run_cmd(in_repo(sample + "seed=1")), s3 = run_cmd(in_repo(sample + "seed=2"));
  CHECK(s1.out == s2.out);
  CHECK(s1.out != s3.out);
}

TEST_CASE("compute subcommands run with passive OpenMP waiting unless the user chose", "[stages][process]") {
  const std::string gen = dsk_exe() + " generate configs/stories260k/generate.yaml generate.max_new_tokens=8";
  auto tuned = run_cmd(in_repo("env -u OMP_WAIT_POLICY -u DSK_NO_TUNE DSK_LOG_LEVEL=debug " + gen));
  auto user = run_cmd(in_repo("env -u DSK_NO_TUNE OMP_WAIT_POLICY=ACTIVE DSK_LOG_LEVEL=debug " + gen));
  auto off = run_cmd(in_repo("env -u OMP_WAIT_POLICY DSK_NO_TUNE=1 DSK_LOG_LEVEL=debug " + gen));
  INFO(tuned.err << user.err << off.err);
  REQUIRE(tuned.exit_code == 0);
  REQUIRE(user.exit_code == 0);
  REQUIRE(off.exit_code == 0);
  CHECK_THAT(tuned.err, Contains("OMP_WAIT_POLICY=PASSIVE"));
  CHECK_THAT(user.err, Contains("OMP_WAIT_POLICY=ACTIVE"));
  CHECK_THAT(off.err, Contains("OMP_WAIT_POLICY=(unset)"));
  // The re-exec is invisible: one resolved-config print, the same output.
  auto count = [](const std::string& s, const std::string& what) {
    size_t n = 0;
    for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
    return n;
  };
  CHECK(count(tuned.err, "OMP_WAIT_POLICY=") == 1);
  CHECK(tuned.out == off.out);
  CHECK(tuned.out == user.out);
}

TEST_CASE("eval: eval.json with nll, ppl = exp(nll), token count", "[stages][eval]") {
  auto d = dsk::test::scratch_dir("eval");
  auto r = run_cmd(in_repo(dsk_exe() + " eval configs/stories260k/eval-tinystories.yaml output_dir=" + d.string()));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  json e = json::parse(slurp(d / "eval.json"));
  double nll = e.at("nll");
  CHECK(e.at("ppl").get<double>() == Approx(std::exp(nll)).epsilon(1e-9));
  CHECK(e.at("tokens").get<int64_t>() > 5000);
  CHECK(nll > 0.5);
  CHECK(nll < 2.5);  // in-domain text for a model trained on TinyStories
  CHECK(json::parse(r.out).at("nll").get<double>() == nll);
}

TEST_CASE("corrupt and inconsistent Hugging Face directories", "[stages][bad-input]") {
  auto d = dsk::test::scratch_dir("hf_bad");
  // A real HF directory from a 1-step full fine-tune.
  auto r = run_cmd(in_repo(dsk_exe() + " finetune configs/stories260k/full-shakespeare.yaml output_dir=" + (d / "run").string() +
                           " max_steps=1 batch_size=2 data.seq_len=32 eval.max_batches=1"));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  fs::path good = d / "run" / "model";
  std::string gen = dsk_exe() + " generate configs/stories260k/generate.yaml generate.max_new_tokens=5 ~tokenizer.path model.path=";
  auto ok = run_cmd(in_repo(gen + good.string()));
  INFO(ok.err);
  CHECK(ok.exit_code == 0);

  fs::copy(good, d / "trunc", fs::copy_options::recursive);
  fs::resize_file(d / "trunc" / "model.safetensors", fs::file_size(good / "model.safetensors") - 1000);
  auto t = run_cmd(in_repo(gen + (d / "trunc").string()));
  CHECK(t.exit_code == 1);
  CHECK_THAT(t.err, Contains("model.safetensors") && Contains("tensor '"));
  CHECK_THAT(t.err, !Contains("frame #"));

  fs::copy(good, d / "shape", fs::copy_options::recursive);
  std::string cfg = slurp(good / "config.json");
  cfg = std::regex_replace(cfg, std::regex("\"intermediate_size\": *172"), "\"intermediate_size\": 256");
  std::ofstream(d / "shape" / "config.json") << cfg;
  auto s = run_cmd(in_repo(gen + (d / "shape").string()));
  CHECK(s.exit_code == 2);
  CHECK_THAT(s.err, Contains("mlp") && Contains("172") && Contains("256"));
}

TEST_CASE("gradient accumulation: 2 x batch 2 takes the step of 1 x batch 4", "[stages][accum]") {
  auto d = dsk::test::scratch_dir("accum");
  std::string base = dsk_exe() + " finetune configs/stories260k/full-shakespeare.yaml max_steps=3 data.seq_len=32 "
                     "eval.max_batches=1 checkpoint.every=0 threads=1 schedule.name=constant output_dir=";
  auto one = run_cmd(in_repo(base + (d / "one").string() + " batch_size=4 grad_accum=1"));
  auto two = run_cmd(in_repo(base + (d / "two").string() + " batch_size=2 grad_accum=2"));
  INFO(one.err << two.err);
  REQUIRE(one.exit_code == 0);
  REQUIRE(two.exit_code == 0);
  auto l1 = loss_values(d / "one" / "metrics.jsonl"), l2 = loss_values(d / "two" / "metrics.jsonl");
  REQUIRE(l1.size() == 3);
  REQUIRE(l2.size() == 3);
  for (size_t i = 0; i < 3; ++i) CHECK(std::stod(l1[i]) == Approx(std::stod(l2[i])).epsilon(1e-5));
  auto w1 = tensors(d / "one" / "model" / "model.safetensors"), w2 = tensors(d / "two" / "model" / "model.safetensors");
  for (auto& [name, t] : w1) {
    INFO(name);
    CHECK(at::allclose(t, w2.at(name), 1e-4, 1e-6));
  }
}

TEST_CASE("freezing by layer range and name pattern leaves those weights untouched", "[stages][freeze]") {
  auto d = dsk::test::scratch_dir("freeze");
  std::string base = dsk_exe() + " finetune configs/stories260k/full-shakespeare.yaml data.seq_len=32 batch_size=2 "
                     "eval.max_batches=1 checkpoint.every=0 threads=1 freeze.layers=0-1 "
                     "freeze.patterns=[*.mlp.down_proj.weight] output_dir=";
  auto a = run_cmd(in_repo(base + (d / "a").string() + " max_steps=1"));
  auto b = run_cmd(in_repo(base + (d / "b").string() + " max_steps=3"));
  INFO(a.err << b.err);
  REQUIRE(a.exit_code == 0);
  REQUIRE(b.exit_code == 0);
  CHECK_THAT(a.err, Contains("trainable"));
  auto wa = tensors(d / "a" / "model" / "model.safetensors"), wb = tensors(d / "b" / "model" / "model.safetensors");
  for (auto& [name, t] : wa) {
    INFO(name);
    bool frozen = name.rfind("model.layers.0.", 0) == 0 || name.rfind("model.layers.1.", 0) == 0 ||
                  name.find("mlp.down_proj") != std::string::npos;
    if (frozen) CHECK(at::equal(t, wb.at(name)));
  }
  CHECK_FALSE(at::equal(wa.at("model.layers.3.mlp.up_proj.weight"), wb.at("model.layers.3.mlp.up_proj.weight")));
}

TEST_CASE("epochs: the step count follows the data, and a resumed run extends it", "[stages][epochs]") {
  auto d = dsk::test::scratch_dir("epochs");
  {  // a small corpus: the first 12,000 characters of Shakespeare
    std::string text = slurp(dsk::test::data_path("tinyshakespeare.txt")).substr(0, 12000);
    std::ofstream(d / "small.txt") << text;
  }
  const std::string base = dsk_exe() + " finetune configs/stories260k/lora-shakespeare.yaml ~max_steps data.train.path=" +
                           (d / "small.txt").string() + " batch_size=4 grad_accum=2 data.seq_len=32 eval.every=0 " +
                           "eval.max_batches=2 checkpoint.every=0 log.every=1 threads=1 output_dir=" + (d / "run").string();
  auto one = run_cmd(in_repo(base + " epochs=1"));
  INFO(one.err);
  REQUIRE(one.exit_code == 0);
  std::smatch m;
  REQUIRE(std::regex_search(one.err, m, std::regex("data: (\\d+) train windows")));
  const int64_t windows = std::stoll(m[1]);
  const int64_t per_epoch = (windows / 4 + 1) / 2;  // full batches of 4 (the last partial one dropped), 2 per step
  REQUIRE(per_epoch >= 2);
  json s1 = json::parse(one.out);
  CHECK(s1.at("steps").get<int64_t>() == per_epoch);
  CHECK(loss_values(d / "run" / "metrics.jsonl").size() == static_cast<size_t>(per_epoch));

  // Ask for 2.5 epochs on the finished run: it resumes at the end of epoch 1 and runs the rest,
  // and still reports the NLL measured before the first step.
  auto more = run_cmd(in_repo(base + " epochs=2.5 resume=auto"));
  INFO(more.err);
  REQUIRE(more.exit_code == 0);
  json s2 = json::parse(more.out);
  const int64_t total = (5 * (windows / 4) + 3) / 4;  // ceil(2.5 * batches / 2)
  CHECK(s2.at("steps").get<int64_t>() == total);
  CHECK(loss_values(d / "run" / "metrics.jsonl").size() == static_cast<size_t>(total));
  CHECK(s2.at("eval_nll_before").get<double>() == s1.at("eval_nll_before").get<double>());
  CHECK_THAT(more.err, Contains("resumed from"));
}

namespace {
// Runs a command line to completion; returns its exit code and peak RSS in KiB (wait4's rusage
// of the dsk process itself: the shell execs it).
std::pair<int, long> run_measured(const std::string& cmd) {
  pid_t pid = dsk::test::spawn(cmd, "/dev/null");
  int status = 0;
  struct rusage ru {};
  ::wait4(pid, &status, 0, &ru);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, ru.ru_maxrss};
}
}  // namespace

TEST_CASE("activation checkpointing: identical losses and weights, lower peak RSS", "[stages][checkpointing]") {
  auto d = dsk::test::scratch_dir("act_ckpt");
  std::string base = dsk_exe() + " finetune configs/stories260k/full-shakespeare.yaml max_steps=2 batch_size=8 "
                     "data.seq_len=256 eval.max_batches=1 checkpoint.every=0 threads=1 output_dir=";
  auto [code_off, rss_off] = run_measured(base + (d / "off").string() + " activation_checkpointing=false");
  auto [code_on, rss_on] = run_measured(base + (d / "on").string() + " activation_checkpointing=true");
  REQUIRE(code_off == 0);
  REQUIRE(code_on == 0);
  CHECK(loss_values(d / "off" / "metrics.jsonl") == loss_values(d / "on" / "metrics.jsonl"));
  require_same_tensors(d / "off" / "model" / "model.safetensors", d / "on" / "model" / "model.safetensors");
  WARN("peak RSS: " << rss_off / 1024 << " MiB plain, " << rss_on / 1024 << " MiB with activation checkpointing (ratio "
                    << static_cast<double>(rss_on) / static_cast<double>(rss_off) << ")");
#if defined(__SANITIZE_ADDRESS__)
  // ASan's shadow memory and quarantine (freed blocks are held back) swamp the activations.
  WARN("AddressSanitizer build: peak RSS is not compared");
#else
  CHECK(rss_on < rss_off * 0.85);
#endif
}

TEST_CASE("dtype bf16: autocast over fp32 master weights tracks the fp32 run", "[stages][amp]") {
  auto d = dsk::test::scratch_dir("amp_bf16");
  std::string base = dsk_exe() + " finetune configs/stories260k/full-shakespeare.yaml max_steps=4 batch_size=4 "
                     "data.seq_len=64 eval.max_batches=1 checkpoint.every=0 threads=1 output_dir=";
  auto fp32 = run_cmd(in_repo(base + (d / "fp32").string() + " dtype=fp32"));
  auto bf16 = run_cmd(in_repo(base + (d / "bf16").string() + " dtype=bf16"));
  INFO(fp32.err << bf16.err);
  REQUIRE(fp32.exit_code == 0);
  REQUIRE(bf16.exit_code == 0);
  auto a = loss_values(d / "fp32" / "metrics.jsonl"), b = loss_values(d / "bf16" / "metrics.jsonl");
  REQUIRE(a.size() == 4);
  REQUIRE(b.size() == 4);
  double max_diff = 0.0;
  for (size_t i = 0; i < a.size(); ++i) max_diff = std::max(max_diff, std::abs(std::stod(a[i]) - std::stod(b[i])));
  WARN("max |loss_fp32 - loss_bf16| over 4 steps: " << max_diff);
  CHECK(max_diff > 1e-6);  // bf16 matmuls really ran
  CHECK(max_diff < 0.05);
  // Master weights stay fp32, so the saved model is fp32.
  auto w = tensors(d / "bf16" / "model" / "model.safetensors");
  for (auto& [name, t] : w) CHECK(t.scalar_type() == at::kFloat);
}
