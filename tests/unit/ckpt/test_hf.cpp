// Hugging Face directories: config.json both ways, single-file and sharded weights, and the
// errors a user sees for incomplete directories and unsupported configs.
#include <ATen/ATen.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "ckpt/hf.h"
#include "ckpt/safetensors.h"
#include "core/error.h"
#include "ckpt_test_util.h"

using dsk::ckpt::load_hf_weights;
using dsk::ckpt::read_hf_config;
using dsk::ckpt::save_hf_dir;
using dsk::models::LlamaConfig;
using Catch::Matchers::Contains;
namespace stdfs = std::filesystem;
using dsk::test::error_of;

namespace {

using Named = std::vector<std::pair<std::string, at::Tensor>>;

LlamaConfig tiny_config() {
  LlamaConfig c;
  c.hidden_size = 16;
  c.intermediate_size = 40;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.vocab_size = 32;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  c.torch_dtype = "bfloat16";
  return c;
}

// Random weights under Hugging Face's names for config c.
Named hf_weights(const LlamaConfig& c, at::ScalarType dtype) {
  at::manual_seed(7);
  const int64_t C = c.hidden_size, F = c.intermediate_size, D = c.head_dim();
  const int64_t Q = c.num_attention_heads * D, KV = c.num_key_value_heads * D;
  auto w = [&](std::vector<int64_t> shape) { return at::randn(shape).to(dtype); };
  Named out = {{"model.embed_tokens.weight", w({c.vocab_size, C})}};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out.emplace_back(p + "input_layernorm.weight", w({C}));
    out.emplace_back(p + "self_attn.q_proj.weight", w({Q, C}));
    out.emplace_back(p + "self_attn.k_proj.weight", w({KV, C}));
    out.emplace_back(p + "self_attn.v_proj.weight", w({KV, C}));
    if (c.attention_bias) {
      out.emplace_back(p + "self_attn.q_proj.bias", w({Q}));
      out.emplace_back(p + "self_attn.k_proj.bias", w({KV}));
      out.emplace_back(p + "self_attn.v_proj.bias", w({KV}));
    }
    out.emplace_back(p + "self_attn.o_proj.weight", w({C, Q}));
    out.emplace_back(p + "post_attention_layernorm.weight", w({C}));
    out.emplace_back(p + "mlp.gate_proj.weight", w({F, C}));
    out.emplace_back(p + "mlp.up_proj.weight", w({F, C}));
    out.emplace_back(p + "mlp.down_proj.weight", w({C, F}));
  }
  out.emplace_back("model.norm.weight", w({C}));
  if (!c.tie_word_embeddings) out.emplace_back("lm_head.weight", w({c.vocab_size, C}));
  return out;
}

const std::map<std::string, std::string> kMeta = {{"dsk_version", DSK_VERSION}, {"config_hash", "0123abcd"}};

void check_same_config(const LlamaConfig& a, const LlamaConfig& b) {
  CHECK(a.hidden_size == b.hidden_size);
  CHECK(a.intermediate_size == b.intermediate_size);
  CHECK(a.num_hidden_layers == b.num_hidden_layers);
  CHECK(a.num_attention_heads == b.num_attention_heads);
  CHECK(a.num_key_value_heads == b.num_key_value_heads);
  CHECK(a.vocab_size == b.vocab_size);
  CHECK(a.max_position_embeddings == b.max_position_embeddings);
  CHECK(a.rms_norm_eps == b.rms_norm_eps);
  CHECK(a.rope_theta == b.rope_theta);
  CHECK(a.tie_word_embeddings == b.tie_word_embeddings);
  CHECK(a.attention_bias == b.attention_bias);
  CHECK(a.rope_style == b.rope_style);
  CHECK(a.bos_token_id == b.bos_token_id);
  CHECK(a.eos_token_id == b.eos_token_id);
  CHECK(a.torch_dtype == b.torch_dtype);
  CHECK(a.model_type == b.model_type);
  CHECK(a.head_dim() == b.head_dim());
  CHECK(a.rope_scaling_type == b.rope_scaling_type);
  CHECK(a.rope_scaling_factor == b.rope_scaling_factor);
  CHECK(a.rope_low_freq_factor == b.rope_low_freq_factor);
  CHECK(a.rope_high_freq_factor == b.rope_high_freq_factor);
  CHECK(a.rope_original_max_position_embeddings == b.rope_original_max_position_embeddings);
}

