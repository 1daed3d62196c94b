// Math answer checking: extract the final answer of a response, normalise it and the reference, and
// compare (numerically when both are numbers, elementwise for tuples and intervals, else as strings).
// Every function takes any byte string safely and runs in time about linear in its length.
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace moe::reward {

// The final answer of a response: the content of the last \boxed{...} or \fbox{...} (nested braces
// allowed; "\boxed 5" up to the next space or '$'), else the rest of the line after the last "answer is"
// or "Answer:" (case-insensitive). nullopt when none is found.
std::optional<std::string> math_extract_answer(std::string_view response);

// The part of a reasoning model's response that holds its answer: after the last "</think>"; empty when
// a "<think>" is never closed (the thinking was cut off: no answer); the whole response without either.
std::string_view math_after_thinking(std::string_view response);

// Canonical text of an answer: spaces, $, \left/\right, \! \, \; spacing, \displaystyle, ^\circ, \%, %,
// \text{...} units after a value, a trailing period, "x =" prefixes and \boxed wrappers removed;
// \dfrac and \tfrac -> \frac; \frac12 -> \frac{1}{2}; \sqrt2 -> \sqrt{2}; thousands separators and
// leading zeros dropped from plain numbers; trailing zeros after a decimal point dropped.
std::string math_normalize(std::string_view answer);

// Value of a normalised answer when it is a number: integer, decimal, a/b, \frac{a}{b} with numeric a, b,
// optionally negative. nullopt otherwise.
std::optional<double> math_number(std::string_view normalized);

// Answers and references longer than this are never equal to anything: no real answer is this long, and
// refusing early keeps hostile text cheap. The scorer refuses a longer reference with an error.
inline constexpr size_t kMathMaxAnswerBytes = 8192;

// True when the two answers mean the same: numbers equal to a relative tolerance of 1e-6; tuples,
// intervals (bracket types must match) and comma lists elementwise; otherwise equal normalised text.
// False when either is longer than kMathMaxAnswerBytes.
bool math_equal(std::string_view answer, std::string_view reference);

}  // namespace moe::reward
