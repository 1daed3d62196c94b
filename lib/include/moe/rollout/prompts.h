// Prompt JSONL as moe-rollout and moe-eval read it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/tokenizer/char_tokenizer.h"

namespace moe::rollout {

struct Prompt {
  int64_t lineno = 0;          // line in its file, for messages
  std::string text;            // the value under the prompt key
  nlohmann::json task;         // every other key of the line: the record's task payload
  std::vector<int64_t> tokens; // text encoded
};

// Reads one JSON object per line (blank lines skipped) from a file or "-". A malformed line, a missing,
// non-string or empty prompt, or a character outside the vocabulary throws moe::Error "<file>:<line>: ...".
// A task payload that would nest deeper than a rollout record can hold (moe/io/limits.h) is such an error.
std::vector<Prompt> read_prompts(const std::string& path, const std::string& prompt_key,
                                 const tokenizer::CharTokenizer& tok);

// Throws moe::Error "<file>:<line>: prompt of N tokens is longer than the model's max_position_embeddings
// (M)" for the first prompt that does not fit, before any tensor is allocated for it.
void check_prompt_lengths(const std::vector<Prompt>& prompts, const std::string& path, int64_t max_positions);

}  // namespace moe::rollout
