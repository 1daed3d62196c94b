#include "moe/tokenizer/char_tokenizer.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/io/jsonl.h"

namespace moe::tokenizer {
namespace {
using nlohmann::json;

std::string describe_byte(unsigned char c) {
  char buf[32];
  if (c >= 32 && c < 127)
    std::snprintf(buf, sizeof buf, "'%c'", c);
  else
    std::snprintf(buf, sizeof buf, "byte 0x%02x", c);
  return buf;
}
}  // namespace

void CharTokenizer::build(const std::string& origin) {
  for (auto& x : byte_to_id_) x = -1;
  const int64_t n = size();
  for (int64_t id : {pad_id_, eos_id_, bos_id_})
    if (id >= n) throw Error(origin + ": special token id " + std::to_string(id) + " outside the " + std::to_string(n) + " tokens");
  if (pad_id_ < 0 || eos_id_ < 0) throw Error(origin + ": pad_id and eos_id are required");
  if (pad_id_ == eos_id_) throw Error(origin + ": pad_id and eos_id must differ");
  for (int64_t i = 0; i < n; ++i) {
    if (is_special(i)) continue;
    const std::string& t = tokens_[i];
    if (t.size() != 1) throw Error(origin + ": token " + std::to_string(i) + " (" + json(t).dump() + ") is not one character");
    unsigned char c = static_cast<unsigned char>(t[0]);
    if (byte_to_id_[c] >= 0) throw Error(origin + ": duplicate token " + json(t).dump() + " (ids " + std::to_string(byte_to_id_[c]) + " and " + std::to_string(i) + ")");
    byte_to_id_[c] = static_cast<int32_t>(i);
  }
}

CharTokenizer CharTokenizer::default_vocab() {
  CharTokenizer t;
  t.tokens_ = {"<pad>", "<eos>", "\n"};
  for (int c = 32; c <= 126; ++c) t.tokens_.push_back(std::string(1, static_cast<char>(c)));
  t.pad_id_ = 0;
  t.eos_id_ = 1;
  t.build("default vocabulary");
  return t;
}

CharTokenizer CharTokenizer::from_json(const std::string& text, const std::string& origin) {
  json j = io::parse_json(text, origin + ": ", 0, io::kJsonDocument);
  if (!j.is_object()) throw Error(origin + ": not a JSON object");
  if (!j.contains("type") || !j["type"].is_string() || j["type"] != "char") {
    if (j.contains("model")) throw Error(origin + ": a Hugging Face tokenizers file; only moekit's \"type\": \"char\" tokenizer is supported");
    throw Error(origin + ": missing \"type\": \"char\"");
  }
  if (j.contains("version") && (!j["version"].is_number_integer() || j["version"].get<int64_t>() != 1))
    throw Error(origin + ": tokenizer version " + j["version"].dump() + " is not supported (this build reads version 1)");
  if (!j.contains("tokens") || !j["tokens"].is_array()) throw Error(origin + ": missing list 'tokens'");
  CharTokenizer t;
  for (const auto& x : j["tokens"]) {
    if (!x.is_string()) throw Error(origin + ": token " + x.dump() + " is not a string");
    t.tokens_.push_back(x.get<std::string>());
  }
  auto id = [&](const char* key) -> int64_t {
    if (!j.contains(key) || j[key].is_null()) return -1;
    if (!j[key].is_number_integer() || j[key].get<int64_t>() < 0) throw Error(origin + ": '" + key + "' must be a token id");
    return j[key].get<int64_t>();
  };
  t.pad_id_ = id("pad_id");
  t.eos_id_ = id("eos_id");
  t.bos_id_ = id("bos_id");
  t.build(origin);
  return t;
}

CharTokenizer CharTokenizer::load(const std::string& path) { return from_json(io::read_file(path), path); }

std::string CharTokenizer::to_json() const {
  json j;
  j["type"] = "char";
  j["version"] = 1;
  j["tokens"] = tokens_;
  j["pad_id"] = pad_id_;
  j["eos_id"] = eos_id_;
  j["bos_id"] = bos_id_ >= 0 ? json(bos_id_) : json(nullptr);
  return j.dump(1) + "\n";
}

std::vector<int64_t> CharTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    int32_t id = byte_to_id_[c];
    if (id < 0) throw Error("tokenizer: character " + describe_byte(c) + " at position " + std::to_string(i) + " is not in the vocabulary");
    ids.push_back(id);
  }
  return ids;
}

std::string CharTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  std::string s;
  for (int64_t id : ids) {
    if (id < 0 || id >= size()) throw Error("tokenizer: id " + std::to_string(id) + " outside the vocabulary of " + std::to_string(size()));
    if (is_special(id) && skip_special) continue;
    s += tokens_[id];
  }
  return s;
}

}  // namespace moe::tokenizer
