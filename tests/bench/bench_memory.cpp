// Benchmark (prints, never fails): peak RSS of re-scoring (moe-rollout --score's path) and of one RL train
// step (old pass + one update) at a real vocabulary (151,936, Qwen3's), for one sequence of T positions, on
// a tiny-bodied model so that the output head dominates. One configuration per process (peak RSS is per
// process); tests/bench/bench_memory.sh runs T = 512, 1024, 2048 and prints the table.
//
//   bench_memory --mode score|train --T N [--vocab V] [--full] [--threads N]
//
// --full runs the full-logits computation this toolkit used before the chunked head (log_softmax over a
// [B, T, V] float32 tensor; for train, its backward too), for a before/after comparison.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>

#include "moe/model/config.h"
#include "moe/model/qwen3_moe.h"
#include "moe/rollout/generate.h"
#include "moe/train/step.h"
#include "bench_util.h"

using namespace moe;

namespace {
double rss_mb(const char* key) {  // VmHWM (peak) or VmRSS (now) of this process
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::atof(line.c_str() + std::strlen(key) + 1) / 1024.0;
  return 0;
}
}  // namespace

int bench_body(int argc, char** argv) {
  std::string mode = "score";
  int64_t T = 512, vocab = 151936;
  int threads = 1;
  bool full = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--full") full = true;
    else if (i + 1 < argc && a == "--mode") mode = argv[++i];
    else if (i + 1 < argc && a == "--T") T = moe::bench::arg_int(argv[++i]);
    else if (i + 1 < argc && a == "--vocab") vocab = moe::bench::arg_int(argv[++i]);
    else if (i + 1 < argc && a == "--threads") threads = moe::bench::arg_int(argv[++i]);
    else {
      std::fprintf(stderr, "usage: bench_memory --mode score|train --T N [--vocab V] [--full] [--threads N]\n");
      return 2;
    }
  }
  at::set_num_threads(threads);
  model::ModelConfig c = model::preset_config("tiny", vocab);
  c.num_hidden_layers = 2;
  c.max_position_embeddings = std::max<int64_t>(4096, T + 1);
  model::Qwen3Moe m(c);
  model::init_weights(m, 1);
  std::mt19937_64 g(7);
  const int64_t P = 16, R = T + 1 - P;  // T positions forwarded: P + R - 1
  std::vector<int64_t> prompt, response;
  for (int64_t k = 0; k < P; ++k) prompt.push_back(3 + g() % (vocab - 3));
  for (int64_t k = 0; k < R; ++k) response.push_back(3 + g() % (vocab - 3));
  const double base = rss_mb("VmRSS:");
  if (mode == "score" && !full) {
    at::NoGradGuard ng;
    rollout::ScoreRequest r;
    r.prompt = prompt;
    r.response = response;
    auto out = rollout::score(m, {r}, 1.0, true);
    if (out[0].logprobs.size() != static_cast<size_t>(R)) return 1;
  } else if (mode == "score") {
    at::NoGradGuard ng;
    std::vector<int64_t> all(prompt);
    all.insert(all.end(), response.begin(), response.end());
    at::Tensor ids = at::tensor(all).view({1, -1});
    model::ForwardOptions fo;
    fo.capture_routing = true;
    auto fw = m->forward(ids, {}, model::RoutingPlan::native(), fo);
    at::Tensor lp = at::log_softmax(fw.logits.to(at::kFloat), -1).narrow(1, 0, T).gather(2, ids.narrow(1, 1, T).unsqueeze(-1));
    if (lp.numel() != T) return 1;
  } else if (mode == "train" && !full) {
    train::Sequence s;
    s.id = 0;
    s.prompt = prompt;
    s.response = response;
    s.advantage = 1.0;
    std::vector<train::Sequence> data{s};
    train::TrainConfig tc;
    tc.loss.algo = algo::parse_algo("grpo");
    train::Trainer t(m, tc);
    std::vector<train::OldPass> old;
    t.old_pass(data, old);
    t.update(data, old, {0}, 1, R, R);
  } else if (mode == "train") {
    std::vector<int64_t> all(prompt);
    all.insert(all.end(), response.begin(), response.end());
    at::Tensor ids = at::tensor(all).view({1, -1});
    auto fw = m->forward(ids.narrow(1, 0, T));
    at::Tensor logits = fw.logits.to(at::kFloat);
    at::Tensor lp = at::log_softmax(logits, -1).gather(2, ids.narrow(1, 1, T).unsqueeze(-1)).squeeze(-1);
    at::Tensor lse = at::log_softmax(logits, -1);
    at::Tensor ent = -(lse.exp() * lse).sum(-1);  // the entropy metric, as the trainer computed it
    (-lp.mean() - 0.0 * ent.mean()).backward();
  } else {
    std::fprintf(stderr, "bench_memory: unknown --mode %s\n", mode.c_str());
    return 2;
  }
  std::printf("bench_memory: %s%s T=%lld vocab=%lld: peak RSS %.0f MB (model and libtorch before the pass: %.0f MB)\n",
              mode.c_str(), full ? " (full logits)" : "", static_cast<long long>(T), static_cast<long long>(vocab),
              rss_mb("VmHWM:"), base);
  return 0;
}

int main(int argc, char** argv) { return moe::bench::bench_main("bench_memory", bench_body, argc, argv); }
