// GPT-2's byte-level alphabet and the ByteLevel decoder's per-token bytes.
#include <array>
#include <unordered_map>

#include "parts.h"

namespace moe::tokenizer::parts {
namespace {

std::string utf8_of(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xc0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    s += static_cast<char>(0xe0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  }
  return s;
}

// Printable bytes ('!'..'~', 0xa1..0xac, 0xae..0xff) stand for themselves; the others, in byte order,
// for U+0100, U+0101, ...
struct Alphabet {
  std::array<std::string, 256> to_char;
  std::unordered_map<std::string, unsigned char> to_byte;
  Alphabet() {
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
      to_char[b] = utf8_of(printable ? static_cast<uint32_t>(b) : next++);
      to_byte[to_char[b]] = static_cast<unsigned char>(b);
    }
  }
};

const Alphabet& alphabet() {
  static const Alphabet a;
  return a;
}

}  // namespace

const std::string& byte_level_char(unsigned char b) { return alphabet().to_char[b]; }

std::string byte_level_bytes(const std::string& token) {
  const Alphabet& a = alphabet();
  std::string out;
  for (size_t i = 0; i < token.size();) {
    size_t n = 1;
    const unsigned char c = static_cast<unsigned char>(token[i]);
    if (c >= 0xf0) n = 4;
    else if (c >= 0xe0) n = 3;
    else if (c >= 0xc0) n = 2;
    auto it = a.to_byte.find(token.substr(i, n));
    if (it == a.to_byte.end()) return token;  // a character outside the alphabet: the token's own bytes
    out += static_cast<char>(it->second);
    i += n;
  }
  return out;
}

}  // namespace moe::tokenizer::parts
