// Accuracy counts and their table / JSON (no libtorch here).
#include <algorithm>
#include <cmath>
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
                      {"pass@1_se", s.pass_at_1_se()},
                      {"greedy_correct", s.greedy_correct},
                      {"greedy_mean_reward", s.prompts ? s.greedy_reward / static_cast<double>(s.prompts) : 0.0},
                      {"greedy_mean_tokens", rate(s.greedy_tokens, s.prompts)}};
  if (k > 0) {
    j["mean@k"] = s.mean_at_k();
    j["mean@k_se"] = s.mean_at_k_se();
    j["pass@k"] = s.pass_at_k();
    j["samples"] = s.samples;
    j["sampled_correct"] = s.sampled_correct;
    j["prompts_any_correct"] = s.any_correct;
    j["sampled_mean_reward"] = s.samples ? s.sampled_reward / static_cast<double>(s.samples) : 0.0;
    j["sampled_mean_tokens"] = rate(s.sampled_tokens, s.samples);
  } else {
    j["mean@k"] = nullptr;
    j["mean@k_se"] = nullptr;
    j["pass@k"] = nullptr;
  }
  return j;
}

}  // namespace

double DatasetScore::pass_at_1() const { return rate(greedy_correct, prompts); }
double DatasetScore::mean_at_k() const { return rate(sampled_correct, samples); }
double DatasetScore::pass_at_k() const { return rate(any_correct, prompts); }

double DatasetScore::pass_at_1_se() const {
  if (prompts == 0) return 0.0;
  const double p = pass_at_1();
  return std::sqrt(p * (1.0 - p) / static_cast<double>(prompts));
}

double DatasetScore::mean_at_k_se() const {
  if (sampled_prompts < 2) return 0.0;
  const double n = static_cast<double>(sampled_prompts);
  const double m = prompt_rate_sum / n;
  const double var = std::max(0.0, (prompt_rate_sq - n * m * m) / (n - 1.0));
  return std::sqrt(var / n);
}

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
  sampled_prompts += o.sampled_prompts;
  prompt_rate_sum += o.prompt_rate_sum;
  prompt_rate_sq += o.prompt_rate_sq;
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
  uint64_t correct = 0;
  for (size_t i = 0; i < ss.size(); ++i) {
    correct += ss[i].correct ? 1 : 0;
    ++into.samples;
    into.sampled_correct += ss[i].correct ? 1 : 0;
    into.sampled_reward += ss[i].score;
    into.sampled_tokens += sampled[i].response_tokens.size();
    any = any || ss[i].correct;
  }
  into.any_correct += any ? 1 : 0;
  if (!ss.empty()) {
    const double r = static_cast<double>(correct) / static_cast<double>(ss.size());
    ++into.sampled_prompts;
    into.prompt_rate_sum += r;
    into.prompt_rate_sq += r * r;
  }
}

std::string format_table(const EvalResult& r, bool markdown) {
  std::vector<const DatasetScore*> rows;
  for (const auto& d : r.datasets) rows.push_back(&d);
  rows.push_back(&r.overall);
  std::vector<std::string> head = {"dataset", "prompts", "pass@1"};
  if (r.k > 0) {
    head.push_back("mean@" + std::to_string(r.k));
    head.push_back("pass@" + std::to_string(r.k));
  }
  std::vector<std::vector<std::string>> cells = {head};
  for (const auto* d : rows) {
    std::vector<std::string> row = {d->name, std::to_string(d->prompts), pct(d->pass_at_1())};
    if (r.k > 0) {
      row.push_back(pct(d->mean_at_k()));
      row.push_back(pct(d->pass_at_k()));
    }
    cells.push_back(std::move(row));
  }
  std::string out;
  if (markdown) {
    auto md = [](std::string s) {
      std::string o;
      for (char c : s) o += c == '|' ? std::string("\\|") : std::string(1, c);
      return o;
    };
    for (size_t i = 0; i < cells.size(); ++i) {
      out += "|";
      for (const auto& c : cells[i]) out += " " + md(c) + " |";
      out += "\n";
      if (i == 0) {
        out += "|---|";
        for (size_t c = 1; c < head.size(); ++c) out += "---:|";
        out += "\n";
      }
    }
    return out;
  }
  // Aligned columns: the name left-aligned, the numbers right-aligned, two spaces apart.
  std::vector<size_t> w(head.size(), 0);
  for (const auto& row : cells)
    for (size_t c = 0; c < row.size(); ++c) w[c] = std::max(w[c], row[c].size());
  for (size_t c = 1; c < w.size(); ++c) w[c] = std::max<size_t>(w[c], 8);
  for (const auto& row : cells) {
    for (size_t c = 0; c < row.size(); ++c) {
      const std::string pad(w[c] - row[c].size(), ' ');
      if (c == 0) out += row[c] + pad;
      else out += "  " + pad + row[c];
    }
    out += "\n";
  }
  return out;
}

nlohmann::json result_json(const EvalResult& r) {
  nlohmann::json j = {{"k", r.k}, {"settings", r.settings}, {"datasets", nlohmann::json::array()}};
  for (const auto& d : r.datasets) j["datasets"].push_back(score_json(d, r.k));
  j["overall"] = score_json(r.overall, r.k);
  return j;
}

}  // namespace moe::eval
