// Process-level tuning that must happen before the first tensor is allocated, some of it before
// the OpenMP runtime is loaded. Called first thing in main for the subcommands that compute.
//
// Why (measured in docs/benchmarks.md, "Where the time goes"):
// - Debian's LibTorch runs its own ops on libgomp's thread pool and its GEMMs on OpenBLAS's
//   separate pthread pool. libgomp's idle workers spin by default, so on a small machine the two
//   pools fight for the cores; OMP_WAIT_POLICY=PASSIVE makes training 1.8-2.8x faster. libgomp
//   reads the variable when it is loaded (before main), so the only way to set it for ourselves is
//   to re-exec with it set.
// - glibc hands large freed blocks back to the kernel (mmap threshold, heap trimming), and every
//   training step then faults the same activations in again: 10-20% of CPU time is the kernel
//   zeroing pages. Raising the thresholds keeps freed memory for reuse.
// Whatever the user set explicitly wins: we only fill in what is unset. DSK_NO_TUNE=1 turns all of
// it off (for comparisons against an untuned process).
#pragma once

namespace dsk::process {

// Re-execs the current binary with OMP_WAIT_POLICY=PASSIVE when it is unset (at most once: the
// child sees it set). Returns normally when no re-exec is needed or the exec failed.
void ensure_passive_openmp(char** argv);

// Applies the malloc thresholds unless MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ are set.
void tune_malloc();

}  // namespace dsk::process
