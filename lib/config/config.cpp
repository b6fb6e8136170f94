// Config loading: YAML -> flat dotted keys -> overrides -> env substitution -> typed values.
#include "config/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"

namespace dsk::config {

const char* type_name(Type t) {
  switch (t) {
    case Type::Bool: return "bool";
    case Type::Int: return "int";
    case Type::Float: return "float";
    case Type::String: return "string";
    case Type::Path: return "path";
    case Type::Enum: return "enum";
    case Type::StringList: return "list of strings";
    case Type::FloatList: return "list of floats";
  }
  return "?";
}

// ---------------------------------------------------------------------------
// Schema

Schema& Schema::add(KeySpec spec) {
  if (find(spec.key)) fail("internal: schema '{}' declares key '{}' twice", name_, spec.key);
  keys_.push_back(std::move(spec));
  return *this;
}

Schema& Schema::add(std::string key, Type type, std::string default_value, std::string help) {
  KeySpec s;
  s.key = std::move(key);
  s.type = type;
  s.default_value = std::move(default_value);
  s.help = std::move(help);
  return add(std::move(s));
}

Schema& Schema::add_enum(std::string key, std::vector<std::string> choices, std::string default_value,
                         std::string help) {
  KeySpec s;
  s.key = std::move(key);
  s.type = Type::Enum;
  s.choices = std::move(choices);
  s.default_value = std::move(default_value);
  s.help = std::move(help);
  return add(std::move(s));
}

Schema& Schema::add_required(std::string key, Type type, std::string help) {
  KeySpec s;
  s.key = std::move(key);
  s.type = type;
  s.default_value = "~";
  s.required = true;
  s.help = std::move(help);
  return add(std::move(s));
}

const KeySpec* Schema::find(const std::string& key) const {
  for (const auto& k : keys_)
    if (k.key == key) return &k;
  return nullptr;
}

bool Schema::is_section(const std::string& prefix) const {
  std::string p = prefix + ".";
  for (const auto& k : keys_)
    if (k.key.compare(0, p.size(), p) == 0) return true;
  return false;
}

namespace {

std::string type_label(const KeySpec& k) {
  if (k.type == Type::Enum) {
    std::string s;
    for (size_t i = 0; i < k.choices.size(); ++i) s += (i ? "|" : "") + k.choices[i];
    return s;
  }
  return type_name(k.type);
}

std::string default_label(const KeySpec& k) {
  if (k.required) return "required";
  if (k.default_value == "~" || k.default_value.empty()) return "unset";
  return k.default_value;
}

std::string when_label(const KeySpec& k) {
  if (k.when_key.empty()) return "";
  std::string s = " (only when " + k.when_key + " is ";
  for (size_t i = 0; i < k.when_values.size(); ++i) s += (i ? " or " : "") + k.when_values[i];
  return s + ")";
}

}  // namespace

std::string Schema::markdown() const {
  std::ostringstream out;
  out << "## `dsk " << name_ << "`\n\n" << summary_ << "\n\n";
  out << "| key | type | default | description |\n|---|---|---|---|\n";
  for (const auto& k : keys_) {
    std::string help = k.help + when_label(k);
    std::string def = default_label(k);
    std::replace(help.begin(), help.end(), '|', '/');
    out << "| `" << k.key << "` | " << type_label(k) << " | `" << (def.empty() ? " " : def) << "` | " << help
        << " |\n";
  }
  return out.str();
}

std::string Schema::help_text() const {
  std::ostringstream out;
  size_t width = 0;
  for (const auto& k : keys_) width = std::max(width, k.key.size());
  for (const auto& k : keys_) {
    out << "  " << k.key << std::string(width + 2 - k.key.size(), ' ') << k.help << when_label(k) << " ["
        << type_label(k) << ", " << default_label(k) << "]\n";
  }
  return out.str();
}

std::string Location::str() const {
  if (file.empty()) return "default";
  if (line <= 0) return file;
  return file + ":" + std::to_string(line);
}

// ---------------------------------------------------------------------------
// did-you-mean

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::string::npos;
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  size_t limit = std::max<size_t>(2, word.size() / 3);
  return best_d <= limit ? best : "";
}

