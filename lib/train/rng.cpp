// Capture and restore of generator states.
#include "train/rng.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstring>
#include <mutex>
#include <sstream>

#include "core/error.h"

namespace dsk::train {

at::Tensor rng_state() {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_rng_state(const at::Tensor& state) {
  DSK_CHECK(state.defined() && state.scalar_type() == at::kByte && state.dim() == 1,
            "RNG state: expected a uint8 vector");
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  try {
    gen.set_state(state.to(at::kCPU).contiguous());
  } catch (const c10::Error& e) {
    fail("RNG state: not a CPU generator state of this LibTorch ({} bytes): {}", state.numel(),
         e.what_without_backtrace());
  }
}

at::Tensor mt19937_state(const std::mt19937_64& gen) {
  std::ostringstream os;
  os << gen;
  const std::string s = os.str();
  at::Tensor t = at::empty({static_cast<int64_t>(s.size())}, at::kByte);
  std::memcpy(t.data_ptr<uint8_t>(), s.data(), s.size());
  return t;
}

void set_mt19937_state(std::mt19937_64& gen, const at::Tensor& state) {
  DSK_CHECK(state.defined() && state.scalar_type() == at::kByte && state.dim() == 1,
            "shuffle RNG state: expected a uint8 vector");
  const at::Tensor t = state.to(at::kCPU).contiguous();
  std::istringstream is(std::string(reinterpret_cast<const char*>(t.data_ptr<uint8_t>()), t.numel()));
  std::mt19937_64 restored;
  is >> restored;
  DSK_CHECK(!is.fail(), "shuffle RNG state: not an mt19937_64 state ({} bytes)", t.numel());
  is >> std::ws;
  DSK_CHECK(is.eof(), "shuffle RNG state: trailing bytes after the mt19937_64 state");
  gen = restored;
}

}  // namespace dsk::train
