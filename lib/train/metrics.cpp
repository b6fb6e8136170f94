// metrics.jsonl writer: deterministic number formatting, per-line flush, truncation on resume.
#include "train/metrics.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"

namespace dsk::train {
namespace {

void append_value(std::string& out, const nlohmann::ordered_json& v) {
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (!std::isfinite(d)) {
      out += "null";
      return;
    }
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.9g", d);
    out += buf;
  } else if (v.is_object()) {
    out += '{';
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!first) out += ", ";
      first = false;
      out += nlohmann::ordered_json(it.key()).dump() + ": ";
      append_value(out, it.value());
    }
    out += '}';
  } else if (v.is_array()) {
    out += '[';
    for (size_t i = 0; i < v.size(); ++i) {
      if (i) out += ", ";
      append_value(out, v[i]);
    }
    out += ']';
  } else {
    out += v.dump();
  }
}

// The text of the lines of `text` with step <= max_step; incomplete or unreadable lines dropped.
std::string kept_lines(const std::string& text, int64_t max_step, const std::string& name) {
  std::string out;
  size_t pos = 0, dropped_bad = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) {  // no newline: the write was cut short
      ++dropped_bad;
      break;
    }
    const std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) {
      ++dropped_bad;
      continue;
    }
    if (j["step"].get<int64_t>() <= max_step) out += line + "\n";
  }
  if (dropped_bad) log::warn("{}: dropped {} incomplete or unreadable line(s)", name, dropped_bad);
  return out;
}

}  // namespace

std::string MetricsLog::format_line(int64_t step, const nlohmann::ordered_json& fields) {
  DSK_CHECK(fields.is_object() || fields.is_null(), "metrics: fields must be a JSON object");
  std::string out = "{\"step\": " + std::to_string(step);
  if (fields.is_object()) {
    for (auto it = fields.begin(); it != fields.end(); ++it) {
      if (it.key() == "step") continue;
      out += ", " + nlohmann::ordered_json(it.key()).dump() + ": ";
      append_value(out, it.value());
    }
  }
  return out + "}";
}

MetricsLog::MetricsLog(const std::filesystem::path& path, std::optional<int64_t> resume_step) : path_(path) {
  if (resume_step && std::filesystem::exists(path)) {
    fs::write_file_atomic(path, kept_lines(fs::read_file(path, "metrics log"), *resume_step, path.string()));
    file_ = std::fopen(path.c_str(), "ab");
  } else {
    file_ = std::fopen(path.c_str(), "wb");
  }
  if (!file_) fail("cannot open {}: {}", path.string(), std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  if (file_) std::fclose(file_);
}

void MetricsLog::append(int64_t step, const nlohmann::ordered_json& fields) {
  const std::string line = format_line(step, fields) + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
    fail("cannot write {}: {}", path_.string(), std::strerror(errno));
}

}  // namespace dsk::train
