// Config loading: types, defaults, overrides, env vars, and that every problem is reported at once.
#include <cstdlib>

#include "config/config.h"
#include "core/error.h"
#include "test_util.h"

using dsk::config::Schema;
using dsk::config::Type;
using Catch::Matchers::Contains;

namespace {

Schema demo_schema() {
  Schema s("demo", "a schema for tests");
  s.add_required("model.path", Type::Path, "model directory");
  s.add("seed", Type::Int, "0", "random seed");
  s.add("max_steps", Type::Int, "100", "steps");
  s.add("optim.lr", Type::Float, "3e-4", "learning rate");
  s.add_enum("optim.name", {"adamw", "sgd"}, "adamw", "optimizer");
  dsk::config::KeySpec mom;
  mom.key = "optim.momentum";
  mom.type = Type::Float;
  mom.default_value = "0.9";
  mom.help = "momentum";
  mom.when_key = "optim.name";
  mom.when_values = {"sgd"};
  s.add(mom);
  s.add("optim.betas", Type::FloatList, "[0.9, 0.999]", "Adam betas");
  s.add("lora.targets", Type::StringList, "[q_proj, v_proj]", "target modules");
  s.add("verbose", Type::Bool, "false", "chatty");
  s.add("generate.prompt", Type::String, "~", "prompt");
  return s;
}

dsk::config::Config load(const std::string& text, std::vector<std::string> ov = {}) {
  return dsk::config::load_config_text(demo_schema(), text, "x.yaml", ov);
}

std::string error_of(const std::string& text, std::vector<std::string> ov = {}) {
  try {
    load(text, ov);
  } catch (const dsk::Error& e) {
    REQUIRE(e.exit_code() == dsk::kExitUsage);
    return e.message();
  }
  FAIL("expected a config error");
  return "";
}

}  // namespace

TEST_CASE("defaults, types and explicit values", "[config]") {
  auto c = load("model:\n  path: /m\noptim:\n  lr: 1e-3\n");
  CHECK(c.get_string("model.path") == "/m");
  CHECK(c.get_float("optim.lr") == Approx(1e-3));
  CHECK(c.get_int("max_steps") == 100);
  CHECK_FALSE(c.is_set("max_steps"));
  CHECK(c.is_set("optim.lr"));
  CHECK(c.get_floats("optim.betas") == std::vector<double>{0.9, 0.999});
  CHECK(c.get_list("lora.targets") == std::vector<std::string>{"q_proj", "v_proj"});
  CHECK_FALSE(c.has("generate.prompt"));
  CHECK(c.where("optim.lr").str() == "x.yaml:4");
}

TEST_CASE("overrides set, parse as YAML, and delete", "[config]") {
  auto c = load("model: {path: /m}\nmax_steps: 7\n",
                {"optim.lr=0.5", "lora.targets=[a, b, c]", "~max_steps", "verbose=true", "generate.prompt=Once upon"});
  CHECK(c.get_float("optim.lr") == 0.5);
  CHECK(c.get_list("lora.targets").size() == 3);
  CHECK(c.get_int("max_steps") == 100);  // deleted -> default
  CHECK(c.get_bool("verbose"));
  CHECK(c.get_string("generate.prompt") == "Once upon");
  CHECK(c.where("optim.lr").str() == "command line");
  auto d = load("model: {path: /m}\n", {"lora.targets=x, y"});
  CHECK(d.get_list("lora.targets") == std::vector<std::string>{"x", "y"});
}

TEST_CASE("environment variables with and without defaults", "[config]") {
  ::setenv("DSK_TEST_MODEL", "/from/env", 1);
  ::unsetenv("DSK_TEST_UNSET");
  auto c = load("model:\n  path: ${DSK_TEST_MODEL}/sub\nseed: ${DSK_TEST_UNSET:-42}\n");
  CHECK(c.get_string("model.path") == "/from/env/sub");
  CHECK(c.get_int("seed") == 42);
  CHECK_THAT(error_of("model:\n  path: ${DSK_TEST_UNSET}\n"), Contains("DSK_TEST_UNSET") && Contains("x.yaml:2"));
}

