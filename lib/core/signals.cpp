#include "core/signals.h"

#include <csignal>

#include "core/error.h"

namespace dsk::signals {
namespace {

volatile std::sig_atomic_t g_signal = 0;

void on_signal(int sig) {
  if (g_signal == sig) {  // second time: give up gracefully
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_signal = sig;
}

}  // namespace

void install_handlers() {
  struct sigaction sa = {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

bool interrupted() { return g_signal != 0; }

int interrupt_exit_code() {
  if (g_signal == SIGINT) return kExitInterrupted;
  if (g_signal == SIGTERM) return kExitTerminated;
  return 0;
}

void reset() { g_signal = 0; }

}  // namespace dsk::signals
