// dsk export, shared by its formats: where the model comes from and the checks every format makes.
// defines: ExportSource, load_export_source, check_export_output, export_dtype, and one function
//          per format (export_gguf.cpp, export_onnx.cpp, export_hf.cpp)
//
// model.path may name any of (docs/export.md, "Sources"):
//   a model              llama2.c .bin, Hugging Face directory, dsk quantize model/
//   a dsk run output     its model/ (full or merged), else its adapter/ over the base, else its
//                        newest checkpoint
//   a dsk checkpoint     checkpoints/step-N of a finetune run: the run's config.yaml names the base
//                        model and the method; the trainable tensors are put back into it
//   a PEFT adapter dir   adapter_config.json + adapter_model.safetensors over
//                        base_model_name_or_path (or model.base)
// model.adapter adds a PEFT adapter to a model; model.base replaces the base path a run, a
// checkpoint or an adapter recorded (e.g. after moving directories).
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "config/config.h"
#include "models/loader.h"
#include "models/lora.h"
#include "tokenizer/tokenizer.h"

namespace dsk::stages {

struct ExportSource {
  models::LoadedModel lm;                // fp32 on the CPU
  std::optional<models::LoraSpec> lora;  // the source's LoRA adapter (attached to lm unless merged)
  bool merged = false;                   // the adapter was merged into lm's weights
  std::string base_path;                 // the base model (PEFT's base_model_name_or_path)
  std::string tokenizer_path;            // file or directory the tokenizer is loaded from
  std::string description;               // for logs: "checkpoint runs/x/checkpoints/step-40 (lora)"
};

// Resolves and loads model.path (+ model.adapter, model.base) as above; with `merge`, a LoRA
// adapter is merged into the weights (refused over a quantized base). Usage errors name the path
// and what was expected there.
ExportSource load_export_source(const config::Config& cfg, bool merge);
// tokenizer.path when set, else the source's.
std::unique_ptr<tok::Tokenizer> load_export_tokenizer(const config::Config& cfg, const ExportSource& src);
// Copies the source's tokenizer files (or tokenizer.path) into `dir`.
void copy_export_tokenizer(const config::Config& cfg, const ExportSource& src, const std::filesystem::path& dir);

// An existing output is refused unless export.overwrite; `directory` says which kind the format
// writes, so a file where a directory is expected (or the reverse) is refused too.
void check_export_output(const std::filesystem::path& out, bool overwrite, bool directory);

// export.dtype with "auto" resolved for the format: gguf f16, onnx f32, hf the source's stored
// dtype (config.json torch_dtype; f32 for llama2.c), peft f32. Usage error (exit 2) when the
// format cannot store the dtype.
std::string export_dtype(const config::Config& cfg, const std::string& format, const ExportSource* src = nullptr);

// One per export.format; each returns the exit code and prints one JSON line on stdout.
int export_gguf(const config::Config& cfg);
int export_onnx(const config::Config& cfg);
int export_hf(const config::Config& cfg);    // format hf: a Hugging Face directory, LoRA merged
int export_peft(const config::Config& cfg);  // format peft: the LoRA adapter alone

}  // namespace dsk::stages
