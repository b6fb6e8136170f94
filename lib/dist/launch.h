// `dsk launch --nproc N -- SUBCOMMAND CFG [overrides]`: runs N copies of this binary on one machine
// with torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT), streams every rank's stderr line by line with a "[rank K] " prefix (rank 0's stdout
// passes through unprefixed: it carries the results), and when one rank fails stops the others
// (SIGTERM, then SIGKILL after a grace period) and exits with the failed rank's code.
// SIGINT/SIGTERM sent to the launcher are forwarded once to every rank (they checkpoint and exit
// 130/143); the ranks run in their own process group so a terminal's Ctrl-C reaches them only
// through the launcher.
#pragma once

#include <string>
#include <vector>

namespace dsk::dist {

struct LaunchOptions {
  int nproc = 2;
  int master_port = 0;       // 0: pick a free port
  double grace_s = 10.0;     // after a failure, how long the others get to exit before SIGKILL
};

// A TCP port on 127.0.0.1 that is free right now (the kernel picks it).
int pick_free_port();

// Returns the exit code for the launcher. `args` is what follows `--`.
int launch(const LaunchOptions& opt, const std::vector<std::string>& args);

}  // namespace dsk::dist
