#include "dist/env.h"

#include <cerrno>
#include <cstdlib>

#include "core/error.h"

namespace dsk::dist {
namespace {

int parse_int(const char* name, const char* value, long lo, long hi) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(value, &end, 10);
  if (!*value || *end || errno || v < lo || v > hi)
    fail_usage_hint(fmt::format("environment variable {}='{}' is not an integer in [{}, {}]", name, value, lo, hi),
                    fmt::format("fix or unset {}", name));
  return static_cast<int>(v);
}

// Splits at commas outside brackets.
std::vector<std::string> split_top(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  int depth = 0;
  for (char c : s) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (depth < 0) break;
    if (c == ',' && depth == 0) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (depth != 0) fail_usage("malformed Slurm node list '{}': unbalanced brackets", s);
  out.push_back(cur);
  return out;
}

void expand_into(const std::string& item, const std::string& whole, std::vector<std::string>& out) {
  auto open = item.find('[');
  if (open == std::string::npos) {
    if (item.empty() || item.find(']') != std::string::npos)
      fail_usage("malformed Slurm node list '{}'", whole);
    out.push_back(item);
    return;
  }
  auto close = item.find(']', open);
  const std::string prefix = item.substr(0, open), ranges = item.substr(open + 1, close - open - 1),
                    rest = item.substr(close + 1);
  if (ranges.empty()) fail_usage("malformed Slurm node list '{}': empty brackets", whole);
  size_t start = 0;
  while (start <= ranges.size()) {
    size_t comma = ranges.find(',', start);
    std::string r = ranges.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    auto dash = r.find('-');
    std::string a = r.substr(0, dash), b = dash == std::string::npos ? a : r.substr(dash + 1);
    auto digits = [](const std::string& t) {
      return !t.empty() && t.size() <= 9 && t.find_first_not_of("0123456789") == std::string::npos;
    };
    if (!digits(a) || !digits(b)) fail_usage("malformed Slurm node list '{}': bad range '{}'", whole, r);
    long lo = std::stol(a), hi = std::stol(b);
    if (hi < lo) fail_usage("malformed Slurm node list '{}': range '{}' runs backwards", whole, r);
    if (hi - lo > 100000) fail_usage("malformed Slurm node list '{}': range '{}' is too long", whole, r);
    for (long v = lo; v <= hi; ++v) {
      std::string num = std::to_string(v);
      if (num.size() < a.size()) num.insert(0, a.size() - num.size(), '0');
      expand_into(prefix + num + rest, whole, out);
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
}

}  // namespace

std::vector<std::string> expand_nodelist(const std::string& list) {
  std::vector<std::string> out;
  for (const auto& item : split_top(list)) expand_into(item, list, out);
  return out;
}

DistEnv detect_env(const GetEnv& getenv_fn) {
  GetEnv get = getenv_fn ? getenv_fn : GetEnv([](const char* n) { return std::getenv(n); });
  auto has = [&](const char* n) { const char* v = get(n); return v && *v; };
  DistEnv e;
  if (has("RANK") && has("WORLD_SIZE")) {
    e.source = "torchrun";
    e.world_size = parse_int("WORLD_SIZE", get("WORLD_SIZE"), 1, 1 << 20);
    e.rank = parse_int("RANK", get("RANK"), 0, e.world_size - 1);
    e.local_rank = has("LOCAL_RANK") ? parse_int("LOCAL_RANK", get("LOCAL_RANK"), 0, e.world_size - 1) : e.rank;
    e.local_world_size = has("LOCAL_WORLD_SIZE")
                             ? parse_int("LOCAL_WORLD_SIZE", get("LOCAL_WORLD_SIZE"), 1, e.world_size)
                             : e.world_size;
  } else if (has("SLURM_PROCID") && (has("SLURM_STEP_NUM_TASKS") || has("SLURM_NTASKS"))) {
    e.source = "slurm";
    const char* n = has("SLURM_STEP_NUM_TASKS") ? "SLURM_STEP_NUM_TASKS" : "SLURM_NTASKS";
    e.world_size = parse_int(n, get(n), 1, 1 << 20);
    e.rank = parse_int("SLURM_PROCID", get("SLURM_PROCID"), 0, e.world_size - 1);
    e.local_rank = has("SLURM_LOCALID") ? parse_int("SLURM_LOCALID", get("SLURM_LOCALID"), 0, e.world_size - 1) : 0;
    const char* nodes = has("SLURM_STEP_NODELIST") ? "SLURM_STEP_NODELIST"
                        : has("SLURM_JOB_NODELIST") ? "SLURM_JOB_NODELIST"
                                                    : nullptr;
    if (nodes) e.master_addr = expand_nodelist(get(nodes)).front();
    if (has("SLURM_JOB_ID")) e.master_port = 20000 + parse_int("SLURM_JOB_ID", get("SLURM_JOB_ID"), 0, 2147483647) % 20000;
    if (has("SLURM_STEP_NUM_NODES") && e.world_size > 0) {
      int nodes_n = parse_int("SLURM_STEP_NUM_NODES", get("SLURM_STEP_NUM_NODES"), 1, 1 << 20);
      e.local_world_size = (e.world_size + nodes_n - 1) / nodes_n;
    } else {
      e.local_world_size = e.world_size;
    }
  } else {
    return e;
  }
  if (has("MASTER_ADDR")) e.master_addr = get("MASTER_ADDR");
  if (has("MASTER_PORT")) e.master_port = parse_int("MASTER_PORT", get("MASTER_PORT"), 1, 65535);
  return e;
}

}  // namespace dsk::dist
