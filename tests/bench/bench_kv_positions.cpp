// Decode step time against position: KV-cached greedy steps 1..MAX at batch B of a model dir; prints the
// median step time (CPU time of the one thread) of the steps around positions 1, 64, 256, 1024, 2048, 4096.
// Flat means no copy of the whole cache per token. Prints numbers, never fails on a time.
//   bench_kv_positions MODEL_DIR [batch=8] [max=4096] [threads=1] [copy]
// `copy` adds a copy of the whole cache per step (KVCache::select_rows of all rows), the cost that the
// torch::cat per step of the cache before this benchmark had (it also copied keys and values once more to
// repeat them for every query head), to show that cost side by side.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/version.h>

#include <algorithm>
#include <ctime>
#include <cstdio>
#include <string>
#include <vector>

#include "moe/model/qwen3_moe.h"
#include "bench_util.h"

using namespace moe;

// CPU seconds of this thread (one intra-op thread: the whole step), which a loaded machine distorts far less
// than the wall clock.
static double now() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

int bench_body(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_kv_positions MODEL_DIR [batch=8] [max=4096] [threads=1]\n");
    return 2;
  }
  std::string dir = argv[1];
  int64_t B = argc > 2 ? moe::bench::arg_int(argv[2]) : 8, MAX = argc > 3 ? moe::bench::arg_int(argv[3]) : 4096;
  int threads = argc > 4 ? moe::bench::arg_int(argv[4]) : 1;  // > 1: the figures count the main thread only
  const bool copy = argc > 5 && std::string(argv[5]) == "copy";
  at::set_num_threads(threads);
  model::Qwen3Moe m = model::load_model(dir, c10::Device(c10::kCPU), at::kFloat);
  torch::NoGradGuard ng;
  model::KVCache cache;  // grows as the decode goes (doubling when preallocated)
  model::ForwardOptions fo;
  fo.last_logits_only = true;
  at::Tensor next = at::full({B, 1}, 5, at::kLong);
  std::vector<double> step(MAX + 1, 0.0);
  for (int64_t pos = 1; pos <= MAX; ++pos) {
    double t0 = now();
    at::Tensor logits = m->forward(next, {}, model::RoutingPlan::native(), fo, &cache).logits;
    next = logits.select(1, 0).argmax(-1, true);
    if (copy) cache.select_rows(at::arange(B));
    step[pos] = now() - t0;
  }
  std::printf("bench_kv_positions: libtorch %s, %d thread(s), batch %lld, %s%s\n", TORCH_VERSION, threads, (long long)B,
              dir.c_str(), copy ? ", plus a whole-cache copy per step" : "");
  double total = 0;
  for (int64_t p = 1; p <= MAX; ++p) total += step[p];
  for (int64_t at : {1, 64, 256, 1024, 2048, 4096}) {
    if (at > MAX) break;
    int64_t lo = std::max<int64_t>(1, at - 8), hi = std::min<int64_t>(MAX, at + 8);
    std::vector<double> w(step.begin() + lo, step.begin() + hi + 1);
    std::nth_element(w.begin(), w.begin() + w.size() / 2, w.end());
    std::printf("  position %5lld: %.3f ms per step\n", (long long)at, 1e3 * w[w.size() / 2]);
  }
  std::printf("  all %lld steps: %.2f s\n", (long long)MAX, total);
  return 0;
}

int main(int argc, char** argv) { return moe::bench::bench_main("bench_kv_positions", bench_body, argc, argv); }
