// A Hugging Face tokenizer.json of the byte-level BPE family (GPT-2, Qwen2/2.5/3, Llama 3, DeepSeek, OLMoE),
// encoding to the same ids as HF `tokenizers` (Tokenizer.encode(text).ids) and decoding as its decode().
// Pipeline: added tokens -> normalizer (NFC, NFD, NFKC, NFKD, Sequence) -> pre-tokenizer (Sequence, Split,
// ByteLevel) -> BPE -> post-processor (ByteLevel, TemplateProcessing) ; decoder ByteLevel.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moe::tokenizer {

class HfTokenizer {
 public:
  // Parses tokenizer.json text; a part it does not implement is a moe::Error naming `origin` and the part.
  static HfTokenizer from_json(const std::string& text, const std::string& origin = "tokenizer.json");

  // text -> ids; added tokens in the text (special or not) are recognised, as HF does by default.
  // with_post: add the post-processor's ids (HF add_special_tokens=True). Invalid UTF-8 throws moe::Error
  // naming the byte offset. Not thread-safe (a word cache); use one tokenizer per thread.
  std::vector<int64_t> encode(std::string_view text, bool with_post = true) const;
  // ids -> text as HF decode(): ids without a token (beyond the vocabulary, or gaps in it) contribute
  // nothing; bytes that are not UTF-8 become U+FFFD. skip_special drops special added tokens.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special = false) const;
  // The bytes of one id (empty for an id without a token), before UTF-8 repair.
  std::string token_bytes(int64_t id) const;

  int64_t size() const;                                   // highest id + 1
  int64_t token_to_id(const std::string& token) const;    // -1 if absent (added tokens first)
  bool has_token(int64_t id) const;
  bool is_special(int64_t id) const;

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

}  // namespace moe::tokenizer
