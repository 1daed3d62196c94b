// Figures for the model: KV-cached greedy decoding and teacher-forced forward+backward throughput of a
// preset. Prints numbers, never fails on a time.
//   model_bench [preset=tiny] [batch=256] [prompt=16] [new=32] [threads=2]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "moe/model/config.h"
#include "moe/model/qwen3_moe.h"
#include "bench_util.h"

using namespace moe::model;

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

int bench_body(int argc, char** argv) {
  std::string preset = argc > 1 ? argv[1] : "tiny";
  int64_t B = argc > 2 ? moe::bench::arg_int(argv[2]) : 256, P = argc > 3 ? moe::bench::arg_int(argv[3]) : 16, N = argc > 4 ? moe::bench::arg_int(argv[4]) : 32;
  int threads = argc > 5 ? moe::bench::arg_int(argv[5]) : 2;
  at::set_num_threads(threads);
  ModelConfig cfg = preset_config(preset, 98);
  Qwen3Moe m(cfg);
  init_weights(m, 1);
  m->eval();
  at::Tensor prompt = at::randint(3, 98, {B, P}, at::kLong);
  {
    at::NoGradGuard ng;
    KVCache cache;
    double t0 = now();
    ForwardOutput o = m->forward(prompt, {}, RoutingPlan::native(), {true, false, {}, true}, &cache);
    double t1 = now();
    at::Tensor next = o.logits.select(1, 0).argmax(-1, true);
    for (int64_t s = 1; s < N; ++s) {
      o = m->forward(next, {}, RoutingPlan::native(), {true, false, {}, true}, &cache);
      next = o.logits.select(1, 0).argmax(-1, true);
    }
    double t2 = now();
    std::printf("%s decode: batch %lld, prompt %lld, %lld new tokens, %d threads: prefill %.0f tok/s, decode %.0f tok/s (%.2f ms/step)\n",
                preset.c_str(), (long long)B, (long long)P, (long long)N, threads, B * P / (t1 - t0), B * (N - 1) / (t2 - t1),
                1e3 * (t2 - t1) / (N - 1));
  }
  {
    int64_t T = P + N;
    at::Tensor ids = at::randint(3, 98, {B / 2, T}, at::kLong);
    m->train();
    double t0 = now();
    int reps = 3;
    for (int r = 0; r < reps; ++r) {
      m->zero_grad();
      ForwardOutput o = m->forward(ids, {}, RoutingPlan::native());
      at::Tensor lp = at::log_softmax(o.logits.slice(1, 0, T - 1).to(at::kFloat), -1);
      lp.gather(-1, ids.slice(1, 1).unsqueeze(-1)).mean().neg().backward();
    }
    double t1 = now();
    std::printf("%s train fwd+bwd: batch %lld x %lld tokens: %.0f tok/s\n", preset.c_str(), (long long)(B / 2), (long long)T,
                reps * (B / 2) * T / (t1 - t0));
  }
  return 0;
}

int main(int argc, char** argv) { return moe::bench::bench_main("model_bench", bench_body, argc, argv); }
