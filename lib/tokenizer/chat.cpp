// ChatML rendering of Qwen's chat templates (Qwen2, Qwen2.5, Qwen3 and plain ChatML ones).
#include "moe/tokenizer/chat.h"

#include "moe/io/error.h"

namespace moe::tokenizer {
namespace {

bool contains(const std::string& s, const char* x) { return s.find(x) != std::string::npos; }

std::string strip(std::string s, const char* chars, bool left, bool right) {
  if (right) {
    size_t e = s.find_last_not_of(chars);
    s.erase(e == std::string::npos ? 0 : e + 1);
  }
  if (left) s.erase(0, std::min(s.size(), s.find_first_not_of(chars)));
  return s;
}

// Qwen2/2.5 templates write a system message when none is given: '<|im_start|>system\nYou are ...<|im_end|>\n'
// as one Jinja string literal. Returns its text ("" if the template has none).
std::string default_system(const std::string& tmpl) {
  const std::string head = "<|im_start|>system\\n";
  for (size_t p = tmpl.find(head); p != std::string::npos; p = tmpl.find(head, p + 1)) {
    size_t a = p + head.size();
    if (a >= tmpl.size() || tmpl[a] == '\'' || tmpl[a] == '"') continue;  // content comes from a variable
    size_t e = tmpl.find("<|im_end|>", a);
    if (e == std::string::npos) continue;
    std::string lit = tmpl.substr(a, e - a), out;
    for (size_t i = 0; i < lit.size(); ++i) {  // Jinja string escapes
      if (lit[i] == '\\' && i + 1 < lit.size()) {
        char c = lit[++i];
        out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
      } else {
        out += lit[i];
      }
    }
    return out;
  }
  return "";
}

}  // namespace

std::string render_chat(const std::vector<ChatMessage>& msgs, const std::string& tmpl, bool enable_thinking) {
  if (tmpl.empty())
    throw Error("the model has no chat template (tokenizer_config.json chat_template or chat_template.jinja); give prompt_ids instead");
  if (!contains(tmpl, "<|im_start|>") || !contains(tmpl, "<|im_end|>"))
    throw Error("the chat template is not ChatML (<|im_start|>role ... <|im_end|>), which is the only one rendered here; "
                "render the prompt yourself and give prompt_ids");
  if (msgs.empty()) throw Error("no messages");
  const bool qwen3 = contains(tmpl, "reasoning_content");
  if (!enable_thinking && !contains(tmpl, "enable_thinking"))
    throw Error("--no-thinking: the chat template has no enable_thinking switch");
  for (const auto& m : msgs)
    if (m.role != "system" && m.role != "user" && m.role != "assistant")
      throw Error("message role \"" + m.role + "\" is not supported (system, user, assistant)");

  std::string out;
  size_t first = 0;
  if (msgs[0].role == "system") {
    out += "<|im_start|>system\n" + msgs[0].content + "<|im_end|>\n";
    first = 1;
  } else if (std::string sys = default_system(tmpl); !sys.empty()) {
    out += "<|im_start|>system\n" + sys + "<|im_end|>\n";
  }
  // The last user turn: assistant turns after it keep their thinking (Qwen3).
  size_t last_query = msgs.size() - 1;
  for (size_t i = msgs.size(); i-- > 0;)
    if (msgs[i].role == "user") {
      const std::string& c = msgs[i].content;
      bool tool_response = c.rfind("<tool_response>", 0) == 0 && c.size() >= 16 && c.compare(c.size() - 16, 16, "</tool_response>") == 0;
      if (!tool_response) {
        last_query = i;
        break;
      }
    }
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    if (m.role != "assistant" || !qwen3) {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      continue;
    }
    std::string content = m.content, reasoning;
    size_t close = content.find("</think>");
    if (close != std::string::npos) {
      std::string before = strip(content.substr(0, close), "\n", false, true);
      size_t open = before.rfind("<think>");
      reasoning = strip(open == std::string::npos ? before : before.substr(open + 7), "\n", true, false);
      content = strip(content.substr(content.rfind("</think>") + 8), "\n", true, false);
    }
    const bool last = i + 1 == msgs.size();
    if (i > last_query && (last || !reasoning.empty()))
      out += "<|im_start|>assistant\n<think>\n" + strip(reasoning, "\n", true, true) + "\n</think>\n\n" + strip(content, "\n", true, false);
    else
      out += "<|im_start|>assistant\n" + content;
    out += "<|im_end|>\n";
  }
  out += "<|im_start|>assistant\n";
  if (!enable_thinking) out += "<think>\n\n</think>\n\n";
  return out;
}

}  // namespace moe::tokenizer