// ---------------------------------------------------------------------------
// Loading

namespace {

struct Entry {
  YAML::Node node;
  Location where;
};

struct Loader {
  const Schema& schema;
  std::string file;
  std::vector<std::string> errors;
  std::map<std::string, Entry> flat;

  void error(const Location& at, const std::string& msg) { errors.push_back(at.str() + ": " + msg); }

  Location at(const YAML::Node& n) const {
    YAML::Mark m = n.Mark();
    return Location{file, m.is_null() ? 0 : m.line + 1};
  }

  std::vector<std::string> known_names() const {
    std::vector<std::string> names;
    std::set<std::string> seen;
    for (const auto& k : schema.keys()) {
      names.push_back(k.key);
      for (size_t p = k.key.find('.'); p != std::string::npos; p = k.key.find('.', p + 1)) {
        std::string section = k.key.substr(0, p);
        if (seen.insert(section).second) names.push_back(section);
      }
    }
    return names;
  }

  std::string suggestion(const std::string& key) const {
    std::string s = did_you_mean(key, known_names());
    return s.empty() ? "" : "; did you mean '" + s + "'?";
  }

  void unknown(const Location& where, const std::string& key) {
    error(where, "unknown key '" + key + "'" + suggestion(key));
  }

  void flatten(const YAML::Node& map, const std::string& prefix, const Location& fallback) {
    for (auto it = map.begin(); it != map.end(); ++it) {
      std::string k = it->first.Scalar();
      std::string full = prefix.empty() ? k : prefix + "." + k;
      Location where = file == "command line" ? fallback : at(it->first);
      if (schema.find(full)) {
        flat[full] = Entry{it->second, where};
      } else if (schema.is_section(full)) {
        if (it->second.IsMap()) {
          flatten(it->second, full, fallback);
        } else if (!it->second.IsNull()) {
          error(where, "'" + full + "' is a section: expected a mapping of keys under it");
        }
      } else {
        unknown(where, full);
      }
    }
  }

  void apply_override(const std::string& arg) {
    Location cl{"command line", 0};
    if (!arg.empty() && arg[0] == '~') {
      std::string key = arg.substr(1);
      if (!schema.find(key) && !schema.is_section(key)) {
        unknown(cl, key);
        return;
      }
      for (auto it = flat.begin(); it != flat.end();) {
        if (it->first == key || it->first.compare(0, key.size() + 1, key + ".") == 0)
          it = flat.erase(it);
        else
          ++it;
      }
      return;
    }
    size_t eq = arg.find('=');
    if (eq == std::string::npos || eq == 0) {
      error(cl, "override '" + arg + "' is not key=value (write e.g. optim.lr=3e-4, or ~key to delete)");
      return;
    }
    std::string key = arg.substr(0, eq);
    std::string text = arg.substr(eq + 1);
    YAML::Node value;
    try {
      value = YAML::Load(text);
    } catch (const YAML::Exception&) {
      value = YAML::Node(text);  // not YAML: take it as a plain string
    }
    if (text.empty()) value = YAML::Node(std::string());
    if (schema.find(key)) {
      flat[key] = Entry{value, cl};
    } else if (schema.is_section(key) && value.IsMap()) {
      std::string saved = file;
      file = "command line";
      flatten(value, key, cl);
      file = saved;
    } else {
      unknown(cl, key);
    }
  }
};

// ${VAR} and ${VAR:-default} substitution. Returns false (and sets `bad`) on an undefined VAR.
bool substitute_env(const std::string& in, std::string& out, std::string& bad) {
  out.clear();
  for (size_t i = 0; i < in.size();) {
    if (in[i] == '$' && i + 1 < in.size() && in[i + 1] == '{') {
      size_t close = in.find('}', i + 2);
      if (close == std::string::npos) {
        out += in.substr(i);
        break;
      }
      std::string body = in.substr(i + 2, close - i - 2);
      std::string name = body, def;
      bool has_def = false;
      size_t colon = body.find(":-");
      if (colon != std::string::npos) {
        name = body.substr(0, colon);
        def = body.substr(colon + 2);
        has_def = true;
      }
      const char* v = std::getenv(name.c_str());
      if (v && *v) {
        out += v;
      } else if (has_def) {
        out += def;
      } else {
        bad = name;
        return false;
      }
      i = close + 1;
    } else {
      out += in[i++];
    }
  }
  return true;
}

bool parse_int(const std::string& s, int64_t& v) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  long long x = std::strtoll(s.c_str(), &end, 10);
  if (errno || *end) return false;
  v = x;
  return true;
}

