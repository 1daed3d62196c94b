// moe-eval's scoring of responses (pass@1, mean@k, pass@k) and the metrics report reader.
#include <cmath>

#include <catch2/catch.hpp>

#include "moe/eval/eval.h"
#include "moe/eval/report.h"
#include "moe/io/error.h"
#include "moe/reward/countdown.h"

using namespace moe;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinAbs;

namespace {

format::RolloutRecord countdown_record(const reward::CountdownProblem& p, const std::string& response) {
  format::RolloutRecord r;
  r.prompt_text = reward::countdown_prompt(p.numbers, p.target);
  r.response_text = response;
  r.response_tokens.assign(response.size() + 1, 5);  // the tokens do not matter to the checker
  r.task = {{"numbers", p.numbers}, {"target", p.target}};
  return r;
}

std::vector<reward::CountdownProblem> problems(int n) {
  reward::CountdownGenerator gen({}, 7);
  std::vector<reward::CountdownProblem> out;
  for (int i = 0; i < n; ++i) out.push_back(gen.next());
  return out;
}

reward::RewardOptions countdown_opts() {
  reward::RewardOptions o;
  o.task = reward::Task::countdown;
  return o;
}

}  // namespace

TEST_CASE("a model that always answers with the reference solution scores 100%", "[eval]") {
  eval::DatasetScore s;
  for (const auto& p : problems(20)) {
    auto g = countdown_record(p, p.solution);
    std::vector<format::RolloutRecord> sampled(4, countdown_record(p, p.solution + "<eos>"));
    eval::score_prompt(&g, sampled, countdown_opts(), s);
    REQUIRE(g.reward == 1.0);
    REQUIRE(g.reward_info["correct"] == true);
  }
  CHECK(s.prompts == 20);
  CHECK(s.samples == 80);
  CHECK(s.pass_at_1() == 1.0);
  CHECK(s.mean_at_k() == 1.0);
  CHECK(s.pass_at_k() == 1.0);
  CHECK(s.pass_at_1_se() == 0.0);  // no spread when every prompt is right
  CHECK(s.mean_at_k_se() == 0.0);
}

TEST_CASE("well-formed wrong answers earn the format reward but no accuracy", "[eval]") {
  eval::DatasetScore s;
  for (const auto& p : problems(10)) {
    // Every number used once, so it parses and uses the numbers, but the value is off by one.
    auto g = countdown_record(p, "(" + p.solution + ") + 1");
    std::vector<format::RolloutRecord> sampled = {countdown_record(p, "garbage")};
    eval::score_prompt(&g, sampled, countdown_opts(), s);
    CHECK_THAT(*g.reward, WithinAbs(0.1, 1e-12));
    CHECK(g.reward_info["well_formed"] == true);
    CHECK(*sampled[0].reward == 0.0);
  }
  CHECK(s.pass_at_1() == 0.0);
  CHECK(s.mean_at_k() == 0.0);
  CHECK(s.pass_at_k() == 0.0);
  CHECK_THAT(s.greedy_reward, WithinAbs(1.0, 1e-9));
}

TEST_CASE("mean@k counts samples, pass@k prompts with any correct sample", "[eval]") {
  auto ps = problems(2);
  eval::DatasetScore s;
  // Prompt 1: greedy wrong, 1 of 4 samples right. Prompt 2: greedy right, 3 of 4 right.
  auto g1 = countdown_record(ps[0], "1 + 1");
  std::vector<format::RolloutRecord> s1 = {countdown_record(ps[0], "x"), countdown_record(ps[0], ps[0].solution),
                                           countdown_record(ps[0], ""), countdown_record(ps[0], "2")};
  eval::score_prompt(&g1, s1, countdown_opts(), s);
  auto g2 = countdown_record(ps[1], ps[1].solution);
  std::vector<format::RolloutRecord> s2 = {countdown_record(ps[1], ps[1].solution), countdown_record(ps[1], "(1"),
                                           countdown_record(ps[1], ps[1].solution), countdown_record(ps[1], ps[1].solution)};
  eval::score_prompt(&g2, s2, countdown_opts(), s);
  CHECK(s.pass_at_1() == 0.5);
  CHECK(s.mean_at_k() == 0.5);  // 4 of 8
  CHECK(s.pass_at_k() == 1.0);
  // Standard errors: pass@1 binomial sqrt(0.5 * 0.5 / 2); mean@k across prompts of the per-prompt shares
  // 0.25 and 0.75: sample variance 0.125, so sqrt(0.125 / 2) = 0.25.
  CHECK_THAT(s.pass_at_1_se(), WithinAbs(std::sqrt(0.125), 1e-12));
  CHECK_THAT(s.mean_at_k_se(), WithinAbs(0.25, 1e-12));

  eval::EvalResult r;
  r.k = 4;
  s.name = "a.jsonl";
  r.datasets = {s};
  r.overall.name = "overall";
  r.overall.merge(s);
  nlohmann::json j = eval::result_json(r);
  CHECK(j["k"] == 4);
  CHECK(j["datasets"][0]["name"] == "a.jsonl");
  CHECK(j["datasets"][0]["pass@1"] == 0.5);
  CHECK(j["overall"]["pass@k"] == 1.0);
  CHECK(j["overall"]["sampled_correct"] == 4);
  CHECK_THAT(j["overall"]["mean@k_se"].get<double>(), WithinAbs(0.25, 1e-12));  // merge keeps the per-prompt sums
  CHECK_THAT(j["datasets"][0]["pass@1_se"].get<double>(), WithinAbs(std::sqrt(0.125), 1e-12));
  std::string t = eval::format_table(r);
  CHECK_THAT(t, Contains("mean@4"));
  CHECK_THAT(t, Contains("50.00%"));
  CHECK_THAT(t, Contains("100.00%"));
  CHECK(t ==
        "dataset   prompts    pass@1    mean@4    pass@4\n"
        "a.jsonl         2    50.00%    50.00%   100.00%\n"
        "overall         2    50.00%    50.00%   100.00%\n");
  CHECK(eval::format_table(r, /*markdown=*/true) ==
        "| dataset | prompts | pass@1 | mean@4 | pass@4 |\n|---|---:|---:|---:|---:|\n"
        "| a.jsonl | 2 | 50.00% | 50.00% | 100.00% |\n| overall | 2 | 50.00% | 50.00% | 100.00% |\n");
}

