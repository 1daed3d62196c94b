// The policy a sampling tool needs from a model directory: the model, its tokenizer and its digest.
#pragma once
#include <string>

#include "moe/model/qwen3_moe.h"
#include "moe/tokenizer/tokenizer.h"

namespace moe::rollout {

struct Policy {
  model::Qwen3Moe model{nullptr};  // in eval mode
  tokenizer::Tokenizer tok;  // with the directory's stop ids and chat template
  std::string digest;  // model::config_digest of its config, for stream headers
};

// Loads config.json + weights (first: their errors name what the directory lacks), then the tokenizer
// (tokenizer.json, tokenizer_config.json, generation_config.json: tokenizer::Tokenizer::load_dir).
// Throws moe::Error naming `dir` for a tokenizer larger than vocab_size or a device/dtype libtorch
// cannot provide (the message without libtorch's backtrace); moe::UsageError for an unknown spelling.
// With a shard of size > 1 only the shard's experts are loaded (expert parallel; the caller sets the group).
Policy load_policy(const std::string& dir, const std::string& device, const std::string& dtype,
                   model::ExpertShard shard = {});

inline std::vector<int32_t> to_i32(const std::vector<int64_t>& v) { return std::vector<int32_t>(v.begin(), v.end()); }
inline std::vector<int64_t> to_i64(const std::vector<int32_t>& v) { return std::vector<int64_t>(v.begin(), v.end()); }

}  // namespace moe::rollout