bool parse_float(const std::string& s, double& v) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  double x = std::strtod(s.c_str(), &end);
  if (errno == ERANGE || *end) return false;
  v = x;
  return true;
}

bool parse_bool(const std::string& s, bool& v) {
  static const std::set<std::string> yes{"true", "True", "TRUE", "yes", "on"};
  static const std::set<std::string> no{"false", "False", "FALSE", "no", "off"};
  if (yes.count(s)) {
    v = true;
    return true;
  }
  if (no.count(s)) {
    v = false;
    return true;
  }
  return false;
}

std::string canonical_float(double d) { return fmt::format("{}", d); }

std::string describe(const YAML::Node& n) {
  if (n.IsMap()) return "a mapping";
  if (n.IsSequence()) return "a list";
  return "'" + n.Scalar() + "'";
}

// Converts one node to a typed Value; returns "" or an error message.
std::string convert(const KeySpec& spec, const YAML::Node& node, Config::Value& out) {
  out.type = spec.type;
  out.present = false;
  if (!node || node.IsNull()) return "";
  auto scalar_of = [&](const YAML::Node& n, std::string& s) -> std::string {
    if (!n.IsScalar()) return "expected " + std::string(type_name(spec.type)) + ", got " + describe(n);
    std::string bad;
    if (!substitute_env(n.Scalar(), s, bad))
      return "environment variable '" + bad + "' is not set (set it, or write ${" + bad + ":-default})";
    return "";
  };
  std::string s;
  switch (spec.type) {
    case Type::StringList:
    case Type::FloatList: {
      std::vector<std::string> items;
      if (node.IsSequence()) {
        for (const auto& item : node) {
          std::string v;
          std::string err = scalar_of(item, v);
          if (!err.empty()) return "expected a list of scalars, got an element that is " + describe(item);
          items.push_back(v);
        }
      } else {
        std::string err = scalar_of(node, s);
        if (!err.empty()) return err;
        // "[a, *b]" that YAML could not parse (a '*' alias, say) arrives as a plain string.
        if (s.size() >= 2 && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
        std::stringstream ss(s);
        std::string part;
        while (std::getline(ss, part, ',')) {
          part.erase(0, part.find_first_not_of(" \t"));
          part.erase(part.find_last_not_of(" \t") + 1);
          if (!part.empty()) items.push_back(part);
        }
      }
      if (spec.type == Type::FloatList) {
        for (auto& item : items) {
          double d;
          if (!parse_float(item, d)) return "expected a list of floats, got element '" + item + "'";
          item = canonical_float(d);
        }
      }
      out.list = std::move(items);
      out.present = true;
      return "";
    }
    default: break;
  }
  std::string err = scalar_of(node, s);
  if (!err.empty()) return err;
  switch (spec.type) {
    case Type::Bool: {
      bool b;
      if (!parse_bool(s, b)) return "expected bool (true/false), got '" + s + "'";
      out.scalar = b ? "true" : "false";
      break;
    }
    case Type::Int: {
      int64_t v;
      if (!parse_int(s, v)) return "expected int, got '" + s + "'";
      out.scalar = std::to_string(v);
      break;
    }
    case Type::Float: {
      double d;
      if (!parse_float(s, d)) return "expected float, got '" + s + "'";
      out.scalar = canonical_float(d);
      break;
    }
    case Type::Enum: {
      if (std::find(spec.choices.begin(), spec.choices.end(), s) == spec.choices.end()) {
        std::string choices;
        for (size_t i = 0; i < spec.choices.size(); ++i) choices += (i ? ", " : "") + spec.choices[i];
        std::string dym = did_you_mean(s, spec.choices);
        return "'" + s + "' is not one of " + choices + (dym.empty() ? "" : "; did you mean '" + dym + "'?");
      }
      out.scalar = s;
      break;
    }
    default: out.scalar = s; break;
  }
  out.present = true;
  return "";
}

struct Resolved {
  std::vector<std::string> order;
  std::map<std::string, Config::Value> values;
};

// Flattens, applies overrides, converts every key; throws one usage Error listing all problems.
Resolved resolve(const Schema& schema, const std::string& file, const YAML::Node& root,
                 const std::vector<std::string>& overrides) {
  Loader ld{schema, file, {}, {}};
  if (root && !root.IsNull()) {
    if (!root.IsMap()) {
      ld.error(ld.at(root), "the config must be a YAML mapping of keys, got " + describe(root));
    } else {
      ld.flatten(root, "", Location{file, 0});
    }
  }
  for (const auto& o : overrides) ld.apply_override(o);

  Resolved r;
  for (const auto& spec : schema.keys()) {
    Config::Value v;
    auto it = ld.flat.find(spec.key);
    if (it != ld.flat.end()) {
      std::string err = convert(spec, it->second.node, v);
      if (!err.empty()) ld.error(it->second.where, spec.key + ": " + err);
      v.explicit_set = true;
      v.where = it->second.where;
    } else {
      YAML::Node def = YAML::Load(spec.default_value.empty() ? "~" : spec.default_value);
      std::string err = convert(spec, def, v);
      if (!err.empty()) ld.error(Location{}, spec.key + ": bad default: " + err);
    }
    if (spec.required && !v.present) {
      ld.error(Location{file, 0}, "missing required key '" + spec.key + "' (" + spec.help + ")");
    }
    r.order.push_back(spec.key);
    r.values[spec.key] = std::move(v);
  }
  for (const auto& spec : schema.keys()) {
    if (spec.when_key.empty()) continue;
    auto& v = r.values[spec.key];
    const auto& sel = r.values[spec.when_key];
    v.applies = std::find(spec.when_values.begin(), spec.when_values.end(), sel.scalar) != spec.when_values.end();
    if (!v.explicit_set) continue;
    if (!v.applies) {
      std::string valid;
      for (size_t i = 0; i < spec.when_values.size(); ++i) valid += (i ? " or " : "") + spec.when_values[i];
      ld.error(v.where, "'" + spec.key + "' applies only when " + spec.when_key + " is " + valid + " (it is " +
                            (sel.scalar.empty() ? "unset" : sel.scalar) + ")");
    }
  }
  if (!ld.errors.empty()) {
    std::string msg;
    for (size_t i = 0; i < ld.errors.size(); ++i) msg += (i ? "\n" : "") + ld.errors[i];
    throw Error(Error::Kind::Usage, msg);
  }
  return r;
}

}  // namespace

