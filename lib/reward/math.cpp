#include "moe/reward/math.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <vector>

namespace moe::reward {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return std::string(s.substr(b, e - b));
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  for (;;) {
    size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  if (pos == 0) return;
  out.append(s, pos, std::string::npos);
  s.swap(out);
}

// Removes a LaTeX command name only when it is not the prefix of a longer command (\left vs \leftarrow).
void remove_command(std::string& s, std::string_view cmd) {
  std::string out;
  size_t pos = 0;
  for (;;) {
    size_t hit = s.find(cmd, pos);
    if (hit == std::string::npos) break;
    size_t end = hit + cmd.size();
    out.append(s, pos, hit - pos);
    if (end < s.size() && is_alpha(s[end])) out.append(cmd);  // a longer command: keep it
    pos = end;
  }
  out.append(s, pos, std::string::npos);
  s.swap(out);
}

// With s[open] == '{': index of the matching '}', skipping escaped braces; npos when unbalanced.
size_t match_brace(std::string_view s, size_t open) {
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    char c = s[i];
    if (c == '\\' && i + 1 < s.size() && (s[i + 1] == '{' || s[i + 1] == '}')) {
      ++i;
      continue;
    }
    if (c == '{') ++depth;
    if (c == '}' && --depth == 0) return i;
  }
  return std::string_view::npos;
}

// One macro argument at s[pos]: a brace group (content returned) or a single character. Advances pos.
bool macro_arg(std::string_view s, size_t& pos, std::string& arg) {
  while (pos < s.size() && s[pos] == ' ') ++pos;
  if (pos >= s.size()) return false;
  if (s[pos] == '{') {
    size_t close = match_brace(s, pos);
    if (close == std::string_view::npos) return false;
    arg = std::string(s.substr(pos + 1, close - pos - 1));
    pos = close + 1;
    return true;
  }
  if (s[pos] == '\\' || s[pos] == '}') return false;
  arg = std::string(1, s[pos]);
  ++pos;
  return true;
}

bool has_operator(const std::string& s) {
  for (char c : s)
    if (c == '+' || c == '-' || c == '*' || c == '/' || c == '^' || c == ' ') return true;
  return false;
}

// \frac{a}{b} -> a/b (parenthesising compound parts), recursively; \frac12 -> 1/2; \sqrt2 -> \sqrt{2}.
std::string rewrite_macros(std::string_view s, int depth = 0) {
  if (depth > 32) return std::string(s);
  std::string out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t frac = s.find("\\frac", pos), sqrt = s.find("\\sqrt", pos);
    size_t hit = std::min(frac, sqrt);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos));
    size_t p = hit + 5;
    if (hit == frac) {
      std::string a, b;
      size_t q = p;
      if (macro_arg(s, q, a) && macro_arg(s, q, b)) {
        a = rewrite_macros(a, depth + 1);
        b = rewrite_macros(b, depth + 1);
        out += has_operator(a) ? "(" + a + ")" : a;
        out += '/';
        out += has_operator(b) ? "(" + b + ")" : b;
        pos = q;
      } else {
        out.append("\\frac");
        pos = p;
      }
    } else {
      std::string a;
      size_t q = p;
      if (q < s.size() && s[q] == '[') {  // \sqrt[n]{x}: leave as written
        out.append("\\sqrt");
        pos = p;
      } else if (macro_arg(s, q, a)) {
        out += "\\sqrt{" + rewrite_macros(a, depth + 1) + "}";
        pos = q;
      } else {
        out.append("\\sqrt");
        pos = p;
      }
    }
  }
  out.append(s.substr(pos));
  return out;
}

