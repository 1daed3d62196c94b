#include "moe/reward/countdown.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "moe/io/error.h"

namespace moe::reward {
namespace {

const char kOps[4] = {'+', '-', '*', '/'};

// The generator's rule for one step: non-negative integer results, exact division, no overflow.
bool apply_strict(int64_t a, char op, int64_t b, int64_t& out) {
  switch (op) {
    case '+': return !__builtin_add_overflow(a, b, &out);
    case '-':
      if (a < b) return false;
      out = a - b;
      return true;
    case '*': return !__builtin_mul_overflow(a, b, &out);
    default:
      if (b == 0 || a % b != 0) return false;
      out = a / b;
      return true;
  }
}

std::string chain_text(const std::vector<int64_t>& nums, const std::vector<size_t>& perm, const char* ops) {
  std::string s = std::to_string(nums[perm[0]]);
  for (size_t i = 1; i < perm.size(); ++i) {
    if (i > 1) s = "(" + s + ")";
    s += ' ';
    s += ops[i - 1];
    s += ' ';
    s += std::to_string(nums[perm[i]]);
  }
  return s;
}

// Depth-first over the operators of one permutation. Returns true when `target` was found (stops early
// unless targets are being collected).
bool chain_search(const std::vector<int64_t>& nums, const std::vector<size_t>& perm, size_t i, int64_t acc,
                  char* ops, int64_t target, int64_t lo, int64_t hi, std::vector<int64_t>* targets,
                  std::string& solution) {
  if (i == perm.size()) {
    if (targets && acc >= lo && acc <= hi) targets->push_back(acc);
    if (acc == target && solution.empty()) {
      solution = chain_text(nums, perm, ops);
      return targets == nullptr;
    }
    return false;
  }
  for (char op : kOps) {
    int64_t next;
    if (!apply_strict(acc, op, nums[perm[i]], next)) continue;
    ops[i - 1] = op;
    if (chain_search(nums, perm, i + 1, next, ops, target, lo, hi, targets, solution)) return true;
  }
  return false;
}

uint64_t mix64(uint64_t z) {  // splitmix64 finaliser
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::string canonical_key(std::vector<int64_t> numbers, int64_t target) {
  std::sort(numbers.begin(), numbers.end());
  std::string key;
  for (int64_t v : numbers) key += std::to_string(v) + " ";
  key += "=" + std::to_string(target);
  return key;
}

// ---- checker --------------------------------------------------------------------------------------

// Exact rational with a 64-bit numerator and a positive denominator, in lowest terms.
struct Rational {
  int64_t num = 0, den = 1;
};

bool make_rational(__int128 n, __int128 d, Rational& out) {
  if (d == 0) return false;
  if (d < 0) n = -n, d = -d;
  __int128 a = n < 0 ? -n : n, b = d;
  while (b != 0) {
    __int128 t = a % b;
    a = b;
    b = t;
  }
  if (a > 1) n /= a, d /= a;
  const __int128 lim = std::numeric_limits<int64_t>::max();
  if (n > lim || n < -lim || d > lim) return false;
  out.num = static_cast<int64_t>(n);
  out.den = static_cast<int64_t>(d);
  return true;
}

class ExprParser {
 public:
  explicit ExprParser(std::string_view s) : s_(s) {}

  // Parses the whole text. On success `value_ok` tells whether evaluation stayed defined.
  CountdownCheck run(const std::vector<int64_t>& numbers, int64_t target) {
    CountdownCheck res;
    skip_space();
    if (pos_ == s_.size()) {
      res.reason = "empty";
      return res;
    }
    Rational v;
    bool ok = expr(v, 0);
    skip_space();
    if (!ok || pos_ != s_.size()) {
      res.reason = too_deep_ ? "too_deep" : "syntax";
      return res;
    }
    res.well_formed = true;
    std::vector<int64_t> want = numbers;
    std::sort(want.begin(), want.end());
    std::sort(used_.begin(), used_.end());
    if (huge_literal_ || used_ != want) {
      res.reason = "numbers";
    } else if (div_zero_) {
      res.reason = "div_zero";
    } else if (overflow_) {
      res.reason = "overflow";
    } else if (v.den != 1 || v.num != target) {
      res.reason = "value";
    } else {
      res.correct = true;
      res.reason = "ok";
    }
    return res;
  }

 private:
  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }
  bool peek(char c) {
    skip_space();
    return pos_ < s_.size() && s_[pos_] == c;
  }
  // Combines a and b into a (when evaluation is still defined); records why it stopped being defined.
  void combine(Rational& a, char op, const Rational& b) {
    if (undefined()) return;
    __int128 an = a.num, ad = a.den, bn = b.num, bd = b.den;
    bool ok = true;
    switch (op) {
      case '+': ok = make_rational(an * bd + bn * ad, ad * bd, a); break;
      case '-': ok = make_rational(an * bd - bn * ad, ad * bd, a); break;
      case '*': ok = make_rational(an * bn, ad * bd, a); break;
      default:
        if (bn == 0) {
          div_zero_ = true;
          return;
        }
        ok = make_rational(an * bd, ad * bn, a);
    }
    if (!ok) overflow_ = true;
  }
  bool undefined() const { return div_zero_ || overflow_ || huge_literal_; }

  bool expr(Rational& v, int depth) {
    if (!term(v, depth)) return false;
    while (peek('+') || peek('-')) {
      char op = s_[pos_++];
      Rational rhs;
      if (!term(rhs, depth)) return false;
      combine(v, op, rhs);
    }
    return true;
  }
  bool term(Rational& v, int depth) {
    if (!factor(v, depth)) return false;
    while (peek('*') || peek('/')) {
      char op = s_[pos_++];
      Rational rhs;
      if (!factor(rhs, depth)) return false;
      combine(v, op, rhs);
    }
    return true;
  }
  bool factor(Rational& v, int depth) {
    skip_space();
    if (pos_ >= s_.size()) return false;
    char c = s_[pos_];
    if (c == '(') {
      if (depth + 1 > kCountdownMaxDepth) {
        too_deep_ = true;
        return false;
      }
      ++pos_;
      if (!expr(v, depth + 1)) return false;
      if (!peek(')')) return false;
      ++pos_;
      return true;
    }
    if (c < '0' || c > '9') return false;
    int64_t n = 0;
    bool huge = false;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      if (!huge && (__builtin_mul_overflow(n, int64_t{10}, &n) || __builtin_add_overflow(n, int64_t(s_[pos_] - '0'), &n)))
        huge = true;
      ++pos_;
    }
    if (huge) {
      huge_literal_ = true;
      v = Rational{};
    } else {
      v = Rational{n, 1};
      // A response with more literals than any problem has numbers can never be right; keep the list
      // bounded on hostile input.
      if (used_.size() <= 64) used_.push_back(n);
    }
    return true;
  }