Config load_config_text(const Schema& schema, const std::string& yaml_text, const std::string& name,
                        const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    std::string msg = e.msg;
    throw Error(Error::Kind::Usage,
                fmt::format("{}:{}:{}: invalid YAML: {}", name, e.mark.line + 1, e.mark.column + 1, msg),
                "check indentation, the ':' after each key, and closing brackets and quotes up to that line");
  }
  Resolved r = resolve(schema, name, root, overrides);
  Config cfg;
  cfg.schema_name_ = schema.name();
  cfg.source_file_ = name;
  cfg.order_ = std::move(r.order);
  cfg.values_ = std::move(r.values);
  return cfg;
}

Config load_config(const Schema& schema, const std::string& path, const std::vector<std::string>& overrides) {
  std::string text = fs::read_file(path, "config file");
  return load_config_text(schema, text, path, overrides);
}

// ---------------------------------------------------------------------------
// Config accessors

const Config::Value& Config::value(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) fail("internal: config key '{}' is not in schema '{}'", key, schema_name_);
  return it->second;
}

bool Config::has(const std::string& key) const { return value(key).present; }
bool Config::is_set(const std::string& key) const { return value(key).explicit_set; }
Location Config::where(const std::string& key) const { return value(key).where; }

namespace {
[[noreturn]] void missing(const std::string& key) {
  fail_usage_hint(fmt::format("config key '{}' has no value", key), "set " + key + " in the config or as " + key + "=...");
}
}  // namespace

