// safetensors files (u64 LE header length, JSON header, contiguous little-endian data), read by mmap
// and written atomically; sharded checkpoints through model.safetensors.index.json.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "moe/format/safetensors_header.h"

namespace moe::model {

using format::TensorEntry;  // dtype, shape, byte range (moe/format/safetensors_header.h)

// One memory-mapped safetensors file. The constructor validates the whole header: a file shorter than its
// header or than any tensor's data range ("truncated"), a header that is not a JSON object of entries with
// dtype/shape/data_offsets, a size not matching dtype x shape, or overlapping ranges throw moe::Error
// naming the file. Tensors are copied out one at a time; the file is never read whole.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  const TensorEntry& entry(const std::string& name) const;  // throws moe::Error if absent
  std::vector<std::string> names() const;                    // sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // A CPU tensor holding a copy of `name` converted to `dtype` (F32, BF16 and F16 stored types convert to
  // any floating dtype; integer types load as themselves when dtype is undefined).
  at::Tensor get(const std::string& name, c10::optional<c10::ScalarType> dtype = c10::nullopt) const;

 private:
  std::string path_;
  int fd_ = -1;
  const uint8_t* map_ = nullptr;
  size_t size_ = 0;
  size_t data_start_ = 0;
  std::map<std::string, TensorEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes tensors (any device, contiguous or not; F32/BF16/F16/I64/I32/I16/U8/BOOL) with names in sorted
// order, header padded with spaces to 8 bytes, through a temporary + rename. Duplicate names throw.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// The weights of a model dir: model.safetensors, or the shards listed by model.safetensors.index.json
// (`weight_map`: tensor name -> shard file). Throws moe::Error if neither exists or a shard is missing.
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& dir);
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  const TensorEntry& entry(const std::string& name) const;
  std::string file_of(const std::string& name) const;  // the shard path holding name
  at::Tensor get(const std::string& name, c10::optional<c10::ScalarType> dtype = c10::nullopt) const;
  std::vector<std::string> names() const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // name -> index into files_
};

// safetensors dtype name <-> torch dtype; throws moe::Error for types we do not handle.
c10::ScalarType scalar_type_of(const std::string& st_dtype);
std::string safetensors_dtype(c10::ScalarType t);

}  // namespace moe::model
