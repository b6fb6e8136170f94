// dsk finetune: full or LoRA fine-tuning (and QAT) with periodic atomic checkpoints and exact
// resume, on the shared training loop (stages/trainer.h).
#include "stages/stages.h"
#include "stages/trainer.h"

namespace dsk::stages {

int run_finetune(const config::Config& cfg) {
  Trainer t(cfg);
  return t.run();
}

}  // namespace dsk::stages
