// Hugging Face directory I/O: config.json parsing/writing and single-file or sharded weights.
#include "ckpt/hf.h"

#include <cctype>
#include <filesystem>
#include <set>

#include "ckpt/safetensors.h"
#include "core/error.h"
#include "core/fs.h"

namespace dsk::ckpt {

namespace stdfs = std::filesystem;

namespace {

// The transformers release whose config.json fields we write (head_dim, mlp_bias, rope_type).
constexpr const char* kTransformersVersion = "4.46.0";

// ---------------------------------------------------------------------------------------------
// config.json fields: each read names the field and the file when it is missing or mistyped.

class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& j, std::string file) : j_(j), file_(std::move(file)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  const nlohmann::json& at(const char* key) const { return j_[key]; }

  [[noreturn]] void bad(const std::string& key, const std::string& expected) const {
    const std::string got = j_.contains(key) ? j_[key].dump() : "missing";
    fail_usage_hint(fmt::format("{}: \"{}\" is {}, expected {}", file_, key, got, expected),
                    "fix the model's config.json");
  }

  int64_t required_int(const char* key) const {
    require(key);
    return positive_int(key);
  }
  double required_number(const char* key) const {
    require(key);
    return number_or(key, 0.0);
  }
  int64_t int_or(const char* key, int64_t fallback) const { return has(key) ? positive_int(key) : fallback; }
  double number_or(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_number()) bad(key, "a number");
    return j_[key].get<double>();
  }
  bool bool_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_boolean()) bad(key, "true or false");
    return j_[key].get<bool>();
  }
  std::string string_or(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_string()) bad(key, "a string");
    return j_[key].get<std::string>();
  }
  // bos/eos_token_id: an int, a list whose first entry counts, or null (-1: none).
  int64_t token_id(const char* key, int64_t fallback) const {
    if (!j_.contains(key)) return fallback;
    const nlohmann::json& v = j_[key];
    if (v.is_array()) {
      if (v.empty()) return -1;
      if (!v[0].is_number_integer()) bad(key, "an integer or a list of integers");
      return v[0].get<int64_t>();
    }
    if (v.is_null()) return -1;
    if (!v.is_number_integer()) bad(key, "an integer or a list of integers");
    return v.get<int64_t>();
  }

 private:
  void require(const char* key) const {
    if (!has(key)) {
      fail_usage_hint(fmt::format("{}: required field \"{}\" is missing", file_, key),
                      "use a complete Hugging Face config.json for a Llama-family model");
    }
  }
  int64_t positive_int(const char* key) const {
    const nlohmann::json& v = j_[key];
    if (!v.is_number_integer() || v.get<int64_t>() <= 0) bad(key, "a positive integer");
    return v.get<int64_t>();
  }

  const nlohmann::json& j_;
  std::string file_;
};

void require_dir(const std::string& dir) {
  std::error_code ec;
  if (!stdfs::exists(dir, ec)) {
    fail_usage_hint(fmt::format("model directory '{}' does not exist", dir),
                    "check the path (relative paths are resolved from the current directory)");
  }
  if (!stdfs::is_directory(dir, ec)) {
    fail_usage_hint(fmt::format("model path '{}' is not a directory", dir),
                    "point it at a Hugging Face model directory (config.json + model.safetensors)");
  }
}

void read_rope_scaling(const ConfigReader& r, const std::string& file, models::LlamaConfig& c) {
  if (!r.has("rope_scaling")) return;
  const nlohmann::json& rs = r.at("rope_scaling");
  if (!rs.is_object()) r.bad("rope_scaling", "an object or null");
  ConfigReader s(rs, file + " rope_scaling");
  std::string type = s.string_or("rope_type", s.string_or("type", ""));
  if (type.empty() || type == "default") return;
  if (type != "linear" && type != "llama3") {
    fail_usage_hint(fmt::format("{}: rope_scaling type '{}' is not supported", file, type),
                    "dsk implements rope_scaling linear and llama3 only");
  }
  c.rope_scaling_type = type;
  c.rope_scaling_factor = s.required_number("factor");
  if (type == "llama3") {
    c.rope_low_freq_factor = s.required_number("low_freq_factor");
    c.rope_high_freq_factor = s.required_number("high_freq_factor");
    c.rope_original_max_position_embeddings = s.required_int("original_max_position_embeddings");
  }
}

const char* torch_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    default: return nullptr;
  }
}

// The one floating dtype all weights share, or nullptr.
const char* common_float_dtype(const std::vector<std::pair<std::string, at::Tensor>>& weights) {
  const char* common = nullptr;
  for (const auto& [name, t] : weights) {
    if (!t.defined() || !t.is_floating_point()) continue;
    const char* d = torch_dtype_name(t.scalar_type());
    if (!d || (common && std::string(common) != d)) return nullptr;
    common = d;
  }
  return common;
}