void check_same_weights(const std::map<std::string, at::Tensor>& got, const Named& want) {
  REQUIRE(got.size() == want.size());
  for (const auto& [name, t] : want) {
    INFO("tensor " << name);
    REQUIRE(got.count(name));
    const at::Tensor& g = got.at(name);
    CHECK(g.scalar_type() == t.scalar_type());
    CHECK(g.sizes() == t.sizes());
    CHECK(at::equal(g.view(at::kByte), t.contiguous().view(at::kByte)));  // bit-identical
  }
}

nlohmann::json read_json(const stdfs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

void write_json(const stdfs::path& p, const nlohmann::json& j) { std::ofstream(p) << j.dump(2); }

std::set<std::string> files_in(const stdfs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : stdfs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

// A config.json as Hugging Face ships it for a small Llama; tests edit it.
nlohmann::json llama_config_json() {
  return nlohmann::json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 5, "num_attention_heads": 8,
    "num_key_value_heads": 4, "vocab_size": 512, "max_position_embeddings": 512,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": true,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32", "transformers_version": "4.40.0"})");
}

stdfs::path dir_with_config(const std::string& name, const nlohmann::json& j) {
  auto dir = dsk::test::scratch_dir(name);
  write_json(dir / "config.json", j);
  return dir;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Round trips

TEST_CASE("save_hf_dir then read_hf_config/load_hf_weights gives back the same model", "[ckpt][hf]") {
  for (const char* type : {"llama", "qwen2"}) {
    INFO("model_type " << type);
    auto dir = dsk::test::scratch_dir(std::string("hf_roundtrip_") + type);
    LlamaConfig cfg = tiny_config();
    cfg.model_type = type;
    cfg.attention_bias = cfg.model_type == "qwen2";
    cfg.tie_word_embeddings = cfg.model_type == "qwen2";
    Named weights = hf_weights(cfg, at::kBFloat16);
    save_hf_dir(dir.string(), cfg, weights, kMeta);

    CHECK(files_in(dir) == std::set<std::string>{"config.json", "generation_config.json", "model.safetensors"});
    check_same_config(read_hf_config(dir.string()), cfg);
    check_same_weights(load_hf_weights(dir.string()), weights);
    auto meta = dsk::ckpt::SafetensorsFile::open((dir / "model.safetensors").string())->metadata();
    CHECK(meta.at("format") == "pt");
    CHECK(meta.at("dsk_version") == DSK_VERSION);
    CHECK(meta.at("config_hash") == "0123abcd");
    auto gen = read_json(dir / "generation_config.json");
    CHECK(gen["bos_token_id"] == 1);
    CHECK(gen["eos_token_id"] == 2);
    CHECK(read_json(dir / "config.json")["architectures"][0] ==
          (cfg.model_type == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"));
  }
}

TEST_CASE("config.json's torch_dtype follows the saved weights", "[ckpt][hf]") {
  auto dir = dsk::test::scratch_dir("hf_dtype");
  LlamaConfig cfg = tiny_config();  // says bfloat16
  save_hf_dir(dir.string(), cfg, hf_weights(cfg, at::kHalf), kMeta);
  CHECK(read_hf_config(dir.string()).torch_dtype == "float16");
  Named mixed = hf_weights(cfg, at::kFloat);
  mixed[0].second = mixed[0].second.to(at::kBFloat16);
  save_hf_dir(dir.string(), cfg, mixed, kMeta);
  CHECK(read_hf_config(dir.string()).torch_dtype == "bfloat16");  // mixed: cfg's value
}

TEST_CASE("a sharded save writes an index and loads back identically", "[ckpt][hf]") {
  auto dir = dsk::test::scratch_dir("hf_sharded");
  LlamaConfig cfg = tiny_config();
  Named weights = hf_weights(cfg, at::kFloat);
  uint64_t total = 0;
  for (const auto& w : weights) total += w.second.numel() * w.second.element_size();
  Named stale = weights;
  for (auto& w : stale) w.second = w.second + 1;
  save_hf_dir(dir.string(), cfg, stale, kMeta);  // an earlier single-file save in the same directory

  // 4096: every tensor fits (embed_tokens, 2048 bytes, shares a shard); 1000: embed_tokens, lm_head,
  // and per layer q/o_proj (1024 bytes) and gate/up/down_proj (2560) exceed it: 2 + 2 * 5 shards alone.
  for (uint64_t limit : {4096, 1000}) {
    INFO("max_shard_bytes " << limit);
    save_hf_dir(dir.string(), cfg, weights, kMeta, limit);
    auto files = files_in(dir);
    CHECK_FALSE(files.count("model.safetensors"));
    REQUIRE(files.count("model.safetensors.index.json"));
    auto index = read_json(dir / "model.safetensors.index.json");
    CHECK(index["metadata"]["total_size"] == total);
    REQUIRE(index["weight_map"].size() == weights.size());
    std::set<std::string> shards;
    for (const auto& [name, file] : index["weight_map"].items()) shards.insert(file.get<std::string>());
    REQUIRE(shards.size() > 2);
    const int n = static_cast<int>(shards.size());
    int alone = 0;
    for (int i = 1; i <= n; ++i) {
      const std::string shard = dsk::ckpt::hf_shard_name(i, n);
      INFO("shard " << shard);
      CHECK(shards.count(shard));
      auto f = dsk::ckpt::SafetensorsFile::open((dir / shard).string());
      CHECK(f->metadata().at("format") == "pt");
      CHECK(f->metadata().at("config_hash") == "0123abcd");
      uint64_t bytes = 0;
      for (const auto& t : f->tensors()) bytes += t.nbytes();
      CHECK((bytes <= limit || f->tensors().size() == 1));
      alone += bytes > limit;
    }
    CHECK(alone == (limit == 1000 ? 12 : 0));
    CHECK(files.size() == shards.size() + 3);  // no shard of the earlier save is left
    check_same_weights(load_hf_weights(dir.string()), weights);
  }

  // Saving unsharded into the same directory removes the index and the shards.
  save_hf_dir(dir.string(), cfg, stale, kMeta);
  CHECK(files_in(dir) == std::set<std::string>{"config.json", "generation_config.json", "model.safetensors"});
  check_same_weights(load_hf_weights(dir.string()), stale);
}

TEST_CASE("a missing shard or a tensor missing from its shard is a clear error", "[ckpt][hf]") {
  auto dir = dsk::test::scratch_dir("hf_missing_shard");
  LlamaConfig cfg = tiny_config();
  save_hf_dir(dir.string(), cfg, hf_weights(cfg, at::kFloat), kMeta, 4096);
  auto index = read_json(dir / "model.safetensors.index.json");
  const std::string second = index["weight_map"]["model.layers.1.mlp.up_proj.weight"];

  index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = second;
  write_json(dir / "model.safetensors.index.json", index);
  auto e = error_of([&] { load_hf_weights(dir.string()); });
  CHECK(e.exit_code() == dsk::kExitRuntime);
  CHECK_THAT(e.message(), Contains("tensor 'model.layers.9.mlp.up_proj.weight' is listed in "
                                   "model.safetensors.index.json but not stored in the shard") &&
                              Contains(second));

  stdfs::remove(dir / second);
  e = error_of([&] { load_hf_weights(dir.string()); });
  CHECK(e.exit_code() == dsk::kExitUsage);
  CHECK_THAT(e.message(), Contains("shard '" + second + "'") && Contains("is missing") &&
                              Contains("model.safetensors.index.json"));

  index["weight_map"]["x"] = "../elsewhere.safetensors";
  write_json(dir / "model.safetensors.index.json", index);
  CHECK_THROWS_WITH(load_hf_weights(dir.string()), Contains("'../elsewhere.safetensors', which is not a file name"));
  write_json(dir / "model.safetensors.index.json", nlohmann::json::array());
  CHECK_THROWS_WITH(load_hf_weights(dir.string()), Contains("expected an object with a \"weight_map\" object"));
}

TEST_CASE("a missing or weightless directory is a usage error", "[ckpt][hf]") {
  auto dir = dsk::test::scratch_dir("hf_no_weights");
  auto e = error_of([&] { load_hf_weights((dir / "absent").string()); });
  CHECK(e.exit_code() == dsk::kExitUsage);
  CHECK_THAT(e.message(), Contains("does not exist"));
  e = error_of([&] { read_hf_config((dir / "absent").string()); });
  CHECK(e.exit_code() == dsk::kExitUsage);
  e = error_of([&] { read_hf_config(dir.string()); });
  CHECK(e.exit_code() == dsk::kExitUsage);
  CHECK_THAT(e.message(), Contains("config.json"));
  e = error_of([&] { load_hf_weights(dir.string()); });
  CHECK(e.exit_code() == dsk::kExitUsage);
  CHECK_THAT(e.message(), Contains("has neither model.safetensors nor model.safetensors.index.json"));
  std::ofstream(dir / "pytorch_model.bin") << "x";
  e = error_of([&] { load_hf_weights(dir.string()); });
  CHECK_THAT(e.hint(), Contains("safetensors only"));
}

// ---------------------------------------------------------------------------------------------
// config.json

TEST_CASE("the written config.json holds every key transformers' LlamaConfig takes", "[ckpt][hf]") {
  auto j = dsk::ckpt::hf_config_json(tiny_config());
  std::set<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.insert(k);
  // LlamaConfig.__init__ (transformers 4.46) less pad_token_id, plus what save_pretrained adds.
  const std::set<std::string> expected = {
      "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
      "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
      "use_cache", "bos_token_id", "eos_token_id", "pretraining_tp", "tie_word_embeddings", "rope_theta",
      "rope_scaling", "attention_bias", "attention_dropout", "mlp_bias", "head_dim",
      "architectures", "model_type", "torch_dtype", "transformers_version"};
  CHECK(keys == expected);
  CHECK(j["hidden_act"] == "silu");
  CHECK(j["rope_scaling"].is_null());
  CHECK(j["head_dim"] == 4);
  CHECK(j["use_cache"] == true);
  CHECK(j["pretraining_tp"] == 1);
  CHECK(j["initializer_range"] == 0.02);
  CHECK(j["num_key_value_heads"] == 2);
}

TEST_CASE("read_hf_config reads a stock Llama config.json and fills transformers' defaults", "[ckpt][hf]") {
  auto j = llama_config_json();
  LlamaConfig c = read_hf_config(dir_with_config("hf_cfg_llama", j).string());
  CHECK(c.hidden_size == 64);
  CHECK(c.num_key_value_heads == 4);
  CHECK(c.tie_word_embeddings);
  CHECK_FALSE(c.attention_bias);
  CHECK(c.rope_style == dsk::models::RopeStyle::Half);
  CHECK(c.rms_norm_eps == 1e-5);
  CHECK(c.rope_scaling_type.empty());

  for (const char* k : {"num_key_value_heads", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
                        "max_position_embeddings", "torch_dtype", "model_type", "hidden_act"}) {
    j.erase(k);
  }
  c = read_hf_config(dir_with_config("hf_cfg_defaults", j).string());
  CHECK(c.num_key_value_heads == 8);
  CHECK(c.rms_norm_eps == 1e-6);
  CHECK(c.rope_theta == 10000.0);
  CHECK_FALSE(c.tie_word_embeddings);
  CHECK(c.max_position_embeddings == 2048);
  CHECK(c.torch_dtype == "float32");
  CHECK(c.model_type == "llama");
}

TEST_CASE("read_hf_config handles Llama 3.1, Qwen2 and Mistral configs", "[ckpt][hf]") {
  auto j = llama_config_json();
  j["bos_token_id"] = 128000;
  j["eos_token_id"] = {128001, 128008, 128009};
  j["torch_dtype"] = "bfloat16";
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  LlamaConfig c = read_hf_config(dir_with_config("hf_cfg_llama3", j).string());
  CHECK(c.bos_token_id == 128000);
  CHECK(c.eos_token_id == 128001);
  CHECK(c.rope_scaling_type == "llama3");
  CHECK(c.rope_scaling_factor == 8.0);
  CHECK(c.rope_original_max_position_embeddings == 8192);
  CHECK(c.torch_dtype == "bfloat16");
  // ... and writes it back the same way.
  auto dir = dsk::test::scratch_dir("hf_cfg_llama3_back");
  write_json(dir / "config.json", dsk::ckpt::hf_config_json(c));
  check_same_config(read_hf_config(dir.string()), c);

  j = llama_config_json();
  j["model_type"] = "qwen2";
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["use_sliding_window"] = false;
  j["sliding_window"] = 32768;
  j["bos_token_id"] = nullptr;
  c = read_hf_config(dir_with_config("hf_cfg_qwen2", j).string());
  CHECK(c.attention_bias);  // implied by qwen2
  CHECK(c.bos_token_id == -1);
  auto back = dsk::ckpt::hf_config_json(c);
  CHECK(back["architectures"][0] == "Qwen2ForCausalLM");
  CHECK(back["bos_token_id"].is_null());
  CHECK(back["use_sliding_window"] == false);

  j = llama_config_json();
  j["model_type"] = "mistral";
  j["sliding_window"] = nullptr;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  c = read_hf_config(dir_with_config("hf_cfg_mistral", j).string());
  CHECK(c.model_type == "mistral");
  CHECK(c.rope_scaling_type == "linear");
  CHECK(c.rope_scaling_factor == 2.0);
  CHECK(dsk::ckpt::hf_config_json(c)["architectures"][0] == "MistralForCausalLM");
  CHECK(dsk::ckpt::hf_config_json(c)["rope_scaling"]["factor"] == 2.0);
}

TEST_CASE("config.json missing a required field is a usage error naming field and file", "[ckpt][hf]") {
  for (const char* field :
       {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"}) {
    INFO("field " << field);
    auto j = llama_config_json();
    j.erase(field);
    auto dir = dir_with_config("hf_cfg_missing", j);
    auto e = error_of([&] { read_hf_config(dir.string()); });
    CHECK(e.exit_code() == dsk::kExitUsage);
    CHECK_THAT(e.message(), Contains((dir / "config.json").string()) &&
                                Contains(std::string("required field \"") + field + "\" is missing"));
  }
}

TEST_CASE("read_hf_config rejects what dsk cannot run", "[ckpt][hf]") {
  auto usage_error = [](const std::string& name, const nlohmann::json& j) {
    auto dir = dir_with_config(name, j);
    auto e = error_of([&] { read_hf_config(dir.string()); });
    CHECK(e.exit_code() == dsk::kExitUsage);
    CHECK_THAT(e.message(), Contains((dir / "config.json").string()));
    return e.message();
  };
  auto j = llama_config_json();
  j["hidden_act"] = "gelu";
  CHECK_THAT(usage_error("hf_rej_act", j), Contains("hidden_act 'gelu' is not supported"));
  j = llama_config_json();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  CHECK_THAT(usage_error("hf_rej_yarn", j), Contains("rope_scaling type 'yarn' is not supported"));
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  CHECK_THAT(usage_error("hf_rej_llama3", j), Contains("required field \"low_freq_factor\" is missing"));
  j = llama_config_json();
  j["model_type"] = "gpt2";
  CHECK_THAT(usage_error("hf_rej_type", j), Contains("model_type 'gpt2' is not supported"));
  j = llama_config_json();
  j["head_dim"] = 7;
  CHECK_THAT(usage_error("hf_rej_head_dim", j), Contains("head_dim 7 is odd"));
  j["head_dim"] = 0;
  CHECK_THAT(usage_error("hf_rej_head_dim0", j), Contains("\"head_dim\" is 0, expected a positive integer"));
  j = llama_config_json();
  j["num_attention_heads"] = 6;
  j["num_key_value_heads"] = 3;
  CHECK_THAT(usage_error("hf_rej_heads", j), Contains("hidden_size 64 is not a multiple of num_attention_heads 6"));
  j = llama_config_json();
  j["mlp_bias"] = true;
  CHECK_THAT(usage_error("hf_rej_mlp_bias", j), Contains("mlp_bias true is not supported"));
  j = llama_config_json();
  j["num_key_value_heads"] = 3;
  CHECK_THAT(usage_error("hf_rej_gqa", j), Contains("num_attention_heads 8 is not a multiple of num_key_value_heads 3"));
  j = llama_config_json();
  j["hidden_size"] = "64";
  CHECK_THAT(usage_error("hf_rej_type_int", j), Contains("\"hidden_size\" is \"64\", expected a positive integer"));
  j = llama_config_json();
  j["tie_word_embeddings"] = 1;
  CHECK_THAT(usage_error("hf_rej_type_bool", j), Contains("\"tie_word_embeddings\" is 1, expected true or false"));
  auto dir = dsk::test::scratch_dir("hf_rej_json");
  std::ofstream(dir / "config.json") << "{\"hidden_size\": 64,";
  CHECK_THROWS_WITH(read_hf_config(dir.string()), Contains("config.json: not valid JSON"));
}

TEST_CASE("save_hf_dir refuses interleaved rotary weights", "[ckpt][hf]") {
  auto dir = dsk::test::scratch_dir("hf_interleaved");
  LlamaConfig cfg = tiny_config();
  cfg.rope_style = dsk::models::RopeStyle::Interleaved;
  CHECK_THROWS_WITH(save_hf_dir(dir.string(), cfg, hf_weights(cfg, at::kFloat), kMeta),
                    Contains("rope_style Half"));
  CHECK(files_in(dir).empty());
}

// ---------------------------------------------------------------------------------------------
// Explicit head_dim (attention heads pruned: H * head_dim != hidden_size)

TEST_CASE("read_hf_config keeps a head_dim other than hidden_size / num_attention_heads", "[ckpt][hf]") {
  auto j = llama_config_json();  // hidden 64, 8 heads: default head_dim 8
  j["head_dim"] = 16;
  LlamaConfig c = read_hf_config(dir_with_config("hf_cfg_head_dim", j).string());
  CHECK(c.head_dim() == 16);
  CHECK(c.head_dim_override == 16);
  // Heads that do not divide hidden_size are fine with an explicit head_dim.
  j["num_attention_heads"] = 6;
  j["num_key_value_heads"] = 3;
  j["head_dim"] = 8;
  c = read_hf_config(dir_with_config("hf_cfg_head_dim_pruned", j).string());
  CHECK(c.head_dim() == 8);
  CHECK(c.num_attention_heads * c.head_dim() == 48);
  // The default written explicitly (transformers >= 4.45 writes it) stays implicit.
  j = llama_config_json();
  j["head_dim"] = 8;
  c = read_hf_config(dir_with_config("hf_cfg_head_dim_default", j).string());
  CHECK(c.head_dim() == 8);
  CHECK(c.head_dim_override == 0);
  j["head_dim"] = nullptr;
  CHECK(read_hf_config(dir_with_config("hf_cfg_head_dim_null", j).string()).head_dim() == 8);
}

TEST_CASE("a config with an explicit head_dim round-trips with its weights", "[ckpt][hf]") {
  auto dir = dsk::test::scratch_dir("hf_roundtrip_head_dim");
  LlamaConfig cfg = tiny_config();  // hidden 16, 4 heads, 2 kv heads: default head_dim 4
  cfg.num_attention_heads = 6;
  cfg.num_key_value_heads = 3;
  cfg.head_dim_override = 6;
  cfg.attention_bias = true;
  Named weights = hf_weights(cfg, at::kFloat);
  CHECK(weights[2].first == "model.layers.0.self_attn.q_proj.weight");
  CHECK(weights[2].second.sizes() == at::IntArrayRef({36, 16}));
  save_hf_dir(dir.string(), cfg, weights, kMeta);
  auto j = read_json(dir / "config.json");
  CHECK(j["head_dim"] == 6);
  CHECK(j["hidden_size"] == 16);
  CHECK(j["num_attention_heads"] == 6);
  LlamaConfig back = read_hf_config(dir.string());
  CHECK(back.head_dim() == 6);
  CHECK(back.head_dim_override == 6);
  check_same_config(back, [&] {
    LlamaConfig want = cfg;
    want.torch_dtype = "float32";
    return want;
  }());
  check_same_weights(load_hf_weights(dir.string()), weights);
}
