// The plain (libtorch-free) part of the safetensors reader: a memory-mapped file whose header has been
// validated, with raw access to each tensor's bytes. moe/model/safetensors.h builds tensors on top of it;
// torch-free tools (moe-data import) read integer and float arrays straight from it.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moe::model {

struct TensorEntry {
  std::string dtype;           // safetensors dtype name: "F32", "BF16", "F16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range relative to the start of the data section
};

// Bytes per element of a safetensors dtype name; 0 for a name this build does not know.
size_t safetensors_element_size(const std::string& dtype);

// One memory-mapped safetensors file. The constructor validates the whole header: a file shorter than its
// header or than any tensor's data range ("truncated"), a header that is not a JSON object of entries with
// dtype/shape/data_offsets, a size not matching dtype x shape, or overlapping ranges throw moe::Error
// naming the file. The file is never read whole.
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
