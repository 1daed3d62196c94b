#include "moe/rollout/prompts.h"

#include "moe/io/error.h"
#include "moe/io/jsonl.h"

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

}  // namespace moe::rollout
