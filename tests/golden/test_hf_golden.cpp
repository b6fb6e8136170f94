// Golden test for structured surgery and explicit head_dim: stories260K shrunk (25% of the MLP
// neurons, 1 of 4 KV groups and 1 of 5 layers removed by magnitude), saved as a Hugging Face
// directory, and run by an independent Python/PyTorch implementation of transformers'
// LlamaForCausalLM forward (tests/golden/hf_llama_ref.py, /usr/bin/python3, torch + numpy only)
// that reads config.json and model.safetensors itself. Tolerance (fp32 on both sides):
//   logits   max |dsk - ref| < 1e-4
#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ckpt/safetensors.h"
#include "models/llama.h"
#include "models/loader.h"
#include "models/surgery.h"
#include "test_util.h"

using namespace dsk;
using namespace dsk::models;

namespace {

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

at::Tensor logits_of(Llama& m, const at::Tensor& tokens) {  // [T] -> [T, V]
  at::NoGradGuard no_grad;
  return m->forward(tokens.view({1, -1})).squeeze(0);
}

// Runs the reference on a model directory; returns its logits [T, V].
at::Tensor reference_logits(const std::filesystem::path& dir, const at::Tensor& tokens) {
  const std::filesystem::path script = std::filesystem::path(DSK_SOURCE_DIR) / "tests/golden/hf_llama_ref.py";
  std::string ids;
  for (int64_t i = 0; i < tokens.numel(); ++i) ids += (i ? "," : "") + std::to_string(tokens[i].item<int64_t>());
  const std::filesystem::path out = dir.parent_path() / "ref.safetensors";
  const std::string cmd = "/usr/bin/python3 " + script.string() + " --model " + dir.string() + " --tokens " + ids +
                          " --out " + out.string() + " --threads 1";
  test::CmdResult r = test::run_cmd(cmd);
  INFO("command: " << cmd << "\nstderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  return ckpt::SafetensorsFile::open(out.string())->tensor("logits").clone();
}

}  // namespace

TEST_CASE("shrunk stories260K saved as Hugging Face matches the Python transformers-style reference", "[golden]") {
  LoadedModel lm = load_model(test::data_path("stories260K.bin"), at::kFloat, c10::Device(c10::kCPU));
  lm.model->eval();
  const LlamaConfig& c = lm.config;
  REQUIRE(c.num_key_value_heads == 4);
  REQUIRE(c.num_hidden_layers == 5);
  StructuredPlan plan;
  const int64_t F2 = c.intermediate_size - c.intermediate_size / 4;
  plan.mlp_keep = keep_top(mlp_neuron_magnitude(lm.model), F2);
  plan.group_keep = keep_top(kv_group_magnitude(lm.model), 3);
  plan.layers_keep = {0, 1, 2, 4};
  Llama small = apply_structured_plan(lm.model, plan);
  small->eval();

  auto dir = test::scratch_dir("golden_hf_surgery") / "model";
  save_model_hf(dir.string(), small, {{"dsk_test", "golden"}});
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(dir / "config.json"));
  CHECK(cfg["intermediate_size"] == F2);
  CHECK(cfg["num_attention_heads"] == 6);
  CHECK(cfg["num_key_value_heads"] == 3);
  CHECK(cfg["num_hidden_layers"] == 4);
  CHECK(cfg["hidden_size"] == 64);
  CHECK(cfg["head_dim"] == 8);  // 6 * 8 = 48 != 64

  at::manual_seed(123);
  at::Tensor tokens = at::randint(c.vocab_size, {100}, at::kLong);
  tokens[0] = 1;  // BOS
  at::Tensor want = reference_logits(dir, tokens);
  at::Tensor got = logits_of(small, tokens);
  REQUIRE(got.sizes() == want.sizes());
  CHECK(max_abs_diff(got, want) < 1e-4);
  // The reloaded directory computes the same, and the reference is not trivially close to the
  // unpruned model (the comparison can fail).
  LoadedModel back = load_model(dir.string(), at::kFloat, c10::Device(c10::kCPU));
  CHECK(max_abs_diff(logits_of(back.model, tokens), want) < 1e-4);
  CHECK(max_abs_diff(logits_of(lm.model, tokens), want) > 1e-2);
}
