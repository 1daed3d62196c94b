// Prompt JSONL as moe-rollout and moe-eval read it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/tokenizer/tokenizer.h"

namespace moe::rollout {

struct Prompt {
  int64_t lineno = 0;          // line in its file, for messages
  std::string text;            // the prompt as the model sees it (rendered chat; decoded prompt_ids)
  nlohmann::json task;         // every other key of the line: the record's task payload
  std::vector<int64_t> tokens; // text encoded
};

struct PromptFormat {
  std::string key = "prompt";  // the key of prompt text
  bool chat = false;           // render prompt text as one user message of the chat template
  bool thinking = true;        // false: Qwen3's enable_thinking=False (an empty <think></think> block)
  int64_t vocab_size = 0;      // the model's: prompt_ids must be below it (0 = no check)
};

// Reads one JSON object per line (blank lines skipped) from a file or "-". A line gives exactly one of:
//   <key> (text; with chat, rendered as a single user message), "messages" ([{role, content}], rendered
//   with the chat template) or "prompt_ids" (token ids, used as they are).
// A malformed line, none or several of these, a wrong type, an empty prompt, a character the tokenizer
// cannot encode, a chat template that is not ChatML, or a task payload that would nest deeper than a
// rollout record can hold (moe/io/limits.h) throws moe::Error "<file>:<line>: ...".
std::vector<Prompt> read_prompts(const std::string& path, const PromptFormat& fmt, const tokenizer::Tokenizer& tok);
// One prompt line's object (errors as read_prompts says, prefixed with `where`, e.g. "<file>:<line>: ").
// lineno is left 0.
Prompt parse_prompt(nlohmann::json obj, const std::string& where, const PromptFormat& fmt, const tokenizer::Tokenizer& tok);

// Throws moe::Error "<file>:<line>: prompt of N tokens is longer than the model's max_position_embeddings
// (M)" for the first prompt that does not fit, before any tensor is allocated for it.
void check_prompt_lengths(const std::vector<Prompt>& prompts, const std::string& path, int64_t max_positions);

}  // namespace moe::rollout
