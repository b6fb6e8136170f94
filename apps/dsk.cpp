// dsk — the command-line entry point: the subcommand table (dispatch, --help, did-you-mean)
// and the only place that catches dsk::Error, printing one line per problem on stderr and
// returning the documented exit code (docs/cli.md).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/error.h"
#include "core/log.h"
#include "core/process.h"
#include "core/signals.h"
#include "dist/launch.h"
#include "stages/stages.h"

namespace {

using dsk::config::Config;
using dsk::config::Schema;

// A subcommand driven by a YAML config: `dsk NAME CFG [key=value ...]`.
struct Command {
  const char* name;
  const char* summary;
  const Schema& (*schema)();
  int (*run)(const Config&);
  // Where the schema depends on the config (profile: the stage named by profile.stage).
  const Schema& (*schema_for)(const std::string& path, const std::vector<std::string>& overrides) = nullptr;
};

const Command kCommands[] = {
    {"finetune", "fine-tune a model, fully or with LoRA", dsk::stages::finetune_schema, dsk::stages::run_finetune},
    {"eval", "mean token NLL and perplexity of a model on a dataset", dsk::stages::eval_schema,
     dsk::stages::run_eval},
    {"generate", "generate text with a KV cache (greedy or sampled)", dsk::stages::generate_schema,
     dsk::stages::run_generate},
    {"quantize", "quantize weights (RTN/GPTQ, int8/int4, W8A8) with a sensitivity report", dsk::stages::quantize_schema,
     dsk::stages::run_quantize},
    {"prune", "prune weights (magnitude/Wanda/SparseGPT, N:M) or structure (neurons, heads, layers) with a report",
     dsk::stages::prune_schema, dsk::stages::run_prune},
    {"distill", "distill a teacher into a student (KL/JS with temperature, hidden-state losses)",
     dsk::stages::distill_schema, dsk::stages::run_distill},
    {"export", "export a model, run or checkpoint: GGUF (llama.cpp), ONNX, a Hugging Face directory or a PEFT adapter",
     dsk::stages::export_schema, dsk::stages::run_export},
    {"profile", "profile steps of finetune/eval/generate: report.html (time, operators, memory, MFU, verdict) + trace.json",
     dsk::stages::profile_schema, dsk::stages::run_profile, dsk::stages::profile_schema_for},
};

const Command* find_command(const std::string& name) {
  for (const auto& c : kCommands)
    if (name == c.name) return &c;
  return nullptr;
}

std::vector<std::string> command_names() {
  std::vector<std::string> names;
  for (const auto& c : kCommands) names.push_back(c.name);
  names.push_back("validate");
  names.push_back("launch");
  return names;
}

void print_usage(FILE* out) {
  std::fprintf(out,
               "dsk %s — fine-tune and compress transformer language models\n\n"
               "usage: dsk SUBCOMMAND CONFIG.yaml [key=value ...] [~key ...]\n\n"
               "subcommands:\n",
               DSK_VERSION);
  for (const auto& c : kCommands) std::fprintf(out, "  %-10s %s\n", c.name, c.summary);
  std::fprintf(out, "  %-10s %s\n", "validate", "check a config without running it (all errors at once)");
  std::fprintf(out, "  %-10s %s\n", "launch", "run N processes of a subcommand on this machine: launch --nproc N -- SUBCOMMAND ...");
  std::fprintf(out,
               "\nRun 'dsk SUBCOMMAND --help' for its config keys. Overrides: key=value sets, ~key deletes;\n"
               "strings may use ${VAR} or ${VAR:-default}. Exit codes: 0 ok, 1 failure, 2 bad usage or\n"
               "config, 130/143 interrupted (checkpoint saved). Docs: docs/cli.md, docs/config-reference.md\n");
}

// Reports an error: one line per problem, each prefixed with the subcommand.
int report(const std::string& where, const dsk::Error& e) {
  std::string text = e.line();
  size_t start = 0;
  while (start <= text.size()) {
    size_t nl = text.find('\n', start);
    std::string line = text.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    std::fprintf(stderr, "%s: error: %s\n", where.c_str(), line.c_str());
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  return e.exit_code();
}

// The config file's first comment names the command that runs it: "# dsk finetune configs/x.yaml".
std::string stage_from_first_comment(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (!f) return "";
  char buf[512] = {0};
  std::string stage;
  while (std::fgets(buf, sizeof buf, f)) {
    std::string line(buf);
    if (line.find_first_not_of(" \t\r\n") == std::string::npos) continue;
    if (line[0] != '#') break;
    size_t p = line.find("dsk ");
    if (p != std::string::npos) {
      size_t s = p + 4, e = line.find_first_of(" \t\r\n", s);
      stage = line.substr(s, e == std::string::npos ? std::string::npos : e - s);
      break;
    }
  }
  std::fclose(f);
  return stage;
}

// dsk NAME CFG [overrides] / dsk validate CFG [--as NAME] [overrides]
int run_config_command(const std::string& name, int argc, char** argv) {
  const bool validate_only = name == "validate";
  const Command* cmd = validate_only ? nullptr : find_command(name);
  std::string cfg_path, as_stage;
  std::vector<std::string> overrides;
  CLI::App app{validate_only ? "check a config without running it; every error is reported at once"
                             : cmd->summary,
               "dsk " + name};
  app.add_option("config", cfg_path, "YAML config file")->required();
  app.add_option("overrides", overrides, "key=value to set a key, ~key to delete one");
  if (validate_only) {
    app.add_option("--as", as_stage,
                   "the subcommand whose schema to check against (default: from the config's first "
                   "comment, '# dsk SUBCOMMAND ...')");
  } else {
    app.footer("config keys:\n" + cmd->schema().help_text());
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    std::fputs(app.help().c_str(), stdout);
    return dsk::kExitOk;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "dsk %s: error: %s (see 'dsk %s --help')\n", name.c_str(), e.what(), name.c_str());
    return dsk::kExitUsage;
  }
  try {
    if (validate_only) {
      if (as_stage.empty()) as_stage = stage_from_first_comment(cfg_path);
      cmd = find_command(as_stage);
      if (!cmd) {
        dsk::fail_usage_hint(
            as_stage.empty() ? "cannot tell which subcommand '" + cfg_path + "' is for"
                             : "unknown subcommand '" + as_stage + "'",
            "pass --as finetune|eval|generate|profile, or start the config with a comment '# dsk SUBCOMMAND ...'");
      }
    }
    const Schema& schema = cmd->schema_for ? cmd->schema_for(cfg_path, overrides) : cmd->schema();
    Config cfg = dsk::config::load_config(schema, cfg_path, overrides);
    if (validate_only) {
      std::printf("%s: ok (dsk %s, %zu keys)\n", cfg_path.c_str(), cmd->name, schema.keys().size());
      return dsk::kExitOk;
    }
    dsk::signals::install_handlers();
    dsk::process::tune_malloc();
    return cmd->run(cfg);
  } catch (const dsk::Error& e) {
    return report("dsk " + name, e);
  }
}

// dsk launch --nproc N [--master-port P] -- SUBCOMMAND CFG [overrides]
int run_launch(int argc, char** argv) {
  std::vector<std::string> rest;
  int split = argc;
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--")) {
      split = i;
      break;
    }
  for (int i = split + 1; i < argc; ++i) rest.emplace_back(argv[i]);
  dsk::dist::LaunchOptions opt;
  CLI::App app{"run N processes of a dsk subcommand on this machine, each with RANK, WORLD_SIZE, LOCAL_RANK, "
               "MASTER_ADDR and MASTER_PORT set; stderr lines get a [rank K] prefix; if one rank fails the others "
               "are stopped and its exit code is returned",
               "dsk launch"};
  app.add_option("--nproc", opt.nproc, "number of processes")->required()->check(CLI::Range(1, 4096));
  app.add_option("--master-port", opt.master_port, "rendezvous port (default: a free one)");
  app.add_option("--grace", opt.grace_s, "seconds the other ranks get to exit after one fails (default 10)");
  app.footer("usage: dsk launch --nproc N -- SUBCOMMAND CONFIG.yaml [key=value ...]");
  try {
    app.parse(split, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return dsk::kExitOk;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "dsk launch: error: %s (see 'dsk launch --help')\n", e.what());
    return dsk::kExitUsage;
  }
  if (rest.empty() || !find_command(rest[0])) {
    std::fprintf(stderr, "dsk launch: error: %s (fix: dsk launch --nproc N -- finetune CFG [overrides])\n",
                 rest.empty() ? "no subcommand after '--'" : ("'" + rest[0] + "' is not a subcommand that runs a config").c_str());
    return dsk::kExitUsage;
  }
  return dsk::dist::launch(opt, rest);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    print_usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? dsk::kExitUsage : dsk::kExitOk;
  }
  std::string name = argv[1];
  if (name == "--version" || name == "-V" || name == "version") {
    std::printf("dsk %s\n", DSK_VERSION);
    return dsk::kExitOk;
  }
  // Compute subcommands re-exec once with OMP_WAIT_POLICY=PASSIVE unless the user set it
  // (core/process.h says why); before anything else so the child repeats nothing visible.
  if (find_command(name)) dsk::process::ensure_passive_openmp(argv);
  try {
    if (name == "config-docs") {  // hidden: renders docs/config-reference.md
      std::printf("# Config reference\n\n<!-- @generated by `dsk config-docs`; do not edit. "
                  "scripts/gen-docs rewrites it and tests/stages checks it is current. -->\n\n"
                  "Every key each subcommand accepts. Types: int, float, bool, string, path, a|b "
                  "(one of), lists as `[a, b]` or `a,b`. See docs/cli.md for overrides and ${VAR}.\n\n");
      for (const auto& c : kCommands) std::printf("%s\n", c.schema().markdown().c_str());
      return dsk::kExitOk;
    }
    if (name == "validate" || find_command(name)) return run_config_command(name, argc - 1, argv + 1);
    if (name == "launch") return run_launch(argc - 1, argv + 1);
  } catch (const dsk::Error& e) {
    return report("dsk " + name, e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsk %s: error: internal: %s (please report this)\n", name.c_str(), e.what());
    return dsk::kExitRuntime;
  }
  std::string guess = dsk::config::did_you_mean(name, command_names());
  std::fprintf(stderr, "dsk: error: unknown subcommand '%s'%s (see 'dsk --help')\n", name.c_str(),
               guess.empty() ? "" : ("; did you mean '" + guess + "'?").c_str());
  return dsk::kExitUsage;
}
