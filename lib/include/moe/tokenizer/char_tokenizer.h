// Character tokenizer of the built-in tasks, stored in a model dir as tokenizer.json:
//   {"type": "char", "version": 1, "tokens": ["<pad>", "<eos>", "\n", " ", "!", ...],
//    "pad_id": 0, "eos_id": 1, "bos_id": null}
// Every token of `tokens` that is not a special is exactly one byte (character); the specials (<pad>, <eos>,
// optional <bos>) are only produced by ids, never by encode().
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moe::tokenizer {

class CharTokenizer {
 public:
  // The default vocabulary: <pad> = 0, <eos> = 1, "\n" = 2, then printable ASCII 32..126 (98 tokens).
  static CharTokenizer default_vocab();
  // Parses tokenizer.json text; throws moe::Error naming `origin` for a bad type, version, duplicate or
  // multi-character token, or special id out of range.
  static CharTokenizer from_json(const std::string& text, const std::string& origin = "tokenizer.json");
  static CharTokenizer load(const std::string& path);
  std::string to_json() const;  // the tokenizer.json text (stable: same vocabulary, same bytes)

  // text -> ids. A character outside the vocabulary throws moe::Error naming it and its byte position.
  std::vector<int64_t> encode(std::string_view text) const;
  // ids -> text; specials are written as their names ("<eos>") unless skip_special. An id outside the
  // vocabulary throws moe::Error.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special = false) const;

  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t pad_id() const { return pad_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t bos_id() const { return bos_id_; }  // -1 if none
  bool is_special(int64_t id) const { return id == pad_id_ || id == eos_id_ || id == bos_id_; }
  const std::vector<std::string>& tokens() const { return tokens_; }

 private:
  std::vector<std::string> tokens_;
  int64_t pad_id_ = -1, eos_id_ = -1, bos_id_ = -1;
  int32_t byte_to_id_[256];
  void build(const std::string& origin);
};

}  // namespace moe::tokenizer
