#include "dist/launch.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>

#include "core/error.h"
#include "core/log.h"
#include "core/signals.h"

namespace dsk::dist {
namespace {

struct Rank {
  pid_t pid = -1;
  int out = -1, err = -1;  // read ends
  std::string out_buf, err_buf;
  bool done = false;
  int code = 0;
};

void write_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      return;
    }
    off += static_cast<size_t>(n);
  }
}

// Emits the complete lines of buf (all of it when flush) with the prefix.
void emit_lines(std::string& buf, int fd, const std::string& prefix, bool flush) {
  size_t start = 0, nl;
  std::string out;
  while ((nl = buf.find('\n', start)) != std::string::npos) {
    out += prefix + buf.substr(start, nl - start + 1);
    start = nl + 1;
  }
  buf.erase(0, start);
  if (flush && !buf.empty()) {
    out += prefix + buf + "\n";
    buf.clear();
  }
  if (!out.empty()) write_all(fd, out);
}

}  // namespace

int pick_free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) fail("dsk launch: cannot open a socket: {}", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    fail("dsk launch: cannot find a free port: {}", std::strerror(errno));
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

int launch(const LaunchOptions& opt, const std::vector<std::string>& args) {
  if (opt.nproc < 1) fail_usage_hint(fmt::format("--nproc {} is not a process count", opt.nproc), "use --nproc 1 or more");
  if (args.empty()) fail_usage_hint("nothing to launch", "dsk launch --nproc N -- finetune CFG [overrides]");
  const int port = opt.master_port > 0 ? opt.master_port : pick_free_port();
  log::info("launch: {} processes, rendezvous 127.0.0.1:{}", opt.nproc, port);

  std::vector<std::string> argv_s{"dsk"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);

  signals::install_handlers();
  std::vector<Rank> ranks(static_cast<size_t>(opt.nproc));
  for (int r = 0; r < opt.nproc; ++r) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) fail("dsk launch: pipe: {}", std::strerror(errno));
    pid_t pid = ::fork();
    if (pid < 0) fail("dsk launch: fork: {}", std::strerror(errno));
    if (pid == 0) {
      ::setpgid(0, 0);
      ::dup2(out[1], STDOUT_FILENO);
      ::dup2(err[1], STDERR_FILENO);
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(opt.nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(opt.nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::execv("/proc/self/exe", argv.data());
      std::fprintf(stderr, "dsk launch: error: cannot run /proc/self/exe: %s\n", std::strerror(errno));
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(err[1]);
    ranks[r].pid = pid;
    ranks[r].out = out[0];
    ranks[r].err = err[0];
  }

  using Clock = std::chrono::steady_clock;
  int failed_rank = -1, failed_code = 0;
  bool forwarded = false, killed = false;
  Clock::time_point stop_at{};
  auto signal_all = [&](int sig) {
    for (auto& rk : ranks)
      if (!rk.done) ::kill(rk.pid, sig);
  };

  for (;;) {
    // Output first: it is what the user reads.
    std::vector<pollfd> fds;
    std::vector<std::pair<int, bool>> who;  // rank, is_stdout
    for (int r = 0; r < opt.nproc; ++r) {
      if (ranks[r].out >= 0) { fds.push_back({ranks[r].out, POLLIN, 0}); who.push_back({r, true}); }
      if (ranks[r].err >= 0) { fds.push_back({ranks[r].err, POLLIN, 0}); who.push_back({r, false}); }
    }
    if (!fds.empty()) ::poll(fds.data(), fds.size(), 100);
    else ::usleep(100000);
    for (size_t i = 0; i < fds.size(); ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      auto [r, is_out] = who[i];
      Rank& rk = ranks[r];
      char buf[65536];
      ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      const std::string prefix = "[rank " + std::to_string(r) + "] ";
      std::string& b = is_out ? rk.out_buf : rk.err_buf;
      const bool passthrough = is_out && r == 0;
      if (n > 0) {
        b.append(buf, static_cast<size_t>(n));
        if (passthrough) { write_all(STDOUT_FILENO, b); b.clear(); }
        else emit_lines(b, STDERR_FILENO, prefix, false);
      } else {
        if (!passthrough) emit_lines(b, STDERR_FILENO, prefix, true);
        ::close(fds[i].fd);
        (is_out ? rk.out : rk.err) = -1;
      }
    }

    // Exits.
    for (int r = 0; r < opt.nproc; ++r) {
      Rank& rk = ranks[r];
      if (rk.done) continue;
      int status = 0;
      if (::waitpid(rk.pid, &status, WNOHANG) != rk.pid) continue;
      rk.done = true;
      rk.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      if (rk.code != 0 && failed_rank < 0 && !forwarded) {
        failed_rank = r;
        failed_code = rk.code;
        if (WIFSIGNALED(status))
          log::error("launch: rank {} was killed by signal {} ({}); stopping the other ranks", r, WTERMSIG(status),
                     strsignal(WTERMSIG(status)));
        else
          log::error("launch: rank {} exited with code {}; stopping the other ranks", r, rk.code);
        signal_all(SIGTERM);
        stop_at = Clock::now();
      }
    }
    bool all_done = true;
    for (auto& rk : ranks) all_done = all_done && rk.done && rk.out < 0 && rk.err < 0;
    if (all_done) break;

    if (signals::interrupted() && !forwarded) {
      forwarded = true;
      signal_all(signals::interrupt_exit_code() == 130 ? SIGINT : SIGTERM);
    }
    if (failed_rank >= 0 && !killed &&
        std::chrono::duration<double>(Clock::now() - stop_at).count() > opt.grace_s) {
      killed = true;
      log::warn("launch: ranks still running {:.0f} s after the failure: killing them", opt.grace_s);
      signal_all(SIGKILL);
    }
  }

  if (failed_rank >= 0) return failed_code;
  if (forwarded) return signals::interrupt_exit_code();
  for (auto& rk : ranks)
    if (rk.code != 0) return rk.code;
  return 0;
}

}  // namespace dsk::dist
