// Unicode normalizers of tokenizer.json through utf8proc: NFC, NFD, NFKC, NFKD and a Sequence of them.
#include <utf8proc.h>

#include <cstdlib>

#include "moe/io/error.h"
#include "parts.h"

namespace moe::tokenizer::parts {
namespace {

int form_of(const std::string& type) {
  if (type == "NFC") return UTF8PROC_STABLE | UTF8PROC_COMPOSE;
  if (type == "NFD") return UTF8PROC_STABLE | UTF8PROC_DECOMPOSE;
  if (type == "NFKC") return UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
  if (type == "NFKD") return UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
  return 0;
}

void add(const nlohmann::json& j, const std::string& origin, std::vector<int>& forms) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw Error(origin + ": normalizer " + j.dump() + " has no \"type\"");
  const std::string type = j["type"];
  if (type == "Sequence") {
    if (!j.contains("normalizers") || !j["normalizers"].is_array())
      throw Error(origin + ": normalizer Sequence without a \"normalizers\" list");
    for (const auto& n : j["normalizers"]) add(n, origin, forms);
    return;
  }
  int f = form_of(type);
  if (!f) throw Error(origin + ": normalizer \"" + type + "\" is not supported (NFC, NFD, NFKC, NFKD, Sequence or none)");
  forms.push_back(f);
}

}  // namespace

std::unique_ptr<Normalizer> Normalizer::from_json(const nlohmann::json& j, const std::string& origin) {
  auto n = std::make_unique<Normalizer>();
  if (!j.is_null()) add(j, origin, n->forms_);
  return n;
}

std::string Normalizer::normalize(std::string_view s) const {
  std::string cur(s);
  for (int f : forms_) {
    // ASCII is invariant under every normalization form: skip the library for it.
    bool ascii = true;
    for (char c : cur)
      if (static_cast<unsigned char>(c) >= 0x80) {
        ascii = false;
        break;
      }
    if (ascii) break;
    utf8proc_uint8_t* out = nullptr;
    utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(cur.data()), static_cast<utf8proc_ssize_t>(cur.size()), &out,
                                      static_cast<utf8proc_option_t>(f));
    if (n < 0) throw Error(std::string("tokenizer: normalization failed: ") + utf8proc_errmsg(n));
    cur.assign(reinterpret_cast<char*>(out), static_cast<size_t>(n));
    std::free(out);
  }
  return cur;
}

}  // namespace moe::tokenizer::parts
