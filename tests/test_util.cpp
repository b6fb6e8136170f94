#include "test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

namespace dsk::test {

CmdResult run_cmd(const std::string& cmdline) {
  char out_tmpl[] = "/tmp/dsk-test-out-XXXXXX";
  char err_tmpl[] = "/tmp/dsk-test-err-XXXXXX";
  int fo = mkstemp(out_tmpl);
  int fe = mkstemp(err_tmpl);
  close(fo);
  close(fe);
  std::string full = "(" + cmdline + ") >" + out_tmpl + " 2>" + err_tmpl + " </dev/null";
  int status = std::system(full.c_str());
  CmdResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  auto slurp = [](const char* p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  r.out = slurp(out_tmpl);
  r.err = slurp(err_tmpl);
  unlink(out_tmpl);
  unlink(err_tmpl);
  return r;
}

}  // namespace dsk::test
