// Parsing of registry hyper-parameters from YAML scalar text.
#include "train/registry.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "core/error.h"

namespace dsk::train {
namespace {

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

bool parse_double(const std::string& raw, double& out) {
  std::string s = trim(raw);
  if (s.empty()) return false;
  if (s == ".inf" || s == "+.inf" || s == ".Inf") return out = HUGE_VAL, true;
  if (s == "-.inf" || s == "-.Inf") return out = -HUGE_VAL, true;
  errno = 0;
  char* end = nullptr;
  out = std::strtod(s.c_str(), &end);
  return errno == 0 && end == s.c_str() + s.size() && std::isfinite(out);
}

}  // namespace

const ParamSpec* ComponentInfo::find(const std::string& key) const {
  for (const auto& p : params)
    if (p.key == key) return &p;
  return nullptr;
}

const ComponentInfo& find_component(const std::vector<ComponentInfo>& registry, const std::string& name,
                                    const std::string& what) {
  std::string names;
  for (const auto& c : registry) {
    if (c.name == name) return c;
    names += (names.empty() ? "" : ", ") + c.name;
  }
  fail_usage("unknown {} '{}' (valid: {})", what, name, names);
}

HParamReader::HParamReader(const ComponentInfo& info, const HParams& values, std::string section)
    : info_(info), values_(values), section_(std::move(section)) {}

const std::string& HParamReader::text(const std::string& key, const char* type) const {
  const ParamSpec* spec = info_.find(key);
  DSK_CHECK(spec && spec->type == type, "internal: {} '{}' does not declare {} key '{}'", section_, info_.name,
            type, key);
  auto it = values_.find(key);
  return it == values_.end() ? spec->default_value : it->second;
}

double HParamReader::get_float(const std::string& key) const {
  const std::string& t = text(key, "float");
  double v = 0;
  if (!parse_double(t, v)) fail_usage("{}.{}: expected a float, got '{}'", section_, key, t);
  return v;
}

int64_t HParamReader::get_int(const std::string& key) const {
  const std::string& raw = text(key, "int");
  std::string t = trim(raw);
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(t.c_str(), &end, 10);
  if (t.empty() || errno != 0 || end != t.c_str() + t.size())
    fail_usage("{}.{}: expected an integer, got '{}'", section_, key, raw);
  return v;
}

bool HParamReader::get_bool(const std::string& key) const {
  const std::string& raw = text(key, "bool");
  std::string t = trim(raw);
  for (const char* s : {"true", "True", "TRUE", "yes", "Yes", "on", "On"})
    if (t == s) return true;
  for (const char* s : {"false", "False", "FALSE", "no", "No", "off", "Off"})
    if (t == s) return false;
  fail_usage("{}.{}: expected true or false, got '{}'", section_, key, raw);
}

std::pair<double, double> HParamReader::get_float_pair(const std::string& key) const {
  const std::string& raw = text(key, "float_pair");
  std::string t = trim(raw);
  if (t.size() >= 2 && t.front() == '[' && t.back() == ']') t = t.substr(1, t.size() - 2);
  size_t comma = t.find(',');
  double a = 0, b = 0;
  if (comma == std::string::npos || t.find(',', comma + 1) != std::string::npos ||
      !parse_double(t.substr(0, comma), a) || !parse_double(t.substr(comma + 1), b))
    fail_usage("{}.{}: expected two floats like [0.9, 0.999], got '{}'", section_, key, raw);
  return {a, b};
}

}  // namespace dsk::train
