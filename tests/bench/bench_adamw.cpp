// Benchmark (prints, never fails): one AdamW step over a model's worth of float32 parameters, torch's
// (torch::optim::AdamW::step: eight tensor operations per parameter) against moe::train::adamw_step (one
// pass per parameter), side by side on copies of the same parameters, gradients and state; best of REPS;
// and whether the two agree bit for bit.
//   build/bench/bench_adamw [threads=1] [reps=5]
// Shapes: "tiny" (102 tensors, 0.77 M parameters, as the tiny preset trains) and "small/1L" (one layer of
// the small preset: 64 experts' gate, up and down weights, plus 4 M of other weights, 54 M parameters).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/optim/adamw.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "moe/train/adamw.h"
#include "bench_util.h"

namespace {

void bench(const std::string& name, const std::vector<std::vector<int64_t>>& shapes, int reps) {
  std::vector<at::Tensor> a, b;
  int64_t n = 0;
  for (const auto& s : shapes) {
    at::Tensor p = at::randn(s), g = at::randn(s);
    a.push_back(p.clone().requires_grad_());
    b.push_back(p.clone().requires_grad_());
    a.back().mutable_grad() = g.clone();
    b.back().mutable_grad() = g.clone();
    n += p.numel();
  }
  torch::optim::AdamWOptions o(1e-3);
  o.weight_decay(0.01);
  torch::optim::AdamW ta(a, o), tb(b, o);
  double t_torch = 1e30, t_fused = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    ta.step();
    auto t1 = std::chrono::steady_clock::now();
    moe::train::adamw_step(tb);
    auto t2 = std::chrono::steady_clock::now();
    t_torch = std::min(t_torch, std::chrono::duration<double>(t1 - t0).count());
    t_fused = std::min(t_fused, std::chrono::duration<double>(t2 - t1).count());
  }
  bool same = true;
  for (size_t i = 0; i < a.size(); ++i) same = same && at::equal(a[i], b[i]);
  // bytes a fused step moves: read p, g, m, v, write p, m, v
  const double gb = 7.0 * 4 * static_cast<double>(n) / 1e9;
  std::printf("%-9s %3zu tensors %6.2f M params: torch step %.4f s, fused %.4f s (%.1f GB/s): x%.2f, weights after %d steps %s\n",
              name.c_str(), shapes.size(), n / 1e6, t_torch, t_fused, gb / t_fused, t_torch / t_fused, reps,
              same ? "equal bit for bit" : "DIFFER");
}

}  // namespace

int bench_body(int argc, char** argv) {
  const int threads = argc > 1 ? moe::bench::arg_int(argv[1]) : 1, reps = argc > 2 ? moe::bench::arg_int(argv[2]) : 5;
  at::set_num_threads(threads);
  std::printf("bench_adamw: %d thread(s), best of %d steps, weight decay 0.01\n", threads, reps);
  std::vector<std::vector<int64_t>> tiny;
  for (int i = 0; i < 102; ++i) tiny.push_back({7500 + i});
  bench("tiny", tiny, reps);
  bench("small/1L", {{64, 256, 1024}, {64, 256, 1024}, {64, 1024, 256}, {98 * 1024 * 20}, {2 * 1024 * 1024}}, reps);
  return 0;
}

int main(int argc, char** argv) { return moe::bench::bench_main("bench_adamw", bench_body, argc, argv); }
