// The BPE model of a byte-level tokenizer.json, on raw bytes: a word starts as the ids of its bytes'
// alphabet characters and pairs are merged lowest rank first (leftmost among equals), with the same
// priority queue and stale-entry rule as HF tokenizers' Word::merge_all, so ties resolve identically.
#include <queue>

#include "moe/io/error.h"
#include "parts.h"

namespace moe::tokenizer::parts {
namespace {

using nlohmann::json;

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

struct Symbol {
  int32_t id, prev, next;
  bool gone;
};

struct Candidate {
  int32_t rank, pos, new_id;
  bool operator<(const Candidate& o) const {  // the priority queue pops the lowest rank, then position
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

bool empty_or_null(const json& m, const char* key) {
  return !m.contains(key) || m[key].is_null() || (m[key].is_string() && m[key].get<std::string>().empty());
}

}  // namespace

std::unique_ptr<Bpe> Bpe::from_json(const json& m, const std::string& origin) {
  if (!m.is_object() || m.value("type", std::string()) != "BPE")
    throw Error(origin + ": model type " + (m.is_object() && m.contains("type") ? m["type"].dump() : std::string("(none)")) +
                " is not supported (only \"BPE\")");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (!empty_or_null(m, key)) throw Error(origin + ": BPE " + key + " is not supported");
  if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0.0)
    throw Error(origin + ": BPE dropout is not supported (encoding must be deterministic)");
  if (m.value("byte_fallback", false)) throw Error(origin + ": BPE byte_fallback is not supported (byte-level BPE only)");
  if (!m.contains("vocab") || !m["vocab"].is_object()) throw Error(origin + ": BPE model without a \"vocab\" object");
  if (!m.contains("merges") || !m["merges"].is_array()) throw Error(origin + ": BPE model without a \"merges\" list");

  auto bpe = std::make_unique<Bpe>();
  Bpe& b = *bpe;
  int64_t max_id = -1;
  b.vocab_.reserve(m["vocab"].size());
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() >= (int64_t{1} << 31))
      throw Error(origin + ": vocab entry " + json(it.key()).dump() + " has no valid id");
    int32_t id = it.value().get<int32_t>();
    b.vocab_.emplace(it.key(), id);
    max_id = std::max<int64_t>(max_id, id);
  }
  b.id_bytes_.assign(static_cast<size_t>(max_id + 1), std::string());
  b.has_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [tok, id] : b.vocab_) {
    if (b.has_[id]) throw Error(origin + ": vocab id " + std::to_string(id) + " is given to two tokens");
    b.has_[id] = true;
    b.id_bytes_[id] = byte_level_bytes(tok);
    // Only tokens written in the byte-level alphabet can be a whole word (HF looks the word's alphabet
    // spelling up in the vocab).
    std::string spelled;
    for (unsigned char c : b.id_bytes_[id]) spelled += byte_level_char(c);
    if (spelled == tok) b.bytes_to_id_.emplace(b.id_bytes_[id], id);
  }
  for (int c = 0; c < 256; ++c) {
    auto it = b.vocab_.find(byte_level_char(static_cast<unsigned char>(c)));
    b.byte_id_[c] = it == b.vocab_.end() ? -1 : it->second;
  }
  if (!empty_or_null(m, "unk_token")) {
    auto it = b.vocab_.find(m["unk_token"].get<std::string>());
    if (it == b.vocab_.end()) throw Error(origin + ": unk_token " + m["unk_token"].dump() + " is not in the vocab");
    b.unk_id_ = it->second;
  }
  b.fuse_unk_ = m.value("fuse_unk", false);
  b.ignore_merges_ = m.value("ignore_merges", false);

  const json& merges = m["merges"];
  b.merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& x = merges[rank];
    std::string left, right;
    if (x.is_string()) {  // "a b" (tokenizers < 0.20)
      const std::string s = x;
      size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        throw Error(origin + ": merge " + std::to_string(rank) + " " + x.dump() + " is not two tokens separated by one space");
      left = s.substr(0, sp);
      right = s.substr(sp + 1);
    } else if (x.is_array() && x.size() == 2 && x[0].is_string() && x[1].is_string()) {  // ["a", "b"]
      left = x[0];
      right = x[1];
    } else {
      throw Error(origin + ": merge " + std::to_string(rank) + " " + x.dump() + " is neither \"a b\" nor [\"a\", \"b\"]");
    }
    auto l = b.vocab_.find(left), r = b.vocab_.find(right), n = b.vocab_.find(left + right);
    for (auto* it : {&l, &r, &n})
      if (*it == b.vocab_.end())
        throw Error(origin + ": merge " + std::to_string(rank) + " " + x.dump() + ": token " +
                    json(it == &l ? left : it == &r ? right : left + right).dump() + " is not in the vocab");
    b.merges_[pair_key(l->second, r->second)] = {static_cast<int32_t>(rank), n->second};
  }
  return bpe;
}

