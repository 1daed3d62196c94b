// Countdown task, advantages and the moe-reward group stage.
#include <catch2/catch.hpp>
#include <cmath>
#include <set>
#include <string>

#include "moe/io/error.h"
#include "moe/reward/advantage.h"
#include "moe/reward/countdown.h"
#include "moe/reward/math.h"
#include "moe/reward/scorer.h"

using namespace moe::reward;

TEST_CASE("countdown prompt format", "[reward][countdown]") {
  CHECK(countdown_prompt({3, 7, 12}, 57) == "3 7 12=57|");
  CHECK(countdown_prompt({1, 2, 3, 4}, 24) == "1 2 3 4=24|");
}

TEST_CASE("countdown solver finds left-deep chains under the strict rule", "[reward][countdown]") {
  CHECK(countdown_solve({3, 7, 12}, 33) == "(3 * 7) + 12");
  CHECK(countdown_solve({2, 3, 4}, 20) == "(2 + 3) * 4");
  CHECK(countdown_check(countdown_solve({12, 3, 4}, 1), {12, 3, 4}, 1).correct);
  CHECK(countdown_solve({7, 2, 1}, 100).empty());  // unreachable
  CHECK(countdown_solve({1, 1, 1}, 4).empty());
  // Prompt order first; 8 - 9 < 0 is never a step, so the first solution found is (8 + 2) - 9.
  CHECK(countdown_solve({9, 8, 2}, 1) == "(8 + 2) - 9");
  std::vector<int64_t> targets;
  countdown_solve({1, 2, 3}, 0, 1, 100, &targets);
  CHECK(targets == std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9});  // 8 = (1 + 3) * 2
}

