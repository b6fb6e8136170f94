#include <map>
#include <string>

#include "dist/env.h"
#include "test_util.h"

using dsk::dist::detect_env;
using dsk::dist::expand_nodelist;
using dsk::test::error_of;
using Catch::Matchers::Contains;
using Hosts = std::vector<std::string>;

namespace {
dsk::dist::GetEnv fake(std::map<std::string, std::string> vars) {
  auto owned = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [owned](const char* n) -> const char* {
    auto it = owned->find(n);
    return it == owned->end() ? nullptr : it->second.c_str();
  };
}
}  // namespace

TEST_CASE("Slurm node lists expand with ranges, padding and several groups", "[dist]") {
  CHECK(expand_nodelist("node07") == Hosts{"node07"});
  CHECK(expand_nodelist("node[01-04,07]") == Hosts{"node01", "node02", "node03", "node04", "node07"});
  CHECK(expand_nodelist("a[8-11],b") == Hosts{"a8", "a9", "a10", "a11", "b"});
  CHECK(expand_nodelist("gpu[098-101]") == Hosts{"gpu098", "gpu099", "gpu100", "gpu101"});
  CHECK(expand_nodelist("r[1-2]-n[1-2],x[3]") == Hosts{"r1-n1", "r1-n2", "r2-n1", "r2-n2", "x3"});
  CHECK(expand_nodelist("node[01-04,07]").front() == "node01");
  for (const char* bad : {"node[01-04", "node]", "node[]", "node[4-1]", "node[a-b]", "a,,b"}) {
    INFO(bad);
    CHECK_THAT(error_of([&] { expand_nodelist(bad); }).what(), Contains("Slurm node list"));
  }
}

TEST_CASE("no launcher variables: a single process", "[dist]") {
  auto e = detect_env(fake({}));
  CHECK(e.world_size == 1);
  CHECK(e.rank == 0);
  CHECK_FALSE(e.distributed());
  CHECK(e.source == "single");
}

TEST_CASE("torchrun-style variables", "[dist]") {
  auto e = detect_env(fake({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
                            {"MASTER_ADDR", "10.0.0.5"}, {"MASTER_PORT", "29600"}}));
  CHECK(e.source == "torchrun");
  CHECK(e.rank == 3);
  CHECK(e.world_size == 4);
  CHECK(e.local_rank == 1);
  CHECK(e.local_world_size == 2);
  CHECK(e.master_addr == "10.0.0.5");
  CHECK(e.master_port == 29600);
  CHECK(e.distributed());
}

TEST_CASE("Slurm variables: first host of the node list, port from the job id", "[dist]") {
  auto e = detect_env(fake({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_STEP_NUM_TASKS", "8"},
                            {"SLURM_LOCALID", "1"}, {"SLURM_JOB_NODELIST", "node[01-04,07]"},
                            {"SLURM_STEP_NUM_NODES", "4"}, {"SLURM_JOB_ID", "123456"}}));
  CHECK(e.source == "slurm");
  CHECK(e.rank == 5);
  CHECK(e.world_size == 8);
  CHECK(e.local_rank == 1);
  CHECK(e.local_world_size == 2);
  CHECK(e.master_addr == "node01");
  CHECK(e.master_port == 20000 + 123456 % 20000);
  // The step's node list wins over the job's; MASTER_* override both.
  auto s = detect_env(fake({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_JOB_NODELIST", "a[1-9]"},
                            {"SLURM_STEP_NODELIST", "a[3-4]"}}));
  CHECK(s.master_addr == "a3");
  auto m = detect_env(fake({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_JOB_NODELIST", "a[1-9]"},
                            {"MASTER_ADDR", "head"}, {"MASTER_PORT", "1234"}}));
  CHECK(m.master_addr == "head");
  CHECK(m.master_port == 1234);
  // torchrun-style variables win over Slurm's (torchrun inside an allocation).
  auto t = detect_env(fake({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}, {"RANK", "1"}, {"WORLD_SIZE", "2"}}));
  CHECK(t.source == "torchrun");
  CHECK(t.world_size == 2);
}

TEST_CASE("inconsistent launcher variables are usage errors naming the variable", "[dist]") {
  auto err = [](std::map<std::string, std::string> v) { return error_of([&] { detect_env(fake(v)); }); };
  auto e1 = err({{"RANK", "2"}, {"WORLD_SIZE", "2"}});
  CHECK(e1.kind() == dsk::Error::Kind::Usage);
  CHECK_THAT(e1.what(), Contains("RANK='2'"));
  CHECK_THAT(err({{"RANK", "0"}, {"WORLD_SIZE", "two"}}).what(), Contains("WORLD_SIZE"));
  CHECK_THAT(err({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}).what(), Contains("MASTER_PORT"));
  CHECK_THAT(err({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_JOB_NODELIST", "n[1-"}}).what(),
             Contains("Slurm node list"));
}
