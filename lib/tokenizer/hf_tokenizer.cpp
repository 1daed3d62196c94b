// HfTokenizer: tokenizer.json read into the parts of parts.h and run in HF tokenizers' order.
#include "moe/tokenizer/hf_tokenizer.h"

#include "moe/io/error.h"
#include "moe/io/jsonl.h"
#include "parts.h"

namespace moe::tokenizer {

using nlohmann::json;

struct HfTokenizer::Impl {
  parts::AddedTokens added;
  std::unique_ptr<parts::Normalizer> normalizer;
  std::unique_ptr<parts::PreTokenizer> pre;
  std::unique_ptr<parts::Bpe> bpe;
  std::vector<int64_t> post_prefix, post_suffix;  // TemplateProcessing "single" specials
  int64_t size = 0;
};

namespace {

// The single-sequence template of a TemplateProcessing post-processor: specials before and after $A.
void read_template(const json& pp, const std::string& origin, HfTokenizer::Impl& m) {
  const json& single = pp.value("single", json::array());
  const json& specials = pp.value("special_tokens", json::object());
  bool seen_seq = false;
  for (const auto& item : single) {
    if (item.contains("Sequence")) {
      seen_seq = true;
      continue;
    }
    if (!item.contains("SpecialToken")) throw Error(origin + ": post_processor TemplateProcessing item " + item.dump() + " is not understood");
    const std::string name = item["SpecialToken"].value("id", std::string());
    if (!specials.contains(name) || !specials[name].contains("ids") || !specials[name]["ids"].is_array())
      throw Error(origin + ": post_processor TemplateProcessing: special token " + json(name).dump() + " has no ids");
    for (const auto& id : specials[name]["ids"]) (seen_seq ? m.post_suffix : m.post_prefix).push_back(id.get<int64_t>());
  }
}

}  // namespace

HfTokenizer HfTokenizer::from_json(const std::string& text, const std::string& origin) {
  json j = io::parse_json(text, origin + ": ", 0, io::kJsonDocument);
  if (!j.is_object() || !j.contains("model")) throw Error(origin + ": not a Hugging Face tokenizer.json (no \"model\")");
  auto m = std::make_shared<Impl>();
  try {
    m->bpe = parts::Bpe::from_json(j["model"], origin);
    m->normalizer = parts::Normalizer::from_json(j.value("normalizer", json()), origin);
    bool byte_level = false;
    const json& pre = j.value("pre_tokenizer", json());
    if (!pre.is_null()) m->pre = parts::PreTokenizer::from_json(pre, origin, byte_level);
    if (!byte_level) throw Error(origin + ": the pre_tokenizer has no ByteLevel step: only byte-level BPE is supported");
    const json& dec = j.value("decoder", json());
    if (!dec.is_object() || dec.value("type", std::string()) != "ByteLevel")
      throw Error(origin + ": decoder " + (dec.is_object() ? dec.value("type", std::string("?")) : std::string("none")) +
                  " is not supported (ByteLevel)");
    const json& pp = j.value("post_processor", json());
    if (pp.is_object()) {
      const std::string type = pp.value("type", std::string());
      if (type == "TemplateProcessing")
        read_template(pp, origin, *m);
      else if (type != "ByteLevel")
        throw Error(origin + ": post_processor \"" + type + "\" is not supported (ByteLevel, TemplateProcessing)");
    }
    m->size = m->bpe->size();
    for (const auto& a : j.value("added_tokens", json::array())) {
      parts::AddedToken t;
      t.id = a.at("id").get<int64_t>();
      t.content = a.at("content").get<std::string>();
      t.special = a.value("special", false);
      t.normalized = a.value("normalized", !t.special);
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      t.single_word = a.value("single_word", false);
      if (t.id < 0) throw Error(origin + ": added token " + a.dump() + " has a negative id");
      m->size = std::max(m->size, t.id + 1);
      m->added.add(std::move(t));
    }
    m->added.build();
  } catch (const json::exception& e) {
    throw Error(origin + ": " + e.what());
  }
  HfTokenizer t;
  t.impl_ = std::move(m);
  return t;
}

std::vector<int64_t> HfTokenizer::encode(std::string_view text, bool with_post) const {
  const Impl& m = *impl_;
  size_t bad = parts::invalid_utf8_offset(text);
  if (bad != std::string_view::npos) throw Error("invalid UTF-8 at byte offset " + std::to_string(bad));
  std::vector<int64_t> ids;
  if (with_post) ids = m.post_prefix;
  parts::Pieces pieces;
  auto model_part = [&](std::string_view s) {
    pieces.buf.assign(s);
    pieces.ranges.assign(1, {0, s.size()});
    if (m.pre) m.pre->apply(pieces);
    for (auto [a, b] : pieces.ranges) m.bpe->encode_word(std::string_view(pieces.buf).substr(a, b - a), ids);
  };
  for (const auto& [id, r] : m.added.split(text, false)) {
    if (id >= 0) {
      ids.push_back(id);
      continue;
    }
    const std::string norm = m.normalizer->normalize(text.substr(r.first, r.second - r.first));
    for (const auto& [id2, r2] : m.added.split(norm, true)) {
      if (id2 >= 0)
        ids.push_back(id2);
      else
        model_part(std::string_view(norm).substr(r2.first, r2.second - r2.first));
    }
  }
  if (with_post) ids.insert(ids.end(), m.post_suffix.begin(), m.post_suffix.end());
  return ids;
}

std::string HfTokenizer::token_bytes(int64_t id) const {
  const Impl& m = *impl_;
  if (const parts::AddedToken* a = m.added.by_id(id)) return parts::byte_level_bytes(a->content);
  if (m.bpe->has(id)) return m.bpe->bytes_of(id);
  return {};
}

std::string HfTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  const Impl& m = *impl_;
  std::string bytes;
  for (int64_t id : ids) {
    if (const parts::AddedToken* a = m.added.by_id(id)) {
      if (!(skip_special && a->special)) bytes += parts::byte_level_bytes(a->content);
    } else if (m.bpe->has(id)) {
      bytes += m.bpe->bytes_of(id);
    }
  }
  return parts::utf8_lossy(bytes);
}

int64_t HfTokenizer::size() const { return impl_->size; }

int64_t HfTokenizer::token_to_id(const std::string& token) const {
  if (const parts::AddedToken* a = impl_->added.by_content(token)) return a->id;
  return impl_->bpe->token_to_id(token);
}

bool HfTokenizer::has_token(int64_t id) const { return impl_->added.by_id(id) || impl_->bpe->has(id); }

bool HfTokenizer::is_special(int64_t id) const {
  const parts::AddedToken* a = impl_->added.by_id(id);
  return a && a->special;
}

}  // namespace moe::tokenizer
