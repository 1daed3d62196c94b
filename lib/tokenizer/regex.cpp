// PCRE2 (8-bit, UTF + UCP, JIT when the library has it) running the regexes HF tokenizers runs with
// Oniguruma. The two engines are both backtracking, leftmost-first Perl dialects; they differ in what the
// class escapes mean, so \s \S \w \W \d \D are spelled out as Oniguruma's Unicode classes.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "moe/io/error.h"
#include "parts.h"

namespace moe::tokenizer::parts {
namespace {

// Oniguruma (Ruby syntax, UTF-8): \s = White_Space, \w = Letter | Mark | Number | Connector_Punctuation,
// \d = Decimal_Number.
const char* kSpace = "\\x{9}-\\x{d}\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}";
const char* kWord = "\\p{L}\\p{M}\\p{N}\\p{Pc}";
const char* kDigit = "\\p{Nd}";

}  // namespace

std::string onig_to_pcre2(const std::string& p, const std::string& origin) {
  std::string out;
  int in_class = 0;  // nesting depth of [...]
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      const char* cls = e == 's' || e == 'S' ? kSpace : e == 'w' || e == 'W' ? kWord : e == 'd' || e == 'D' ? kDigit : nullptr;
      if (cls) {
        const bool negated = e == 'S' || e == 'W' || e == 'D';
        if (in_class && negated)
          throw Error(origin + ": regex " + nlohmann::json(p).dump() + ": \\" + e + " inside a character class is not supported");
        if (in_class)
          out += cls;
        else
          out += std::string(negated ? "[^" : "[") + cls + "]";
      } else {
        out += c;
        out += e;
      }
      ++i;
      continue;
    }
    if (c == '[') {
      ++in_class;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (c == ']' && in_class) --in_class;
    out += c;
  }
  return out;
}

Regex::Regex(const std::string& pattern, const std::string& origin) {
  const std::string p = onig_to_pcre2(pattern, origin);
  int err = 0;
  PCRE2_SIZE off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw Error(origin + ": regex " + nlohmann::json(pattern).dump() + ": " + reinterpret_cast<char*>(msg) + " at offset " +
                std::to_string(off));
  }
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::matches(std::string_view s, size_t base, std::vector<std::pair<size_t, size_t>>& out) const {
  auto* code = static_cast<pcre2_code*>(code_);
  // One match block per thread and pattern size: allocating it per call costs more than short matches.
  thread_local pcre2_match_data* md = nullptr;
  thread_local uint32_t md_pairs = 0;
  uint32_t pairs = 0;
  pcre2_pattern_info(code, PCRE2_INFO_CAPTURECOUNT, &pairs);
  ++pairs;
  if (!md || md_pairs < pairs) {
    if (md) pcre2_match_data_free(md);
    md = pcre2_match_data_create(pairs, nullptr);
    md_pairs = pairs;
  }
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  while (pos <= s.size()) {
    int rc = jit_ ? pcre2_jit_match(code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr)
                  : pcre2_match(code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      throw Error(std::string("tokenizer: regex match failed: ") + reinterpret_cast<char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t a = ov[0], b = ov[1];
    if (b > a) {
      out.emplace_back(base + a, base + b);
      pos = b;
    } else {  // empty match: step over one character
      pos = a + 1;
      while (pos < s.size() && (static_cast<unsigned char>(s[pos]) & 0xc0) == 0x80) ++pos;
    }
  }
}

}  // namespace moe::tokenizer::parts
