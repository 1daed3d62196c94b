// The parts of writing a checkpoint directory that several processes share (expert parallel: every rank
// writes the shards of the tensors it owns into one staging dir, one rank writes the index and swaps the dir
// in). The single-process writer, model::save_model, is built from the same parts.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moe::model {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Creates the staging dir of a new `dir` beside it ("<dir>.tmp-XXXXXX", mode 0777 & ~umask, empty) after
// check_carry_over(dir); returns its path. Throws moe::Error (nothing created then).
std::string make_staging_dir(const std::string& dir);
// Removes a staging dir this program created and the regular files in it; best effort, never throws.
void remove_staging_dir(const std::string& staged) noexcept;

// `tensors` in name order, cut into shards of at most max_shard_bytes of data (a new shard when the next
// tensor would overflow one; a larger tensor gets a shard of its own), as transformers' save_pretrained.
// No tensors: no shards.
std::vector<NamedTensors> plan_shards(NamedTensors tensors, int64_t max_shard_bytes);
// "<stem>-0000i-of-0000n.safetensors" (i from 1), transformers' shard name.
std::string shard_file_name(const std::string& stem, int i, int n);
// config.json's torch_dtype for weights of type t: "bfloat16", "float16", else "float32".
std::string torch_dtype_name(at::ScalarType t);
// Bytes of tensor data in `tensors` (the index's metadata.total_size adds these up).
int64_t data_bytes(const NamedTensors& tensors);
// Writes `shards[k]` as dir/shard_file_name(stem, first + k, total) (new files, fsynced: dir is a staging dir)
// with the given safetensors metadata; returns tensor name -> file name.
std::map<std::string, std::string> write_shards(const std::string& dir, const std::string& stem, const std::vector<NamedTensors>& shards,
                                                int first, int total, const std::map<std::string, std::string>& metadata);
// Writes dir/<stem>.safetensors.index.json {"metadata": {"total_size"}, "weight_map": {name: file}} (a new
// file in a staging dir), names in sorted order.
void write_shard_index(const std::string& dir, const std::string& stem, int64_t total_size,
                       const std::map<std::string, std::string>& weight_map);

}  // namespace moe::model
