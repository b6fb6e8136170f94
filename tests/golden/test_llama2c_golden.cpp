// Golden tests: dsk's Llama on stories260K against an independent Python/PyTorch implementation of
// the llama2.c forward (tests/golden/llama2c_ref.py, run once per binary with /usr/bin/python3).
// Tolerances (fp32 on both sides):
//   logits            max |dsk - ref|                    <= 1e-4
//   gradients         ||g - g_ref||_2 / ||g_ref||_2       <= 1e-4 for every parameter
//   greedy decoding   token for token, 256 tokens after BOS
//   llama2.c -> HF directory -> load   max |logits difference| <= 1e-6
#include <ATen/ATen.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "ckpt/safetensors.h"
#include "models/generate.h"
#include "models/llama.h"
#include "models/llama2c.h"
#include "models/loader.h"
#include "test_util.h"

using namespace dsk;
using namespace dsk::models;

namespace {

// The reference file, produced once per binary — and reused across binaries (ctest runs each test
// case in its own process) while it is newer than both the script and the checkpoint. Written
// under a temporary name and renamed, so parallel test processes never read half a file.
std::shared_ptr<ckpt::SafetensorsFile> reference() {
  static std::shared_ptr<ckpt::SafetensorsFile> ref = [] {
    namespace stdfs = std::filesystem;
    const stdfs::path script = stdfs::path(DSK_SOURCE_DIR) / "tests/golden/llama2c_ref.py";
    const stdfs::path model = test::data_path("stories260K.bin");
    const stdfs::path dir = stdfs::path(DSK_TEST_TMP) / "golden_llama2c_ref";
    const stdfs::path out = dir / "ref.safetensors";
    std::error_code ec;
    stdfs::create_directories(dir, ec);
    auto fresh = [&] {
      return stdfs::exists(out, ec) && stdfs::last_write_time(out, ec) > stdfs::last_write_time(script, ec) &&
             stdfs::last_write_time(out, ec) > stdfs::last_write_time(model, ec);
    };
    if (!fresh()) {
      const std::string tmp = out.string() + ".tmp." + std::to_string(::getpid());
      std::string cmd = "/usr/bin/python3 " + script.string() + " --model " + model.string() + " --out " + tmp +
                        " --threads 1";
      test::CmdResult r = test::run_cmd(cmd);
      INFO("command: " << cmd << "\nstderr: " << r.err);
      REQUIRE(r.exit_code == 0);
      stdfs::rename(tmp, out);
    }
    return ckpt::SafetensorsFile::open(out.string());
  }();
  return ref;
}

at::Tensor ref_tensor(const std::string& name) { return reference()->tensor(name); }

LoadedModel stories() { return load_model(test::data_path("stories260K.bin"), at::kFloat, c10::Device(c10::kCPU)); }

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

at::Tensor logits_of(Llama& m, const at::Tensor& tokens) {  // [T] -> [T, V]
  at::NoGradGuard no_grad;
  return m->forward(tokens.view({1, -1})).squeeze(0);
}

}  // namespace

TEST_CASE("stories260K logits match the Python reference", "[golden]") {
  LoadedModel lm = stories();
  lm.model->eval();
  for (const char* seq : {"a", "b"}) {
    at::Tensor tokens = ref_tensor(std::string("tokens_") + seq);
    at::Tensor want = ref_tensor(std::string("logits_") + seq);
    at::Tensor got = logits_of(lm.model, tokens);
    REQUIRE(got.sizes() == want.sizes());
    INFO("sequence " << seq << " of " << tokens.numel() << " tokens");
    CHECK(max_abs_diff(got, want) <= 1e-4);
  }
}

TEST_CASE("stories260K gradients of the mean cross-entropy match the Python reference", "[golden]") {
  LoadedModel lm = stories();
  at::Tensor tokens = ref_tensor("tokens_b");  // [200]
  const int64_t T = tokens.numel();
  at::Tensor logits = lm.model->forward(tokens.view({1, T})).squeeze(0);  // [T, V]
  at::Tensor loss = at::nll_loss(at::log_softmax(logits.narrow(0, 0, T - 1), -1), tokens.narrow(0, 1, T - 1));
  CHECK(std::abs(loss.item<double>() - ref_tensor("loss_b").item<double>()) <= 1e-5);
  loss.backward();
  int checked = 0;
  for (auto& item : lm.model->named_parameters()) {
    const std::string& name = item.key();
    at::Tensor g = item.value().grad();
    REQUIRE(g.defined());
    at::Tensor want = ref_tensor("grad." + name);
    REQUIRE(g.sizes() == want.sizes());
    double rel = (g.to(at::kDouble) - want.to(at::kDouble)).norm().item<double>() /
                 want.to(at::kDouble).norm().item<double>();
    INFO(name);
    CHECK(rel <= 1e-4);  // ||g - g_ref|| / ||g_ref||
    ++checked;
  }
  CHECK(checked == 1 + 5 * 9 + 1);  // every parameter of the tied model
}

