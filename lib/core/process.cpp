#include "core/process.h"

#include <malloc.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>

namespace dsk::process {
namespace {

bool tuning_disabled() {
  const char* v = std::getenv("DSK_NO_TUNE");
  return v && *v && *v != '0';
}

}  // namespace

void ensure_passive_openmp(char** argv) {
  if (tuning_disabled() || std::getenv("OMP_WAIT_POLICY")) return;
  if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0) return;
  execv("/proc/self/exe", argv);
  // exec failed (no /proc, say): carry on with the spinning default; only speed is lost.
  unsetenv("OMP_WAIT_POLICY");
}

void tune_malloc() {
  if (tuning_disabled()) return;
  // Blocks up to 32 MiB (glibc's ceiling for this setting on 64-bit) come from the heap, not
  // fresh mmaps: a step's activations and attention scores (B*H*T*T fp32 = 16 MiB at B=8, H=8,
  // T=256) are reused, not faulted in again.
  if (!std::getenv("MALLOC_MMAP_THRESHOLD_")) mallopt(M_MMAP_THRESHOLD, 32 << 20);
  // Never shrink the heap top after a free: the next step needs the same memory again. Peak RSS is
  // unchanged (it is the peak); what stays resident after a peak is reused, like a GPU caching
  // allocator's pool.
  if (!std::getenv("MALLOC_TRIM_THRESHOLD_")) mallopt(M_TRIM_THRESHOLD, INT_MAX);
}

}  // namespace dsk::process
