// Crash-safe file system helpers: every artifact is written under a temporary name,
// fsynced, then renamed into place, so a reader sees the old file or the new one,
// never half of one.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace dsk::fs {

namespace stdfs = std::filesystem;

// Reads a whole file; usage error (exit 2) naming `what` when it is missing.
std::string read_file(const stdfs::path& path, std::string_view what = "file");
// Writes `bytes` to path atomically (path.tmp.<pid> + fsync + rename + fsync dir).
void write_file_atomic(const stdfs::path& path, std::string_view bytes);
void fsync_path(const stdfs::path& path);  // a file or a directory
// Usage error naming `what` unless `path` exists and is a regular file.
void require_file(const stdfs::path& path, std::string_view what);

// A directory built under "<final>.tmp-<pid>" and renamed onto <final> by commit().
// Destroyed without commit(), it removes the temporary directory.
class StagingDir {
 public:
  explicit StagingDir(stdfs::path final_path);
  ~StagingDir();
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;

  const stdfs::path& path() const { return tmp_; }  // write files here
  // fsyncs every file, renames tmp -> final (replacing an existing final dir), fsyncs parent.
  void commit();

 private:
  stdfs::path final_;
  stdfs::path tmp_;
  bool committed_ = false;
};

}  // namespace dsk::fs
