// Figures for moe-rollout's engine, measured side by side in one run (the machine is shared and noisy):
// KV-cached generation against a no-cache full recompute, routing capture on against off, fp32 against bf16.
// Prints numbers, never fails on a time.
//   bench_rollout [preset=tiny] [batch=256] [prompt=16] [new=32] [threads=1] [reps=3]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <link.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "bench_util.h"
#include "moe/model/config.h"
#include "moe/model/qwen3_moe.h"
#include "moe/rollout/generate.h"

using namespace moe;
using moe::bench::blas_in_use;
using moe::bench::now;

namespace {

// Best of `reps` runs of fn, in seconds.
double best_of(int reps, const std::function<void()>& fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    double t0 = now();
    fn();
    best = std::min(best, now() - t0);
  }
  return best;
}
}  // namespace

int bench_body(int argc, char** argv) {
  std::string preset = argc > 1 ? argv[1] : "tiny";
  int64_t B = argc > 2 ? moe::bench::arg_int(argv[2]) : 256, P = argc > 3 ? moe::bench::arg_int(argv[3]) : 16,
          N = argc > 4 ? moe::bench::arg_int(argv[4]) : 32;
  int threads = argc > 5 ? moe::bench::arg_int(argv[5]) : 1;
  int reps = argc > 6 ? moe::bench::arg_int(argv[6]) : 3;
  at::set_num_threads(threads);
  std::printf("bench_rollout: preset %s, batch %lld, prompt %lld, %lld new tokens, %d thread(s), best of %d\n",
              preset.c_str(), (long long)B, (long long)P, (long long)N, threads, reps);
  std::printf("BLAS: %s\n", blas_in_use().c_str());

  model::ModelConfig cfg = model::preset_config(preset, 98);
  model::Qwen3Moe m(cfg);
  model::init_weights(m, 1);
  m->eval();

  at::manual_seed(0);
  at::Tensor prompts = at::randint(3, 98, {B, P}, at::kLong);
  std::vector<rollout::Request> reqs;
  for (int64_t b = 0; b < B; ++b) {
    auto row = prompts[b];
    reqs.push_back({static_cast<uint64_t>(b), std::vector<int64_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + P)});
  }
  rollout::GenerateOptions opt;
  opt.max_new_tokens = N;  // no eos: every sequence runs to N tokens, so rates compare like for like
  opt.seed = 1;
  const double gen_tokens = double(B) * N;

  auto run = [&](bool capture) {
    opt.capture_routing = capture;
    rollout::generate(m, reqs, opt);
  };
  // Capture off and on alternate, so that load from other processes hits both alike.
  double t_cache = 1e30, t_capture = 1e30;
  for (int r = 0; r < reps; ++r) {
    t_cache = std::min(t_cache, best_of(1, [&] { run(false); }));
    t_capture = std::min(t_capture, best_of(1, [&] { run(true); }));
  }
  // No cache: every step re-runs the whole sequence (the cost the KV cache removes).
  double t_nocache = best_of(reps, [&] {
    torch::NoGradGuard ng;
    at::Tensor seq = prompts;
    for (int64_t s = 0; s < N; ++s) {
      model::ForwardOptions fo;
      fo.last_logits_only = true;
      at::Tensor next = m->forward(seq, {}, model::RoutingPlan::native(), fo).logits.select(1, 0).argmax(-1, true);
      seq = at::cat({seq, next}, 1);
    }
  });
  std::printf("fp32  KV cache, capture off   %9.0f tok/s  (%.3f s)\n", gen_tokens / t_cache, t_cache);
  std::printf("fp32  KV cache, capture on    %9.0f tok/s  (%.3f s)  capture cost %+.1f%%\n", gen_tokens / t_capture,
              t_capture, 100.0 * (t_capture - t_cache) / t_cache);
  std::printf("fp32  no cache (recompute)    %9.0f tok/s  (%.3f s)  cache speed-up x%.2f\n", gen_tokens / t_nocache,
              t_nocache, t_nocache / t_cache);

  m->to(at::kBFloat16);
  double t_bf16 = best_of(reps, [&] { run(true); });
  std::printf("bf16  KV cache, capture on    %9.0f tok/s  (%.3f s)  bf16/fp32 time x%.2f\n", gen_tokens / t_bf16, t_bf16,
              t_bf16 / t_capture);
  return 0;
}

int main(int argc, char** argv) { return moe::bench::bench_main("bench_rollout", bench_body, argc, argv); }
