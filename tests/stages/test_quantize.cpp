// dsk quantize end to end on stories260K: the accuracy targets of the quantization issue, the
// saved GPTQ-layout model reloaded by dsk eval / generate / finetune (QLoRA), and bad input.
// NLL differences are against the fp32 model on the in-domain TinyStories validation sample
// (and wikitext for out-of-domain, reported); calibration is the separate TinyStories sample.
#include <filesystem>
#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include "stage_util.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using dsk::test::run_cmd;
using dsk::test::slurp;
using nlohmann::json;

namespace {

const char* kConfig = "configs/stories260k/quantize-int4-gptq.yaml";

struct Run {
  dsk::test::CmdResult r;
  json report;
};

Run quantize(const fs::path& out, const std::string& overrides) {
  Run run;
  run.r = run_cmd(dsk::test::in_repo(dsk::test::dsk_bin() + " quantize " + kConfig + " output_dir=" + out.string() +
                                     " threads=2 " + overrides));
  if (run.r.exit_code == 0) run.report = json::parse(slurp(out / "quant_report.json"));
  return run;
}

double delta_nll(const Run& run) { return run.report.at("end_to_end").at("delta_nll").get<double>(); }

// dsk eval of a model directory on the TinyStories validation sample at the quantize config's
// seq_len (128): the NLL, or a failed REQUIRE with dsk's stderr.
double eval_nll(const fs::path& model) {
  auto eval = run_cmd(dsk::test::in_repo(dsk::test::dsk_bin() + " eval configs/stories260k/eval-tinystories.yaml model.path=" +
                                         model.string() + " data.seq_len=128 threads=2"));
  INFO(eval.err);
  REQUIRE(eval.exit_code == 0);
  return json::parse(eval.out)["nll"].get<double>();
}

}  // namespace

TEST_CASE("quantize: INT8 per-channel and W8A8 dynamic stay within 0.01 / 0.03 nats of fp32", "[stages][quantize]") {
  fs::path dir = dsk::test::scratch_dir("quant-int8");
  Run w8 = quantize(dir / "w8", "quant.bits=8 quant.group_size=0 quant.method=rtn quant.act_order=false");
  INFO(w8.r.err);
  REQUIRE(w8.r.exit_code == 0);
  Run w8a8 = quantize(dir / "w8a8",
                      "quant.bits=8 quant.group_size=0 quant.method=rtn quant.act_order=false quant.activations=dynamic");
  INFO(w8a8.r.err);
  REQUIRE(w8a8.r.exit_code == 0);
  WARN("INT8 per-channel weight-only: delta NLL " << delta_nll(w8) << " (bound 0.01), KL "
                                                  << w8.report["end_to_end"]["kl"].get<double>());
  WARN("W8A8 dynamic: delta NLL " << delta_nll(w8a8) << " (bound 0.03)");
  CHECK(std::abs(delta_nll(w8)) <= 0.01);
  CHECK(std::abs(delta_nll(w8a8)) <= 0.03);
  // every linear layer of the 5 blocks, each with both errors measured and a smaller size
  REQUIRE(w8.report["layers"].size() == 35);
  for (const auto& l : w8.report["layers"]) {
    CHECK(l["weight_rel_error"].get<double>() > 0);
    CHECK(l["weight_rel_error"].get<double>() < 0.02);
    CHECK(l["output_rel_error"].get<double>() < 0.02);
    CHECK(l["bytes_after"].get<int64_t>() < l["bytes_before"].get<int64_t>() / 3);
  }
  CHECK(w8.report["size"]["bytes_after"].get<int64_t>() < w8.report["size"]["bytes_before"].get<int64_t>());
  // the table on stderr names a layer and the size line
  CHECK_THAT(w8.r.err, Contains("model.layers.4.mlp.down_proj") && Contains("model size"));
  // stdout is one JSON summary line
  json summary = json::parse(w8.r.out);
  CHECK(summary["model"].get<std::string>() == (dir / "w8" / "model").string());
}

