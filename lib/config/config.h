// Config: YAML file + `dotted.key=value` overrides, validated against a Schema, resolved once.
//
// A Schema declares every key a stage accepts: dotted name, type, default, help text, and
// (for component keys such as `optim.momentum`) which selector value they belong to. Loading
// collects *all* problems (syntax, unknown keys with a did-you-mean, wrong types, missing
// required keys, undefined ${VAR}s) with `file:line` and throws one dsk::Error (exit 2) that
// lists them, one per line. The result is an immutable Config with typed getters; the same
// Schema renders `--help`, `dsk validate` and docs/config-reference.md.
//
// Overrides:  key=value   sets (value parsed as YAML: 3e-4, true, [a, b], "text")
//             ~key        deletes (the key falls back to its default)
// Strings may reference the environment: ${VAR} or ${VAR:-default}.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dsk::config {

enum class Type {
  Bool,
  Int,
  Float,
  String,
  Path,        // a string naming a file or directory
  Enum,        // a string from `choices`
  StringList,  // [a, b] or "a,b"
  FloatList,   // [0.9, 0.999]
};
const char* type_name(Type t);

struct KeySpec {
  std::string key;            // dotted, e.g. "optim.lr"
  Type type = Type::String;
  std::string default_value;  // YAML text; "~" = no value (optional key)
  std::string help;
  std::vector<std::string> choices;  // for Enum
  bool required = false;
  // Component keys: valid only when `when_key` has one of `when_values` (e.g. optim.name=sgd).
  std::string when_key;
  std::vector<std::string> when_values;
};

class Schema {
 public:
  Schema(std::string name, std::string summary) : name_(std::move(name)), summary_(std::move(summary)) {}

  Schema& add(KeySpec spec);
  Schema& add(std::string key, Type type, std::string default_value, std::string help);
  Schema& add_enum(std::string key, std::vector<std::string> choices, std::string default_value,
                   std::string help);
  Schema& add_required(std::string key, Type type, std::string help);

  const std::string& name() const { return name_; }
  const std::string& summary() const { return summary_; }
  const std::vector<KeySpec>& keys() const { return keys_; }
  const KeySpec* find(const std::string& key) const;
  // True when `prefix` names a section (some key starts with "prefix.").
  bool is_section(const std::string& prefix) const;

  // Markdown table of every key (for docs/config-reference.md) and plain text for --help.
  std::string markdown() const;
  std::string help_text() const;

 private:
  std::string name_, summary_;
  std::vector<KeySpec> keys_;
};

struct Location {
  std::string file;  // "" for defaults, "command line" for overrides
  int line = 0;      // 1-based; 0 = unknown
  std::string str() const;
};

class Config {
 public:
  struct Value {
    Type type = Type::String;
    bool present = false;           // false: no value (optional key left unset)
    std::string scalar;             // Bool/Int/Float/String/Path/Enum, canonical text
    std::vector<std::string> list;  // StringList/FloatList
    bool explicit_set = false;      // from the file or an override, not a default
    bool applies = true;            // false: a component key whose when_key selects another component
    Location where;
  };

  bool has(const std::string& key) const;  // key has a value
  // The stage's schema declares key (code shared by stages asks before reading optional sections).
  bool declares(const std::string& key) const { return values_.count(key) > 0; }
  bool is_set(const std::string& key) const;  // the user set it (file or override)
  bool get_bool(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;
  std::vector<std::string> get_list(const std::string& key) const;
  std::vector<double> get_floats(const std::string& key) const;
  Location where(const std::string& key) const;
  // All keys under "section." with a value: {"lr": "0.0003", ...} as canonical text.
  std::map<std::string, std::string> section(const std::string& prefix) const;

  // Resolved config as nested YAML (every key that applies, defaults included, schema order):
  // loading it again with the same schema gives the same config.
  std::string to_yaml() const;
  // Short hex digest of to_yaml(), recorded in artifacts' metadata.
  std::string hash() const;
  const std::string& schema_name() const { return schema_name_; }
  const std::string& source_file() const { return source_file_; }

 private:
  friend Config load_config(const Schema&, const std::string&, const std::vector<std::string>&);
  friend Config load_config_text(const Schema&, const std::string&, const std::string&,
                                 const std::vector<std::string>&);
  const Value& value(const std::string& key) const;

  std::string schema_name_;
  std::string source_file_;
  std::vector<std::string> order_;
  std::map<std::string, Value> values_;
};

// Reads `path`, applies overrides, validates. Throws dsk::Error (usage) listing every problem.
Config load_config(const Schema& schema, const std::string& path,
                   const std::vector<std::string>& overrides);
// The same from YAML text (`name` is used in locations).
Config load_config_text(const Schema& schema, const std::string& yaml_text, const std::string& name,
                        const std::vector<std::string>& overrides);

// Closest candidate by edit distance, "" when none is close enough.
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace dsk::config
