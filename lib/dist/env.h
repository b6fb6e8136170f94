// Where this process sits in a multi-process run, read from the environment the launcher set:
//   torchrun-style: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//                   (also what `dsk launch` sets);
//   Slurm (srun):   SLURM_PROCID, SLURM_STEP_NUM_TASKS (else SLURM_NTASKS), SLURM_LOCALID,
//                   the first host of SLURM_STEP_NODELIST (else SLURM_JOB_NODELIST) as the
//                   rendezvous address, and port 20000 + SLURM_JOB_ID % 20000 unless MASTER_ADDR /
//                   MASTER_PORT are set.
// torchrun-style variables win when both are present. Neither: a single process.
// No torch dependency: unit-tested with a fake environment.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace dsk::dist {

struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string source = "single";  // single | torchrun | slurm

  bool distributed() const { return world_size > 1; }
};

using GetEnv = std::function<const char*(const char*)>;

// Reads the variables through `getenv` (std::getenv by default). Inconsistent values (rank
// outside [0, world_size), a non-numeric count, a port outside 1..65535) are usage errors naming
// the variable.
DistEnv detect_env(const GetEnv& getenv = nullptr);

// Expands a Slurm host list: "node[01-04,07],gpu3,rack[1-2]-n[1-2]" ->
// node01 node02 node03 node04 node07 gpu3 rack1-n1 rack1-n2 rack2-n1 rack2-n2.
// Zero padding follows the range's first number. Malformed lists are usage errors.
std::vector<std::string> expand_nodelist(const std::string& list);

}  // namespace dsk::dist