// \text{...}-like wrappers: a wrapper ending the answer after a value is a unit and dropped; any other is
// replaced by its content.
void strip_text_macros(std::string& s) {
  static const char* kMacros[] = {"\\text", "\\textbf", "\\textrm", "\\mbox", "\\mathrm", "\\mathbf", "\\textit"};
  for (int guard = 0; guard < 64; ++guard) {
    size_t best = std::string::npos, name_len = 0;
    for (const char* m : kMacros) {
      std::string_view mv(m);
      size_t hit = s.find(mv);
      while (hit != std::string::npos) {
        size_t after = hit + mv.size();
        while (after < s.size() && s[after] == ' ') ++after;
        if (after < s.size() && s[after] == '{') break;
        hit = s.find(mv, hit + 1);
      }
      if (hit != std::string::npos && (hit < best || (hit == best && mv.size() > name_len))) {
        best = hit;
        name_len = mv.size();
      }
    }
    if (best == std::string::npos) return;
    size_t open = s.find('{', best + name_len);
    size_t close = match_brace(s, open);
    if (close == std::string::npos) return;
    std::string content = s.substr(open + 1, close - open - 1);
    bool at_end = trim(std::string_view(s).substr(close + 1)).empty();
    bool after_value = !trim(std::string_view(s).substr(0, best)).empty();
    if (at_end && after_value) {
      s.erase(best);
    } else {
      s.replace(best, close + 1 - best, content);
    }
  }
}

bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!is_digit(c)) return false;
  return true;
}

// "1,234,567.5" (groups of three) -> "1234567.5"; anything else unchanged.
void drop_thousands(std::string& s) {
  size_t start = (!s.empty() && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
  size_t dot = s.find('.');
  std::string_view whole = std::string_view(s).substr(start, (dot == std::string::npos ? s.size() : dot) - start);
  if (whole.find(',') == std::string_view::npos) return;
  size_t first = whole.find(',');
  if (first == 0 || first > 3) return;
  for (size_t i = first; i < whole.size(); i += 4) {
    if (whole[i] != ',' || i + 4 > whole.size()) return;
    if (!all_digits(whole.substr(i + 1, 3))) return;
    if (i + 4 != whole.size() && whole[i + 4] != ',') return;
  }
  if (!all_digits(whole.substr(0, first))) return;
  if (dot != std::string::npos && !all_digits(std::string_view(s).substr(dot + 1))) return;
  s.erase(std::remove(s.begin(), s.end(), ','), s.end());
}

// A plain decimal number "-0012.500" -> "-12.5"; anything else unchanged.
void canonical_decimal(std::string& s) {
  size_t start = (!s.empty() && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
  std::string_view body = std::string_view(s).substr(start);
  size_t dot = body.find('.');
  std::string_view ip = body.substr(0, dot), fp = dot == std::string_view::npos ? "" : body.substr(dot + 1);
  if ((ip.empty() && fp.empty()) || (!ip.empty() && !all_digits(ip)) || (!fp.empty() && !all_digits(fp))) return;
  if (dot != std::string_view::npos && fp.empty() && ip.empty()) return;
  std::string i(ip), f(fp);
  size_t nz = i.find_first_not_of('0');
  i = nz == std::string::npos ? "0" : i.substr(nz);
  while (!f.empty() && f.back() == '0') f.pop_back();
  std::string sign = (s[0] == '-' && !(i == "0" && f.empty())) ? "-" : "";
  s = sign + i + (f.empty() ? "" : "." + f);
}

// Splits at commas outside any brackets.
std::vector<std::string> split_top(std::string_view s) {
  std::vector<std::string> parts;
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '(' || c == '[' || c == '{') ++depth;
    if (c == ')' || c == ']' || c == '}') --depth;
    if (c == ',' && depth == 0) {
      parts.emplace_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  parts.emplace_back(s.substr(start));
  return parts;
}

std::optional<double> parse_decimal(std::string_view s) {
  if (s.empty() || s.size() > 64) return std::nullopt;
  size_t i = 0;
  bool neg = false;
  if (s[0] == '-' || s[0] == '+') neg = s[0] == '-', i = 1;
  size_t digits = 0, dots = 0;
  for (size_t j = i; j < s.size(); ++j) {
    if (is_digit(s[j])) ++digits;
    else if (s[j] == '.') ++dots;
    else return std::nullopt;
  }
  if (digits == 0 || dots > 1) return std::nullopt;
  double v = std::strtod(std::string(s.substr(i)).c_str(), nullptr);
  return neg ? -v : v;
}

bool close_enough(double a, double b) {
  double diff = std::fabs(a - b);
  return diff <= 1e-6 * std::max(std::fabs(a), std::fabs(b)) || diff < 1e-12;
}

bool is_integer(std::string_view s) {
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) s.remove_prefix(1);
  return all_digits(s);
}

bool element_equal(const std::string& a, const std::string& b) {
  if (a == b) return true;
  // Canonical integers compare exactly: 1000000 is not 1000001, whatever the tolerance says.
  if (is_integer(a) && is_integer(b)) return false;
  auto x = math_number(a), y = math_number(b);
  return x && y && close_enough(*x, *y);
}

bool is_open(char c) { return c == '(' || c == '[' || c == '{'; }
bool is_close(char c) { return c == ')' || c == ']' || c == '}'; }

// Index of the bracket closing s[0], or npos.
size_t matching_close(std::string_view s) {
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (is_open(s[i])) ++depth;
    if (is_close(s[i]) && --depth == 0) return i;
  }
  return std::string_view::npos;
}

}  // namespace