TEST_CASE("quantize: INT4 g32 GPTQ cuts RTN's NLL increase by at least 30% on the same calibration data",
          "[stages][quantize]") {
  fs::path dir = dsk::test::scratch_dir("quant-int4");
  Run rtn = quantize(dir / "rtn", "quant.method=rtn quant.act_order=false quant.sensitivity_only=true");
  INFO(rtn.r.err);
  REQUIRE(rtn.r.exit_code == 0);
  Run gptq = quantize(dir / "gptq", "quant.sensitivity_only=true");  // the config: GPTQ with act-order
  INFO(gptq.r.err);
  REQUIRE(gptq.r.exit_code == 0);
  Run plain = quantize(dir / "plain", "quant.act_order=false quant.sensitivity_only=true");
  REQUIRE(plain.r.exit_code == 0);
  const double d_rtn = delta_nll(rtn), d_gptq = delta_nll(gptq), d_plain = delta_nll(plain);
  WARN("INT4 g32 sym, 10 calibration windows of 128 tokens: delta NLL RTN " << d_rtn << ", GPTQ (act-order) " << d_gptq
                                                                           << " (" << 100 * (1 - d_gptq / d_rtn)
                                                                           << "% lower), GPTQ without act-order "
                                                                           << d_plain);
  REQUIRE(d_rtn > 0);
  CHECK(d_gptq <= 0.7 * d_rtn);
  // out of domain (wikitext; calibration still TinyStories): reported, and GPTQ still ahead
  const std::string wiki = " data.eval.path=data/wikitext2_test.txt data.eval.separator='\n\n' eval.max_batches=12";
  Run rtn_w = quantize(dir / "rtn-wiki", "quant.method=rtn quant.act_order=false quant.sensitivity_only=true" + wiki);
  Run gptq_w = quantize(dir / "gptq-wiki", "quant.sensitivity_only=true" + wiki);
  REQUIRE(rtn_w.r.exit_code == 0);
  REQUIRE(gptq_w.r.exit_code == 0);
  WARN("wikitext (out of domain): fp32 NLL " << rtn_w.report["end_to_end"]["nll_original"].get<double>()
                                             << ", delta NLL RTN " << delta_nll(rtn_w) << ", GPTQ " << delta_nll(gptq_w));
  CHECK(delta_nll(gptq_w) < delta_nll(rtn_w));
  CHECK(d_plain < d_rtn);
  // sensitivity_only: the report, no model
  CHECK(fs::exists(dir / "gptq" / "quant_report.json"));
  CHECK_FALSE(fs::exists(dir / "gptq" / "model"));
  // GPTQ lowers every layer's output error on its calibration inputs against RTN's... on the
  // first layer, whose inputs are the same for both (later layers see different prefixes)
  for (size_t i = 0; i < 7; ++i) {
    INFO(rtn.report["layers"][i]["name"]);
    CHECK(gptq.report["layers"][i]["output_rel_error"].get<double>() <
          rtn.report["layers"][i]["output_rel_error"].get<double>());
  }
}