bool is_shard_name(const std::string& name) {
  const std::string example = hf_shard_name(1, 1);
  if (name.size() != example.size() || name.rfind("model-", 0) != 0 || name.substr(11, 4) != "-of-" ||
      name.substr(20) != ".safetensors")
    return false;
  for (size_t i : {6, 7, 8, 9, 10, 15, 16, 17, 18, 19}) {
    if (!std::isdigit(static_cast<unsigned char>(name[i]))) return false;
  }
  return true;
}

// Removes weight files of an earlier save that the new one does not use.
void remove_stale_weights(const stdfs::path& dir, const std::set<std::string>& keep) {
  std::error_code ec;
  std::vector<stdfs::path> stale;
  for (const auto& entry : stdfs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    bool ours = name == kHfWeightsFile || name == kHfIndexFile || is_shard_name(name);
    if (ours && !keep.count(name)) stale.push_back(entry.path());
  }
  for (const auto& p : stale) stdfs::remove(p, ec);
}

uint64_t tensor_bytes(const at::Tensor& t) {
  return t.defined() ? static_cast<uint64_t>(t.numel()) * t.element_size() : 0;
}

void load_all(const SafetensorsFile& f, std::map<std::string, at::Tensor>& out) {
  for (const auto& t : f.tensors()) out[t.name] = f.tensor(t.name);
}

std::map<std::string, at::Tensor> load_sharded(const stdfs::path& dir) {
  const stdfs::path index_path = dir / kHfIndexFile;
  const std::string index_file = index_path.string();
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(fs::read_file(index_path, "safetensors index"));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", index_file, e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    fail("{}: expected an object with a \"weight_map\" object", index_file);
  }
  std::map<std::string, std::vector<std::string>> by_shard;  // shard file -> tensor names
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) fail("{}: tensor '{}' maps to {}, expected a file name", index_file, name, shard.dump());
    const std::string file = shard.get<std::string>();
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
      fail("{}: tensor '{}' maps to '{}', which is not a file name inside the directory", index_file, name, file);
    }
    by_shard[file].push_back(name);
  }
  std::error_code ec;
  for (const auto& [file, names] : by_shard) {
    if (!stdfs::is_regular_file(dir / file, ec)) {
      fail_usage_hint(fmt::format("{}: shard '{}' (holding tensor '{}') is missing", index_file, file, names[0]),
                      "copy or download the complete model directory");
    }
  }
  std::map<std::string, at::Tensor> out;
  for (const auto& [file, names] : by_shard) {
    auto f = SafetensorsFile::open((dir / file).string());
    for (const auto& name : names) {
      if (!f->find(name)) fail("{}: tensor '{}' is listed in {} but not stored in the shard", f->path(), name, kHfIndexFile);
      out[name] = f->tensor(name);
    }
  }
  return out;
}

}  // namespace

std::string hf_shard_name(int index, int count) { return fmt::format("model-{:05d}-of-{:05d}.safetensors", index, count); }

// ---------------------------------------------------------------------------------------------
// config.json