std::string_view math_after_thinking(std::string_view r) {
  size_t close = r.rfind("</think>");
  if (close != std::string_view::npos) return r.substr(close + 8);
  if (r.find("<think>") != std::string_view::npos) return {};
  return r;
}

std::optional<std::string> math_extract_answer(std::string_view text) {
  size_t boxed = text.rfind("\\boxed"), fbox = text.rfind("\\fbox");
  size_t hit = boxed == std::string_view::npos ? fbox
               : fbox == std::string_view::npos ? boxed
                                                : std::max(boxed, fbox);
  if (hit != std::string_view::npos) {
    size_t p = hit + (hit == boxed ? 6 : 5);
    while (p < text.size() && text[p] == ' ') ++p;
    if (p < text.size() && text[p] == '{') {
      size_t close = match_brace(text, p);
      if (close != std::string_view::npos) return trim(text.substr(p + 1, close - p - 1));
    } else if (p > hit + (hit == boxed ? 6 : 5)) {  // "\boxed 5": up to the next space or '$'
      size_t e = p;
      while (e < text.size() && !is_space(text[e]) && text[e] != '$') ++e;
      if (e > p) return trim(text.substr(p, e - p));
    }
  }
  // "The answer is 5." / "Answer: 5": the rest of the line after the last marker.
  std::string lower(text);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  size_t a = lower.rfind("answer is"), b = lower.rfind("answer:");
  size_t best = std::string::npos, len = 0;
  if (a != std::string::npos) best = a, len = 9;
  if (b != std::string::npos && (best == std::string::npos || b > best)) best = b, len = 7;
  if (best == std::string::npos) return std::nullopt;
  size_t p = best + len;
  while (p < text.size() && (text[p] == ':' || text[p] == ' ' || text[p] == '\t')) ++p;
  size_t e = text.find('\n', p);
  std::string ans = trim(text.substr(p, e == std::string_view::npos ? std::string_view::npos : e - p));
  if (ans.empty()) return std::nullopt;
  return ans;
}