TEST_CASE("quantize: the saved model reloads with the same NLL, generates, and takes a QLoRA fine-tune",
          "[stages][quantize]") {
  fs::path dir = dsk::test::scratch_dir("quant-roundtrip");
  Run q = quantize(dir / "q", "quant.calib_samples=6");
  INFO(q.r.err);
  REQUIRE(q.r.exit_code == 0);
  const fs::path model = dir / "q" / "model";
  json cfg = json::parse(slurp(model / "config.json"));
  CHECK(cfg["quantization_config"]["quant_method"] == "gptq");
  CHECK(cfg["quantization_config"]["bits"] == 4);
  CHECK(cfg["quantization_config"]["group_size"] == 32);
  CHECK(cfg["quantization_config"]["desc_act"] == true);
  auto t = dsk::test::tensors(model / "model.safetensors");
  // stories260K's down_proj is 172 wide: 6 groups (the last one 12 columns), 22 packed rows
  REQUIRE(t.count("model.layers.0.mlp.down_proj.qweight"));
  CHECK(t["model.layers.0.mlp.down_proj.qweight"].sizes() == at::IntArrayRef({22, 64}));
  CHECK(t["model.layers.0.mlp.down_proj.scales"].sizes() == at::IntArrayRef({6, 64}));
  CHECK(t["model.layers.0.mlp.down_proj.g_idx"].sizes() == at::IntArrayRef({172}));
  CHECK_FALSE(t.count("model.layers.0.mlp.down_proj.weight"));
  CHECK(t.count("model.embed_tokens.weight"));  // embeddings (and the tied head) stay fp32

  const double reloaded = eval_nll(model);
  const double in_memory = q.report["end_to_end"]["nll_quantized"].get<double>();
  WARN("round trip: in-memory quantized NLL " << in_memory << ", reloaded " << reloaded);
  CHECK(std::abs(reloaded - in_memory) < 1e-6);

  auto gen = run_cmd(dsk::test::in_repo(dsk::test::dsk_bin() + " generate configs/stories260k/generate.yaml model.path=" +
                                        model.string() + " generate.max_new_tokens=24"));
  INFO(gen.err);
  REQUIRE(gen.exit_code == 0);
  CHECK(gen.out.size() > 40);

  auto lora = run_cmd(dsk::test::in_repo(
      dsk::test::dsk_bin() + " finetune configs/stories260k/lora-shakespeare.yaml model.path=" + model.string() +
      " output_dir=" + (dir / "qlora").string() +
      " max_steps=12 batch_size=4 data.seq_len=64 eval.every=0 eval.max_batches=2 checkpoint.every=0 threads=2"));
  INFO(lora.err);
  REQUIRE(lora.exit_code == 0);
  CHECK(fs::exists(dir / "qlora" / "adapter" / "adapter_model.safetensors"));
  CHECK_FALSE(fs::exists(dir / "qlora" / "model"));  // no merge into a quantized base
  json s = json::parse(lora.out.substr(lora.out.rfind('{')));
  CHECK(s["eval_nll"].get<double>() < s["eval_nll_before"].get<double>());

  auto full = run_cmd(dsk::test::in_repo(dsk::test::dsk_bin() + " finetune configs/stories260k/lora-shakespeare.yaml model.path=" +
                                         model.string() + " output_dir=" + (dir / "full").string() + " method=full"));
  CHECK(full.exit_code == 2);
  CHECK_THAT(full.err, Contains("is quantized") && Contains("method: lora"));
}

