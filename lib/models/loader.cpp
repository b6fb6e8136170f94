#include "models/loader.h"

#include <filesystem>

#include "ckpt/hf.h"
#include "core/error.h"
#include "core/log.h"
#include "models/llama2c.h"
#include "models/lora.h"
#include "models/quantized.h"

namespace dsk::models {

namespace stdfs = std::filesystem;

LoadedModel load_model(const std::string& path, at::ScalarType dtype, c10::Device device) {
  std::error_code ec;
  if (!stdfs::exists(path, ec))
    fail_usage_hint(fmt::format("model path '{}' does not exist", path),
                    "set model.path to a Hugging Face model directory or a llama2.c .bin file");
  try {
    LlamaConfig cfg;
    std::map<std::string, at::Tensor> weights;
    if (stdfs::is_directory(path, ec)) {
      cfg = ckpt::read_hf_config(path);
      weights = ckpt::load_hf_weights(path);
    } else if (stdfs::is_regular_file(path, ec)) {
      if (stdfs::path(path).extension() == ".safetensors" || stdfs::path(path).filename() == "config.json")
        fail_usage_hint(fmt::format("'{}' is a file of a Hugging Face directory", path),
                        "set model.path to the directory that holds config.json");
      Llama2cCheckpoint ck = load_llama2c(path);
      cfg = ck.config;
      weights = std::move(ck.weights);
    } else {
      fail_usage("model path '{}' is neither a directory nor a regular file", path);
    }
    LoadedModel out;
    out.config = cfg;
    out.path = path;
    out.model = Llama(cfg, at::TensorOptions().dtype(dtype).device(device), /*init=*/false);
    if (!cfg.quantization_config.empty())
      load_quantized_layers(out.model, parse_quantization_config(cfg.quantization_config, path + "/config.json"),
                            weights);
    load_state_tensors(out.model, weights);
    log::debug("loaded {}: {} layers, hidden {}, vocab {}, {}", path, cfg.num_hidden_layers, cfg.hidden_size,
               cfg.vocab_size, c10::toString(dtype));
    return out;
  } catch (const Error& e) {
    throw e.context("loading model " + path);
  }
}

void convert_to_half_rope(LoadedModel& lm) {
  if (lm.config.rope_style == RopeStyle::Half) return;
  DSK_CHECK(!is_quantized(lm.model), "convert_to_half_rope: the model is quantized");
  auto list = state_tensors(lm.model);
  LlamaConfig cfg = lm.config;
  convert_rope_to_half(cfg, list);
  std::map<std::string, at::Tensor> weights(list.begin(), list.end());
  Llama half(cfg, at::TensorOptions().dtype(lm.model->dtype()).device(lm.model->device()), /*init=*/false);
  load_state_tensors(half, weights);
  lm.model = half;
  lm.config = cfg;
}

void save_model_hf(const std::string& dir, Llama& model, const std::map<std::string, std::string>& metadata,
                   uint64_t max_shard_bytes) {
  if (!lora_parameters(model).empty())
    fail("saving '{}': the model has unmerged LoRA adapters; call merge_lora first (or save the adapter)", dir);
  LlamaConfig cfg = model->config();
  auto tensors = state_tensors(model);
  if (cfg.rope_style != RopeStyle::Half && is_quantized(model))
    fail("saving '{}': a quantized model in the Interleaved rotary layout (convert_to_half_rope before quantizing)", dir);
  if (cfg.rope_style != RopeStyle::Half) convert_rope_to_half(cfg, tensors);
  cfg.torch_dtype = model->dtype() == at::kBFloat16 ? "bfloat16" : model->dtype() == at::kHalf ? "float16" : "float32";
  ckpt::save_hf_dir(dir, cfg, tensors, metadata, max_shard_bytes);
}

}  // namespace dsk::models
