// The plain (libtorch-free) part of the safetensors reader: a memory-mapped file whose header has been
// validated, with raw access to each tensor's bytes. moe/model/safetensors.h builds tensors on top of it;
// torch-free tools (moe-data import) read integer and float arrays straight from it.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "moe/format/safetensors_header.h"

namespace moe::model {

// dtype, shape and byte range of one tensor, and bytes per element of a dtype name: the header parser of
// moe/format/safetensors_header.h (shared with the fuzzing harness) is the only one.
using format::TensorEntry;
using format::safetensors_element_size;

// One memory-mapped safetensors file whose header format::parse_safetensors_header has validated (a file
// shorter than its header or than any tensor's data range, a malformed header, a size not matching dtype x
// shape, or overlapping ranges throw moe::Error naming the file). The file is never read whole.
class SafetensorsView {
 public:
  explicit SafetensorsView(const std::string& path);
  ~SafetensorsView();
  SafetensorsView(const SafetensorsView&) = delete;
  SafetensorsView& operator=(const SafetensorsView&) = delete;

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  const TensorEntry& entry(const std::string& name) const;  // throws moe::Error if absent
  std::vector<std::string> names() const;                    // sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The little-endian bytes of `e` (an entry of this file), end - begin of them, valid while the view lives.
  const uint8_t* bytes(const TensorEntry& e) const { return map_ + data_start_ + e.begin; }
  // Copies the bytes of `e` into dst (end - begin of them) by read(2) in large pieces rather than through the
  // mapping: faster (the kernel's readahead, no page faults), and a file cut short since it was opened is a
  // moe::Error naming it, where touching the mapping would be SIGBUS.
  void read_bytes(const TensorEntry& e, void* dst) const;

 private:
  std::string path_;
  int fd_ = -1;
  const uint8_t* map_ = nullptr;
  size_t size_ = 0;
  size_t data_start_ = 0;
  std::map<std::string, TensorEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace moe::model
