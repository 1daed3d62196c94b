// The math grader: answer extraction, normalisation, numbers and equality. Input: response '\0' reference.
// Property: an answer equals itself whenever it has a number value and is within the grader's length
// limit (longer ones are never equal to anything, by contract).
#include <cstdint>
#include <cstring>
#include <cmath>
#include <string_view>

#include "moe/reward/math.h"

using namespace moe::reward;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* p = reinterpret_cast<const char*>(data);
  const void* nul = std::memchr(p, 0, size);
  std::string_view response(p, nul ? static_cast<const char*>(nul) - p : size);
  std::string_view reference = nul ? std::string_view(static_cast<const char*>(nul) + 1, size - response.size() - 1) : "42";
  auto answer = math_extract_answer(response);
  std::string norm = math_normalize(reference);
  auto num = math_number(norm);
  if (answer) (void)math_equal(*answer, reference);
  if (num && !std::isnan(*num) && reference.size() <= kMathMaxAnswerBytes && !math_equal(reference, reference)) __builtin_trap();
  return 0;
}
