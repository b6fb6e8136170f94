// TensorBoard event files: scalars in the TFRecord format, with hand-encoded Event protobufs.
//
// File:   <dir>/events.out.tfevents.<unix_time>.<hostname>.<pid>.<n>   (n: 0, or the next free)
// Record: uint64 length (LE) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
//         masked_crc32c(x) = rotate_right(crc32c(x), 15) + 0xa282ead8
// Data:   Event { double wall_time = 1; int64 step = 2; string file_version = 3;
//                 Summary summary = 5; SessionLog session_log = 6; }
//         Summary { repeated Value value = 1; }  Value { string tag = 1; float simple_value = 2; }
//         SessionLog { SessionStatus status = 1; }  (START = 1)
// The first record is Event{wall_time, file_version: "brain.Event:2"}. Every write is flushed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dsk::train {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78); `crc` continues a previous value.
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);
uint32_t masked_crc32c(const void* data, size_t size);

// One TFRecord: length, its masked CRC, data, its masked CRC.
std::string tfrecord(std::string_view data);

class EventWriter {
 public:
  // Creates a new event file in `dir` (created when missing); dsk::fail when it cannot.
  explicit EventWriter(const std::filesystem::path& dir);
  ~EventWriter();
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  // One Event at `step` holding every (tag, value) pair; flushed.
  void add_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values);
  void add_scalar(const std::string& tag, double value, int64_t step) { add_scalars(step, {{tag, value}}); }
  // SessionLog START at `step`: on resume TensorBoard then drops the events of earlier files
  // with step >= `step` (logged after the checkpoint, before the crash). Flushed.
  void add_session_start(int64_t step);

  const std::filesystem::path& path() const { return path_; }

 private:
  void write_event(const std::string& event);

  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
};

}  // namespace dsk::train
