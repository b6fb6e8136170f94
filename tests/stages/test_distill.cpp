// dsk distill end to end on stories260K: KD beats cross-entropy for a 2-layer student made of
// the teacher's layers; a narrower student trains with hidden-state matching through learned
// projections and saves a loadable model; the shared training loop's resume and data parallel
// work here too; bad input.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include "models/loader.h"
#include "stage_util.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using dsk::test::in_repo;
using dsk::test::run_cmd;
using dsk::test::slurp;
using dsk::test::tensors;
using nlohmann::json;

namespace {

const std::string kConfig = "configs/stories260k/distill-2layer.yaml";

dsk::test::CmdResult distill(const fs::path& out, const std::string& overrides, const std::string& prefix = "") {
  return run_cmd(in_repo(dsk::test::dsk_bin() + prefix + " distill " + kConfig + " output_dir=" + out.string() +
                         " threads=2 " + overrides));
}

void require_ok(const dsk::test::CmdResult& r) {
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
}

std::vector<double> losses(const fs::path& metrics) {
  std::vector<double> out;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) out.push_back(json::parse(line).at("loss").get<double>());
  return out;
}

double mean(const std::vector<double>& v, size_t first, size_t n) {
  double s = 0;
  for (size_t i = first; i < first + n; ++i) s += v.at(i);
  return s / static_cast<double>(n);
}

}  // namespace

TEST_CASE("distill: a 2-layer student from the teacher's layers learns more from KD (T=2, alpha 0.5) than from CE alone",
          "[stages][distill]") {
  auto d = dsk::test::scratch_dir("distill-kd");
  auto kd = distill(d / "kd", "");
  require_ok(kd);
  auto ce = distill(d / "ce", "distill.alpha=0");
  require_ok(ce);
  const json skd = json::parse(kd.out), sce = json::parse(ce.out);
  WARN("2-layer student (teacher layers 0 and 4), 150 steps on 64 teacher samples: eval NLL KD "
       << skd["eval_nll"].get<double>() << " vs CE only " << sce["eval_nll"].get<double>() << " (student before "
       << skd["eval_nll_before"].get<double>() << ")");
  CHECK(skd["eval_nll"].get<double>() < sce["eval_nll"].get<double>());
  CHECK(skd["eval_nll"].get<double>() < skd["eval_nll_before"].get<double>());
  // the student is a 2-layer copy of the teacher's shape, saved with the teacher's tokenizer
  json config = json::parse(slurp(d / "kd" / "model" / "config.json"));
  CHECK(config["num_hidden_layers"].get<int64_t>() == 2);
  CHECK(config["hidden_size"].get<int64_t>() == 64);
  CHECK(fs::exists(d / "kd" / "model" / "tokenizer.model"));
  // the teacher's samples are kept with the run
  CHECK(fs::file_size(d / "kd" / "teacher_samples.i32") > 64 * 4);
  // initialised from the teacher: layer 1 of the student is the teacher's layer 4 before training
  // (after it, trained); the embedding started as the teacher's
  CHECK_THAT(kd.err, Contains("teacher layers [0, 4]"));
}

TEST_CASE("distill: a narrower scratch student with hidden-state MSE through learned projections trains and reloads",
          "[stages][distill]") {
  auto d = dsk::test::scratch_dir("distill-hidden");
  auto r = distill(d / "h",
                   "student.init.from=scratch student.hidden_size=32 student.intermediate_size=86 "
                   "student.num_hidden_layers=2 student.num_attention_heads=4 student.num_key_value_heads=2 "
                   "distill.hidden.weight=1.0 distill.hidden.layer_map=[0:2,1:4] max_steps=60 checkpoint.every=30");
  require_ok(r);
  CHECK_THAT(r.err, Contains("projected 32 -> 64"));
  auto l = losses(d / "h" / "metrics.jsonl");
  REQUIRE(l.size() == 60);
  WARN("hidden-state + KD loss of a 32-wide student: first 5 steps " << mean(l, 0, 5) << ", last 5 " << mean(l, 55, 5));
  CHECK(mean(l, 55, 5) < 0.9 * mean(l, 0, 5));
  // model/: the student alone (no projection), loadable, scoring what the run reported
  json config = json::parse(slurp(d / "h" / "model" / "config.json"));
  CHECK(config["hidden_size"].get<int64_t>() == 32);
  auto w = tensors(d / "h" / "model" / "model.safetensors");
  for (auto& [name, t] : w) CHECK(name.find("projection") == std::string::npos);
  // the projections are trained state: in the checkpoint
  auto ck = tensors(d / "h" / "checkpoints" / "step-60" / "trainable.safetensors");
  REQUIRE(ck.count("distill.projection.0.weight"));
  CHECK(ck.at("distill.projection.0.weight").sizes() == at::IntArrayRef({64, 32}));
  auto eval = run_cmd(in_repo(dsk::test::dsk_bin() + " eval configs/stories260k/eval-tinystories.yaml model.path=" +
                              (d / "h" / "model").string() + " data.seq_len=128 threads=2"));
  INFO(eval.err);
  REQUIRE(eval.exit_code == 0);
  CHECK(std::abs(json::parse(eval.out)["nll"].get<double>() - json::parse(r.out)["eval_nll"].get<double>()) < 1e-3);
}