models::LlamaConfig read_hf_config(const std::string& dir) {
  require_dir(dir);
  const std::string file = (stdfs::path(dir) / kHfConfigFile).string();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(fs::read_file(file, "Hugging Face config"));
  } catch (const nlohmann::json::exception& e) {
    fail_usage_hint(fmt::format("{}: not valid JSON: {}", file, e.what()), "fix the model's config.json");
  }
  if (!j.is_object()) fail_usage_hint(fmt::format("{}: expected a JSON object", file), "fix the model's config.json");
  ConfigReader r(j, file);

  models::LlamaConfig c;
  c.model_type = r.string_or("model_type", "llama");
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2") {
    fail_usage_hint(fmt::format("{}: model_type '{}' is not supported", file, c.model_type),
                    "dsk handles Llama-family models: model_type llama, mistral or qwen2");
  }
  const std::string act = r.string_or("hidden_act", "silu");
  if (act != "silu") {
    fail_usage_hint(fmt::format("{}: hidden_act '{}' is not supported", file, act),
                    "dsk implements SwiGLU MLPs with hidden_act silu only");
  }
  if (r.bool_or("mlp_bias", false)) {
    fail_usage_hint(fmt::format("{}: mlp_bias true is not supported", file), "dsk's MLP projections carry no bias");
  }
  c.hidden_size = r.required_int("hidden_size");
  c.intermediate_size = r.required_int("intermediate_size");
  c.num_hidden_layers = r.required_int("num_hidden_layers");
  c.num_attention_heads = r.required_int("num_attention_heads");
  c.vocab_size = r.required_int("vocab_size");
  c.num_key_value_heads = r.int_or("num_key_value_heads", c.num_attention_heads);
  const int64_t default_positions = c.model_type == "qwen2" ? 32768 : c.model_type == "mistral" ? 131072 : 2048;
  c.max_position_embeddings = r.int_or("max_position_embeddings", default_positions);
  c.rms_norm_eps = r.number_or("rms_norm_eps", 1e-6);
  c.rope_theta = r.number_or("rope_theta", 10000.0);
  c.tie_word_embeddings = r.bool_or("tie_word_embeddings", false);
  c.attention_bias = c.model_type == "qwen2" || r.bool_or("attention_bias", false);
  c.rope_style = models::RopeStyle::Half;
  c.bos_token_id = r.token_id("bos_token_id", 1);
  c.eos_token_id = r.token_id("eos_token_id", 2);
  c.torch_dtype = r.string_or("torch_dtype", r.string_or("dtype", "float32"));
  read_rope_scaling(r, file, c);
  if (j.contains("quantization_config") && !j["quantization_config"].is_null()) {
    if (!j["quantization_config"].is_object())
      fail_usage_hint(fmt::format("{}: quantization_config is not a JSON object", file), "fix the model's config.json");
    c.quantization_config = j["quantization_config"].dump();
  }
  if (j.contains("dsk_sparsity") && !j["dsk_sparsity"].is_null()) {
    if (!j["dsk_sparsity"].is_object())
      fail_usage_hint(fmt::format("{}: dsk_sparsity is not a JSON object", file), "fix the model's config.json");
    c.sparsity_config = j["dsk_sparsity"].dump();
  }

  // head_dim: transformers (LlamaConfig >= 4.45, MistralConfig, recent Qwen2Config) takes it as
  // given and sizes q/k/v/o and the rotary tables with it; absent or null, it is hidden_size /
  // num_attention_heads. Kept explicit only when it differs from that default, e.g. a model
  // whose attention heads were pruned (models/surgery.h).
  if (r.has("head_dim")) {
    const int64_t head_dim = r.int_or("head_dim", 0);
    if (head_dim % 2 != 0) {
      fail_usage_hint(fmt::format("{}: head_dim {} is odd", file, head_dim),
                      "rotary embeddings need an even head_dim: fix the model's config.json");
    }
    if (c.hidden_size % c.num_attention_heads != 0 || head_dim != c.hidden_size / c.num_attention_heads)
      c.head_dim_override = head_dim;
  }
  if (c.head_dim_override == 0 && c.hidden_size % c.num_attention_heads != 0) {
    fail_usage_hint(fmt::format("{}: hidden_size {} is not a multiple of num_attention_heads {} and there is no "
                                "head_dim",
                                file, c.hidden_size, c.num_attention_heads),
                    "fix the model's config.json");
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    fail_usage_hint(fmt::format("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", file,
                                c.num_attention_heads, c.num_key_value_heads),
                    "fix the model's config.json");
  }
  return c;
}

nlohmann::json hf_config_json(const models::LlamaConfig& c) {
  auto token = [](int64_t id) { return id < 0 ? nlohmann::json(nullptr) : nlohmann::json(id); };
  const char* arch = c.model_type == "qwen2" ? "Qwen2ForCausalLM"
                     : c.model_type == "mistral" ? "MistralForCausalLM"
                                                 : "LlamaForCausalLM";
  nlohmann::json j = {
      {"architectures", {arch}},
      {"model_type", c.model_type},
      {"attention_bias", c.attention_bias},
      {"attention_dropout", 0.0},
      {"bos_token_id", token(c.bos_token_id)},
      {"eos_token_id", token(c.eos_token_id)},
      {"head_dim", c.head_dim()},  // always: transformers >= 4.45 sizes the attention with it
      {"hidden_act", "silu"},
      {"hidden_size", c.hidden_size},
      {"initializer_range", 0.02},
      {"intermediate_size", c.intermediate_size},
      {"max_position_embeddings", c.max_position_embeddings},
      {"mlp_bias", false},
      {"num_attention_heads", c.num_attention_heads},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_key_value_heads", c.num_key_value_heads},
      {"pretraining_tp", 1},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_scaling", nullptr},
      {"rope_theta", c.rope_theta},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"torch_dtype", c.torch_dtype},
      {"transformers_version", kTransformersVersion},
      {"use_cache", true},
      {"vocab_size", c.vocab_size},
  };
  if (c.rope_scaling_type == "linear") {
    // "type" rather than "rope_type": older transformers validate exactly {type, factor}.
    j["rope_scaling"] = {{"type", "linear"}, {"factor", c.rope_scaling_factor}};
  } else if (c.rope_scaling_type == "llama3") {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_scaling_factor},
                         {"low_freq_factor", c.rope_low_freq_factor},
                         {"high_freq_factor", c.rope_high_freq_factor},
                         {"original_max_position_embeddings", c.rope_original_max_position_embeddings}};
  }
  if (!c.quantization_config.empty()) j["quantization_config"] = nlohmann::json::parse(c.quantization_config);
  if (!c.sparsity_config.empty()) j["dsk_sparsity"] = nlohmann::json::parse(c.sparsity_config);
  if (c.model_type == "qwen2") {
    j["use_sliding_window"] = false;
    j["sliding_window"] = nullptr;
    j["max_window_layers"] = c.num_hidden_layers;
  } else if (c.model_type == "mistral") {
    j["sliding_window"] = nullptr;
  }
  return j;
}

