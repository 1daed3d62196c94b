// The Countdown task (RSPO paper's small study, TinyZero): numbers and a target reachable with + - * /.
//
// Prompt format (exactly the text fed to the model): numbers separated by one space, '=', the target,
// '|', e.g. "3 7 12=57|". The model answers with an expression and then its end-of-sequence token.
//
// Two rules, on purpose different:
//  - The generator only emits problems with a solution in the left-deep form "(a o b) o c"
//    ("((a o b) o c) o d" for four numbers) that uses every number exactly once and whose intermediate
//    results are all non-negative integers (subtraction only when the result is >= 0, division only
//    when exact). The reference solution is written in that form.
//  - The checker accepts any expression of the grammar below that uses exactly the given numbers (as a
//    multiset, every number once) and equals the target in exact rational arithmetic, whatever its
//    intermediate values. A problem solvable by the first rule is solvable by the second.
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

namespace moe::reward {

struct CountdownProblem {
  std::vector<int64_t> numbers;  // in prompt order
  int64_t target = 0;
  std::string solution;          // reference answer in the response format, e.g. "(7 * 12) - 27"
};

// "3 7 12=57|"
std::string countdown_prompt(const std::vector<int64_t>& numbers, int64_t target);

// Train/test bucket of a problem from a hash of its canonical form (sorted numbers, target): independent
// of the seed and of the order of the numbers, so the test problems of any seed never appear in the
// training set of any seed. True when the problem belongs to the test split.
bool countdown_is_test(const std::vector<int64_t>& numbers, int64_t target, int test_percent);

// Exhaustive search over left-deep chains under the generator's rule (all numbers, non-negative integer
// intermediates, exact division). Numbers are tried in the given order first (permutations in
// lexicographic order of positions, then operators + - * /), so the returned solution is deterministic.
// `targets_out` (if not null) receives every reachable value in [lo, hi], sorted, without duplicates.
// Returns "" when `target` is not reachable (pass target < lo to only collect targets).
std::string countdown_solve(const std::vector<int64_t>& numbers, int64_t target, int64_t lo = 1,
                            int64_t hi = 100, std::vector<int64_t>* targets_out = nullptr);

struct CountdownGenOptions {
  int count = 3;           // numbers per problem (3 or 4)
  int64_t max_number = 20;  // numbers drawn uniformly from 1..max_number (repeats allowed)
  int64_t max_target = 100;  // targets in 1..max_target
  bool test = false;        // draw from the test split instead of the train split
  int test_percent = 10;    // share of canonical problems in the test split
  bool unique = false;      // never emit the same canonical problem twice
};

// Deterministic problem stream for a seed. Uses std::mt19937_64 (whose output sequence the C++ standard
// fixes) with our own unbiased mapping to ranges, because std::uniform_int_distribution is
// implementation-defined: the same seed gives the same problems with every standard library.
class CountdownGenerator {
 public:
  CountdownGenerator(CountdownGenOptions opts, uint64_t seed);  // throws moe::UsageError on bad options
  // Draws numbers uniformly, then the target uniformly among the reachable targets of the split.
  // Throws moe::Error if `unique` is set and no new problem turns up in many draws.
  CountdownProblem next();

 private:
  uint64_t uniform(uint64_t n);  // uniform in [0, n)
  CountdownGenOptions opts_;
  std::mt19937_64 rng_;
  std::unordered_set<std::string> seen_;
};

// Result of checking one response against a problem.
struct CountdownCheck {
  bool well_formed = false;  // the text parses as an expression of the grammar
  bool correct = false;      // well formed, uses exactly the numbers, equals the target
  std::string reason;        // "ok", "empty", "syntax", "too_deep", "numbers", "div_zero", "overflow", "value"
};

// Response grammar (spaces allowed between tokens; nothing else before or after):
//   expr   := term (('+' | '-') term)*
//   term   := factor (('*' | '/') factor)*
//   factor := integer | '(' expr ')'        integer := [0-9]+  (no sign: no unary minus)
// Parentheses nest at most kCountdownMaxDepth deep; evaluation is exact over 64-bit rationals, and an
// overflow or a division by zero makes the answer wrong (never undefined behaviour). Runs in time linear
// in the text; any byte string is safe input.
// If the text contains "<answer>...</answer>", the last such span is checked instead of the whole text.
inline constexpr int kCountdownMaxDepth = 64;
CountdownCheck countdown_check(std::string_view response, const std::vector<int64_t>& numbers,
                               int64_t target);

}  // namespace moe::reward
