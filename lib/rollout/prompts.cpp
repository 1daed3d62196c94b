#include "moe/rollout/prompts.h"

#include "moe/io/error.h"
#include "moe/io/jsonl.h"
#include "moe/io/limits.h"

namespace moe::rollout {

std::vector<Prompt> read_prompts(const std::string& path, const std::string& prompt_key,
                                 const tokenizer::CharTokenizer& tok) {
  io::JsonlReader in(path);
  std::vector<Prompt> prompts;
  nlohmann::json j;
  while (in.next(j)) {
    auto it = j.find(prompt_key);
    if (it == j.end()) throw Error(in.where() + "no \"" + prompt_key + "\" key (see --prompt-key)");
    if (!it->is_string()) throw Error(in.where() + "\"" + prompt_key + "\" is not a string");
    Prompt p;
    p.lineno = in.lineno();
    p.text = it->get<std::string>();
    if (p.text.empty()) throw Error(in.where() + "empty prompt");
    j.erase(it);
    // The payload goes one level deeper in the rollout record (under "task"): it must fit the limit there.
    if (int d = io::json_depth(j); d > io::kMaxDepth - 1)
      throw Error(in.where() + "the task payload nests " + std::to_string(d) + " levels deep; a rollout record holds " +
                  std::to_string(io::kMaxDepth - 1) + " (its own map is one more of the " + std::to_string(io::kMaxDepth) +
                  " levels every moekit reader allows)");
    p.task = std::move(j);
    try {
      p.tokens = tok.encode(p.text);
    } catch (const Error& e) {
      throw Error(in.where() + e.what());
    }
    prompts.push_back(std::move(p));
  }
  return prompts;
}

void check_prompt_lengths(const std::vector<Prompt>& prompts, const std::string& path, int64_t max_positions) {
  const std::string name = path.empty() || path == "-" ? std::string("<stdin>") : path;
  for (const Prompt& p : prompts)
    if (static_cast<int64_t>(p.tokens.size()) > max_positions)
      throw Error(name + ":" + std::to_string(p.lineno) + ": prompt of " + std::to_string(p.tokens.size()) +
                  " tokens is longer than the model's max_position_embeddings (" + std::to_string(max_positions) + ")");
}

}  // namespace moe::rollout
