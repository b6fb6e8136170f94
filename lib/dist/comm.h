// A process group for this run: rendezvous through c10d's TCPStore (rank 0 hosts it), collectives
// through c10d's ProcessGroupGloo on CPU (ProcessGroupNCCL on CUDA, where LibTorch has it).
// Single-process runs get a Comm of size 1 whose collectives return at once.
//
// Failures: a collective that fails or exceeds the timeout throws a dsk::Error (runtime, exit 1)
// naming the lost rank(s) when they can be told: every rank bumps a heartbeat counter in the store
// each second, and the ranks whose counters stop are the lost ones; when the store itself is
// gone, rank 0 (its host) is.
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "dist/env.h"

namespace dsk::dist {

struct CommOptions {
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};  // rendezvous and each collective
  std::string backend = "auto";                                  // auto | gloo | nccl
  c10::Device device = c10::Device(c10::kCPU);                   // auto: nccl when this is CUDA
};

class Comm {
 public:
  // Connects every rank of `env` (blocks until all have joined or the timeout passes).
  static std::unique_ptr<Comm> connect(const DistEnv& env, const CommOptions& opt = {});
  // A size-1 group (no store, no threads).
  static std::unique_ptr<Comm> single();
  ~Comm();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_main() const { return rank_ == 0; }
  const std::string& backend() const { return backend_; }

  // Asynchronous operations return a handle; wait() rethrows failures as dsk::Error.
  class Handle {
   public:
    Handle() = default;
    void wait();
    bool valid() const { return impl_ != nullptr; }

   private:
    friend class Comm;
    std::shared_ptr<void> impl_;
    Comm* comm_ = nullptr;
    std::string what_;
  };

  Handle allreduce_sum_async(at::Tensor t);
  void allreduce_sum(at::Tensor t) { allreduce_sum_async(t).wait(); }
  // Sums `t` over the ranks into rank `root`'s tensor; the others' contents are unspecified after.
  Handle reduce_sum_async(at::Tensor t, int root);
  void allreduce_max(at::Tensor t);
  void broadcast(at::Tensor t, int src);
  // Point to point (contiguous tensors; both sides agree on shape and dtype).
  void send(at::Tensor t, int dst);
  void recv(at::Tensor t, int src);
  void barrier();

 private:
  Comm() = default;
  template <typename Launch>
  Handle start(const char* what, Launch&& launch);
  [[noreturn]] void fail_collective(const std::string& what, const std::string& cause);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0, size_ = 1;
  std::string backend_ = "none";
  std::chrono::milliseconds timeout_{0};
  // Where the collectives' tensors must live: the rank's GPU for NCCL (tensors elsewhere are
  // staged through it), CPU for Gloo.
  c10::Device device_ = c10::Device(c10::kCPU);
  // Runs a blocking collective on `t`, staged through device_ when t lives elsewhere.
  template <typename Launch>
  void run_on_device(const char* what, at::Tensor t, Launch&& launch);
};

}  // namespace dsk::dist