TEST_CASE("stories260K greedy decoding reproduces the reference token for token", "[golden]") {
  LoadedModel lm = stories();
  at::Tensor want_t = ref_tensor("greedy");
  std::vector<int32_t> want(want_t.data_ptr<int64_t>(), want_t.data_ptr<int64_t>() + want_t.numel());
  REQUIRE(want.size() == 256);
  // The story begins "Once upon a time, there was a little girl named Lily."
  const std::vector<int32_t> sentence = {403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426};
  CHECK(std::vector<int32_t>(want.begin(), want.begin() + 15) == sentence);

  SampleOptions opt;
  opt.max_new_tokens = 256;
  std::vector<int32_t> got = generate(lm.model, {1}, opt, /*eos_id=*/-1);
  CHECK(got == want);
  // llama2.c's run stops when the model emits BOS again.
  const size_t stop = std::stoul(reference()->metadata().at("llama2c_stop"));
  CHECK(generate(lm.model, {1}, opt, /*eos_id=*/1) == std::vector<int32_t>(want.begin(), want.begin() + stop));
}

TEST_CASE("llama2.c -> Hugging Face directory -> load gives identical logits", "[golden]") {
  LoadedModel lm = stories();
  REQUIRE(lm.config.rope_style == RopeStyle::Interleaved);
  auto dir = test::scratch_dir("golden_llama2c_hf") / "model";
  save_model_hf(dir.string(), lm.model, {{"dsk_test", "golden"}});

  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(dir / "config.json"));
  CHECK(cfg["tie_word_embeddings"] == true);
  CHECK(cfg["num_key_value_heads"] == 4);
  auto file = ckpt::SafetensorsFile::open((dir / "model.safetensors").string());
  CHECK(file->find("lm_head.weight") == nullptr);
  CHECK(file->tensors().size() == 1 + 5 * 9 + 1);
  // The saved q/k rows are in Hugging Face's half layout, not llama2.c's.
  at::Tensor q_saved = file->tensor("model.layers.0.self_attn.q_proj.weight");
  at::Tensor q_model = lm.model->model->layers[0]->self_attn->q_proj->weight;
  CHECK(max_abs_diff(q_saved, q_model) > 1e-3);
  CHECK(max_abs_diff(q_saved, permute_rope_rows(q_model, 8, RopeStyle::Half)) == 0.0);

  LoadedModel hf = load_model(dir.string(), at::kFloat, c10::Device(c10::kCPU));
  CHECK(hf.config.rope_style == RopeStyle::Half);

  // The same conversion in memory: the directory round trip must be lossless, bit for bit.
  Llama2cCheckpoint ck = load_llama2c(test::data_path("stories260K.bin"));
  convert_rope_to_half(ck.config, ck.weights);
  Llama converted(ck.config);
  load_state_tensors(converted, ck.weights);
  for (auto& [name, t] : state_tensors(hf.model)) {
    INFO(name);
    CHECK(max_abs_diff(t, ck.weights.at(name)) == 0.0);
  }
  for (const char* seq : {"a", "b"}) {
    at::Tensor tokens = ref_tensor(std::string("tokens_") + seq);
    at::Tensor hf_logits = logits_of(hf.model, tokens);
    INFO("sequence " << seq);
    CHECK(max_abs_diff(hf_logits, logits_of(converted, tokens)) <= 1e-6);  // measured: 0
    // Against the Interleaved original the head dimensions are summed in another order in Q.K^T,
    // so fp32 rounding differs slightly (measured ~2e-5); the Python reference bound applies.
    CHECK(max_abs_diff(hf_logits, logits_of(lm.model, tokens)) <= 1e-4);
    CHECK(max_abs_diff(hf_logits, ref_tensor(std::string("logits_") + seq)) <= 1e-4);
  }
}
