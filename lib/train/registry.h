// Components by name: the optimizer and schedule registries declare, for each component, its
// hyper-parameter keys with type, default and help. The config schema exposes them as
// `optim.<key>` / `schedule.<key>`, so these tables are the single source of truth.
//
// Hyper-parameters arrive as YAML scalar text ("3e-4", "true", "[0.9, 0.999]" or "0.9,0.999");
// a key the map lacks takes the declared default. Keys the chosen component does not declare
// are ignored: the config schema rejects unknown keys earlier, and Config::section() also
// carries the defaults of the other components' keys.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace dsk::train {

struct ParamSpec {
  std::string key;            // "betas"
  std::string type;           // "float" | "bool" | "int" | "float_pair"
  std::string default_value;  // YAML text: "0.9", "false", "[0.9, 0.999]"
  std::string help;
};

struct ComponentInfo {
  std::string name;         // "adamw"
  std::string description;  // one line
  std::vector<ParamSpec> params;
  const ParamSpec* find(const std::string& key) const;
};

using HParams = std::map<std::string, std::string>;

// The registry entry called `name`; usage error listing the valid names otherwise.
const ComponentInfo& find_component(const std::vector<ComponentInfo>& registry, const std::string& name,
                                    const std::string& what);

// Typed reads of one component's hyper-parameters. Errors are usage errors naming
// "<section>.<key>" and the offending text.
class HParamReader {
 public:
  HParamReader(const ComponentInfo& info, const HParams& values, std::string section);
  double get_float(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::pair<double, double> get_float_pair(const std::string& key) const;

 private:
  // The text for `key` (given or default); fails when the key is not declared as `type`.
  const std::string& text(const std::string& key, const char* type) const;

  const ComponentInfo& info_;
  const HParams& values_;
  std::string section_;
};

}  // namespace dsk::train
