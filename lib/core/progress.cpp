#include "core/progress.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

namespace dsk {

bool Progress::stderr_is_terminal() {
  const char* ci = std::getenv("CI");
  if (ci && *ci && std::string(ci) != "false" && std::string(ci) != "0") return false;
  const char* term = std::getenv("TERM");
  if (term && std::string(term) == "dumb") return false;
  return ::isatty(STDERR_FILENO) == 1;
}

std::string format_duration(double s) {
  if (s < 0) s = 0;
  auto total = static_cast<int64_t>(s + 0.5);
  int64_t h = total / 3600, m = (total % 3600) / 60, sec = total % 60;
  if (h > 0) return fmt::format("{}h{:02d}m", h, m);
  if (m > 0) return fmt::format("{}m{:02d}s", m, sec);
  return fmt::format("{}s", sec);
}

Progress::Progress(std::string label, int64_t total, int64_t every, int64_t start_step)
    : label_(std::move(label)),
      total_(total),
      every_(every > 0 ? every : 1),
      start_step_(start_step),
      tty_(stderr_is_terminal()),
      t0_(std::chrono::steady_clock::now()) {}

Progress::~Progress() { finish(); }

void Progress::update(int64_t step, const std::string& status) {
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  int64_t done = step - start_step_;
  std::string eta;
  if (total_ > 0 && done > 0) eta = " | ETA " + format_duration(elapsed / done * (total_ - step));
  std::string pos = total_ > 0 ? fmt::format("{}/{}", step, total_) : fmt::format("{}", step);
  if (tty_) {
    std::string bar;
    if (total_ > 0) {
      int width = 20, filled = static_cast<int>(width * step / total_);
      bar = "[" + std::string(filled, '#') + std::string(width - filled, '.') + "] ";
    }
    std::fprintf(stderr, "\r\033[K%s %s%s | %s%s", label_.c_str(), bar.c_str(), pos.c_str(), status.c_str(),
                 eta.c_str());
    std::fflush(stderr);
    drawn_ = true;
  } else if (step % every_ == 0 || step == total_) {
    std::fprintf(stderr, "%s step %s | %s%s\n", label_.c_str(), pos.c_str(), status.c_str(), eta.c_str());
    std::fflush(stderr);
  }
}

void Progress::println(const std::string& line) {
  if (tty_ && drawn_) std::fprintf(stderr, "\r\033[K");
  std::fprintf(stderr, "%s\n", line.c_str());
  drawn_ = false;
  std::fflush(stderr);
}

void Progress::finish() {
  if (tty_ && drawn_) {
    std::fprintf(stderr, "\n");
    std::fflush(stderr);
    drawn_ = false;
  }
}

}  // namespace dsk
