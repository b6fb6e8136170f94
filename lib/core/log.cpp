#include "core/log.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace dsk::log {
namespace {

Level initial_level() {
  const char* env = std::getenv("DSK_LOG_LEVEL");
  if (!env) return Level::Info;
  if (!std::strcmp(env, "debug")) return Level::Debug;
  if (!std::strcmp(env, "warn")) return Level::Warn;
  if (!std::strcmp(env, "error")) return Level::Error;
  return Level::Info;
}

Level g_level = initial_level();
int g_rank = 0;
std::mutex g_mutex;

}  // namespace

void set_level(Level l) { g_level = l; }
Level level() { return g_level; }
void set_rank(int rank) { g_rank = rank; }

void write(Level l, const std::string& message) {
  if (g_rank != 0 && l < Level::Warn) return;
  static const char* names[] = {"debug", "info", "warn", "error"};
  std::lock_guard<std::mutex> lock(g_mutex);
  if (l == Level::Info) {
    std::fprintf(stderr, "%s\n", message.c_str());
  } else {
    std::fprintf(stderr, "%s: %s\n", names[static_cast<int>(l)], message.c_str());
  }
  std::fflush(stderr);
}

}  // namespace dsk::log