// ---------------------------------------------------------------------------------------------
// Weights

std::map<std::string, at::Tensor> load_hf_weights(const std::string& dir) {
  require_dir(dir);
  const stdfs::path d(dir);
  std::error_code ec;
  if (stdfs::exists(d / kHfWeightsFile, ec)) {
    std::map<std::string, at::Tensor> out;
    load_all(*SafetensorsFile::open((d / kHfWeightsFile).string()), out);
    return out;
  }
  if (stdfs::exists(d / kHfIndexFile, ec)) return load_sharded(d);
  const bool has_bin = stdfs::exists(d / "pytorch_model.bin", ec) || stdfs::exists(d / "pytorch_model.bin.index.json", ec);
  fail_usage_hint(fmt::format("model directory '{}' has neither {} nor {}", dir, kHfWeightsFile, kHfIndexFile),
                  has_bin ? "dsk reads safetensors only: convert pytorch_model.bin with transformers' "
                            "save_pretrained(safe_serialization=True)"
                          : "point it at a Hugging Face model directory (config.json + model.safetensors)");
}

void save_hf_dir(const std::string& dir, const models::LlamaConfig& cfg,
                 const std::vector<std::pair<std::string, at::Tensor>>& weights,
                 const std::map<std::string, std::string>& metadata, uint64_t max_shard_bytes) {
  if (cfg.rope_style != models::RopeStyle::Half) {
    fail("saving '{}': Hugging Face directories use rope_style Half; permute the q/k weights first", dir);
  }
  const stdfs::path d(dir);
  std::error_code ec;
  stdfs::create_directories(d, ec);
  if (ec) fail("cannot create directory '{}': {}", dir, ec.message());

  std::map<std::string, std::string> meta = metadata;
  meta["format"] = "pt";
  uint64_t total = 0;
  for (const auto& w : weights) total += tensor_bytes(w.second);

  if (max_shard_bytes == 0 || total <= max_shard_bytes) {
    save_safetensors((d / kHfWeightsFile).string(), weights, meta);
    remove_stale_weights(d, {kHfWeightsFile});
  } else {
    std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(1);
    uint64_t in_shard = 0;
    for (const auto& w : weights) {
      const uint64_t n = tensor_bytes(w.second);
      if (!shards.back().empty() && in_shard + n > max_shard_bytes) {
        shards.emplace_back();
        in_shard = 0;
      }
      shards.back().push_back(w);
      in_shard += n;
    }
    std::set<std::string> keep = {kHfIndexFile};
    nlohmann::json weight_map = nlohmann::json::object();
    const int count = static_cast<int>(shards.size());
    for (int i = 0; i < count; ++i) {
      const std::string name = hf_shard_name(i + 1, count);
      save_safetensors((d / name).string(), shards[i], meta);
      keep.insert(name);
      for (const auto& w : shards[i]) weight_map[w.first] = name;
    }
    nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    fs::write_file_atomic(d / kHfIndexFile, index.dump(2) + "\n");
    remove_stale_weights(d, keep);
  }

  models::LlamaConfig out = cfg;
  if (const char* dtype = common_float_dtype(weights)) out.torch_dtype = dtype;
  fs::write_file_atomic(d / kHfConfigFile, hf_config_json(out).dump(2) + "\n");
  nlohmann::json gen = {{"_from_model_config", true}, {"transformers_version", kTransformersVersion}};
  if (out.bos_token_id >= 0) gen["bos_token_id"] = out.bos_token_id;
  if (out.eos_token_id >= 0) gen["eos_token_id"] = out.eos_token_id;
  fs::write_file_atomic(d / kHfGenerationConfigFile, gen.dump(2) + "\n");
}

}  // namespace dsk::ckpt
