// A model directory's tokenizer: moekit's character tokenizer (the tiny presets) or a Hugging Face
// byte-level BPE tokenizer.json, with what the directory's other files say about it:
//   tokenizer_config.json   eos_token, pad_token, bos_token (strings or {"content": ...}), chat_template
//   chat_template.jinja     the chat template (transformers >= 4.5x writes it beside tokenizer_config.json)
//   generation_config.json  eos_token_id (an int or a list): generation stops on every one of them
//   config.json             eos_token_id / pad_token_id / bos_token_id when the files above do not say
// Ids without a token (a model's vocab_size may exceed the tokenizer, e.g. Qwen3: 151936 rows for 151669
// tokens) decode to nothing, as HF tokenizers' decode() does.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "moe/tokenizer/char_tokenizer.h"
#include "moe/tokenizer/hf_tokenizer.h"

namespace moe::tokenizer {

class Tokenizer {
 public:
  Tokenizer() = default;
  explicit Tokenizer(CharTokenizer t);
  explicit Tokenizer(HfTokenizer t);
  // Reads dir/tokenizer.json (either kind) and the optional files above; throws moe::Error naming the file.
  static Tokenizer load_dir(const std::string& dir);
  // tokenizer.json text alone (either kind).
  static Tokenizer from_json(const std::string& text, const std::string& origin);

  // text -> ids. Char: a character outside the vocabulary throws. HF: added tokens in the text are
  // recognised; invalid UTF-8 throws naming the byte offset. add_special: the post-processor's ids (HF's
  // add_special_tokens; apply_chat_template encodes without them).
  std::vector<int64_t> encode(std::string_view text, bool add_special = true) const;
  // ids -> text; ids without a token give nothing; skip_special drops pad/eos/bos (char) or special
  // added tokens (HF).
  std::string decode(const std::vector<int64_t>& ids, bool skip_special = false) const;

  int64_t size() const;  // highest token id + 1
  bool is_hf() const { return hf_ != nullptr; }
  const CharTokenizer* char_tokenizer() const { return char_.get(); }
  int64_t token_to_id(const std::string& token) const;  // -1 if absent

  int64_t eos_id() const { return eos_id_; }  // the tokenizer's end of text (tokenizer_config eos_token), -1 if none
  int64_t pad_id() const { return pad_id_; }  // -1 if none
  int64_t bos_id() const { return bos_id_; }  // -1 if none
  // Every id generation stops on: generation_config.json eos_token_id (else config.json's), plus eos_id().
  const std::vector<int64_t>& stop_ids() const { return stop_ids_; }
  const std::string& chat_template() const { return chat_template_; }  // "" if none

 private:
  std::shared_ptr<const CharTokenizer> char_;
  std::shared_ptr<const HfTokenizer> hf_;
  int64_t eos_id_ = -1, pad_id_ = -1, bos_id_ = -1;
  std::vector<int64_t> stop_ids_;
  std::string chat_template_;
};

}  // namespace moe::tokenizer
