#include "core/fs.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace dsk::fs {

std::string read_file(const stdfs::path& path, std::string_view what) {
  require_file(path, what);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {} '{}': {}", what, path.string(), std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void require_file(const stdfs::path& path, std::string_view what) {
  std::error_code ec;
  if (!stdfs::exists(path, ec)) {
    fail_usage_hint(fmt::format("{} '{}' does not exist", what, path.string()),
                    "check the path (relative paths are resolved from the current directory)");
  }
  if (!stdfs::is_regular_file(path, ec)) {
    fail_usage_hint(fmt::format("{} '{}' is not a regular file", what, path.string()),
                    "point it at a file, not a directory");
  }
}

void fsync_path(const stdfs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open '{}' for fsync: {}", path.string(), std::strerror(errno));
  ::fsync(fd);
  ::close(fd);
}

void write_file_atomic(const stdfs::path& path, std::string_view bytes) {
  stdfs::path tmp = path;
  tmp += ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create '{}': {}", tmp.string(), std::strerror(errno));
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail("writing '{}': {}", path.string(), std::strerror(err));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail("flushing '{}': {}", path.string(), std::strerror(errno));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    fail("renaming onto '{}': {}", path.string(), std::strerror(err));
  }
  stdfs::path parent = path.has_parent_path() ? path.parent_path() : stdfs::path(".");
  fsync_path(parent);
}

StagingDir::StagingDir(stdfs::path final_path) : final_(std::move(final_path)) {
  tmp_ = final_;
  tmp_ += ".tmp-" + std::to_string(::getpid());
  std::error_code ec;
  stdfs::remove_all(tmp_, ec);
  stdfs::create_directories(tmp_, ec);
  if (ec) fail("cannot create directory '{}': {}", tmp_.string(), ec.message());
}

StagingDir::~StagingDir() {
  if (!committed_) {
    std::error_code ec;
    stdfs::remove_all(tmp_, ec);
  }
}

void StagingDir::commit() {
  for (const auto& entry : stdfs::recursive_directory_iterator(tmp_)) {
    if (entry.is_regular_file()) fsync_path(entry.path());
  }
  fsync_path(tmp_);
  std::error_code ec;
  if (stdfs::exists(final_, ec)) {
    // Move the old one aside first so the final name is never absent with nothing to replace it.
    stdfs::path old = final_;
    old += ".old-" + std::to_string(::getpid());
    stdfs::rename(final_, old, ec);
    if (ec) fail("cannot replace '{}': {}", final_.string(), ec.message());
    stdfs::rename(tmp_, final_, ec);
    if (ec) fail("cannot rename '{}' to '{}': {}", tmp_.string(), final_.string(), ec.message());
    stdfs::remove_all(old, ec);
  } else {
    stdfs::rename(tmp_, final_, ec);
    if (ec) fail("cannot rename '{}' to '{}': {}", tmp_.string(), final_.string(), ec.message());
  }
  fsync_path(final_.has_parent_path() ? final_.parent_path() : stdfs::path("."));
  committed_ = true;
}

}  // namespace dsk::fs
