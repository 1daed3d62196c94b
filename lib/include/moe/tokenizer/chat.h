// Chat prompts in Qwen's ChatML, as transformers' apply_chat_template(add_generation_prompt=True) renders
// them with the directory's chat template, without running Jinja: the template is only read to tell ChatML
// (and Qwen3's thinking switch, Qwen2.5's default system message) from anything else, which is refused.
#pragma once
#include <string>
#include <vector>

namespace moe::tokenizer {

struct ChatMessage {
  std::string role;     // system | user | assistant
  std::string content;
};

// `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then `<|im_start|>assistant\n`, and with
// enable_thinking false `<think>\n\n</think>\n\n`. Qwen3 templates (they read reasoning_content) drop the
// <think> part of assistant turns before the last user turn, as Qwen3's template does. Throws moe::Error:
// no template, a template that is not ChatML ("give prompt_ids"), an unknown role, no messages; and for
// enable_thinking false with a template that has no enable_thinking switch.
std::string render_chat(const std::vector<ChatMessage>& messages, const std::string& chat_template, bool enable_thinking);

}  // namespace moe::tokenizer
