#include "dist/comm.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if DSK_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "core/log.h"
#include "core/torch_compat.h"

namespace dsk::dist {

namespace {
struct WorkBox {
  c10::intrusive_ptr<c10d::Work> work;
};
constexpr auto kHeartbeat = std::chrono::milliseconds(1000);
std::string hb_key(int r) { return "dsk/hb/" + std::to_string(r); }
// c10 errors carry a C++ stack trace after the first line; users get the first line only.
std::string first_line(const char* what) {
  std::string s(what);
  return s.substr(0, s.find('\n'));
}
}  // namespace

struct Comm::Impl {
  c10::intrusive_ptr<c10d::Store> store;  // the TCPStore client (server too on rank 0)
  c10::intrusive_ptr<compat::ProcessGroupBase> pg;
  std::thread heartbeat;
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    cv.notify_all();
    if (heartbeat.joinable()) heartbeat.join();
  }
};

std::unique_ptr<Comm> Comm::single() { return std::unique_ptr<Comm>(new Comm()); }

Comm::~Comm() = default;

std::unique_ptr<Comm> Comm::connect(const DistEnv& env, const CommOptions& opt) {
  if (!env.distributed()) return single();
  // A peer that dies closes its sockets; the next write to them would raise SIGPIPE and kill this rank silently
  // (Python ignores SIGPIPE at start-up, which is why PyTorch users never meet this). Ignored, the write fails with
  // EPIPE, the collective throws, and fail_collective names the rank that is gone.
  std::signal(SIGPIPE, SIG_IGN);
  std::unique_ptr<Comm> c(new Comm());
  c->rank_ = env.rank;
  c->size_ = env.world_size;
  c->timeout_ = opt.timeout;
  const bool nccl = opt.backend == "nccl" || (opt.backend == "auto" && opt.device.is_cuda());
#if !DSK_WITH_NCCL
  if (nccl)
    fail_usage_hint("backend nccl needs dsk built with -DDSK_CUDA=ON against a CUDA LibTorch; this dsk is CPU-only",
                    "use dist.backend=gloo and device=cpu");
#endif
  c->backend_ = nccl ? "nccl" : "gloo";
  c->device_ = nccl ? opt.device : c10::Device(c10::kCPU);
  c->impl_ = std::make_unique<Impl>();
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(env.master_port);
  so.isServer = env.rank == 0;
  so.numWorkers = env.world_size;
  so.waitWorkers = false;
  so.timeout = opt.timeout;
  try {
    c->impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    fail_hint(fmt::format("rank {}: cannot reach the rendezvous store at {}:{}: {}", env.rank, env.master_addr,
                          env.master_port, first_line(e.what())),
              env.rank == 0 ? "the port may be taken: set MASTER_PORT to a free one"
                            : "check that rank 0 runs and MASTER_ADDR/MASTER_PORT point at it");
  }
#if DSK_WITH_NCCL
  if (nccl) {
    try {
      auto nopt = c10d::ProcessGroupNCCL::Options::create();
      nopt->timeout = opt.timeout;
      auto prefixed = c10::make_intrusive<c10d::PrefixStore>("nccl", c->impl_->store);
      c->impl_->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, env.rank, env.world_size, nopt);
    } catch (const std::exception& e) {
      fail_hint(fmt::format("rank {}: creating the NCCL group failed: {}", env.rank, first_line(e.what())),
                "check NCCL_* settings and that every rank sees its GPU; dist.backend=gloo works everywhere");
    }
  }
#endif
  auto gopt = c10d::ProcessGroupGloo::Options::create(opt.timeout);
  const bool local = env.master_addr == "127.0.0.1" || env.master_addr == "localhost";
  const char* ifname = std::getenv("DSK_GLOO_IFNAME");
  if (!nccl) try {
    gopt->devices.push_back(ifname && *ifname ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
                            : local           ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                              : c10d::ProcessGroupGloo::createDefaultDevice());
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("gloo", c->impl_->store);
    c->impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, env.rank, env.world_size, gopt);
  } catch (const std::exception& e) {
    fail_hint(fmt::format("rank {}: joining the {}-process group at {}:{} failed: {}", env.rank, env.world_size,
                          env.master_addr, env.master_port, first_line(e.what())),
              "check that every rank started with the same WORLD_SIZE and MASTER_ADDR/MASTER_PORT, or raise "
              "dist.timeout_s");
  }
  Impl* impl = c->impl_.get();
  const int rank = env.rank;
  impl->heartbeat = std::thread([impl, rank] {
    std::unique_lock<std::mutex> lock(impl->mu);
    while (!impl->stop) {
      lock.unlock();
      try {
        impl->store->add(hb_key(rank), 1);
      } catch (...) {
        // The store is gone (rank 0 exited): the next collective reports it.
      }
      lock.lock();
      impl->cv.wait_for(lock, kHeartbeat, [impl] { return impl->stop; });
    }
  });
  log::debug("rank {}/{}: joined the gloo group via {}:{}", env.rank, env.world_size, env.master_addr,
             env.master_port);
  return c;
}

