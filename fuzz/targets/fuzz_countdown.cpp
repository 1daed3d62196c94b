// The countdown grader and its payload reader. Input: a JSON task payload line, '\n', then the response
// ({"numbers": [...], "target": T} read as moe-reward reads it, any integer range). Property: a response
// graded correct evaluates to the target, so a payload beyond 64 bits can never be graded modulo 2^64.
#include <cstdint>
#include <cstring>
#include <string>

#include "moe/format/rollout.h"
#include "moe/io/error.h"
#include "moe/io/jsonl.h"
#include "moe/reward/countdown.h"
#include "moe/reward/scorer.h"

using namespace moe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* p = reinterpret_cast<const char*>(data);
  const void* nl = std::memchr(p, '\n', size);
  if (!nl) {
    // Raw grader with small fixed numbers.
    (void)reward::countdown_check(std::string_view(p, size), {3, 7, 12}, 33);
    return 0;
  }
  const size_t head = static_cast<const char*>(nl) - p;
  format::RolloutRecord rec;
  try {
    rec.task = io::parse_json(std::string_view(p, head), "fuzz: ");
  } catch (const Error&) {
    return 0;
  }
  rec.response_text.assign(p + head + 1, size - head - 1);
  reward::RewardOptions opts;
  opts.task = reward::Task::countdown;
  try {
    reward::Score s = reward::score_record(rec, opts);
    if (s.correct && !(rec.task["target"].is_number_integer() || rec.task["target"].is_number_float())) __builtin_trap();
    if (s.correct && rec.task["target"].is_number_unsigned() && rec.task["target"].get<uint64_t>() > uint64_t(INT64_MAX))
      __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}
