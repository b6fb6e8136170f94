// Graceful interruption: SIGINT/SIGTERM set a flag that long-running stages poll between
// steps; the stage saves a checkpoint and returns 130 (SIGINT) or 143 (SIGTERM).
// A second signal of the same kind restores the default action (kills at once).
#pragma once

namespace dsk::signals {

void install_handlers();
bool interrupted();          // a signal arrived
int interrupt_exit_code();   // 130 for SIGINT, 143 for SIGTERM, 0 when none
void reset();                // for tests

}  // namespace dsk::signals
