// The parts of a Hugging Face tokenizer.json pipeline, one file each (as HF tokenizers builds them):
//   added tokens (added_tokens.cpp) -> normalizer (normalizers.cpp) -> pre-tokenizer (pre_tokenizers.cpp,
//   regex.cpp) -> BPE model (bpe.cpp) -> ids;  ids -> ByteLevel decoder (decoders.cpp) -> text.
// Every part is built from its JSON object and throws moe::Error naming `origin` and the part it cannot read.
// Private to lib/tokenizer.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe::tokenizer::parts {

// ---- UTF-8 helpers (utf8.cpp)
// Offset of the first byte that does not start a valid UTF-8 sequence (as Rust's str accepts it:
// no overlongs, no surrogates, <= U+10FFFF), or npos when all is valid.
size_t invalid_utf8_offset(std::string_view s);
// Rust's String::from_utf8_lossy: every maximal invalid subpart becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// ---- A Unicode regex as HF tokenizers' Oniguruma sees it, run by PCRE2 (UTF + UCP, JIT when available).
// \s \S \w \W \d \D are rewritten to Oniguruma's Unicode classes before compiling (PCRE2's differ).
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& origin);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Appends the [start, end) byte ranges of the non-empty, non-overlapping matches in s (valid UTF-8),
  // left to right, offset by `base` (empty matches are skipped, as HF tokenizers does).
  void matches(std::string_view s, size_t base, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8
  bool jit_ = false;
};
// The pattern as Oniguruma would read it, with the class escapes spelled out for PCRE2.
std::string onig_to_pcre2(const std::string& pattern, const std::string& origin);

// ---- Normalizers: NFC, NFD, NFKC, NFKD (utf8proc), Sequence of them, or none.
class Normalizer {
 public:
  static std::unique_ptr<Normalizer> from_json(const nlohmann::json& j, const std::string& origin);  // null json: none
  std::string normalize(std::string_view s) const;  // s valid UTF-8
  bool empty() const { return forms_.empty(); }

 private:
  std::vector<int> forms_;  // utf8proc option sets, applied in order
};

// ---- Pre-tokenizers: Sequence of Split(Regex|String, Isolated|Removed, invert) and ByteLevel.
// A pre-tokenized text is a buffer and the [start, end) ranges of its pieces.
struct Pieces {
  std::string buf;
  std::vector<std::pair<size_t, size_t>> ranges;
};
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void apply(Pieces& p) const = 0;
  static std::unique_ptr<PreTokenizer> from_json(const nlohmann::json& j, const std::string& origin,
                                                 bool& byte_level);  // byte_level set if a ByteLevel is in it
};

// ---- Byte-level alphabet of GPT-2: byte b <-> one printable code point (decoders.cpp).
const std::string& byte_level_char(unsigned char b);  // UTF-8 of b's code point
// The bytes a token stands for under the ByteLevel decoder: its characters mapped back to bytes, or (as HF
// tokenizers does when a character is outside the alphabet) the token's own UTF-8 bytes.
std::string byte_level_bytes(const std::string& token);

// ---- BPE over bytes (the byte-level pipeline's model): words are raw bytes, symbols are token ids.
class Bpe {
 public:
  // `vocab` token -> id and `merges` of the model object; throws naming a merge with an unknown token.
  static std::unique_ptr<Bpe> from_json(const nlohmann::json& model, const std::string& origin);
  // Appends the ids of one pre-tokenized word (raw bytes).
  void encode_word(std::string_view word, std::vector<int64_t>& out) const;
  int64_t size() const { return static_cast<int64_t>(id_bytes_.size()); }  // highest id + 1
  // The bytes of id (empty for an id with no token).
  const std::string& bytes_of(int64_t id) const { return id_bytes_[id]; }
  bool has(int64_t id) const { return id >= 0 && id < size() && has_[id]; }
  int64_t token_to_id(const std::string& token) const;  // -1 if absent

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
  std::unordered_map<std::string, int32_t> vocab_;        // token text -> id
  std::unordered_map<std::string, int32_t> bytes_to_id_;  // token bytes -> id (ignore_merges)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left, right) -> (rank, new id)
  std::vector<std::string> id_bytes_;
  std::vector<bool> has_;
  int32_t byte_id_[256];
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false, ignore_merges_ = false;
  // Word cache: encoding is dominated by repeated words. Not thread-safe (one encoder per thread).
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

// ---- Added tokens: matched longest-first on the raw text (normalized: false) or on the normalized text
// (normalized: true), with lstrip/rstrip/single_word as HF tokenizers applies them.
struct AddedToken {
  int64_t id = -1;
  std::string content;
  bool special = false, normalized = false, lstrip = false, rstrip = false, single_word = false;
};
class AddedTokens {
 public:
  void add(AddedToken t);
  void build();  // after the last add
  // Splits `s` into (id or -1, [start, end)) segments; only tokens with normalized == `normalized` match.
  std::vector<std::pair<int64_t, std::pair<size_t, size_t>>> split(std::string_view s, bool normalized) const;
  const AddedToken* by_id(int64_t id) const;
  const AddedToken* by_content(const std::string& content) const;
  const std::vector<AddedToken>& all() const { return tokens_; }

 private:
  struct Trie {
    std::vector<std::unordered_map<unsigned char, int32_t>> next{1};
    std::vector<int32_t> token{-1};  // index in tokens_ ending here
    bool first[256] = {};
  };
  std::vector<AddedToken> tokens_;
  std::unordered_map<int64_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  Trie trie_[2];  // [normalized]
};

}  // namespace moe::tokenizer::parts
