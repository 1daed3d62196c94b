// Accuracy counts and their table / JSON (no libtorch here).
#include <algorithm>
#include <cstdio>

#include "moe/eval/eval.h"

namespace moe::eval {
namespace {

double rate(uint64_t a, uint64_t b) { return b ? static_cast<double>(a) / static_cast<double>(b) : 0.0; }

std::string pct(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f%%", 100.0 * x);
  return buf;
}

nlohmann::json score_json(const DatasetScore& s, int64_t k) {
  nlohmann::json j = {{"name", s.name},
                      {"prompts", s.prompts},
                      {"pass@1", s.pass_at_1()},
                      {"greedy_correct", s.greedy_correct},
                      {"greedy_mean_reward", s.prompts ? s.greedy_reward / static_cast<double>(s.prompts) : 0.0},
                      {"greedy_mean_tokens", rate(s.greedy_tokens, s.prompts)}};
  if (k > 0) {
    j["mean@k"] = s.mean_at_k();
    j["pass@k"] = s.pass_at_k();
    j["samples"] = s.samples;
    j["sampled_correct"] = s.sampled_correct;
    j["prompts_any_correct"] = s.any_correct;
    j["sampled_mean_reward"] = s.samples ? s.sampled_reward / static_cast<double>(s.samples) : 0.0;
    j["sampled_mean_tokens"] = rate(s.sampled_tokens, s.samples);
  } else {
    j["mean@k"] = nullptr;
    j["pass@k"] = nullptr;
  }
  return j;
}

}  // namespace

double DatasetScore::pass_at_1() const { return rate(greedy_correct, prompts); }
double DatasetScore::mean_at_k() const { return rate(sampled_correct, samples); }
double DatasetScore::pass_at_k() const { return rate(any_correct, prompts); }

void DatasetScore::merge(const DatasetScore& o) {
  prompts += o.prompts;
  greedy_correct += o.greedy_correct;
  greedy_reward += o.greedy_reward;
  greedy_tokens += o.greedy_tokens;
  samples += o.samples;
  sampled_correct += o.sampled_correct;
  any_correct += o.any_correct;
  sampled_reward += o.sampled_reward;
  sampled_tokens += o.sampled_tokens;
}

void score_prompt(format::RolloutRecord* greedy, std::vector<format::RolloutRecord>& sampled,
                  const reward::RewardOptions& opts, DatasetScore& into) {
  // Score everything before counting anything, so a bad payload leaves `into` unchanged.
  auto score = [&](format::RolloutRecord& rec) {
    reward::Score s = reward::score_record(rec, opts);
    rec.reward = s.score;
    rec.reward_info = std::move(s.info);
    return s;
  };
  reward::Score g;
  if (greedy) g = score(*greedy);
  std::vector<reward::Score> ss;
  for (auto& rec : sampled) ss.push_back(score(rec));

  ++into.prompts;
  if (greedy) {
    into.greedy_correct += g.correct ? 1 : 0;
    into.greedy_reward += g.score;
    into.greedy_tokens += greedy->response_tokens.size();
  }
  bool any = false;
  for (size_t i = 0; i < ss.size(); ++i) {
    ++into.samples;
    into.sampled_correct += ss[i].correct ? 1 : 0;
    into.sampled_reward += ss[i].score;
    into.sampled_tokens += sampled[i].response_tokens.size();
    any = any || ss[i].correct;
  }
  into.any_correct += any ? 1 : 0;
}

std::string format_table(const EvalResult& r) {
  std::vector<const DatasetScore*> rows;
  for (const auto& d : r.datasets) rows.push_back(&d);
  rows.push_back(&r.overall);
  size_t w = 7;  // "dataset"
  for (const auto* d : rows) w = std::max(w, d->name.size());
  const std::string k = std::to_string(r.k);
  std::vector<std::string> head = {"prompts", "pass@1"};
  if (r.k > 0) {
    head.push_back("mean@" + k);
    head.push_back("pass@" + k);
  }
  auto cell = [](const std::string& s, size_t width) {
    return std::string(width > s.size() ? width - s.size() : 0, ' ') + s;
  };
  std::string out = "dataset" + std::string(w - 7, ' ');
  for (const auto& h : head) out += "  " + cell(h, 8);
  out += "\n";
  for (const auto* d : rows) {
    out += d->name + std::string(w - d->name.size(), ' ');
    out += "  " + cell(std::to_string(d->prompts), 8);
    out += "  " + cell(pct(d->pass_at_1()), 8);
    if (r.k > 0) {
      out += "  " + cell(pct(d->mean_at_k()), 8);
      out += "  " + cell(pct(d->pass_at_k()), 8);
    }
    out += "\n";
  }
  return out;
}

nlohmann::json result_json(const EvalResult& r) {
  nlohmann::json j = {{"k", r.k}, {"datasets", nlohmann::json::array()}};
  for (const auto& d : r.datasets) j["datasets"].push_back(score_json(d, r.k));
  j["overall"] = score_json(r.overall, r.k);
  return j;
}

}  // namespace moe::eval
