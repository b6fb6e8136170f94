// The stages behind the subcommands. Each has a Schema (keys, types, defaults, help) and a
// run function taking the resolved, validated Config. Run functions return an exit code
// (0, or 130/143 after an interrupt saved a checkpoint) and throw dsk::Error on failure.
#pragma once

#include <string>
#include <vector>

#include "config/config.h"

namespace dsk::stages {

const config::Schema& finetune_schema();
int run_finetune(const config::Config& cfg);

const config::Schema& eval_schema();
int run_eval(const config::Config& cfg);

const config::Schema& generate_schema();
int run_generate(const config::Config& cfg);

const config::Schema& quantize_schema();
int run_quantize(const config::Config& cfg);

const config::Schema& distill_schema();
int run_distill(const config::Config& cfg);

const config::Schema& prune_schema();
int run_prune(const config::Config& cfg);

const config::Schema& export_schema();
int run_export(const config::Config& cfg);

// dsk profile: profile_schema() has the profile keys (help, docs); a profile config is checked
// against profile_schema_for(), the schema of the stage its profile.stage names plus those keys
// (a usage error when profile.stage is missing or names no profiled stage).
const config::Schema& profile_schema();
const config::Schema& profile_schema_for_stage(const std::string& stage);
const config::Schema& profile_schema_for(const std::string& config_path, const std::vector<std::string>& overrides);
int run_profile(const config::Config& cfg);

}  // namespace dsk::stages
