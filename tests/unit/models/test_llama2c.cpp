// llama2.c checkpoints: header, tensor placement, exact size validation.
#include <ATen/ATen.h>

#include <cstring>
#include <fstream>

#include "core/fs.h"
#include "models/llama.h"
#include "models/llama2c.h"
#include "models_test_util.h"
#include "test_util.h"

using namespace dsk;
using namespace dsk::models;
using dsk::test::error_of;
using dsk::test::max_abs_diff;

namespace {

std::string write_prefix(const std::string& src, const std::string& dst, size_t bytes) {
  std::string all = fs::read_file(src);
  std::ofstream(dst, std::ios::binary).write(all.data(), static_cast<std::streamsize>(std::min(bytes, all.size())));
  return dst;
}

// A synthetic checkpoint whose float k holds the value k, so placement is checkable.
std::string write_counting_bin(const std::string& path, int32_t vocab, int64_t* n_floats) {
  // dim 8, hidden 12, 2 layers, 2 heads, 1 kv head, |vocab| 10, seq_len 6 -> D 4, kv_dim 4
  int32_t h[7] = {8, 12, 2, 2, 1, vocab, 6};
  int64_t n = 10 * 8 + 2 * 8 + 2 * 64 + 2 * 32 + 2 * 32 + 2 * 64 + 2 * 8 + 3 * 2 * 96 + 8 + 2 * 6 * 2;
  if (vocab < 0) n += 10 * 8;
  std::vector<float> f(n);
  for (int64_t i = 0; i < n; ++i) f[i] = static_cast<float>(i);
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(h), sizeof h);
  out.write(reinterpret_cast<const char*>(f.data()), static_cast<std::streamsize>(n * 4));
  *n_floats = n;
  return path;
}

}  // namespace

TEST_CASE("stories260K loads with its header's config under HF names", "[llama2c]") {
  Llama2cCheckpoint ck = load_llama2c(test::data_path("stories260K.bin"));
  const LlamaConfig& c = ck.config;
  CHECK(c.hidden_size == 64);
  CHECK(c.intermediate_size == 172);
  CHECK(c.num_hidden_layers == 5);
  CHECK(c.num_attention_heads == 8);
  CHECK(c.num_key_value_heads == 4);
  CHECK(c.vocab_size == 512);
  CHECK(c.max_position_embeddings == 512);
  CHECK(c.tie_word_embeddings);
  CHECK(c.rope_style == RopeStyle::Interleaved);
  CHECK(ck.weights.size() == 1 + 5 * 9 + 1);
  CHECK(ck.weights.count("lm_head.weight") == 0);
  CHECK(ck.weights.at("model.layers.4.self_attn.k_proj.weight").sizes().vec() == std::vector<int64_t>{32, 64});
  CHECK(ck.weights.at("model.layers.4.mlp.down_proj.weight").sizes().vec() == std::vector<int64_t>{64, 172});
  Llama m(c);
  load_state_tensors(m, ck.weights);  // every name and shape agrees with the module
}

TEST_CASE("llama2.c tensors land under the right names in file order", "[llama2c]") {
  auto dir = test::scratch_dir("llama2c_counting");
  for (int32_t vocab : {10, -10}) {
    int64_t n = 0;
    std::string path = write_counting_bin((dir / "m.bin").string(), vocab, &n);
    Llama2cCheckpoint ck = load_llama2c(path);
    auto first = [&](const std::string& name) { return ck.weights.at(name).flatten()[0].item<float>(); };
    CHECK(first("model.embed_tokens.weight") == 0);
    CHECK(first("model.layers.1.input_layernorm.weight") == 80 + 8);
    CHECK(first("model.layers.0.self_attn.q_proj.weight") == 96);
    CHECK(first("model.layers.1.self_attn.k_proj.weight") == 96 + 128 + 32);
    CHECK(first("model.layers.0.mlp.gate_proj.weight") == 96 + 128 + 64 + 64 + 128 + 16);        // w1
    CHECK(first("model.layers.0.mlp.down_proj.weight") == 96 + 128 + 64 + 64 + 128 + 16 + 192);  // w2
    CHECK(first("model.layers.0.mlp.up_proj.weight") == 96 + 128 + 64 + 64 + 128 + 16 + 384);    // w3
    CHECK(first("model.norm.weight") == 96 + 128 + 64 + 64 + 128 + 16 + 576);
    CHECK(ck.config.tie_word_embeddings == (vocab > 0));
    if (vocab < 0) {
      CHECK(ck.config.vocab_size == 10);
      CHECK(first("lm_head.weight") == n - 80);  // after rms_final and the skipped freq_cis tables
    }
  }
}

TEST_CASE("a truncated llama2.c file names what is missing", "[llama2c]") {
  auto dir = test::scratch_dir("llama2c_truncated");
  std::string src = test::data_path("stories260K.bin");
  // w1 starts at 28 + 4 * 94848 = 379420 bytes.
  std::string cut = write_prefix(src, (dir / "cut.bin").string(), 400000);
  auto e = error_of([&] { load_llama2c(cut); });
  CHECK(e.kind() == Error::Kind::Runtime);
  CHECK(e.message() == cut +
                           ": truncated llama2.c checkpoint: 400000 bytes, the header implies 1056540; the file ends "
                           "inside 'w1' (model.layers.*.mlp.gate_proj.weight) (bytes 379420..599580)");
  std::string tiny = write_prefix(src, (dir / "tiny.bin").string(), 10);
  e = error_of([&] { load_llama2c(tiny); });
  CHECK(e.message().find("shorter than the 28-byte header") != std::string::npos);
  std::string no_freq = write_prefix(src, (dir / "nofreq.bin").string(), 1056540 - 4);
  e = error_of([&] { load_llama2c(no_freq); });
  CHECK(e.message().find("inside 'freq_cis_imag'") != std::string::npos);
}

TEST_CASE("llama2.c files with extra bytes, bad headers or no file are rejected", "[llama2c]") {
  auto dir = test::scratch_dir("llama2c_bad");
  std::string src = test::data_path("stories260K.bin");
  std::string all = fs::read_file(src);
  std::string longer = (dir / "long.bin").string();
  std::ofstream(longer, std::ios::binary) << all << std::string(8, '\0');
  auto e = error_of([&] { load_llama2c(longer); });
  CHECK(e.kind() == Error::Kind::Runtime);
  CHECK(e.message() == longer + ": llama2.c checkpoint has 1056548 bytes, the header implies 1056540 (8 extra bytes)");

  std::string bad = (dir / "bad.bin").string();
  std::string hdr = all;
  int32_t heads = 7;  // 64 % 7 != 0
  std::memcpy(&hdr[12], &heads, 4);
  std::ofstream(bad, std::ios::binary) << hdr;
  e = error_of([&] { load_llama2c(bad); });
  CHECK(e.message().find("invalid llama2.c header") != std::string::npos);

  e = error_of([&] { load_llama2c((dir / "absent.bin").string()); });
  CHECK(e.kind() == Error::Kind::Usage);
}
