// Which files of a model directory moekit writes, and how: the save path's file hygiene.
//   ours:  config.json, model.safetensors, model-NNNNN-of-NNNNN.safetensors, model.safetensors.index.json
//          (+ what the caller adds, e.g. optimizer.safetensors, trainer_state.json)
//   kept:  every other regular file (tokenizer files, generation_config.json, chat_template.jinja, README,
//          LICENSE, ...), copied unchanged from the directory being replaced.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace moe::model {

constexpr int64_t kDefaultMaxShardBytes = 5'000'000'000;  // "5GB", transformers 4's save_pretrained default

// True for the weight files moekit writes (they are replaced, never carried over).
bool is_weight_file(const std::string& name);

// Writes `tensors` into dir, a staging dir this program created (new files, fsynced; the caller syncs and
// swaps the dir): one model.safetensors when their data fit max_shard_bytes, else shards
// model-00001-of-0000N.safetensors (tensors in name order, a new shard when the next tensor would overflow
// one) and model.safetensors.index.json {"metadata": {"total_size"}, "weight_map"}, as transformers does.
void write_weights(const std::string& dir, std::vector<std::pair<std::string, at::Tensor>> tensors, int64_t max_shard_bytes);

// Copies every regular file of old_dir that staged lacks and that is not a weight file, optimizer.safetensors
// or trainer_state.json into staged.
// A subdirectory in old_dir throws moe::Error before anything is written (model dirs are replaced whole:
// it would be lost). A missing old_dir is no error.
void check_carry_over(const std::string& old_dir);
void carry_over_files(const std::string& old_dir, const std::string& staged);

// The rest of a staged checkpoint beside its tensors: config.json (its text), the caller's files (name ->
// contents; an empty name or one with '/' throws moe::Error), then carry_over_files from old_dir. New files.
void write_companions(const std::string& staged, const std::string& old_dir, const std::string& config_json,
                      const std::vector<std::pair<std::string, std::string>>& files);

// The files of model_dir a training step carries into its output dir (name -> contents): every regular
// file but the weight files, config.json, optimizer.safetensors and trainer_state.json (written anew).
std::vector<std::pair<std::string, std::string>> companion_files(const std::string& model_dir);

// Parses "5GB", "500MB", "100KB", "123" (bytes; powers of 1000 for kB/MB/GB, of 1024 for KiB/MiB/GiB)
// as transformers' max_shard_size does; throws moe::UsageError.
int64_t parse_size(const std::string& s);

}  // namespace moe::model
