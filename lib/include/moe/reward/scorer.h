// moe-reward's stage: scores rollout records, computes group advantages, drops uniform groups.
// Works on decoded records one at a time and buffers one group, so memory is bounded by the group size.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/format/rollout.h"
#include "moe/reward/advantage.h"

namespace moe::reward {

enum class Task {
  countdown,  // task payload: "numbers" (array of integers), "target" (integer)
  math,       // task payload: the reference answer under RewardOptions::answer_key (string or number)
  keep,       // the record's existing "reward" (finite) is the score
};
Task parse_task(const std::string& name);  // throws moe::UsageError
const char* task_name(Task task);

struct RewardOptions {
  Task task = Task::countdown;
  double format_reward = 0.1;    // score of a well-formed but wrong answer
  std::string answer_key = "answer";
  AdvKind adv = AdvKind::grpo;
  bool drop_uniform_groups = false;
  int64_t overlong_max = 0, overlong_cache = 0;  // shaping on when overlong_cache > 0

  nlohmann::json to_json() const;  // for the output header's meta "reward"
};

// The response as the task sees it: response_text without a trailing end-of-sequence marker
// ("<eos>", "</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>") and surrounding white space.
std::string_view response_for_scoring(std::string_view response_text);

struct Score {
  double score = 0;      // the task's reward before shaping
  bool correct = false;  // counted in the accuracy
  nlohmann::json info = nlohmann::json::object();  // components for reward_info
};
// Scores one record. Throws moe::Error (without location) when the payload lacks what the task needs.
Score score_record(const format::RolloutRecord& rec, const RewardOptions& opts);

struct RewardSummary {
  uint64_t records = 0, groups = 0, uniform_groups = 0;
  uint64_t correct = 0;
  double reward_sum = 0;
  uint64_t dropped_records = 0, dropped_groups = 0;
  std::string to_string(Task task) const;  // one line for stderr
};

class GroupStage {
 public:
  using Emit = std::function<void(format::RolloutRecord&)>;
  explicit GroupStage(RewardOptions opts) : opts_(std::move(opts)) {}
  // Scores `rec` and buffers it. When it starts a new group, the previous group gets its advantages and
  // goes to `emit` (unless dropped). Throws moe::Error (without location: the caller knows the record's
  // file and offset) on a missing payload, a non-finite reward, or a group seen again after another.
  void push(format::RolloutRecord&& rec, const Emit& emit);
  // Emits the last group.
  void finish(const Emit& emit);
  const RewardSummary& summary() const { return sum_; }

 private:
  void close_group(const Emit& emit);
  RewardOptions opts_;
  std::vector<format::RolloutRecord> group_;
  std::vector<double> rewards_;
  std::unordered_set<uint64_t> seen_groups_;
  RewardSummary sum_;
};

}  // namespace moe::reward