int64_t Bpe::token_to_id(const std::string& token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

void Bpe::merge_word(std::string_view w, std::vector<int32_t>& out) const {
  std::vector<Symbol> sym;
  sym.reserve(w.size());
  // Bytes without a token become unk (fused when fuse_unk), or are dropped when there is no unk.
  bool pending_unk = false;
  auto push = [&](int32_t id) { sym.push_back({id, static_cast<int32_t>(sym.size()) - 1, static_cast<int32_t>(sym.size()) + 1, false}); };
  for (unsigned char c : w) {
    int32_t id = byte_id_[c];
    if (id >= 0) {
      if (pending_unk) push(unk_id_), pending_unk = false;
      push(id);
    } else if (unk_id_ >= 0) {
      if (pending_unk && !fuse_unk_) push(unk_id_);
      pending_unk = true;
    }
  }
  if (pending_unk) push(unk_id_);
  if (sym.empty()) return;
  sym.back().next = -1;

  std::priority_queue<Candidate> queue;
  for (size_t i = 0; i + 1 < sym.size(); ++i) {
    auto it = merges_.find(pair_key(sym[i].id, sym[i + 1].id));
    if (it != merges_.end()) queue.push({it->second.first, static_cast<int32_t>(i), it->second.second});
  }
  while (!queue.empty()) {
    Candidate top = queue.top();
    queue.pop();
    Symbol& s = sym[top.pos];
    if (s.gone || s.next < 0) continue;
    Symbol& right = sym[s.next];
    auto it = merges_.find(pair_key(s.id, right.id));
    if (it == merges_.end() || it->second.second != top.new_id) continue;  // a stale entry
    s.id = top.new_id;
    right.gone = true;
    s.next = right.next;
    if (s.next >= 0) sym[s.next].prev = top.pos;
    if (s.prev >= 0) {
      auto p = merges_.find(pair_key(sym[s.prev].id, s.id));
      if (p != merges_.end()) queue.push({p->second.first, s.prev, p->second.second});
    }
    if (s.next >= 0) {
      auto n = merges_.find(pair_key(s.id, sym[s.next].id));
      if (n != merges_.end()) queue.push({n->second.first, top.pos, n->second.second});
    }
  }
  for (const Symbol& s : sym)
    if (!s.gone) out.push_back(s.id);
}

void Bpe::encode_word(std::string_view word, std::vector<int64_t>& out) const {
  if (word.empty()) return;
  constexpr size_t kCacheWordBytes = 256, kCacheEntries = size_t{1} << 18;
  const bool cacheable = word.size() <= kCacheWordBytes;
  if (cacheable) {
    auto it = cache_.find(std::string(word));
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  auto whole = ignore_merges_ ? bytes_to_id_.find(std::string(word)) : bytes_to_id_.end();
  if (whole != bytes_to_id_.end())
    ids.push_back(whole->second);
  else
    merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    if (cache_.size() >= kCacheEntries) cache_.clear();
    cache_.emplace(std::string(word), std::move(ids));
  }
}

}  // namespace moe::tokenizer::parts
