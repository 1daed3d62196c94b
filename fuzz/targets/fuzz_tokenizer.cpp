// The tokenizer: tokenizer.json parsing, encode and decode. Input: "<tokenizer.json>\0<text>" or just
// text (the default vocabulary). Properties: decode(encode(t)) == t; decode of any in-range ids works.
// Written against the calls every moekit tokenizer offers (from_json, encode, decode, size, eos_id), so a
// second tokenizer family is one more `exercise(...)` line.
#include <cstdint>
#include <cstring>
#include <string>

#include "moe/io/error.h"
#include "moe/tokenizer/char_tokenizer.h"

using namespace moe;

namespace {

template <class Tok>
void exercise(const Tok& tok, const std::string& text, const uint8_t* raw, size_t n) {
  try {
    std::vector<int64_t> ids = tok.encode(text);
    if (tok.decode(ids) != text) __builtin_trap();
  } catch (const Error&) {
  }
  std::vector<int64_t> ids;
  for (size_t i = 0; i + 1 < n && ids.size() < 4096; i += 2) ids.push_back((raw[i] | raw[i + 1] << 8) % (tok.size() + 2));
  try {
    (void)tok.decode(ids, true);
    (void)tok.decode(ids, false);
  } catch (const Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* p = reinterpret_cast<const char*>(data);
  const void* nul = std::memchr(p, 0, size);
  if (size > 0 && p[0] == '{' && nul) {
    const size_t json_len = static_cast<const char*>(nul) - p;
    std::string text(p + json_len + 1, size - json_len - 1);
    try {
      tokenizer::CharTokenizer tok = tokenizer::CharTokenizer::from_json(std::string(p, json_len), "fuzz");
      (void)tokenizer::CharTokenizer::from_json(tok.to_json(), "fuzz");  // its own output reads back
      exercise(tok, text, data, size);
    } catch (const Error&) {
    }
    return 0;
  }
  static const tokenizer::CharTokenizer tok = tokenizer::CharTokenizer::default_vocab();
  exercise(tok, std::string(p, size), data, size);
  return 0;
}