TEST_CASE("quantize: bad input is one clear line and exit 2, nothing written", "[stages][quantize]") {
  fs::path dir = dsk::test::scratch_dir("quant-bad");
  std::ofstream(dir / "empty.txt").close();
  std::ofstream(dir / "short.txt") << "Once upon a time there was a cat.\n";
  struct Case {
    std::string overrides, expect;
  };
  const std::vector<Case> cases = {
      {"quant.bits=5", "quant.bits: 5 is not supported"},
      {"quant.group_size=12", "quant.group_size: 12 is not supported"},
      {"quant.group_size=-3", "quant.group_size: -3 is not supported"},
      {"data.calib.path=" + (dir / "empty.txt").string(), "empty.txt"},
      {"data.calib.path=" + (dir / "short.txt").string(), "fewer than quant.calib_samples"},
      {"quant.calib_samples=500", "fewer than quant.calib_samples = 500"},
      {"quant.activations=dynamic", "needs 8-bit weights"},
      {"quant.include=[nothing_matches]", "select no linear layer"},
  };
  for (const auto& c : cases) {
    INFO(c.overrides);
    fs::path out = dir / "out";
    Run run = quantize(out, c.overrides);
    CHECK(run.r.exit_code == 2);
    CHECK_THAT(run.r.err, Contains(c.expect));
    CHECK_THAT(run.r.err, Contains("fix:"));
    CHECK(std::count(run.r.err.begin(), run.r.err.end(), '\n') <= 40);  // no stack trace
    CHECK_FALSE(fs::exists(out / "quant_report.json"));
  }
  // an already-quantized model
  Run q = quantize(dir / "q", "quant.calib_samples=4");
  REQUIRE(q.r.exit_code == 0);
  Run again = quantize(dir / "again", "model.path=" + (dir / "q" / "model").string());
  CHECK(again.r.exit_code == 2);
  CHECK_THAT(again.r.err, Contains("already quantized"));
  // a corrupt packed tensor: exit 1 naming the layer and tensor
  auto t = dsk::test::tensors(dir / "q" / "model" / "model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> list(t.begin(), t.end());
  for (auto& [name, v] : list)
    if (name == "model.layers.1.self_attn.q_proj.qweight") v = v.narrow(0, 0, v.size(0) - 1).contiguous();
  dsk::ckpt::save_safetensors((dir / "q" / "model" / "model.safetensors").string(), list, {{"format", "pt"}});
  auto bad = run_cmd(dsk::test::in_repo(dsk::test::dsk_bin() + " eval configs/stories260k/eval-tinystories.yaml model.path=" +
                                        (dir / "q" / "model").string()));
  CHECK(bad.exit_code == 1);
  CHECK_THAT(bad.err, Contains("model.layers.1.self_attn.q_proj") && Contains("qweight"));
}

TEST_CASE("QAT: INT4 g32 fine-tune on self-generated text recovers at least half of RTN's NLL increase",
          "[stages][quantize][qat]") {
  fs::path dir = dsk::test::scratch_dir("quant-qat");
  // data-free: text sampled from the full-precision model itself
  const fs::path samples = dir / "samples.txt";
  auto gen = run_cmd(dsk::test::in_repo(dsk::test::dsk_bin() +
                                        " generate configs/stories260k/generate.yaml generate.temperature=1.0 "
                                        "generate.num_samples=32 generate.max_new_tokens=192 seed=1 threads=2 > " +
                                        samples.string()));
  INFO(gen.err);
  REQUIRE(gen.exit_code == 0);
  REQUIRE(fs::file_size(samples) > 10000);  // 32 x 192 tokens

  Run rtn = quantize(dir / "rtn", "quant.method=rtn quant.act_order=false quant.sensitivity_only=true");
  REQUIRE(rtn.r.exit_code == 0);
  const double fp32 = rtn.report["end_to_end"]["nll_original"].get<double>();
  const double d_rtn = delta_nll(rtn);

  auto qat = run_cmd(dsk::test::in_repo("DSK_QAT_DATA=" + samples.string() + " DSK_RUN_DIR=" + (dir / "qat").string() +
                                        " " + dsk::test::dsk_bin() + " finetune configs/stories260k/qat-int4.yaml threads=2"));
  INFO(qat.err);
  REQUIRE(qat.exit_code == 0);
  const fs::path model = dir / "qat" / "model";
  json cfg = json::parse(slurp(model / "config.json"));
  CHECK(cfg["quantization_config"]["dsk"]["method"] == "qat");
  CHECK(cfg["quantization_config"]["bits"] == 4);
  const double nll_qat = eval_nll(model);
  // the converted model computes what QAT's fake-quantized forward computed
  json summary = json::parse(qat.out.substr(qat.out.rfind('{')));
  CHECK(std::abs(summary["eval_nll"].get<double>() - nll_qat) < 1e-5);
  const double d_qat = nll_qat - fp32;
  WARN("INT4 g32: fp32 NLL " << fp32 << ", delta NLL RTN " << d_rtn << ", after QAT " << d_qat << " ("
                             << 100 * (1 - d_qat / d_rtn) << "% of RTN's increase recovered)");
  REQUIRE(d_rtn > 0);
  CHECK(d_qat <= 0.5 * d_rtn);

  // QAT trains the weights it quantizes: with LoRA it is a usage error, before any output
  auto bad = run_cmd(dsk::test::in_repo("DSK_QAT_DATA=" + samples.string() + " DSK_RUN_DIR=" + (dir / "bad").string() +
                                        " " + dsk::test::dsk_bin() + " finetune configs/stories260k/qat-int4.yaml method=lora"));
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.err, Contains("qat.enabled needs method: full"));
  CHECK_FALSE(fs::exists(dir / "bad" / "model"));
}

TEST_CASE("quantize: without data.eval the report has no end-to-end numbers and says why", "[stages][quantize]") {
  fs::path dir = dsk::test::scratch_dir("quant-noeval");
  Run run = quantize(dir / "q", "'~data.eval' quant.method=rtn quant.act_order=false quant.sensitivity_only=true");
  INFO(run.r.err);
  REQUIRE(run.r.exit_code == 0);
  CHECK(run.report["end_to_end"].is_null());
  CHECK(run.report["layers"].size() == 35);
  CHECK_THAT(run.r.err, Contains("no data.eval.path"));
}
