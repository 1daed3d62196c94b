// Tokenizer: the kind of tokenizer.json, and the special ids and chat template of the directory's configs.
#include "moe/tokenizer/tokenizer.h"

#include <sys/stat.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/io/jsonl.h"

namespace moe::tokenizer {
namespace {

using nlohmann::json;

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// An int or a list of ints under key, appended to out.
void ids_of(const json& j, const char* key, const std::string& path, std::vector<int64_t>& out) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return;
  const json& v = j[key];
  if (v.is_number_integer()) {
    out.push_back(v.get<int64_t>());
  } else if (v.is_array()) {
    for (const auto& x : v) {
      if (!x.is_number_integer()) throw Error(path + ": " + key + " must be an int or a list of ints");
      out.push_back(x.get<int64_t>());
    }
  } else {
    throw Error(path + ": " + key + " must be an int or a list of ints");
  }
}

}  // namespace

Tokenizer::Tokenizer(CharTokenizer t)
    : char_(std::make_shared<CharTokenizer>(std::move(t))), eos_id_(char_->eos_id()), pad_id_(char_->pad_id()), bos_id_(char_->bos_id()) {
  stop_ids_ = {eos_id_};
}

Tokenizer::Tokenizer(HfTokenizer t) : hf_(std::make_shared<HfTokenizer>(std::move(t))) {}

Tokenizer Tokenizer::from_json(const std::string& text, const std::string& origin) {
  // The kind is in the JSON: moekit's {"type": "char", ...} or HF's {"model": ...}.
  const json j = io::parse_json(text, origin + ": ", 0, io::kJsonDocument);
  if (j.is_object() && j.contains("model")) return Tokenizer(HfTokenizer::from_json(text, origin));
  return Tokenizer(CharTokenizer::from_json(text, origin));
}

Tokenizer Tokenizer::load_dir(const std::string& dir) {
  const std::string tok_path = dir + "/tokenizer.json";
  Tokenizer t = from_json(io::read_file(tok_path), tok_path);
  if (!t.hf_) return t;  // moekit's own dirs: the char tokenizer names its specials

  auto id_of_token = [&](const json& cfg, const char* key, const std::string& path) -> int64_t {
    if (!cfg.contains(key) || cfg[key].is_null()) return -1;
    const json& v = cfg[key];
    std::string content = v.is_string() ? v.get<std::string>() : v.is_object() ? v.value("content", std::string()) : std::string();
    if (content.empty()) throw Error(path + ": " + key + " is neither a token string nor {\"content\": ...}");
    int64_t id = t.hf_->token_to_id(content);
    if (id < 0) throw Error(path + ": " + key + " " + json(content).dump() + " is not a token of " + tok_path);
    return id;
  };
  const std::string tc_path = dir + "/tokenizer_config.json", gen_path = dir + "/generation_config.json",
                    cfg_path = dir + "/config.json", jinja_path = dir + "/chat_template.jinja";
  json tc = exists(tc_path) ? io::read_json_file(tc_path) : json::object();
  json gen = exists(gen_path) ? io::read_json_file(gen_path) : json::object();
  json cfg = exists(cfg_path) ? io::read_json_file(cfg_path) : json::object();
  t.eos_id_ = id_of_token(tc, "eos_token", tc_path);
  t.pad_id_ = id_of_token(tc, "pad_token", tc_path);
  t.bos_id_ = id_of_token(tc, "bos_token", tc_path);
  std::vector<int64_t> cfg_ids;
  auto cfg_id = [&](const char* key) {
    cfg_ids.clear();
    ids_of(cfg, key, cfg_path, cfg_ids);
    return cfg_ids.empty() ? int64_t{-1} : cfg_ids.front();
  };
  if (t.eos_id_ < 0) t.eos_id_ = cfg_id("eos_token_id");
  if (t.pad_id_ < 0) t.pad_id_ = cfg_id("pad_token_id");
  if (t.bos_id_ < 0) t.bos_id_ = cfg_id("bos_token_id");

  std::vector<int64_t> stops;
  ids_of(gen, "eos_token_id", gen_path, stops);
  if (stops.empty()) ids_of(cfg, "eos_token_id", cfg_path, stops);
  if (t.eos_id_ >= 0) stops.insert(stops.begin(), t.eos_id_);
  for (int64_t id : stops)
    if (std::find(t.stop_ids_.begin(), t.stop_ids_.end(), id) == t.stop_ids_.end()) t.stop_ids_.push_back(id);
  if (t.eos_id_ < 0 && !t.stop_ids_.empty()) t.eos_id_ = t.stop_ids_.front();

  if (exists(jinja_path)) {
    t.chat_template_ = io::read_file(jinja_path);
  } else if (tc.contains("chat_template")) {
    const json& ct = tc["chat_template"];
    if (ct.is_string()) {
      t.chat_template_ = ct;
    } else if (ct.is_array()) {  // [{"name": "default", "template": ...}, ...]
      for (const auto& x : ct)
        if (x.is_object() && x.value("name", std::string()) == "default") t.chat_template_ = x.value("template", std::string());
    }
  }
  return t;
}

std::vector<int64_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  if (hf_) return hf_->encode(text, add_special);
  return char_->encode(text);
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  if (hf_) return hf_->decode(ids, skip_special);
  std::vector<int64_t> known;
  known.reserve(ids.size());
  for (int64_t id : ids)
    if (id >= 0 && id < char_->size()) known.push_back(id);
  return char_->decode(known, skip_special);
}

int64_t Tokenizer::size() const { return hf_ ? hf_->size() : char_->size(); }

int64_t Tokenizer::token_to_id(const std::string& token) const {
  if (hf_) return hf_->token_to_id(token);
  const auto& toks = char_->tokens();
  auto it = std::find(toks.begin(), toks.end(), token);
  return it == toks.end() ? -1 : static_cast<int64_t>(it - toks.begin());
}

}  // namespace moe::tokenizer
