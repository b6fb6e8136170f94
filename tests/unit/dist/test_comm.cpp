// Two real processes over Gloo on 127.0.0.1: the parent is rank 0, a forked child rank 1.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>

#include "dist/comm.h"
#include "dist/ddp.h"
#include "dist/launch.h"
#include "test_util.h"

using dsk::dist::Comm;
using dsk::dist::CommOptions;
using dsk::dist::DistEnv;
using dsk::test::error_of;
using Catch::Matchers::Contains;

namespace {

DistEnv env_for(int rank, int port) {
  DistEnv e;
  e.rank = rank;
  e.world_size = 2;
  e.master_port = port;
  e.source = "torchrun";
  return e;
}

// Runs body(comm) as rank 1 in a child process; returns a pid to wait on.
template <typename F>
pid_t spawn_rank1(int port, CommOptions opt, F body) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int code = 0;
    try {
      auto c = Comm::connect(env_for(1, port), opt);
      code = body(*c);
    } catch (...) {
      code = 99;
    }
    ::_exit(code);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

TEST_CASE("two ranks over Gloo: sum, max, point to point, broadcast", "[dist]") {
  const int port = dsk::dist::pick_free_port();
  CommOptions opt;
  opt.timeout = std::chrono::seconds(30);
  // The child checks its own results and reports through its exit code.
  pid_t child = spawn_rank1(port, opt, [](Comm& c) {
    auto s = at::full({3}, 2.0);
    c.allreduce_sum(s);
    if (!at::equal(s, at::full({3}, 3.0))) return 1;
    auto m = at::tensor({5.0, 0.0});
    c.allreduce_max(m);
    if (!at::equal(m, at::tensor({5.0, 7.0}))) return 2;
    c.send(at::full({2}, 10.0), 0);
    auto b = at::zeros({4});
    c.broadcast(b, 0);
    if (!at::equal(b, at::arange(4).to(at::kFloat))) return 3;
    c.barrier();
    return 0;
  });
  auto c = Comm::connect(env_for(0, port), opt);
  CHECK(c->size() == 2);
  CHECK(c->rank() == 0);
  CHECK(c->backend() == "gloo");
  auto s = at::full({3}, 1.0);
  c->allreduce_sum(s);
  CHECK(at::equal(s, at::full({3}, 3.0)));
  auto m = at::tensor({1.0, 7.0});
  c->allreduce_max(m);
  CHECK(at::equal(m, at::tensor({5.0, 7.0})));
  auto r = at::zeros({2});
  c->recv(r, 1);
  CHECK(at::equal(r, at::full({2}, 10.0)));
  auto b = at::arange(4).to(at::kFloat);
  c->broadcast(b, 0);
  c->barrier();
  CHECK(wait_exit(child) == 0);
}

namespace {

// Rank r's gradients: d/dp_i of sum((r + 1) * (i + 1) * p_i) = (r + 1) * (i + 1) everywhere.
std::vector<at::Tensor> zero_params() {
  return {at::zeros({4}).requires_grad_(true), at::zeros({3}).requires_grad_(true), at::zeros({5}).requires_grad_(true)};
}

void zero_backward(std::vector<at::Tensor>& ps, int rank) {
  at::Tensor loss = at::zeros({});
  for (size_t i = 0; i < ps.size(); ++i) loss = loss + ps[i].sum() * static_cast<double>((rank + 1) * (i + 1));
  loss.backward();
}

}  // namespace

TEST_CASE("ZeRO-1 partition: largest first to the least loaded rank", "[dist]") {
  // 40 -> r0, 30 -> r1, 20 -> r1 (30 < 40), 10 -> r0 (40 < 50): 50 / 50
  CHECK(dsk::dist::partition_params({10, 40, 30, 20}, 2) == std::vector<int>{0, 0, 1, 1});
  CHECK(dsk::dist::partition_params({5, 5, 5}, 1) == std::vector<int>{0, 0, 0});
  CHECK(dsk::dist::partition_params({7, 7, 7, 7}, 3) == std::vector<int>{0, 1, 2, 0});
}

TEST_CASE("GradSync under ZeRO-1 reduces each gradient into its owner only (reduce-scatter)", "[dist]") {
  const int port = dsk::dist::pick_free_port();
  CommOptions opt;
  opt.timeout = std::chrono::seconds(30);
  const std::vector<int> owner = {0, 1, 0};
  // 16-byte buckets: p2 (20 bytes) alone, p1 alone, p0 alone; one owner per bucket.
  pid_t child = spawn_rank1(port, opt, [&](Comm& c) {
    auto ps = zero_params();
    dsk::dist::GradSync sync(c, ps, 16, owner);
    if (sync.buckets() != 3) return 1;
    sync.begin(true);
    zero_backward(ps, 1);
    sync.finish();
    if (ps[0].grad().defined() || ps[2].grad().defined()) return 2;  // rank 0's tensors
    if (!at::equal(ps[1].grad(), at::full({3}, 3.0 * 2))) return 3;  // (1 + 2) * 2
    return 0;
  });
  auto c = Comm::connect(env_for(0, port), opt);
  auto ps = zero_params();
  dsk::dist::GradSync sync(*c, ps, 16, owner);
  CHECK(sync.buckets() == 3);
  sync.begin(true);
  zero_backward(ps, 0);
  sync.finish();
  CHECK(at::equal(ps[0].grad(), at::full({4}, 3.0 * 1)));
  CHECK(at::equal(ps[2].grad(), at::full({5}, 3.0 * 3)));
  CHECK_FALSE(ps[1].grad().defined());
  CHECK(wait_exit(child) == 0);
}

TEST_CASE("GradSync buckets: one owner per bucket, bucket size respected, all-reduce without owners", "[dist]") {
  auto c = Comm::single();
  auto ps = zero_params();
  CHECK(dsk::dist::GradSync(*c, ps, 1 << 20).buckets() == 1);
  CHECK(dsk::dist::GradSync(*c, ps, 16).buckets() == 3);
  auto one = zero_params();
  dsk::dist::GradSync sync(*c, one, 1 << 20);
  sync.begin(true);
  zero_backward(one, 0);
  sync.finish();
  CHECK(at::equal(one[1].grad(), at::full({3}, 2.0)));
}

TEST_CASE("a single-process Comm needs no store and its collectives are identities", "[dist]") {
  auto c = Comm::single();
  auto t = at::tensor({1.0, 2.0});
  c->allreduce_sum(t);
  c->broadcast(t, 0);
  c->barrier();
  CHECK(c->size() == 1);
  CHECK(at::equal(t, at::tensor({1.0, 2.0})));
}

TEST_CASE("a rank that dies is named by the survivors' error", "[dist]") {
  const int port = dsk::dist::pick_free_port();
  CommOptions opt;
  opt.timeout = std::chrono::seconds(5);
  pid_t child = spawn_rank1(port, opt, [](Comm& c) {
    c.barrier();  // joined and in step; then vanish without a word
    ::_exit(9);
    return 0;
  });
  auto c = Comm::connect(env_for(0, port), opt);
  // Writing to the dead peer's socket must fail with EPIPE, not kill this rank with SIGPIPE before it can say who
  // is gone (that race failed CI once).
  struct sigaction sa {};
  ::sigaction(SIGPIPE, nullptr, &sa);
  CHECK(sa.sa_handler == SIG_IGN);
  c->barrier();
  CHECK(wait_exit(child) == 9);
  auto t0 = std::chrono::steady_clock::now();
  auto e = error_of([&] {
    auto t = at::ones({4});
    c->allreduce_sum(t);
  });
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(e.kind() == dsk::Error::Kind::Runtime);
  CHECK_THAT(e.what(), Contains("rank 1 stopped responding"));
  CHECK(took < 5 + 10);  // within the timeout plus the heartbeat check
}
