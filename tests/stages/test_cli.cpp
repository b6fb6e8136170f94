// The real dsk binary on the command line: help, version, did-you-mean, config validation,
// and every bad-input case the CLI promises to handle with one clear line and exit 1 or 2.
#include <filesystem>
#include <fstream>
#include <regex>

#include "stage_util.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using dsk::test::run_cmd;
using dsk::test::slurp;
using dsk::test::src;

namespace {

std::string dsk_exe() { return dsk::test::dsk_bin(); }

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

// A bad-input run: exit code as promised, exactly one "error:" line on stderr, no stack trace.
void expect_clean_failure(const dsk::test::CmdResult& r, int code, const std::string& needle) {
  INFO("stderr: " << r.err);
  CHECK(r.exit_code == code);
  CHECK_THAT(r.err, Contains(needle));
  CHECK_THAT(r.err, !Contains("terminate called") && !Contains("Exception raised from") &&
                        !Contains("frame #") && !Contains("Traceback"));
  std::regex err_line("error: ");
  auto n = std::distance(std::sregex_iterator(r.err.begin(), r.err.end(), err_line), std::sregex_iterator());
  CHECK(n == 1);
  CHECK(r.out.empty());
}

// A minimal finetune config on the real model; `extra` is appended.
std::string finetune_cfg(const fs::path& out, const std::string& extra = "") {
  return "model: {path: " + dsk::test::data_path("stories260K.bin") + "}\n" +
         "tokenizer: {path: " + dsk::test::data_path("tok512.model") + "}\n" +
         "data:\n  train: {path: " + dsk::test::data_path("tinyshakespeare.txt") + "}\n  seq_len: 64\n" +
         "output_dir: " + out.string() + "\nmax_steps: 2\nbatch_size: 2\n" + extra;
}

}  // namespace

TEST_CASE("version and help", "[cli]") {
  auto v = run_cmd(dsk_exe() + " --version");
  CHECK(v.exit_code == 0);
  CHECK_THAT(v.out, Contains("dsk " DSK_VERSION));
  auto h = run_cmd(dsk_exe() + " --help");
  CHECK(h.exit_code == 0);
  CHECK_THAT(h.out, Contains("finetune") && Contains("generate") && Contains("validate") && Contains("eval"));
  auto fh = run_cmd(dsk_exe() + " finetune --help");
  CHECK(fh.exit_code == 0);
  CHECK_THAT(fh.out, Contains("optim.lr") && Contains("lora.rank") && Contains("output_dir"));
  auto none = run_cmd(dsk_exe());
  CHECK(none.exit_code == 2);
}

TEST_CASE("unknown subcommand suggests the closest", "[cli]") {
  auto r = run_cmd(dsk_exe() + " fintune x.yaml");
  expect_clean_failure(r, 2, "unknown subcommand 'fintune'; did you mean 'finetune'?");
}

TEST_CASE("every config in configs/ validates", "[cli]") {
  int n = 0;
  for (const auto& e : fs::recursive_directory_iterator(src("configs"))) {
    if (e.path().extension() != ".yaml") continue;
    ++n;
    // Each starts with the command that runs it.
    std::string first;
    std::getline(*std::make_unique<std::ifstream>(e.path()), first);
    INFO(e.path());
    CHECK(first.rfind("# dsk ", 0) == 0);
    auto r = run_cmd("cd " + src("") + " && " + dsk_exe() + " validate " + e.path().string());
    INFO(r.err);
    CHECK(r.exit_code == 0);
    CHECK_THAT(r.out, Contains(": ok"));
  }
  CHECK(n >= 4);
}

TEST_CASE("docs/config-reference.md is generated from the schemas and current", "[cli]") {
  auto r = run_cmd(dsk_exe() + " config-docs");
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == slurp(src("docs/config-reference.md")));  // stale? run scripts/gen-docs
}

TEST_CASE("malformed YAML", "[cli][bad-input]") {
  auto d = dsk::test::scratch_dir("bad_yaml");
  write(d / "c.yaml", "model:\n  path: [oops\nmax_steps: 3\n");
  expect_clean_failure(run_cmd(dsk_exe() + " finetune " + (d / "c.yaml").string()), 2, "c.yaml:");
}