  std::string_view s_;
  size_t pos_ = 0;
  std::vector<int64_t> used_;
  bool too_deep_ = false, div_zero_ = false, overflow_ = false, huge_literal_ = false;
};

std::string_view answer_span(std::string_view text) {
  size_t open = text.rfind("<answer>");
  if (open == std::string_view::npos) return text;
  size_t start = open + 8;
  size_t close = text.find("</answer>", start);
  if (close == std::string_view::npos) return text.substr(start);
  return text.substr(start, close - start);
}

}  // namespace

std::string countdown_prompt(const std::vector<int64_t>& numbers, int64_t target) {
  std::string s;
  for (size_t i = 0; i < numbers.size(); ++i) {
    if (i) s += ' ';
    s += std::to_string(numbers[i]);
  }
  s += '=';
  s += std::to_string(target);
  s += '|';
  return s;
}

bool countdown_is_test(const std::vector<int64_t>& numbers, int64_t target, int test_percent) {
  std::string key = canonical_key(numbers, target);
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a, then a finaliser for well-spread low digits
  for (unsigned char c : key) h = (h ^ c) * 0x100000001b3ULL;
  return static_cast<int>(mix64(h) % 100) < test_percent;
}

std::string countdown_solve(const std::vector<int64_t>& numbers, int64_t target, int64_t lo, int64_t hi,
                            std::vector<int64_t>* targets_out) {
  std::string solution;
  if (numbers.empty()) return solution;
  std::vector<size_t> perm(numbers.size());
  std::iota(perm.begin(), perm.end(), size_t{0});
  std::vector<char> ops(numbers.size(), '+');
  do {
    if (chain_search(numbers, perm, 1, numbers[perm[0]], ops.data(), target, lo, hi, targets_out, solution))
      break;
  } while (std::next_permutation(perm.begin(), perm.end()));
  if (targets_out) {
    std::sort(targets_out->begin(), targets_out->end());
    targets_out->erase(std::unique(targets_out->begin(), targets_out->end()), targets_out->end());
  }
  return solution;
}