TEST_CASE("math answers go through the boxed-answer checker", "[eval]") {
  reward::RewardOptions o;
  o.task = reward::Task::math;
  o.answer_key = "solution_value";
  format::RolloutRecord g;
  g.response_text = "so the answer is \\boxed{0.5}";
  g.task = {{"solution_value", "\\frac{1}{2}"}};
  std::vector<format::RolloutRecord> sampled(2, g);
  sampled[1].response_text = "\\boxed{2}";
  eval::DatasetScore s;
  eval::score_prompt(&g, sampled, o, s);
  CHECK(s.pass_at_1() == 1.0);
  CHECK(s.mean_at_k() == 0.5);
}

TEST_CASE("a payload the task cannot score is an error and counts nothing", "[eval]") {
  format::RolloutRecord g;
  g.response_text = "1 + 2";
  g.task = {{"target", 3}};  // no numbers
  std::vector<format::RolloutRecord> none;
  eval::DatasetScore s;
  REQUIRE_THROWS_AS(eval::score_prompt(&g, none, countdown_opts(), s), Error);
  CHECK(s.prompts == 0);
}

TEST_CASE("report reads update and summary lines", "[eval][report]") {
  const std::string dir = MOEKIT_TEST_DATA "/metrics/";
  eval::RunMetrics r = eval::read_metrics(dir + "rspo.jsonl", "rspo");
  CHECK(r.summary_lines == 12);
  CHECK(r.lines == 39);
  // grad_norm only in update lines; loss in both: the update lines win.
  CHECK(r.series["grad_norm"].size() == 24);
  CHECK(r.series["loss"].size() == 24);
  // mismatch/* only in summary lines.
  REQUIRE(r.series["mismatch/k3_kl"].size() == 12);
  CHECK(r.series["mismatch/k3_kl"].front().first == 2);
  CHECK(r.series["val/accuracy"].size() == 3);
  CHECK(r.series.count("algo") == 0);  // strings are not metrics
  CHECK(r.series.count("reward") == 0);

  REQUIRE_THROWS_WITH(eval::read_metrics(dir + "malformed.jsonl", "x"), Contains("malformed.jsonl:2: malformed JSON"));
  REQUIRE_THROWS_WITH(eval::read_metrics(dir + "no_step.jsonl", "x"), Contains("no_step.jsonl:2: no numeric \"step\""));
}

TEST_CASE("report labels: stems, then paths, or --label", "[eval][report]") {
  CHECK(eval::run_labels({"a/run1.jsonl", "b/run2.jsonl"}, {}) == std::vector<std::string>{"run1", "run2"});
  CHECK(eval::run_labels({"a/m.jsonl", "b/m.jsonl"}, {}) == std::vector<std::string>{"a/m", "b/m"});
  CHECK(eval::run_labels({"a.jsonl", "b.jsonl"}, {"x", "y"}) == std::vector<std::string>{"x", "y"});
  CHECK_THROWS_AS(eval::run_labels({"a.jsonl", "b.jsonl"}, {"x"}), UsageError);
  CHECK_THROWS_AS(eval::run_labels({"a.jsonl", "b.jsonl"}, {"x", "x"}), UsageError);
}

TEST_CASE("report markdown: first/last/min/max per run, skipped keys named", "[eval][report]") {
  eval::RunMetrics r;
  r.label = "run|1";
  r.path = "r.jsonl";
  r.lines = 3;
  r.series["entropy"] = {{1, 1.5}, {2, 0.5}, {3, 1.0}};
  std::string md = eval::report_markdown({r}, eval::report_metrics(), {{"entropy", "entropy.png"}}, {"reward"}, "");
  CHECK_THAT(md, Contains("## run\\|1"));
  CHECK_THAT(md, Contains("| entropy | 3 | 1.5 | 1 | 0.5 | 1.5 |"));
  CHECK_THAT(md, Contains("Not in any run (skipped): `reward`."));
  CHECK_THAT(md, Contains("![entropy](entropy.png)"));
}