TEST_CASE("unknown keys get file:line and a did-you-mean", "[config]") {
  std::string e = error_of("model:\n  path: /m\noptim:\n  lrr: 1\n");
  CHECK_THAT(e, Contains("x.yaml:4") && Contains("unknown key 'optim.lrr'") && Contains("did you mean 'optim.lr'"));
  CHECK_THAT(error_of("model: {path: /m}\nmax_step: 3\n"), Contains("did you mean 'max_steps'"));
  CHECK_THAT(error_of("model: {path: /m}\n", {"optim.lrate=1"}), Contains("command line") && Contains("optim.lr"));
}

TEST_CASE("wrong types name the expected type", "[config]") {
  CHECK_THAT(error_of("model: {path: /m}\nmax_steps: ten\n"), Contains("x.yaml:2") && Contains("expected int"));
  CHECK_THAT(error_of("model: {path: /m}\noptim: {lr: fast}\n"), Contains("expected float"));
  CHECK_THAT(error_of("model: {path: /m}\nverbose: maybe\n"), Contains("expected bool"));
  CHECK_THAT(error_of("model: {path: /m}\noptim: {name: adamm}\n"), Contains("did you mean 'adamw'"));
  CHECK_THAT(error_of("model: {path: [1, 2]}\n"), Contains("expected path, got a list"));
  CHECK_THAT(error_of("model: 3\n"), Contains("'model' is a section"));
}

TEST_CASE("all errors are reported together", "[config]") {
  std::string e = error_of("max_steps: x\nseeed: 1\noptim: {lr: y}\n");
  CHECK_THAT(e, Contains("expected int") && Contains("seeed") && Contains("expected float") &&
                    Contains("missing required key 'model.path'"));
  CHECK(std::count(e.begin(), e.end(), '\n') == 3);
}

TEST_CASE("component keys only with their selector", "[config]") {
  CHECK_THAT(error_of("model: {path: /m}\noptim: {momentum: 0.5}\n"),
             Contains("'optim.momentum' applies only when optim.name is sgd (it is adamw)"));
  auto c = load("model: {path: /m}\noptim: {name: sgd, momentum: 0.5}\n");
  CHECK(c.get_float("optim.momentum") == 0.5);
}

TEST_CASE("malformed YAML is one line with file:line", "[config]") {
  CHECK_THAT(error_of("model:\n  path: [unclosed\n"), Contains("x.yaml:") && Contains("invalid YAML"));
  CHECK_THAT(error_of("- a\n- b\n"), Contains("must be a YAML mapping"));
}

TEST_CASE("resolved YAML round-trips to the same config", "[config]") {
  auto c = load("model: {path: /m}\noptim: {name: sgd, momentum: 0.5, lr: 0.01}\ngenerate: {prompt: 'a: b'}\n");
  std::string y = c.to_yaml();
  auto again = load(y);
  CHECK(again.to_yaml() == y);
  CHECK(again.hash() == c.hash());
  CHECK(again.get_string("generate.prompt") == "a: b");
  auto other = load("model: {path: /m2}\n");
  CHECK(other.hash() != c.hash());
}

TEST_CASE("resolved YAML leaves out the keys of components not selected, so it loads again", "[config]") {
  auto c = load("model: {path: /m}\n");  // optim.name defaults to adamw: optim.momentum does not apply
  std::string y = c.to_yaml();
  CHECK_THAT(y, !Contains("momentum"));
  auto again = load(y);  // a resolved config.yaml is itself a valid config
  CHECK(again.to_yaml() == y);
  CHECK(load("model: {path: /m}\noptim: {name: sgd}\n").to_yaml().find("momentum: 0.9") != std::string::npos);
}

TEST_CASE("missing config file is a usage error naming it", "[config]") {
  try {
    dsk::config::load_config(demo_schema(), "/nonexistent/cfg.yaml", {});
    FAIL("no error");
  } catch (const dsk::Error& e) {
    CHECK(e.exit_code() == dsk::kExitUsage);
    CHECK_THAT(e.message(), Contains("/nonexistent/cfg.yaml"));
  }
}

TEST_CASE("schema renders help and markdown", "[config]") {
  auto s = demo_schema();
  CHECK_THAT(s.markdown(), Contains("| `optim.momentum` | float | `0.9` | momentum (only when optim.name is sgd) |"));
  CHECK_THAT(s.help_text(), Contains("model.path") && Contains("required"));
}
