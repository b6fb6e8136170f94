// dsk export, format onnx (docs/export.md).
#include "core/error.h"
#include "stages/export.h"

namespace dsk::stages {

int export_onnx(const config::Config&) {
  fail_usage_hint("export.format 'onnx' is not implemented yet", "use export.format=gguf or hf");
}

}  // namespace dsk::stages