CountdownGenerator::CountdownGenerator(CountdownGenOptions opts, uint64_t seed) : opts_(opts), rng_(seed) {
  if (opts_.count < 2 || opts_.count > 6) throw UsageError("--numbers must be between 2 and 6");
  if (opts_.max_number < 1 || opts_.max_number > 1000000) throw UsageError("--max-number must be in 1..1000000");
  if (opts_.max_target < 1) throw UsageError("--max-target must be at least 1");
  if (opts_.test_percent < 1 || opts_.test_percent > 99) throw UsageError("--test-percent must be in 1..99");
}

uint64_t CountdownGenerator::uniform(uint64_t n) {
  // Rejection sampling: accept only draws below the largest multiple of n, so every residue is equally
  // likely. mt19937_64's raw output is specified by the standard; this mapping is ours.
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
  uint64_t x;
  do x = rng_();
  while (x >= limit);
  return x % n;
}

CountdownProblem CountdownGenerator::next() {
  const int kMaxDraws = 200000;
  std::vector<int64_t> targets;
  for (int draw = 0; draw < kMaxDraws; ++draw) {
    CountdownProblem p;
    for (int i = 0; i < opts_.count; ++i) p.numbers.push_back(1 + static_cast<int64_t>(uniform(opts_.max_number)));
    targets.clear();
    countdown_solve(p.numbers, 0, 1, opts_.max_target, &targets);
    std::vector<int64_t> allowed;
    for (int64_t t : targets) {
      if (countdown_is_test(p.numbers, t, opts_.test_percent) != opts_.test) continue;
      if (opts_.unique && seen_.count(canonical_key(p.numbers, t))) continue;
      allowed.push_back(t);
    }
    if (allowed.empty()) continue;
    p.target = allowed[uniform(allowed.size())];
    p.solution = countdown_solve(p.numbers, p.target, 1, opts_.max_target);
    // The solver and the checker are independent code: every emitted problem passes both.
    if (p.solution.empty() || !countdown_check(p.solution, p.numbers, p.target).correct)
      throw std::logic_error("countdown: generated an unverifiable problem " + countdown_prompt(p.numbers, p.target));
    if (opts_.unique) seen_.insert(canonical_key(p.numbers, p.target));
    return p;
  }
  throw Error("countdown: no new problem in " + std::to_string(kMaxDraws) + " draws (" + std::to_string(seen_.size()) +
              " distinct problems emitted): ask for fewer problems or raise --max-number/--max-target");
}

CountdownCheck countdown_check(std::string_view response, const std::vector<int64_t>& numbers, int64_t target) {
  return ExprParser(answer_span(response)).run(numbers, target);
}

}  // namespace moe::reward