TEST_CASE("countdown solver agrees with an independent brute force", "[reward][countdown]") {
  // Every (a o b) o c value with non-negative integer steps, computed here directly.
  for (int a = 1; a <= 6; ++a)
    for (int b = 1; b <= 6; ++b)
      for (int c = 1; c <= 6; ++c) {
        std::set<int64_t> want;
        int64_t v[3] = {a, b, c};
        int perm[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
        auto step = [](int64_t x, int op, int64_t y, int64_t& r) {
          if (op == 0) r = x + y;
          else if (op == 1) { if (x < y) return false; r = x - y; }
          else if (op == 2) r = x * y;
          else { if (y == 0 || x % y) return false; r = x / y; }
          return true;
        };
        for (auto& p : perm)
          for (int o1 = 0; o1 < 4; ++o1)
            for (int o2 = 0; o2 < 4; ++o2) {
              int64_t r1, r2;
              if (step(v[p[0]], o1, v[p[1]], r1) && step(r1, o2, v[p[2]], r2) && r2 >= 1 && r2 <= 100) want.insert(r2);
            }
        std::vector<int64_t> got;
        countdown_solve({a, b, c}, 0, 1, 100, &got);
        CHECK(std::vector<int64_t>(want.begin(), want.end()) == got);
        for (int64_t t : got) CHECK(countdown_check(countdown_solve({a, b, c}, t), {a, b, c}, t).correct);
      }
}

TEST_CASE("countdown generator is deterministic and verified", "[reward][countdown]") {
  CountdownGenOptions o;
  CountdownGenerator g1(o, 7), g2(o, 7), g3(o, 8);
  bool differs = false;
  for (int i = 0; i < 500; ++i) {
    auto a = g1.next(), b = g2.next(), c = g3.next();
    CHECK(a.numbers == b.numbers);
    CHECK(a.target == b.target);
    CHECK(a.solution == b.solution);
    differs = differs || a.numbers != c.numbers || a.target != c.target;
    REQUIRE(a.numbers.size() == 3);
    for (int64_t n : a.numbers) CHECK((n >= 1 && n <= 20));
    CHECK((a.target >= 1 && a.target <= 100));
    CHECK(countdown_check(a.solution, a.numbers, a.target).correct);
    CHECK_FALSE(countdown_is_test(a.numbers, a.target, o.test_percent));
  }
  CHECK(differs);
  // Pinned first problem for seed 7: a change of the PRNG mapping would silently change every dataset.
  CountdownGenerator g4(o, 7);
  auto first = g4.next();
  CHECK(first.numbers == std::vector<int64_t>{16, 11, 19});
  CHECK(first.target == 8);
  CHECK(first.solution == "(16 + 11) - 19");
}

TEST_CASE("countdown train and test splits are disjoint", "[reward][countdown]") {
  CountdownGenOptions tr, te;
  te.test = true;
  CountdownGenerator gtr(tr, 1), gte(te, 1);
  std::set<std::string> train, test;
  auto key = [](CountdownProblem p) {
    std::sort(p.numbers.begin(), p.numbers.end());
    return countdown_prompt(p.numbers, p.target);
  };
  for (int i = 0; i < 3000; ++i) train.insert(key(gtr.next()));
  for (int i = 0; i < 600; ++i) {
    auto p = gte.next();
    CHECK(countdown_is_test(p.numbers, p.target, 10));
    test.insert(key(p));
  }
  for (const auto& k : test) CHECK(train.count(k) == 0);
  // The split is by canonical problem: order of the numbers does not matter.
  CHECK(countdown_is_test({3, 7, 12}, 57, 10) == countdown_is_test({12, 3, 7}, 57, 10));
}

TEST_CASE("countdown generator: four numbers, unique problems, bad options", "[reward][countdown]") {
  CountdownGenOptions o;
  o.count = 4;
  CountdownGenerator g(o, 3);
  for (int i = 0; i < 50; ++i) {
    auto p = g.next();
    CHECK(p.numbers.size() == 4);
    CHECK(p.solution.rfind("((", 0) == 0);
    CHECK(countdown_check(p.solution, p.numbers, p.target).correct);
  }
  CountdownGenOptions u;
  u.unique = true;
  u.max_number = 3;  // few problems: the generator must stop with an error, not loop forever
  CountdownGenerator gu(u, 1);
  std::set<std::string> seen;
  CHECK_THROWS_AS(
      [&] {
        for (;;) {
          auto p = gu.next();
          std::sort(p.numbers.begin(), p.numbers.end());
          REQUIRE(seen.insert(countdown_prompt(p.numbers, p.target)).second);
        }
      }(),
      moe::Error);
  CHECK(seen.size() > 5);
  CountdownGenOptions bad;
  bad.count = 9;
  CHECK_THROWS_AS(CountdownGenerator(bad, 1), moe::UsageError);
}

TEST_CASE("countdown checker", "[reward][countdown]") {
  const std::vector<int64_t> n = {3, 7, 12};
  struct Case {
    const char* text;
    bool well_formed, correct;
    const char* reason;
  } cases[] = {
      {"(3 * 7) + 12", true, true, "ok"},
      {"(3*7)+12", true, true, "ok"},
      {"  12 + 3 * 7 ", true, true, "ok"},         // precedence
      {"12 + (7 * 3)", true, true, "ok"},
      {"((3 * 7)) + 12", true, true, "ok"},
      {"(3 * 7) + 12 + 0", true, false, "numbers"},  // extra number
      {"3 * 7 + 12 + 3", true, false, "numbers"},    // number used twice
      {"3 * 11", true, false, "numbers"},            // subset is not allowed
      {"(3 + 7) + 12", true, false, "value"},
      {"(12 - 7) / 3", true, false, "value"},        // 5/3: rational, not the target
      {"12 / (7 - 7) + 3", true, false, "numbers"},
      {"(3 * 7) + 12 =", false, false, "syntax"},
      {"(3 * 7 + 12", false, false, "syntax"},
      {"-3 + 7 * 12", false, false, "syntax"},       // no unary minus
      {"3 x 7 + 12", false, false, "syntax"},
      {"", false, false, "empty"},
      {"   ", false, false, "empty"},
      {"<answer>(3 * 7) + 12</answer>", true, true, "ok"},
      {"think... <answer>3+7</answer> no <answer>12 + 7 * 3</answer>", true, true, "ok"},
  };
  for (const auto& c : cases) {
    INFO(c.text);
    auto r = countdown_check(c.text, n, 33);
    CHECK(r.well_formed == c.well_formed);
    CHECK(r.correct == c.correct);
    CHECK(r.reason == c.reason);
  }
  // Intermediate values may leave the integers or go negative: only the final value counts.
  CHECK(countdown_check("(3 - 7) * 12 + 81", {3, 7, 12, 81}, 33).correct);
  CHECK(countdown_check("(7 / 3) * 12 + 5", {7, 3, 12, 5}, 33).correct);
  CHECK(countdown_check("12 / (3 - 3)", {12, 3, 3}, 1).reason == "div_zero");
  // Repeated numbers in the problem may each be used once.
  CHECK(countdown_check("(5 + 5) * 2", {5, 5, 2}, 20).correct);
  CHECK(countdown_check("(5 + 2) * 2", {5, 5, 2}, 14).reason == "numbers");
}

TEST_CASE("countdown checker survives hostile text", "[reward][countdown]") {
  std::string deep = std::string(100000, '(') + "1" + std::string(100000, ')');
  auto r = countdown_check(deep, {1}, 1);
  CHECK_FALSE(r.well_formed);
  CHECK(r.reason == "too_deep");
  std::string ok_deep = std::string(kCountdownMaxDepth, '(') + "3" + std::string(kCountdownMaxDepth, ')');
  CHECK(countdown_check(ok_deep, {3}, 3).correct);
  CHECK(countdown_check("99999999999999999999999999 - 99999999999999999999999999 + 1", {1}, 1).reason == "numbers");
  // 2^62 * 2^62 overflows 64 bits: wrong, not UB.
  CHECK(countdown_check("4611686018427387904 * 4611686018427387904", {4611686018427387904LL, 4611686018427387904LL}, 1).reason ==
        "overflow");
  // Every intermediate is a 64-bit rational: exceeding it makes the answer wrong even if the end fits.
  CHECK(countdown_check("9223372036854775807 + 9223372036854775807 - 9223372036854775807",
                        {9223372036854775807LL, 9223372036854775807LL, 9223372036854775807LL}, 9223372036854775807LL)
            .reason == "overflow");
  CHECK(countdown_check("(9223372036854775807 / 2) * 2", {9223372036854775807LL, 2, 2}, 9223372036854775807LL).correct);
  std::string garbage(1 << 20, 'x');
  for (size_t i = 0; i < garbage.size(); i += 3) garbage[i] = "(+*/)1 "[i % 7];
  CHECK_FALSE(countdown_check(garbage, {1, 2, 3}, 6).correct);
  std::string many;
  for (int i = 0; i < 200000; ++i) many += "1+";
  many += "1";
  auto m = countdown_check(many, {1, 1}, 2);
  CHECK(m.well_formed);
  CHECK(m.reason == "numbers");
  std::string nul("1 + 2\0 + 3", 10);
  CHECK_FALSE(countdown_check(nul, {1, 2, 3}, 6).well_formed);
}

TEST_CASE("advantages: the worked example of algorithms.md", "[reward][adv]") {
  auto g = group_advantages({1, 0}, AdvKind::grpo);
  CHECK(g[0] == Approx(0.70710578).margin(1e-6));
  CHECK(g[1] == Approx(-0.70710578).margin(1e-6));
  auto d = group_advantages({1, 0}, AdvKind::drgrpo);
  CHECK(d[0] == Approx(0.5));
  CHECK(d[1] == Approx(-0.5));
  auto r = group_advantages({1, 0}, AdvKind::rloo);
  CHECK(r[0] == Approx(1.0));
  CHECK(r[1] == Approx(-1.0));
}

TEST_CASE("advantages: larger groups, uniform groups and groups of one", "[reward][adv]") {
  std::vector<double> rw = {1, 0, 0, 0.1};
  auto g = group_advantages(rw, AdvKind::grpo);
  double mean = 1.1 / 4, ss = 0;
  for (double x : rw) ss += (x - mean) * (x - mean);
  double sd = std::sqrt(ss / 3);
  for (size_t i = 0; i < rw.size(); ++i) CHECK(g[i] == Approx((rw[i] - mean) / (sd + 1e-6)));
  auto l = group_advantages(rw, AdvKind::rloo);
  CHECK(l[0] == Approx(1 - 0.1 / 3));
  CHECK(l[3] == Approx(0.1 - 1.0 / 3));
  for (auto kind : {AdvKind::grpo, AdvKind::drgrpo, AdvKind::rloo}) {
    for (double a : group_advantages({0.5, 0.5, 0.5}, kind)) CHECK(a == 0.0);
    auto one = group_advantages({0.7}, kind);
    CHECK(one[0] == Approx(0.7).epsilon(1e-5));  // baseline 0 for a lone sample
  }
  CHECK(rewards_uniform({1, 1, 1}));
  CHECK_FALSE(rewards_uniform({1}));
  CHECK_FALSE(rewards_uniform({1, 1, 0.1}));
  CHECK(parse_adv_kind("rloo") == AdvKind::rloo);
  CHECK_THROWS_AS(parse_adv_kind("ppo"), moe::UsageError);
}

TEST_CASE("overlong shaping", "[reward][adv]") {
  // L_max 20, L_c 4: free up to 16, linear to -1 at 20, -1 beyond.
  CHECK(overlong_penalty(10, 20, 4) == 0.0);
  CHECK(overlong_penalty(16, 20, 4) == 0.0);
  CHECK(overlong_penalty(17, 20, 4) == Approx(-0.25));
  CHECK(overlong_penalty(18, 20, 4) == Approx(-0.5));
  CHECK(overlong_penalty(20, 20, 4) == Approx(-1.0));
  CHECK(overlong_penalty(21, 20, 4) == -1.0);
}

namespace {
moe::format::RolloutRecord cd_record(uint64_t id, uint64_t group, const std::string& response) {
  moe::format::RolloutRecord r;
  r.id = id;
  r.group = group;
  r.response_text = response;
  r.response_tokens.assign(response.size(), 1);
  r.task = {{"numbers", {3, 7, 12}}, {"target", 33}, {"extra", "kept"}};
  return r;
}
}  // namespace

TEST_CASE("response_for_scoring strips the eos marker", "[reward]") {
  CHECK(response_for_scoring("(3 * 7) + 12<eos>") == "(3 * 7) + 12");
  CHECK(response_for_scoring(" 5 </s>\n") == "5");
  CHECK(response_for_scoring("<eos>") == "");
  CHECK(response_for_scoring("a<eos>b") == "a<eos>b");
}

TEST_CASE("group stage scores, computes advantages and drops uniform groups", "[reward]") {
  RewardOptions o;
  o.drop_uniform_groups = true;
  GroupStage st(o);
  std::vector<moe::format::RolloutRecord> out;
  auto emit = [&](moe::format::RolloutRecord& r) { out.push_back(r); };
  st.push(cd_record(0, 0, "(3 * 7) + 12<eos>"), emit);
  st.push(cd_record(1, 0, "(3 + 7) + 12<eos>"), emit);
  st.push(cd_record(2, 0, "nonsense<eos>"), emit);
  st.push(cd_record(3, 1, "3 + 7"), emit);  // group 1: all 0.1 -> dropped
  st.push(cd_record(4, 1, "3 + 12"), emit);
  st.push(cd_record(5, 2, "12 + 7 * 3"), emit);  // group 2: size 1
  st.finish(emit);
  REQUIRE(out.size() == 4);
  CHECK(*out[0].reward == 1.0);
  CHECK(*out[1].reward == Approx(0.1));
  CHECK(*out[2].reward == 0.0);
  CHECK(out[0].reward_info["correct"] == true);
  CHECK(out[1].reward_info["reason"] == "value");
  CHECK(out[2].reward_info["well_formed"] == false);
  CHECK(out[0].task["extra"] == "kept");
  auto adv = group_advantages({1.0, 0.1, 0.0}, AdvKind::grpo);
  CHECK(*out[0].advantage == Approx(adv[0]));
  CHECK(*out[2].advantage == Approx(adv[2]));
  CHECK(out[3].id == 5);
  CHECK(*out[3].advantage == Approx(1.0).epsilon(1e-5));
  auto& s = st.summary();
  CHECK(s.records == 6);
  CHECK(s.groups == 3);
  CHECK(s.uniform_groups == 1);  // a group of one is never uniform: its advantage is its reward
  CHECK(s.dropped_groups == 1);
  CHECK(s.dropped_records == 2);
  CHECK(s.correct == 2);
}

TEST_CASE("group stage errors", "[reward]") {
  RewardOptions o;
  GroupStage st(o);
  auto emit = [](moe::format::RolloutRecord&) {};
  st.push(cd_record(0, 0, "1"), emit);
  st.push(cd_record(1, 1, "1"), emit);
  CHECK_THROWS_WITH(st.push(cd_record(2, 0, "1"), emit), Catch::Contains("group 0 seen again"));
  auto bad = cd_record(3, 5, "1");
  bad.task.erase("target");
  CHECK_THROWS_WITH(st.push(std::move(bad), emit), Catch::Contains("'target'"));
  RewardOptions m;
  m.task = Task::math;
  GroupStage sm(m);
  auto rec = cd_record(0, 0, "\\boxed{3}");
  CHECK_THROWS_WITH(sm.push(moe::format::RolloutRecord(rec), emit), Catch::Contains("'answer'"));
  rec.task["answer"] = std::string(moe::reward::kMathMaxAnswerBytes + 1, '3');
  CHECK_THROWS_WITH(sm.push(moe::format::RolloutRecord(rec), emit), Catch::Contains("at most 8192"));
  rec.task["answer"] = 3;
  sm.push(std::move(rec), emit);
  CHECK(sm.summary().correct == 1);
  RewardOptions k;
  k.task = Task::keep;
  GroupStage sk(k);
  auto nan = cd_record(0, 0, "x");
  nan.reward = std::nan("");
  CHECK_THROWS_WITH(sk.push(std::move(nan), emit), Catch::Contains("non-finite"));
  CHECK_THROWS_WITH(sk.push(cd_record(1, 1, "x"), emit), Catch::Contains("no 'reward'"));
}

TEST_CASE("overlong shaping is added to the reward", "[reward]") {
  RewardOptions o;
  o.overlong_max = 20;
  o.overlong_cache = 4;
  GroupStage st(o);
  std::vector<moe::format::RolloutRecord> out;
  auto emit = [&](moe::format::RolloutRecord& r) { out.push_back(r); };
  st.push(cd_record(0, 0, "(3 * 7) + 12<eos>"), emit);  // 17 tokens: -0.25
  st.push(cd_record(1, 0, "12 + 7 * 3"), emit);         // 10 tokens: 0
  st.finish(emit);
  REQUIRE(out.size() == 2);
  CHECK(*out[0].reward == Approx(0.75));
  CHECK(out[0].reward_info["overlong"] == Approx(-0.25));
  CHECK(*out[1].reward == Approx(1.0));
}
