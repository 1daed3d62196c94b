// safetensors files (u64 LE header length, JSON header, contiguous little-endian data): the header parsed
// from a mapping, tensors read with pread, files written atomically; sharded checkpoints through
// model.safetensors.index.json.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "moe/model/safetensors_view.h"

namespace moe::model {

// One memory-mapped safetensors file (the header checks of SafetensorsView), whose tensors are read
// (SafetensorsView::read_bytes) one at a time as libtorch tensors.
class SafetensorsFile : public SafetensorsView {
 public:
  using SafetensorsView::SafetensorsView;
  // A CPU tensor holding a copy of `name` converted to `dtype` (F32, BF16 and F16 stored types convert to
  // any floating dtype; integer types load as themselves when dtype is undefined).
  at::Tensor get(const std::string& name, c10::optional<c10::ScalarType> dtype = c10::nullopt) const;
};

// Writes tensors (any device, contiguous or not; F32/BF16/F16/I64/I32/I16/U8/BOOL) with names in sorted
// order, header padded with spaces to 8 bytes, through a temporary + rename. Duplicate names throw.
// Contiguous CPU tensors are written from their own storage, one write each. `staged`: path is a new file in
// a staging dir (io::Output::NewFile: written in place and fsynced, no temporary or rename).
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}}, bool staged = false);

// The tensors of a checkpoint dir under one stem ("model": the weights; "optimizer": moe-train-step's AdamW
// state): <stem>.safetensors, or the shards listed by <stem>.safetensors.index.json (`weight_map`: tensor name
// -> shard file of the dir). Throws moe::Error if neither exists, a shard is missing or does not hold what
// the index maps to it.
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& dir, const std::string& stem = "model");
  // Whether dir holds <stem>.safetensors or <stem>.safetensors.index.json.
  static bool exists(const std::string& dir, const std::string& stem = "model");
  // The file errors about the whole set name: the single file, or the index.
  const std::string& source() const { return source_; }
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  const TensorEntry& entry(const std::string& name) const;
  std::string file_of(const std::string& name) const;  // the shard path holding name
  at::Tensor get(const std::string& name, c10::optional<c10::ScalarType> dtype = c10::nullopt) const;
  std::vector<std::string> names() const;

 private:
  std::string dir_, source_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // name -> index into files_
};

// safetensors dtype name <-> torch dtype; throws moe::Error for types we do not handle.
c10::ScalarType scalar_type_of(const std::string& st_dtype);
std::string safetensors_dtype(c10::ScalarType t);

}  // namespace moe::model
