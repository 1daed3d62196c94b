#include "moe/reward/scorer.h"

#include <cmath>
#include <cstdint>
#include <cstdio>

#include "moe/io/error.h"
#include "moe/reward/countdown.h"
#include "moe/reward/math.h"

namespace moe::reward {
namespace {

std::string clip(std::string s, size_t n) {
  if (s.size() > n) s.resize(n);
  return s;
}

// An integer of the payload, exactly: false for a non-integer. A value outside the signed 64-bit range
// (nlohmann keeps up to 2^64 - 1 as unsigned, beyond that a float) is an error, never read modulo 2^64.
bool json_int(const nlohmann::json& j, int64_t& out, const char* what) {
  if (j.is_number_unsigned()) {
    if (j.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      throw Error(std::string("task payload ") + what + " " + j.dump() + " is outside the signed 64-bit integer range");
    out = static_cast<int64_t>(j.get<uint64_t>());
    return true;
  }
  if (j.is_number_integer()) {
    out = j.get<int64_t>();
    return true;
  }
  if (j.is_number_float()) {  // JSON from Python may write 7.0
    double d = j.get<double>();
    if (std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9e15) {
      out = static_cast<int64_t>(d);
      return true;
    }
    if (std::isfinite(d) && std::floor(d) == d)
      throw Error(std::string("task payload ") + what + " " + j.dump() + " is an integer too large to hold exactly");
  }
  return false;
}

Score score_countdown(const format::RolloutRecord& rec, const RewardOptions& opts) {
  const auto& task = rec.task;
  auto nums = task.is_object() ? task.find("numbers") : task.end();
  auto tgt = task.is_object() ? task.find("target") : task.end();
  if (!task.is_object() || nums == task.end() || tgt == task.end())
    throw Error("task payload has no 'numbers' and 'target' (is this a countdown stream? see moe-data(1))");
  int64_t target;
  if (!json_int(*tgt, target, "'target'")) throw Error("task payload 'target' is not an integer");
  if (!nums->is_array() || nums->empty() || nums->size() > 16)
    throw Error("task payload 'numbers' is not an array of 1..16 integers");
  std::vector<int64_t> numbers;
  for (const auto& v : *nums) {
    int64_t x;
    if (!json_int(v, x, "'numbers' element")) throw Error("task payload 'numbers' holds a non-integer");
    numbers.push_back(x);
  }
  CountdownCheck c = countdown_check(response_for_scoring(rec.response_text), numbers, target);
  Score s;
  s.correct = c.correct;
  s.score = c.correct ? 1.0 : c.well_formed ? opts.format_reward : 0.0;
  s.info = {{"score", s.score}, {"correct", c.correct}, {"well_formed", c.well_formed}, {"reason", c.reason}};
  return s;
}

Score score_math(const format::RolloutRecord& rec, const RewardOptions& opts) {
  const auto& task = rec.task;
  auto it = task.is_object() ? task.find(opts.answer_key) : task.end();
  if (it == task.end() || it->is_null())
    throw Error("task payload has no '" + opts.answer_key + "' (the reference answer; see --answer-key)");
  std::string reference;
  if (it->is_string()) reference = it->get<std::string>();
  else if (it->is_number_unsigned()) reference = std::to_string(it->get<uint64_t>());
  else if (it->is_number_integer()) reference = std::to_string(it->get<int64_t>());
  else if (it->is_number()) reference = it->dump();
  else throw Error("task payload '" + opts.answer_key + "' is not a string or a number");
  if (reference.size() > kMathMaxAnswerBytes)
    throw Error("task payload '" + opts.answer_key + "' is " + std::to_string(reference.size()) +
                " bytes long; a math reference answer may be at most " + std::to_string(kMathMaxAnswerBytes));
  auto extracted = math_extract_answer(math_after_thinking(response_for_scoring(rec.response_text)));
  Score s;
  s.correct = extracted && math_equal(*extracted, reference);
  s.score = s.correct ? 1.0 : extracted ? opts.format_reward : 0.0;
  s.info = {{"score", s.score}, {"correct", s.correct}};
  s.info["extracted"] = extracted ? nlohmann::json(clip(*extracted, 256)) : nlohmann::json(nullptr);
  return s;
}

}  // namespace

Task parse_task(const std::string& name) {
  if (name == "countdown") return Task::countdown;
  if (name == "math") return Task::math;
  if (name == "keep") return Task::keep;
  throw UsageError("--task: unknown task '" + name + "' (countdown, math, keep)");
}

const char* task_name(Task task) {
  switch (task) {
    case Task::countdown: return "countdown";
    case Task::math: return "math";
    default: return "keep";
  }
}

nlohmann::json RewardOptions::to_json() const {
  nlohmann::json j = {{"task", task_name(task)}, {"adv", adv_kind_name(adv)},
                      {"drop_uniform_groups", drop_uniform_groups}};
  if (task != Task::keep) j["format_reward"] = format_reward;
  if (task == Task::math) j["answer_key"] = answer_key;
  if (overlong_cache > 0) j["overlong"] = {overlong_max, overlong_cache};
  return j;
}

std::string_view response_for_scoring(std::string_view t) {
  auto strip_space = [&t] {
    while (!t.empty() && (t.back() == ' ' || t.back() == '\n' || t.back() == '\t' || t.back() == '\r')) t.remove_suffix(1);
    while (!t.empty() && (t.front() == ' ' || t.front() == '\n' || t.front() == '\t' || t.front() == '\r')) t.remove_prefix(1);
  };
  strip_space();
  for (std::string_view eos : {"<eos>", "</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>"}) {
    if (t.size() >= eos.size() && t.substr(t.size() - eos.size()) == eos) {
      t.remove_suffix(eos.size());
      strip_space();
      break;
    }
  }
  return t;
}

Score score_record(const format::RolloutRecord& rec, const RewardOptions& opts) {
  switch (opts.task) {
    case Task::countdown: return score_countdown(rec, opts);
    case Task::math: return score_math(rec, opts);
    default: {
      if (!rec.reward) throw Error("record has no 'reward' (--task keep needs rewarded records)");
      if (!std::isfinite(*rec.reward)) throw Error("record has a non-finite reward");
      Score s;
      s.score = *rec.reward;
      s.info = rec.reward_info.is_object() ? rec.reward_info : nlohmann::json::object();
      auto c = s.info.find("correct");
      s.correct = c != s.info.end() && c->is_boolean() && c->get<bool>();
      s.info["score"] = s.score;
      return s;
    }
  }
}

std::string RewardSummary::to_string(Task task) const {
  auto count = [](uint64_t n, const char* what) { return std::to_string(n) + " " + what + (n == 1 ? "" : "s"); };
  auto pct = [](uint64_t a, uint64_t b) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.2f%% (%llu/%llu)", b ? 100.0 * a / b : 0.0, (unsigned long long)a,
                  (unsigned long long)b);
    return std::string(buf);
  };
  char mean[32];
  std::snprintf(mean, sizeof mean, "%.4f", records ? reward_sum / records : 0.0);
  std::string s = count(records, "record") + " in " + count(groups, "group") + ", mean reward " + mean;
  if (task != Task::keep || correct > 0) s += ", accuracy " + pct(correct, records);
  s += ", uniform groups " + pct(uniform_groups, groups);
  s += ", dropped " + count(dropped_records, "record") + " in " + count(dropped_groups, "group");
  s += ", wrote " + count(records - dropped_records, "record") + " in " + count(groups - dropped_groups, "group");
  return s;
}

