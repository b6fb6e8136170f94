// The data component's front door for stages: config-facing structs, the description of
// their YAML keys (the schema declares keys from these lists), and one call per use:
//   prepare_train_data  finetune/distill: train windows + eval windows (given or split off)
//   prepare_eval_data   dsk eval: the documented sliding-window protocol
// Includes the rest of lib/data: source (formats), pack (windows), loader (split, batches).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/pack.h"
#include "data/source.h"

namespace dsk::data {

// Keys directly under `data.` plus the two top-level keys the data path uses.
struct DataOptions {
  int seq_len = 256;           // data.seq_len
  int batch_size = 8;          // top-level batch_size (per process)
  uint64_t seed = 0;           // top-level seed
  double eval_fraction = 0.05;  // data.eval_fraction: held-out documents when no eval path
  bool pack = true;            // data.pack: false = one document per window
  int stride = 0;              // data.stride: eval window advance (0 = seq_len)
};
// data.add_bos / data.add_eos are copied into each DataSpec by the stage.

// One YAML key: name relative to its section, type as the config schema names it
// (bool|int|float|string|path|enum), default as YAML text ("~" = unset), help, enum choices,
// and scope: "" = every stage with data, "train" = finetune/distill only, "eval" = dsk eval only.
struct KeyDoc {
  std::string key, type, default_value, help;
  std::vector<std::string> choices;
  std::string scope;
};
// Keys of one source, under `data.train.` and `data.eval.` (fields of DataSpec but add_bos/eos).
std::vector<KeyDoc> data_source_keys();
// Keys under `data.` (fields of DataOptions, and add_bos/add_eos).
std::vector<KeyDoc> data_keys();

struct TrainData {
  Windows train;               // packed, final partial window dropped
  Windows eval;                // same packing, final window padded; empty when eval_fraction = 0
  bool eval_split = false;     // eval was split off the training documents
  int64_t train_documents = 0, eval_documents = 0;
};
// Loads `train` (and `eval` when non-null, else splits by opt.eval_fraction and opt.seed) and
// packs both. Usage errors: empty data, fewer tokens than one window, no loss tokens.
TrainData prepare_train_data(const DataSpec& train, const DataSpec* eval, const DataOptions& opt,
                             const tok::Tokenizer& tok);
// Loads `spec` and returns make_eval_windows(all documents back to back, seq_len, stride).
Windows prepare_eval_data(const DataSpec& spec, const DataOptions& opt, const tok::Tokenizer& tok);

}  // namespace dsk::data
