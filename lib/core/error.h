// dsk::Error — the one error type of the library, and the exit codes main() maps it to.
//
// Library code throws; only apps/dsk.cpp catches, prints one line and returns the code.
// Context is added at each layer on the way up:
//   try { load(p); } catch (dsk::Error& e) { throw e.context("loading checkpoint " + p); }
// prints  "loading checkpoint runs/x/step-200: tensor 'w' has shape [172,64], expected [256,64]".
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace dsk {

// Documented exit codes (docs/cli.md).
enum ExitCode : int {
  kExitOk = 0,
  kExitRuntime = 1,       // a run failed: corrupt file, numerical failure, I/O error
  kExitUsage = 2,         // bad command line, config, or input named by the config
  kExitInterrupted = 130, // SIGINT, after saving a checkpoint
  kExitTerminated = 143,  // SIGTERM (Slurm preemption), after saving a checkpoint
};

class Error : public std::runtime_error {
 public:
  enum class Kind { Usage, Runtime };

  Error(Kind kind, std::string message, std::string hint = "")
      : std::runtime_error(message), kind_(kind), message_(std::move(message)), hint_(std::move(hint)) {}

  Kind kind() const { return kind_; }
  const std::string& message() const { return message_; }
  const std::string& hint() const { return hint_; }
  int exit_code() const { return kind_ == Kind::Usage ? kExitUsage : kExitRuntime; }

  // Returns a copy whose message is "ctx: message".
  Error context(const std::string& ctx) const { return Error(kind_, ctx + ": " + message_, hint_); }
  // One line: "message (fix: hint)".
  std::string line() const { return hint_.empty() ? message_ : message_ + " (fix: " + hint_ + ")"; }
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  Kind kind_;
  std::string message_;
  std::string hint_;
};

// Usage errors: the user's config or input is wrong (exit 2).
template <typename... Args>
[[noreturn]] void fail_usage(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(Error::Kind::Usage, fmt::format(f, std::forward<Args>(args)...));
}
// Runtime errors: a run failed (exit 1).
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(Error::Kind::Runtime, fmt::format(f, std::forward<Args>(args)...));
}
// With a fix suggestion appended to the one printed line.
[[noreturn]] inline void fail_usage_hint(std::string message, std::string hint) {
  throw Error(Error::Kind::Usage, std::move(message), std::move(hint));
}
[[noreturn]] inline void fail_hint(std::string message, std::string hint) {
  throw Error(Error::Kind::Runtime, std::move(message), std::move(hint));
}

}  // namespace dsk

// DSK_CHECK(cond, "fmt", args...) — runtime failure (exit 1) when cond is false.
#define DSK_CHECK(cond, ...)                 \
  do {                                       \
    if (!(cond)) ::dsk::fail(__VA_ARGS__);   \
  } while (0)
