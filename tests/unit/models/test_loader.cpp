// load_model / save_model_hf: paths, the HF round trip, rope conversion on save, LoRA refusal.
#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>

#include "models/llama2c.h"
#include "models/loader.h"
#include "models/lora.h"
#include "models_test_util.h"
#include "test_util.h"

using namespace dsk;
using namespace dsk::models;
using dsk::test::error_of;
using dsk::test::max_abs_diff;
using dsk::test::random_model;
using dsk::test::random_tokens;
using dsk::test::tiny_config;

TEST_CASE("save_model_hf then load_model round-trips weights exactly", "[loader]") {
  for (bool tied : {false, true}) {
    LlamaConfig cfg = tiny_config(RopeStyle::Half, tied, /*bias=*/true);
    Llama m = random_model(cfg, 50);
    auto dir = test::scratch_dir("loader_roundtrip") / "model";
    save_model_hf(dir.string(), m, {{"dsk_version", "test"}});
    CHECK(std::filesystem::exists(dir / "config.json"));
    LoadedModel back = load_model(dir.string());
    CHECK(back.path == dir.string());
    CHECK(back.config.tie_word_embeddings == tied);
    CHECK(back.config.attention_bias);
    auto a = state_tensors(m), b = state_tensors(back.model);
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      CHECK(a[i].first == b[i].first);
      CHECK(max_abs_diff(a[i].second, b[i].second) == 0.0);
    }
  }
}

TEST_CASE("an Interleaved model is saved in the Half layout with the same logits", "[loader][rope]") {
  LlamaConfig cfg = tiny_config(RopeStyle::Interleaved, false, /*bias=*/true);
  Llama m = random_model(cfg, 51);
  auto dir = test::scratch_dir("loader_rope") / "model";
  save_model_hf(dir.string(), m, {});
  LoadedModel back = load_model(dir.string());
  CHECK(back.config.rope_style == RopeStyle::Half);
  at::Tensor tokens = random_tokens(2, 25, 61, 52);
  CHECK(max_abs_diff(back.model->forward(tokens), m->forward(tokens)) < 1e-5);
}

TEST_CASE("load_model loads a bf16 copy of a llama2.c file", "[loader]") {
  LoadedModel lm = load_model(test::data_path("stories260K.bin"), at::kBFloat16);
  CHECK(lm.config.rope_style == RopeStyle::Interleaved);
  CHECK(lm.model->dtype() == at::kBFloat16);
  Llama2cCheckpoint ck = load_llama2c(test::data_path("stories260K.bin"));
  CHECK(max_abs_diff(lm.model->model->norm->weight, ck.weights.at("model.norm.weight").to(at::kBFloat16)) == 0.0);
}

TEST_CASE("load_model path errors are usage errors with context", "[loader]") {
  auto dir = test::scratch_dir("loader_errors");
  auto e = error_of([&] { load_model((dir / "nope").string()); });
  CHECK(e.kind() == Error::Kind::Usage);
  CHECK(e.message() == "model path '" + (dir / "nope").string() + "' does not exist");
  std::ofstream(dir / "model.safetensors") << "x";
  e = error_of([&] { load_model((dir / "model.safetensors").string()); });
  CHECK(e.kind() == Error::Kind::Usage);
  CHECK(e.message().find("loading model ") == 0);
  CHECK(e.hint() == "set model.path to the directory that holds config.json");
  e = error_of([&] { load_model(dir.string()); });  // a directory without config.json
  CHECK(e.kind() == Error::Kind::Usage);
  CHECK(e.message().find("loading model " + dir.string() + ": ") == 0);
}

TEST_CASE("save_model_hf refuses unmerged LoRA adapters", "[loader][lora]") {
  Llama m = random_model(tiny_config(), 53);
  apply_lora(m, LoraSpec{});
  auto dir = test::scratch_dir("loader_lora") / "model";
  auto e = error_of([&] { save_model_hf(dir.string(), m, {}); });
  CHECK(e.message().find("unmerged LoRA adapters") != std::string::npos);
  merge_lora(m);
  save_model_hf(dir.string(), m, {});
  CHECK(std::filesystem::exists(dir / "model.safetensors"));
}