bool Config::get_bool(const std::string& key) const {
  const auto& v = value(key);
  if (!v.present) missing(key);
  return v.scalar == "true";
}

int64_t Config::get_int(const std::string& key) const {
  const auto& v = value(key);
  if (!v.present) missing(key);
  int64_t x = 0;
  parse_int(v.scalar, x);
  return x;
}

double Config::get_float(const std::string& key) const {
  const auto& v = value(key);
  if (!v.present) missing(key);
  double x = 0;
  parse_float(v.scalar, x);
  return x;
}

const std::string& Config::get_string(const std::string& key) const {
  static const std::string empty;
  const auto& v = value(key);
  return v.present ? v.scalar : empty;
}

std::vector<std::string> Config::get_list(const std::string& key) const {
  const auto& v = value(key);
  return v.present ? v.list : std::vector<std::string>{};
}

std::vector<double> Config::get_floats(const std::string& key) const {
  std::vector<double> out;
  for (const auto& s : get_list(key)) {
    double d = 0;
    parse_float(s, d);
    out.push_back(d);
  }
  return out;
}

std::map<std::string, std::string> Config::section(const std::string& prefix) const {
  std::map<std::string, std::string> out;
  std::string p = prefix + ".";
  for (const auto& key : order_) {
    if (key.compare(0, p.size(), p) != 0) continue;
    const auto& v = values_.at(key);
    if (!v.present) continue;
    if (v.type == Type::StringList || v.type == Type::FloatList) {
      std::string joined;
      for (size_t i = 0; i < v.list.size(); ++i) joined += (i ? "," : "") + v.list[i];
      out[key.substr(p.size())] = joined;
    } else {
      out[key.substr(p.size())] = v.scalar;
    }
  }
  return out;
}

std::string Config::to_yaml() const {
  YAML::Emitter em;
  em << YAML::BeginMap;
  // Emit in schema order, opening and closing nested maps as the dotted prefixes change.
  std::vector<std::string> open;
  auto split = [](const std::string& k) {
    std::vector<std::string> parts;
    std::stringstream ss(k);
    std::string p;
    while (std::getline(ss, p, '.')) parts.push_back(p);
    return parts;
  };
  // Group keys by section so each section is emitted once even if the schema interleaves.
  std::vector<std::string> keys;
  for (const auto& k : order_)
    if (values_.at(k).applies) keys.push_back(k);
  std::stable_sort(keys.begin(), keys.end(), [&](const std::string& a, const std::string& b) {
    auto first = [&](const std::string& k) {
      std::string top = split(k)[0];
      for (size_t i = 0; i < order_.size(); ++i)
        if (split(order_[i])[0] == top) return i;
      return order_.size();
    };
    return first(a) < first(b);
  });
  for (const auto& key : keys) {
    auto parts = split(key);
    size_t common = 0;
    while (common < open.size() && common + 1 < parts.size() && open[common] == parts[common]) ++common;
    while (open.size() > common) {
      em << YAML::EndMap;
      open.pop_back();
    }
    for (size_t i = common; i + 1 < parts.size(); ++i) {
      em << YAML::Key << parts[i] << YAML::Value << YAML::BeginMap;
      open.push_back(parts[i]);
    }
    const auto& v = values_.at(key);
    em << YAML::Key << parts.back() << YAML::Value;
    if (!v.present) {
      em << YAML::Null;
    } else if (v.type == Type::StringList || v.type == Type::FloatList) {
      em << YAML::Flow << YAML::BeginSeq;
      for (const auto& item : v.list) {
        em << item;
      }
      em << YAML::EndSeq;
    } else if (v.type == Type::String || v.type == Type::Path) {
      em << YAML::DoubleQuoted << v.scalar;
    } else {
      em << v.scalar;
    }
  }
  while (!open.empty()) {
    em << YAML::EndMap;
    open.pop_back();
  }
  em << YAML::EndMap;
  return std::string(em.c_str()) + "\n";
}

std::string Config::hash() const {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : to_yaml()) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return fmt::format("{:016x}", h);
}

}  // namespace dsk::config