std::string math_normalize(std::string_view answer) {
  std::string s = trim(answer);
  if (s.find("\\boxed") != std::string::npos || s.find("\\fbox") != std::string::npos) {
    if (auto inner = math_extract_answer(s)) s = *inner;
  }
  replace_all(s, "{,}", ",");  // 1{,}000
  for (const char* sp : {"\\!", "\\,", "\\;", "\\:", "\\ ", "\\qquad", "\\quad", "~"}) replace_all(s, sp, "");
  for (const char* cmd : {"\\left", "\\right", "\\displaystyle", "\\bigl", "\\bigr", "\\Bigl", "\\Bigr"}) remove_command(s, cmd);
  replace_all(s, "\\dfrac", "\\frac");
  replace_all(s, "\\tfrac", "\\frac");
  for (const char* deg : {"^{\\circ}", "^\\circ", "\\circ", "\xc2\xb0", "\\degree"}) replace_all(s, deg, "");
  for (const char* p : {"\\%", "%", "\\$", "$"}) replace_all(s, p, "");
  replace_all(s, "\\{", "{");
  replace_all(s, "\\}", "}");
  strip_text_macros(s);
  s = trim(s);
  // "5 cm", "12 inches": a number followed by plain words only.
  {
    size_t sp = s.find(' ');
    if (sp != std::string::npos && parse_decimal(std::string_view(s).substr(0, sp))) {
      bool words = true;
      for (size_t i = sp; i < s.size(); ++i) words = words && (is_alpha(s[i]) || s[i] == ' ' || s[i] == '^' || is_digit(s[i]));
      if (words && is_alpha(trim(std::string_view(s).substr(sp))[0])) s.erase(sp);
    }
  }
  s.erase(std::remove_if(s.begin(), s.end(), is_space), s.end());
  while (!s.empty() && s.back() == '.') s.pop_back();
  // "x=5", "k = 3": drop a short left-hand side.
  {
    size_t eq = s.find('=');
    if (eq != std::string::npos && eq <= 2 && s.find('=', eq + 1) == std::string::npos && eq > 0 && is_alpha(s[0]))
      s.erase(0, eq + 1);
  }
  s = rewrite_macros(s);
  // ^{2} -> ^2
  for (size_t i = 0; i + 3 < s.size(); ++i)
    if (s[i] == '^' && s[i + 1] == '{' && s[i + 3] == '}') s = s.substr(0, i + 1) + s[i + 2] + s.substr(i + 4);
  drop_thousands(s);
  canonical_decimal(s);
  return s;
}

std::optional<double> math_number(std::string_view s) {
  if (s.empty() || s.size() > 128) return std::nullopt;
  if (auto v = parse_decimal(s)) return v;
  bool neg = false;
  if (s[0] == '-') neg = true, s.remove_prefix(1);
  size_t slash = s.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  auto strip_parens = [](std::string_view p) {
    if (p.size() >= 2 && p.front() == '(' && p.back() == ')') p = p.substr(1, p.size() - 2);
    return p;
  };
  auto a = parse_decimal(strip_parens(s.substr(0, slash))), b = parse_decimal(strip_parens(s.substr(slash + 1)));
  if (!a || !b || *b == 0) return std::nullopt;
  double v = *a / *b;
  return neg ? -v : v;
}

bool math_equal(std::string_view answer, std::string_view reference) {
  if (answer.size() > kMathMaxAnswerBytes || reference.size() > kMathMaxAnswerBytes) return false;
  std::string a = math_normalize(answer), r = math_normalize(reference);
  if (a.empty() || r.empty()) return false;
  if (element_equal(a, r)) return true;
  // Tuples and intervals: same brackets, elementwise.
  if (a.size() >= 2 && r.size() >= 2 && is_open(a.front()) && is_open(r.front()) && is_close(a.back()) &&
      is_close(r.back()) && matching_close(a) == a.size() - 1 && matching_close(r) == r.size() - 1) {
    if (a.front() != r.front() || a.back() != r.back()) return false;
    auto pa = split_top(std::string_view(a).substr(1, a.size() - 2));
    auto pr = split_top(std::string_view(r).substr(1, r.size() - 2));
    if (pa.size() != pr.size() || pa.size() < 2) return false;
    for (size_t i = 0; i < pa.size(); ++i)
      if (!element_equal(math_normalize(pa[i]), math_normalize(pr[i]))) return false;
    return true;
  }
  // Bare comma lists ("all solutions"): the same elements in any order.
  auto pa = split_top(a), pr = split_top(r);
  if (pa.size() < 2 || pa.size() != pr.size() || pa.size() > 256) return false;
  std::vector<bool> used(pr.size(), false);
  for (auto& x : pa) {
    std::string nx = math_normalize(x);
    bool found = false;
    for (size_t j = 0; j < pr.size() && !found; ++j) {
      if (!used[j] && element_equal(nx, math_normalize(pr[j]))) used[j] = found = true;
    }
    if (!found) return false;
  }
  return true;
}

}  // namespace moe::reward
