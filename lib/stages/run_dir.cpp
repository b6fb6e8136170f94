#include "stages/run_dir.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <regex>
#include <vector>

#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"

namespace dsk::stages {

void prepare_output_dir(const stdfs::path& dir, const std::string& resume) {
  std::error_code ec;
  if (stdfs::exists(dir, ec)) {
    if (!stdfs::is_directory(dir, ec))
      fail_usage_hint(fmt::format("output_dir '{}' exists and is not a directory", dir.string()),
                      "choose another output_dir");
    bool empty = stdfs::directory_iterator(dir, ec) == stdfs::directory_iterator();
    if (!empty && (resume == "false" || resume.empty())) {
      fail_usage_hint(fmt::format("output_dir '{}' already holds a run's results", dir.string()),
                      "pass resume=auto to continue it, or choose a new output_dir");
    }
  }
  stdfs::create_directories(dir, ec);
  if (ec) fail_usage_hint(fmt::format("cannot create output_dir '{}': {}", dir.string(), ec.message()),
                          "choose a writable output_dir");
}

void save_resolved_config(const stdfs::path& dir, const config::Config& cfg) {
  std::string text = "# Resolved config of this run (dsk " DSK_VERSION ", config hash " + cfg.hash() + ")\n" +
                     "# dsk " + cfg.schema_name() + " " + (dir / "config.yaml").string() + "\n" + cfg.to_yaml();
  fs::write_file_atomic(dir / "config.yaml", text);
}

struct Checkpoints::Staging {
  explicit Staging(stdfs::path p) : dir(std::move(p)) {}
  fs::StagingDir dir;
};

Checkpoints::Checkpoints(stdfs::path output_dir, int keep_last)
    : root_(std::move(output_dir) / "checkpoints"), keep_last_(keep_last) {}

namespace {

// Complete checkpoints, oldest first: step-<N> directories with a state.json.
std::vector<std::pair<int64_t, stdfs::path>> list_complete(const stdfs::path& root) {
  std::vector<std::pair<int64_t, stdfs::path>> out;
  std::error_code ec;
  if (!stdfs::is_directory(root, ec)) return out;
  static const std::regex name("step-([0-9]+)");
  for (const auto& e : stdfs::directory_iterator(root, ec)) {
    std::smatch m;
    std::string fname = e.path().filename().string();
    if (!std::regex_match(fname, m, name)) continue;
    if (!stdfs::exists(e.path() / "state.json", ec)) continue;
    out.emplace_back(std::stoll(m[1].str()), e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

std::optional<stdfs::path> Checkpoints::newest() const {
  auto all = list_complete(root_);
  if (all.empty()) return std::nullopt;
  return all.back().second;
}

std::optional<stdfs::path> Checkpoints::resolve(const std::string& resume) const {
  if (resume == "false" || resume.empty()) return std::nullopt;
  if (resume == "auto") return newest();
  stdfs::path p(resume);
  std::error_code ec;
  if (!stdfs::exists(p / "state.json", ec))
    fail_usage_hint(fmt::format("resume: '{}' is not a complete checkpoint (no state.json)", resume),
                    "pass resume=auto or a checkpoints/step-N directory");
  return p;
}

void Checkpoints::begin(int64_t step) {
  std::error_code ec;
  stdfs::create_directories(root_, ec);
  staging_ = std::make_shared<Staging>(root_ / fmt::format("step-{}", step));
}

const stdfs::path& Checkpoints::staging_path() const { return staging_->dir.path(); }

stdfs::path Checkpoints::finish(int64_t step, const nlohmann::json& state) {
  {
    std::string text = state.dump(2);
    std::ofstream(staging_path() / "state.json") << text;
  }
  staging_->dir.commit();
  staging_.reset();
  auto all = list_complete(root_);
  if (keep_last_ > 0) {
    for (size_t i = 0; i + static_cast<size_t>(keep_last_) < all.size(); ++i) {
      std::error_code ec;
      stdfs::remove_all(all[i].second, ec);
    }
  }
  // Leftovers of a killed writer (step-N.tmp-PID) are never complete; clean them up.
  std::error_code ec;
  for (const auto& e : stdfs::directory_iterator(root_, ec)) {
    if (e.path().filename().string().find(".tmp-") != std::string::npos &&
        e.path().filename().string().find(".tmp-" + std::to_string(::getpid())) == std::string::npos)
      stdfs::remove_all(e.path(), ec);
  }
  return root_ / fmt::format("step-{}", step);
}

nlohmann::json read_checkpoint_state(const stdfs::path& ckpt_dir) {
  std::string text = fs::read_file(ckpt_dir / "state.json", "checkpoint state");
  try {
    return nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    fail("checkpoint '{}': state.json is corrupt: {}", ckpt_dir.string(), e.what());
  }
}

}  // namespace dsk::stages