TEST_CASE("distill: resume continues exactly, and 2 ranks x batch 4 take the steps of 1 x batch 8 (top-k KD)",
          "[stages][distill][dist]") {
  auto d = dsk::test::scratch_dir("distill-loop");
  const std::string base =
      "schedule.name=constant schedule.warmup_steps=0 optim.eps=1e-6 data.train.num_samples=16 "
      "data.train.max_new_tokens=100 eval.max_batches=1 distill.top_k=16 ";
  require_ok(distill(d / "whole", base + "max_steps=8"));
  require_ok(distill(d / "part", base + "max_steps=4"));
  auto resumed = distill(d / "part", base + "max_steps=8 resume=auto");
  require_ok(resumed);
  CHECK_THAT(resumed.err, Contains("resumed from"));
  CHECK_THAT(resumed.err, Contains("teacher's samples from"));
  CHECK(at::equal(tensors(d / "whole" / "model" / "model.safetensors").at("model.layers.1.mlp.down_proj.weight"),
                  tensors(d / "part" / "model" / "model.safetensors").at("model.layers.1.mlp.down_proj.weight")));
  CHECK(losses(d / "whole" / "metrics.jsonl") == losses(d / "part" / "metrics.jsonl"));

  require_ok(distill(d / "two", base + "max_steps=4 batch_size=4", " launch --nproc 2 --"));
  auto l1 = losses(d / "part" / "metrics.jsonl"), l2 = losses(d / "two" / "metrics.jsonl");
  REQUIRE(l2.size() == 4);
  for (size_t i = 0; i < 4; ++i) CHECK(std::abs(l1[i] - l2[i]) <= 1e-5);
}

TEST_CASE("distill: bad input is one line and exit 2 before any compute", "[stages][distill][bad-input]") {
  auto d = dsk::test::scratch_dir("distill-bad");
  // a student with another vocabulary: a small Hugging Face model of 256 tokens
  {
    auto lm = dsk::models::load_model(dsk::test::data_path("stories260K.bin"));
    dsk::models::LlamaConfig c = lm.config;
    c.vocab_size = 256;
    c.num_hidden_layers = 1;
    dsk::models::Llama small(c);
    dsk::models::save_model_hf((d / "v256").string(), small, {});
  }
  struct Case {
    std::string overrides, expect;
  };
  const std::vector<Case> cases = {
      {"student.init.from=path student.path=" + (d / "v256").string(), "vocabulary of 256 tokens"},
      {"distill.hidden.weight=1 distill.hidden.layer_map=[0:7]", "teacher layer 7"},
      {"distill.hidden.weight=1 distill.hidden.layer_map=[3:1]", "student layer 3"},
      {"distill.hidden.weight=1 distill.hidden.layer_map=[a-b]", "student:teacher"},
      {"distill.alpha=1.5", "outside [0, 1]"},
      {"student.init.layers=[0,9]", "not a layer of the teacher"},
      {"student.init.from=path", "needs student.path"},
      {"data.train.source=file", "data.train.path is required"},
  };
  int i = 0;
  for (const auto& c : cases) {
    const fs::path out = d / std::to_string(i++);
    auto r = distill(out, c.overrides);
    INFO(c.overrides << "\n" << r.err);
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.err, Contains(c.expect));
    CHECK_THAT(r.err, !Contains("terminate called"));
    CHECK_FALSE(fs::exists(out));
  }
}
