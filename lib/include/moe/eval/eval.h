// moe-eval: accuracy of a model on prompt datasets. Greedy pass@1, and with k samples at temperature T
// mean@k (share of correct samples) and pass@k (share of prompts with at least one correct sample).
// Correctness is the task checker's (reward_info.correct), never the format reward.
//
// Typical use (what moe-eval's main does):
//   EvalRun run; run.model_dir = "ckpt"; run.data = {"test.jsonl"}; run.reward.task = reward::Task::countdown;
//   EvalResult r = run_eval(run);   // generates, scores, writes the table (or JSON) to run.output
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/format/rollout.h"
#include "moe/reward/scorer.h"

namespace moe::eval {

// Counts of one dataset (or of several, merged). Rates are 0 when their denominator is 0.
struct DatasetScore {
  std::string name;               // the --data path as given ("<stdin>" for "-"), or "overall"
  uint64_t prompts = 0;
  uint64_t greedy_correct = 0;    // prompts whose greedy response is correct
  double greedy_reward = 0;       // sum of the greedy responses' task scores
  uint64_t greedy_tokens = 0;     // response tokens of the greedy responses
  uint64_t samples = 0;           // sampled responses (prompts x k)
  uint64_t sampled_correct = 0;   // correct sampled responses
  uint64_t any_correct = 0;       // prompts with at least one correct sampled response
  double sampled_reward = 0;      // sum of the sampled responses' task scores
  uint64_t sampled_tokens = 0;
  uint64_t sampled_prompts = 0;   // prompts with at least one sampled response
  double prompt_rate_sum = 0;     // sum over those prompts of (correct sampled / sampled)
  double prompt_rate_sq = 0;      // sum over those prompts of (correct sampled / sampled)^2

  double pass_at_1() const;  // greedy_correct / prompts
  double mean_at_k() const;  // sampled_correct / samples
  // Standard errors: binomial sqrt(p (1 - p) / n) for pass@1; for mean@k the standard error across prompts
  // of the per-prompt share of correct samples, sqrt(s^2 / n) with the sample variance s^2 (0 when n < 2).
  double pass_at_1_se() const;
  double mean_at_k_se() const;
  double pass_at_k() const;  // any_correct / prompts (k = samples per prompt)
  void merge(const DatasetScore& other);  // adds the counts (name unchanged)
};

// Scores one prompt's responses in place with the task's checker (sets reward and reward_info of each
// record) and adds them to `into`: `greedy` (may be null) is the greedy response, `sampled` the k sampled
// ones (may be empty). Throws moe::Error (from reward::score_record) when a payload lacks what the task needs.
void score_prompt(format::RolloutRecord* greedy, std::vector<format::RolloutRecord>& sampled,
                  const reward::RewardOptions& opts, DatasetScore& into);

struct EvalResult {
  std::vector<DatasetScore> datasets;  // one per --data, in order
  DatasetScore overall;                // all prompts pooled (a micro average)
  int64_t k = 0;                       // samples per prompt
  nlohmann::json settings = nlohmann::json::object();  // what was run (model, task, temperature, ...)
};

struct EvalRun {
  std::string model_dir;
  std::string device = "cpu";
  std::string dtype = "f32";
  std::vector<std::string> data;      // prompt JSONL files ("-" = stdin, at most once)
  std::string prompt_key = "prompt";  // JSONL key of the prompt text; every other key is the task payload
  bool chat = false;                  // render prompt text with the chat template (rollout::PromptFormat)
  bool no_thinking = false;           // Qwen3 chat: enable_thinking=False
  std::vector<std::string> stop;      // stop strings (finish_reason "stop"; response_text cut before them)
  reward::RewardOptions reward;       // task, answer_key (format_reward only shows in --rollouts-out)
  int64_t samples = 8;                // k sampled responses per prompt (0 = greedy only)
  double temperature = 1.0;           // of the sampled responses (and of every recorded log-prob)
  double top_p = 1.0;
  int64_t top_k = 0;
  int64_t max_new_tokens = 64;
  int64_t batch_size = 64;            // sequences per forward batch
  uint64_t seed = 0;
  bool json = false;                  // JSON instead of the table
  bool markdown = false;              // the table as a markdown table
  std::string output = "-";           // table or JSON
  std::string rollouts_out;           // rollout stream of every response with its reward ("" = none)
  nlohmann::json producer;            // stream header producer (program, version, argv)
};

// Loads the model, generates greedy and sampled responses for every prompt of every dataset, scores them,
// writes the table or JSON to run.output (and the rollouts), and returns the scores. Deterministic for a
// seed, and independent of the batch size. Throws moe::UsageError for bad options, moe::Error for bad
// input (file:line) or a failed write.
EvalResult run_eval(const EvalRun& run);

// Output shapes (public for tests).
// Table: one row per dataset and an "overall" row: prompts, pass@1, mean@k, pass@k (percent); aligned
// columns, or with `markdown` a markdown table.
std::string format_table(const EvalResult& r, bool markdown = false);
// {"k", "settings", "datasets": [{"name", "prompts", "pass@1", "mean@k", "pass@k", counts, mean rewards,
//  ...}], "overall": {...}}; mean@k and pass@k are null when k = 0.
nlohmann::json result_json(const EvalResult& r);

}  // namespace moe::eval
