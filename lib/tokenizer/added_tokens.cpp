// Added tokens of tokenizer.json, found in the text before any other part runs, as HF tokenizers'
// AddedVocabulary does: leftmost-longest matches of a trie, then lstrip/rstrip widen a match over the
// whitespace beside it and single_word drops a match inside a word.
#include <utf8proc.h>

#include "moe/io/error.h"
#include "parts.h"

namespace moe::tokenizer::parts {
namespace {

// Code point starting at s[i] (valid UTF-8) and its length.
uint32_t cp_at(std::string_view s, size_t i, size_t& n) {
  utf8proc_int32_t cp = 0;
  n = static_cast<size_t>(utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i), static_cast<utf8proc_ssize_t>(s.size() - i), &cp));
  return static_cast<uint32_t>(cp);
}
size_t prev_start(std::string_view s, size_t i) {
  do --i;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xc0) == 0x80);
  return i;
}

// Rust's char::is_whitespace: the White_Space property.
bool is_white_space(uint32_t c) {
  return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 ||
         c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}
// A word character for single_word: alphanumeric (letters and numbers) or '_'.
bool is_word_char(uint32_t c) {
  if (c == '_') return true;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
      return true;
    default:
      return false;
  }
}

}  // namespace

void AddedTokens::add(AddedToken t) {
  if (t.content.empty()) throw Error("added token " + std::to_string(t.id) + " is empty");
  if (by_id_.count(t.id)) return;  // listed twice: the first one counts
  by_id_[t.id] = tokens_.size();
  by_content_.emplace(t.content, tokens_.size());
  tokens_.push_back(std::move(t));
}

void AddedTokens::build() {
  for (auto& t : trie_) t = Trie{};
  for (size_t i = 0; i < tokens_.size(); ++i) {
    Trie& t = trie_[tokens_[i].normalized ? 1 : 0];
    int32_t node = 0;
    for (unsigned char c : tokens_[i].content) {
      auto it = t.next[node].find(c);
      if (it == t.next[node].end()) {
        t.next[node][c] = static_cast<int32_t>(t.next.size());
        node = static_cast<int32_t>(t.next.size());
        t.next.emplace_back();
        t.token.push_back(-1);
      } else {
        node = it->second;
      }
    }
    if (t.token[node] < 0) t.token[node] = static_cast<int32_t>(i);
    t.first[static_cast<unsigned char>(tokens_[i].content[0])] = true;
  }
}

std::vector<std::pair<int64_t, std::pair<size_t, size_t>>> AddedTokens::split(std::string_view s, bool normalized) const {
  std::vector<std::pair<int64_t, std::pair<size_t, size_t>>> out;
  const Trie& t = trie_[normalized ? 1 : 0];
  size_t done = 0;  // end of the last segment written
  size_t i = 0;
  while (i < s.size()) {
    if (!t.first[static_cast<unsigned char>(s[i])]) {
      ++i;
      continue;
    }
    // Longest token starting at i.
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t j = i; j < s.size(); ++j) {
      auto it = t.next[node].find(static_cast<unsigned char>(s[j]));
      if (it == t.next[node].end()) break;
      node = it->second;
      if (t.token[node] >= 0) best = t.token[node], best_end = j + 1;
    }
    if (best < 0) {
      ++i;
      continue;
    }
    const AddedToken& tok = tokens_[best];
    size_t start = i, stop = best_end, n;
    i = best_end;  // the search resumes after the match itself, as aho-corasick's iterator does
    if (tok.single_word) {
      bool word_before = start > 0 && is_word_char(cp_at(s, prev_start(s, start), n));
      bool word_after = stop < s.size() && is_word_char(cp_at(s, stop, n));
      if (word_before || word_after) continue;
    }
    if (tok.lstrip) {
      size_t a = start;
      while (a > 0) {
        size_t p = prev_start(s, a);
        if (!is_white_space(cp_at(s, p, n))) break;
        a = p;
      }
      start = std::max(a, done);
    }
    if (tok.rstrip)
      while (stop < s.size() && is_white_space(cp_at(s, stop, n))) stop += n;
    if (done < start) out.push_back({-1, {done, start}});
    out.push_back({tok.id, {start, stop}});
    done = stop;
  }
  if (done < s.size()) out.push_back({-1, {done, s.size()}});
  return out;
}

const AddedToken* AddedTokens::by_id(int64_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedTokens::by_content(const std::string& content) const {
  auto it = by_content_.find(content);
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

}  // namespace moe::tokenizer::parts
