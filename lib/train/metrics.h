// metrics.jsonl: one JSON object per logged step, appended and flushed line by line.
//
// Line: {"step": N, <fields in the order given>}. The trainer's fields are loss, lr, grad_norm,
// tokens_per_s, elapsed_s; others (eval_loss, eval_ppl, ...) may be added to any line.
// Numbers: integers as integers, floating point as printf "%.9g" (exact for float32, and the same
// bytes for the same value on every run), NaN and infinities as null.
// Resume: opening with resume_step = S rewrites the file (atomically) keeping only the lines with
// step <= S, so the resumed run logs no step twice; an incomplete or
// unreadable line (a crash mid-write) is dropped. Opening without resume_step starts empty.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>

namespace dsk::train {

class MetricsLog {
 public:
  explicit MetricsLog(const std::filesystem::path& path, std::optional<int64_t> resume_step = std::nullopt);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  // Appends {"step": step, ...fields} (fields: a JSON object) and flushes.
  void append(int64_t step, const nlohmann::ordered_json& fields);

  // The line append() writes, without the newline.
  static std::string format_line(int64_t step, const nlohmann::ordered_json& fields);

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
};

}  // namespace dsk::train
