// Helpers shared by the ckpt unit tests.
#pragma once

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "core/error.h"
#include "test_util.h"

namespace dsk::test {

// The dsk::Error a callable throws (fails the test when none is thrown).
template <typename F>
dsk::Error ckpt_error_of(F&& f) {
  try {
    f();
  } catch (const dsk::Error& e) {
    return e;
  }
  FAIL("expected a dsk::Error");
  return dsk::Error(dsk::Error::Kind::Runtime, "");
}

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void put(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
}

}  // namespace dsk::test
