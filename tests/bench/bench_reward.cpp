// Benchmark (not a test): records/s for Countdown and math scoring, and for moe-reward's whole stage
// (stream read + score + advantages + stream write) on a file of rollout records.
//   build/bench/bench_reward [records]
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "moe/format/rollout.h"
#include "moe/io/file.h"
#include "moe/reward/countdown.h"
#include "moe/reward/math.h"
#include "moe/reward/scorer.h"
#include "bench_util.h"

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Runs fn(i) for i in [0, n) repeatedly for at least 0.5 s; returns calls per second.
template <class F>
double rate(size_t n, F fn) {
  size_t calls = 0;
  double t0 = now(), t;
  do {
    for (size_t i = 0; i < n; ++i) fn(i);
    calls += n;
    t = now();
  } while (t - t0 < 0.5);
  return calls / (t - t0);
}
}  // namespace

int bench_body(int argc, char** argv) {
  const size_t n = argc > 1 ? moe::bench::arg_int(argv[1]) : 50000;
  using namespace moe::reward;

  // Countdown: a mix like an early RL batch: correct, wrong but well formed, malformed.
  CountdownGenerator gen(CountdownGenOptions{}, 1);
  std::vector<CountdownProblem> probs;
  std::vector<std::string> responses;
  for (size_t i = 0; i < n; ++i) {
    probs.push_back(gen.next());
    const auto& p = probs.back();
    switch (i % 4) {
      case 0: responses.push_back(p.solution); break;
      case 1: responses.push_back("(" + std::to_string(p.numbers[0]) + " + " + std::to_string(p.numbers[1]) + ") * " + std::to_string(p.numbers[2])); break;
      case 2: responses.push_back(p.solution.substr(0, p.solution.size() / 2)); break;
      default: responses.push_back(std::to_string(p.numbers[2]) + " - " + std::to_string(p.numbers[0]) + " / " + std::to_string(p.numbers[1])); break;
    }
  }
  size_t correct = 0;
  double cd = rate(n, [&](size_t i) { correct += countdown_check(responses[i], probs[i].numbers, probs[i].target).correct; });
  std::printf("countdown_check          %12.0f records/s  (%zu distinct responses, 1/4 correct)\n", cd, n);

  double gen_rate;
  {
    CountdownGenerator g(CountdownGenOptions{}, 2);
    double t0 = now();
    for (size_t i = 0; i < n; ++i) (void)g.next();
    gen_rate = n / (now() - t0);
  }
  std::printf("countdown generator      %12.0f problems/s\n", gen_rate);

  // Math: chain-of-thought-like responses of ~600 bytes ending in a boxed answer.
  const char* answers[] = {"\\frac{1}{2}", "0.5", "1,000", "12 \\text{ cm}", "(1, 2)", "\\sqrt{2}", "-3", "45^\\circ"};
  const char* refs[] = {"1/2", "\\frac12", "1000", "12", "(1,2)", "\\sqrt2", "3", "45"};
  std::string filler;
  for (int i = 0; i < 12; ++i) filler += "We compute the sum of $x^2 + y^2$ step by step. ";
  std::vector<std::string> mresp;
  for (size_t i = 0; i < 64; ++i) mresp.push_back(filler + "So the answer is $\\boxed{" + answers[i % 8] + "}$.");
  size_t mequal = 0;
  double ma = rate(mresp.size(), [&](size_t i) {
    auto a = math_extract_answer(mresp[i]);
    mequal += a && math_equal(*a, refs[i % 8]);
  });
  std::printf("math extract+equal       %12.0f records/s  (%zu-byte responses)\n", ma, mresp[0].size());

  // End to end: write a stream file (G = 8), then read + score + advantages + write.
  char dir[] = "/tmp/moekit-bench-XXXXXX";
  if (!mkdtemp(dir)) return 1;
  std::string in_path = std::string(dir) + "/in.zst", out_path = std::string(dir) + "/out.zst";
  {
    moe::io::Output out(in_path);
    moe::format::Header h;
    h.kind = "rollout";
    h.producer = {{"program", "bench_reward"}};
    h.meta = {{"vocab_size", 256}, {"temperature", 1.0}, {"model_digest", "bench"}};
    moe::format::RolloutWriter w(out, h);
    for (size_t i = 0; i < n; ++i) {
      moe::format::RolloutRecord r;
      r.id = i;
      r.group = i / 8;
      r.sample = i % 8;
      const auto& p = probs[i / 8];
      r.prompt_text = countdown_prompt(p.numbers, p.target);
      r.response_text = responses[i] + "<eos>";
      for (char c : r.prompt_text) r.prompt_tokens.push_back(c);
      for (char c : r.response_text) r.response_tokens.push_back(c), r.logprobs.push_back(-0.7f);
      r.finish_reason = "eos";
      r.task = {{"numbers", p.numbers}, {"target", p.target}};
      w.write(r);
      if (i % 256 == 255) w.flush();
    }
    w.finish();
    out.close();
  }
  double t0 = now();
  {
    moe::io::Input in(in_path);
    moe::format::RolloutReader reader(in);
    moe::io::Output out(out_path);
    moe::format::Header h = reader.header();
    moe::format::RolloutWriter w(out, h);
    RewardOptions opts;
    GroupStage stage(opts);
    auto emit = [&](moe::format::RolloutRecord& r) { w.write(r); };
    moe::format::RolloutRecord rec;
    for (;;) {
      rec = moe::format::RolloutRecord{};
      if (!reader.next(rec)) break;
      stage.push(std::move(rec), emit);
    }
    stage.finish(emit);
    w.finish();
    out.close();
  }
  double e2e = n / (now() - t0);
  std::printf("stream read+score+write  %12.0f records/s  (%zu countdown records, G=8, file to file)\n", e2e, n);
  unlink(in_path.c_str());
  unlink(out_path.c_str());
  rmdir(dir);
  return correct == 0 || mequal == 0;
}

int main(int argc, char** argv) { return moe::bench::bench_main("bench_reward", bench_body, argc, argv); }