void Comm::fail_collective(const std::string& what, const std::string& cause) {
  // Who is gone? Ranks whose heartbeat counters stand still over a few periods.
  std::string lost;
  try {
    std::vector<int64_t> before(size_), after(size_);
    for (int r = 0; r < size_; ++r) before[r] = impl_->store->add(hb_key(r), 0);
    std::this_thread::sleep_for(kHeartbeat * 3);
    for (int r = 0; r < size_; ++r) after[r] = impl_->store->add(hb_key(r), 0);
    for (int r = 0; r < size_; ++r)
      if (after[r] == before[r]) lost += (lost.empty() ? "" : ", ") + std::to_string(r);
    if (!lost.empty()) lost = "rank " + lost + " stopped responding";
  } catch (const std::exception&) {
    lost = "rank 0 (which hosts the rendezvous store) is gone";
  }
  if (lost.empty()) lost = "every rank is still alive";
  fail_hint(fmt::format("rank {}: {} failed: {}; {}", rank_, what, lost, cause),
            "a process of the run was killed or hung: see its log; restart with resume=auto");
}

void Comm::Handle::wait() {
  if (!impl_) return;
  auto box = std::static_pointer_cast<WorkBox>(impl_);
  try {
    if (!box->work->wait(comm_->timeout_))
      comm_->fail_collective(what_, fmt::format("no answer within {} s", comm_->timeout_.count() / 1000.0));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    comm_->fail_collective(what_, first_line(e.what()));
  }
  impl_.reset();
}

template <typename Launch>
Comm::Handle Comm::start(const char* what, Launch&& launch) {
  Handle h;
  h.what_ = what;
  h.comm_ = this;
  try {
    h.impl_ = std::make_shared<WorkBox>(WorkBox{launch()});
  } catch (const std::exception& e) {
    fail_collective(h.what_, first_line(e.what()));
  }
  return h;
}

template <typename Launch>
void Comm::run_on_device(const char* what, at::Tensor t, Launch&& launch) {
  if (t.device() == device_) {
    start(what, [&] { return launch(t); }).wait();
    return;
  }
  at::Tensor staged = t.to(device_);
  start(what, [&] { return launch(staged); }).wait();
  t.copy_(staged);
}

Comm::Handle Comm::allreduce_sum_async(at::Tensor t) {
  if (size_ == 1) return {};
  auto launch = [this](at::Tensor x) {
    std::vector<at::Tensor> v{x};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    return impl_->pg->allreduce(v, o);
  };
  if (t.device() != device_) {  // staged: blocking
    run_on_device("all-reduce", t, launch);
    return {};
  }
  return start("all-reduce", [&] { return launch(t); });
}

Comm::Handle Comm::reduce_sum_async(at::Tensor t, int root) {
  if (size_ == 1) return {};
  auto launch = [this, root](at::Tensor x) {
    std::vector<at::Tensor> v{x};
    c10d::ReduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.rootRank = root;
    return impl_->pg->reduce(v, o);
  };
  if (t.device() != device_) {  // staged: blocking
    run_on_device("reduce", t, launch);
    return {};
  }
  return start("reduce", [&] { return launch(t); });
}

void Comm::allreduce_max(at::Tensor t) {
  if (size_ == 1) return;
  run_on_device("all-reduce", t, [this](at::Tensor x) {
    std::vector<at::Tensor> v{x};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::MAX;
    return impl_->pg->allreduce(v, o);
  });
}

void Comm::broadcast(at::Tensor t, int src) {
  if (size_ == 1) return;
  run_on_device("broadcast", t, [this, src](at::Tensor x) {
    std::vector<at::Tensor> v{x};
    c10d::BroadcastOptions o;
    o.rootRank = src;
    return impl_->pg->broadcast(v, o);
  });
}

void Comm::send(at::Tensor t, int dst) {
  if (size_ == 1) return;
  run_on_device("send", t, [this, dst](at::Tensor x) {
    std::vector<at::Tensor> v{x};
    return impl_->pg->send(v, dst, 0);
  });
}

void Comm::recv(at::Tensor t, int src) {
  if (size_ == 1) return;
  run_on_device("receive", t, [this, src](at::Tensor x) {
    std::vector<at::Tensor> v{x};
    return impl_->pg->recv(v, src, 0);
  });
}

void Comm::barrier() {
  if (size_ == 1) return;
  start("barrier", [&] { return impl_->pg->barrier(); }).wait();
}

}  // namespace dsk::dist
