// UTF-8 validation and Rust's lossy decoding (maximal invalid subparts -> U+FFFD), byte for byte.
#include "parts.h"

namespace moe::tokenizer::parts {
namespace {

// Length of the valid sequence starting at s[i], or 0; `good` receives how many bytes form the longest
// valid prefix of a sequence (the maximal subpart to replace when it is incomplete or broken).
size_t seq_len(std::string_view s, size_t i, size_t& good) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  good = 1;
  if (c < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xbf;  // range of the second byte
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
  } else {
    return 0;
  }
  for (size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) return 0;
    const unsigned char d = static_cast<unsigned char>(s[i + k]);
    if (k == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xbf)) return 0;
    good = k + 1;
  }
  return n;
}

}  // namespace

size_t invalid_utf8_offset(std::string_view s) {
  size_t i = 0, good;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t n = seq_len(s, i, good);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0, good;
  while (i < s.size()) {
    size_t n = seq_len(s, i, good);
    if (n) {
      out.append(s.data() + i, n);
      i += n;
    } else {
      out += "\xef\xbf\xbd";
      i += good;
    }
  }
  return out;
}

}  // namespace moe::tokenizer::parts
