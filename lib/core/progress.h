// Progress reporting on stderr: a one-line bar redrawn in place on a terminal (step, loss,
// tokens/s, ETA); plain log lines every `every` steps otherwise (CI, files, Slurm logs).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace dsk {

class Progress {
 public:
  // `total` steps (0 = unknown); `every`: plain-line interval when not on a terminal.
  Progress(std::string label, int64_t total, int64_t every, int64_t start_step = 0);
  ~Progress();
  // Report step `step` (1-based, absolute) with a short status text ("loss 2.31 | 1.2k tok/s").
  void update(int64_t step, const std::string& status);
  void finish();
  // Prints a log line without breaking the bar.
  void println(const std::string& line);
  static bool stderr_is_terminal();

 private:
  std::string label_;
  int64_t total_, every_, start_step_;
  bool tty_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point t0_;
};

// "1h02m", "3m04s", "12s"
std::string format_duration(double seconds);

}  // namespace dsk