TEST_CASE("unknown key with suggestion, wrong type and all reported by validate", "[cli][bad-input]") {
  auto d = dsk::test::scratch_dir("bad_keys");
  write(d / "c.yaml", finetune_cfg(d / "out", "optim: {lrr: 0.1}\n"));
  expect_clean_failure(run_cmd(dsk_exe() + " finetune " + (d / "c.yaml").string()), 2, "did you mean 'optim.lr'?");
  write(d / "t.yaml", finetune_cfg(d / "out", "batch_size: many\n"));
  expect_clean_failure(run_cmd(dsk_exe() + " finetune " + (d / "t.yaml").string()), 2, "expected int, got 'many'");
  write(d / "both.yaml", finetune_cfg(d / "out", "optim: {lrr: 0.1}\nepochs: lots\n"));
  auto r = run_cmd(dsk_exe() + " validate --as finetune " + (d / "both.yaml").string());
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.err, Contains("optim.lrr") && Contains("expected float"));
  CHECK_FALSE(fs::exists(d / "out"));
}

TEST_CASE("missing model, tokenizer and data files", "[cli][bad-input]") {
  auto d = dsk::test::scratch_dir("missing_files");
  std::string cfg = finetune_cfg(d / "out");
  write(d / "m.yaml", std::regex_replace(cfg, std::regex("stories260K\\.bin"), "nope.bin"));
  expect_clean_failure(run_cmd(dsk_exe() + " finetune " + (d / "m.yaml").string()), 2, "nope.bin");
  write(d / "t.yaml", std::regex_replace(cfg, std::regex("tok512\\.model"), "nope.model"));
  expect_clean_failure(run_cmd(dsk_exe() + " finetune " + (d / "t.yaml").string()), 2, "nope.model");
  write(d / "d.yaml", std::regex_replace(cfg, std::regex("tinyshakespeare\\.txt"), "nope.txt"));
  expect_clean_failure(run_cmd(dsk_exe() + " finetune " + (d / "d.yaml").string()), 2, "nope.txt");
}

TEST_CASE("empty dataset", "[cli][bad-input]") {
  auto d = dsk::test::scratch_dir("empty_data");
  write(d / "empty.txt", "\n\n   \n\n");
  std::string cfg = std::regex_replace(finetune_cfg(d / "out"), std::regex("path: [^}]*tinyshakespeare\\.txt"),
                                       "path: " + (d / "empty.txt").string());
  write(d / "c.yaml", cfg);
  expect_clean_failure(run_cmd(dsk_exe() + " finetune " + (d / "c.yaml").string()), 2, "empty");
}

TEST_CASE("seq_len above the model's maximum", "[cli][bad-input]") {
  auto d = dsk::test::scratch_dir("long_seq");
  write(d / "c.yaml", finetune_cfg(d / "out"));
  expect_clean_failure(run_cmd(dsk_exe() + " finetune " + (d / "c.yaml").string() + " data.seq_len=4096"), 2,
                       "seq_len");
}

TEST_CASE("existing non-empty output_dir without resume is refused and left untouched", "[cli][bad-input]") {
  auto d = dsk::test::scratch_dir("existing_out");
  write(d / "out" / "precious.txt", "keep me");
  write(d / "c.yaml", finetune_cfg(d / "out"));
  expect_clean_failure(run_cmd(dsk_exe() + " finetune " + (d / "c.yaml").string()), 2, "resume");
  CHECK(slurp(d / "out" / "precious.txt") == "keep me");
  CHECK(std::distance(fs::directory_iterator(d / "out"), fs::directory_iterator()) == 1);
}

TEST_CASE("dsk launch: ranks get torchrun variables, prefixed stderr, and a failure's exit code", "[cli][launch]") {
  // Every rank finds the same bad input; launch returns the failed rank's exit code. (Which rank
  // fails first is a race: the launcher stops the other one then.)
  auto r = run_cmd("cd " + src("") + " && " + dsk_exe() +
                   " launch --nproc 2 -- eval configs/stories260k/eval-tinystories.yaml data.eval.path=/no/such.txt");
  INFO(r.err);
  CHECK(r.exit_code == 2);
  CHECK(std::regex_search(r.err, std::regex(R"(\[rank ([01])\] dsk eval: error: .*/no/such.txt)")));
  CHECK(std::regex_search(r.err, std::regex(R"(launch: rank [01] exited with code 2; stopping the other ranks)")));
  CHECK_THAT(r.err, Contains("rendezvous 127.0.0.1:"));
  auto bad = run_cmd(dsk_exe() + " launch --nproc 0 -- eval x.yaml");
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.err, Contains("--nproc"));
  auto none = run_cmd(dsk_exe() + " launch --nproc 2");
  CHECK(none.exit_code == 2);
  CHECK_THAT(none.err, Contains("no subcommand after '--'"));
}
