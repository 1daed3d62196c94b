#include "moe/rollout/prompts.h"

#include "moe/io/error.h"
#include "moe/io/jsonl.h"
#include "moe/io/limits.h"
#include "moe/tokenizer/chat.h"

namespace moe::rollout {
namespace {

using nlohmann::json;

std::vector<tokenizer::ChatMessage> messages_of(const json& v) {
  if (!v.is_array()) throw Error("\"messages\" is not a list");
  std::vector<tokenizer::ChatMessage> out;
  for (const auto& m : v) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") || !m["content"].is_string())
      throw Error("a message is not {\"role\": string, \"content\": string}: " + m.dump());
    out.push_back({m["role"], m["content"]});
  }
  if (out.empty()) throw Error("empty prompt (no messages)");
  return out;
}

std::vector<int64_t> ids_of(const json& v, int64_t vocab) {
  if (!v.is_array()) throw Error("\"prompt_ids\" is not a list");
  std::vector<int64_t> ids;
  for (const auto& x : v) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || (vocab > 0 && x.get<int64_t>() >= vocab))
      throw Error("prompt_ids: " + x.dump() + " is not a token id" + (vocab > 0 ? " below vocab_size " + std::to_string(vocab) : std::string()));
    ids.push_back(x.get<int64_t>());
  }
  if (ids.empty()) throw Error("empty prompt (no prompt_ids)");
  return ids;
}

}  // namespace

Prompt parse_prompt(json j, const std::string& where, const PromptFormat& fmt, const tokenizer::Tokenizer& tok) {
  Prompt p;
  try {
    const bool has_text = j.contains(fmt.key), has_msgs = j.contains("messages"), has_ids = j.contains("prompt_ids");
    if (has_text + has_msgs + has_ids == 0)
      throw Error("no \"" + fmt.key + "\" key (see --prompt-key), nor \"messages\" or \"prompt_ids\"");
    if (has_text + has_msgs + has_ids > 1)
      throw Error("give one of \"" + fmt.key + "\", \"messages\" and \"prompt_ids\", not several");
    if (has_ids) {
      p.tokens = ids_of(j["prompt_ids"], fmt.vocab_size);
      p.text = tok.decode(p.tokens);
      j.erase("prompt_ids");
    } else if (has_msgs) {
      p.text = tokenizer::render_chat(messages_of(j["messages"]), tok.chat_template(), fmt.thinking);
      p.tokens = tok.encode(p.text, /*add_special=*/false);
      j.erase("messages");
    } else {
      if (!j[fmt.key].is_string()) throw Error("\"" + fmt.key + "\" is not a string");
      p.text = j[fmt.key].get<std::string>();
      if (p.text.empty()) throw Error("empty prompt");
      if (fmt.chat) {
        p.text = tokenizer::render_chat({{"user", p.text}}, tok.chat_template(), fmt.thinking);
        p.tokens = tok.encode(p.text, false);
      } else {
        p.tokens = tok.encode(p.text);
      }
      j.erase(fmt.key);
    }
    if (p.tokens.empty()) throw Error("empty prompt (no tokens)");
  } catch (const Error& e) {
    throw Error(where + e.what());
  }
  // The payload goes one level deeper in the rollout record (under "task"): it must fit the limit there.
  if (int d = io::json_depth(j); d > io::kMaxDepth - 1)
    throw Error(where + "the task payload nests " + std::to_string(d) + " levels deep; a rollout record holds " +
                std::to_string(io::kMaxDepth - 1) + " (its own map is one more of the " + std::to_string(io::kMaxDepth) +
                " levels every moekit reader allows)");
  p.task = std::move(j);
  return p;
}

std::vector<Prompt> read_prompts(const std::string& path, const PromptFormat& fmt, const tokenizer::Tokenizer& tok) {
  io::JsonlReader in(path);
  std::vector<Prompt> prompts;
  json j;
  while (in.next(j)) {
    Prompt p = parse_prompt(std::move(j), in.where(), fmt, tok);
    p.lineno = in.lineno();
    j = json();
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