void GroupStage::push(format::RolloutRecord&& rec, const Emit& emit) {
  const bool starts_group = group_.empty() || rec.group != group_.front().group;
  if (starts_group && seen_groups_.count(rec.group))
    throw Error("group " + std::to_string(rec.group) +
                " seen again after another group (records of a group must be adjacent)");
  Score s = score_record(rec, opts_);
  double reward = s.score;
  if (opts_.overlong_cache > 0) {
    double pen = overlong_penalty(static_cast<int64_t>(rec.response_tokens.size()), opts_.overlong_max, opts_.overlong_cache);
    s.info["overlong"] = pen;
    reward += pen;
  }
  if (!std::isfinite(reward)) throw Error("reward is not finite");
  rec.reward = reward;
  rec.reward_info = std::move(s.info);
  ++sum_.records;
  sum_.reward_sum += reward;
  if (s.correct) ++sum_.correct;
  if (starts_group) {
    close_group(emit);
    seen_groups_.insert(rec.group);
  }
  rewards_.push_back(reward);
  group_.push_back(std::move(rec));
}

void GroupStage::close_group(const Emit& emit) {
  if (group_.empty()) return;
  ++sum_.groups;
  bool uniform = rewards_uniform(rewards_);
  if (uniform) ++sum_.uniform_groups;
  if (uniform && opts_.drop_uniform_groups) {
    ++sum_.dropped_groups;
    sum_.dropped_records += group_.size();
  } else {
    std::vector<double> adv = group_advantages(rewards_, opts_.adv);
    for (size_t i = 0; i < group_.size(); ++i) {
      group_[i].advantage = adv[i];
      emit(group_[i]);
    }
  }
  group_.clear();
  rewards_.clear();
}

void GroupStage::finish(const Emit& emit) { close_group(emit); }

}  // namespace moe::reward
