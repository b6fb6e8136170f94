// The output file of an export format (GGUF, ONNX): the checks made before anything is written.
#pragma once

#include <filesystem>

namespace dsk::export_out {

// Usage error (exit 2) when `path` exists and !overwrite, is a directory, or its directory does
// not exist.
void check_output_file(const std::filesystem::path& path, bool overwrite);

}  // namespace dsk::export_out
