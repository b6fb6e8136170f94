// The output file checks shared by the export formats (export/output.h).
#include "export/output.h"

#include "core/error.h"

namespace dsk::export_out {

void check_output_file(const std::filesystem::path& path, bool overwrite) {
  namespace stdfs = std::filesystem;
  if (stdfs::exists(path) && !overwrite)
    fail_usage_hint(fmt::format("output '{}' already exists", path.string()),
                    "choose another output path, remove it, or set export.overwrite=true");
  if (stdfs::is_directory(path)) fail_usage(fmt::format("output '{}' is a directory, not a file path", path.string()));
  const stdfs::path dir = path.has_parent_path() ? path.parent_path() : stdfs::path(".");
  if (!stdfs::is_directory(dir))
    fail_usage_hint(fmt::format("the directory of output '{}' does not exist", path.string()),
                    fmt::format("create {} first", dir.string()));
}

}  // namespace dsk::export_out
