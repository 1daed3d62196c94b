// Benchmark of one train step (prints, never fails): tokens/s and the time split old pass / forward (+loss) /
// backward / optimizer, and peak RSS, on the tiny preset and a small-real-MoE-shaped preset ("small", with
// its layer count cut so that weights + Adam state fit a laptop; the per-layer shapes are the real ones).
//
//   bench_train_step [--threads N] [--seqs N] [--prompt P] [--response R] [--small-layers L] [--small-seqs N]
//                    [--algo A] [--isa I] [--reps N] [--old-pass defer|full]
//   (--algo sft: no old pass, the SFT loss; --small-layers 0: the tiny preset only; --seqs 0: the small preset
//   only; --small-seqs: its sequences, by default max(4, seqs / 8); --isa none: without the
//   few-rows kernels, so attention takes libtorch's matrix products, for a side-by-side comparison; --reps N: run
//   N steps (at least 2; the first warms up allocators) and report the median of the others; --old-pass full:
//   the old pass over every sequence, where moe-train-step leaves the first mini-batch's to that update's
//   forward (Trainer::old_pass, first_update; the default here too, "defer"))
// Against transformers' eager training step on the same work: tests/bench/train_vs_python.sh.
//
// 1 vs 2 processes: tests/bench/bench_train_dp.sh (needs the moe-* binaries). MOEKIT_MALLOC=glibc runs with glibc's
// allocator defaults instead of the moe-* programs' setting (cli::tune_malloc), for comparison.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "moe/cli/app.h"
#include "moe/model/config.h"
#include "moe/model/few_rows.h"
#include "moe/model/qwen3_moe.h"
#include "moe/train/step.h"
#include "bench_util.h"

using namespace moe;

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024.0;
}

void bench_one(const std::string& label, model::ModelConfig c, int seqs, int P, int R, const std::string& algo, int reps,
               bool full_old_pass) {
  model::Qwen3Moe m(c);
  model::init_weights(m, 1);
  int64_t params = 0;
  for (auto& p : m->parameters()) params += p.numel();
  std::mt19937_64 g(7);
  std::vector<train::Sequence> data;
  for (int i = 0; i < seqs; ++i) {
    train::Sequence s;
    s.id = i;
    for (int k = 0; k < P; ++k) s.prompt.push_back(3 + g() % (c.vocab_size - 3));
    for (int k = 0; k < R; ++k) s.response.push_back(3 + g() % (c.vocab_size - 3));
    s.advantage = (i % 2) ? 1.0 : -1.0;
    data.push_back(s);
  }
  train::TrainConfig tc;
  tc.sft = algo == "sft";
  if (!tc.sft) tc.loss.algo = algo::parse_algo(algo);
  train::Trainer t(m, tc);
  const int K = 2;  // mini-batches, as the default step
  struct Split {
    double total, old, fwd, bwd, opt;
  };
  std::vector<Split> splits;  // steps after the first
  for (int rep = 0; rep < reps; ++rep) {
    const double s0 = now();
    std::vector<train::OldPass> old(data.size());  // SFT: no old pass
    std::vector<char> first(data.size(), 0);  // as moe-train-step: the first mini-batch's from its own forward
    if (!full_old_pass)
      for (int i = 0; i < seqs / K; ++i) first[i] = 1;
    if (!tc.sft) t.old_pass(data, old, nullptr, first);
    const double s1 = now();
    double f = 0, b = 0, o = 0;
    for (int k = 0; k < K; ++k) {
      std::vector<size_t> mb;
      for (int i = k * seqs / K; i < (k + 1) * seqs / K; ++i) mb.push_back(i);
      auto met = t.update(data, old, mb, mb.size(), static_cast<int64_t>(mb.size()) * R, R);
      f += met["time/forward"];
      b += met["time/backward"];
      o += met["time/optimizer"];
    }
    if (rep > 0) splits.push_back({now() - s0, s1 - s0, f, b, o});
  }
  std::sort(splits.begin(), splits.end(), [](const Split& a, const Split& b) { return a.total < b.total; });
  const Split& md = splits[splits.size() / 2];  // the median step
  const double t_total = md.total, t_old = md.old, t_fwd = md.fwd, t_bwd = md.bwd, t_opt = md.opt;
  const double tokens = static_cast<double>(seqs) * (P + R);
  std::printf("%-8s %7.2fM params  %3d seqs x (%d+%d) tok  step %7.3f s  %8.0f tok/s (all positions)  %7.0f resp tok/s\n",
              label.c_str(), params / 1e6, seqs, P, R, t_total, tokens / t_total, seqs * R / t_total);
  std::printf("         split: old pass %.3f s  forward+loss %.3f s  backward %.3f s  optimizer %.3f s   peak RSS %.0f MB\n",
              t_old, t_fwd, t_bwd, t_opt, peak_rss_mb());
}
}  // namespace

int bench_body(int argc, char** argv) {
  int threads = 2, seqs = 64, P = 12, R = 24, small_layers = 2, small_seqs = -1, reps = 2;
  std::string algo = "rspo";
  bool full_old_pass = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    auto v = [&] { return static_cast<int>(moe::bench::arg_int(argv[i + 1])); };
    if (a == "--threads") threads = v();
    else if (a == "--seqs") seqs = v();
    else if (a == "--prompt") P = v();
    else if (a == "--response") R = v();
    else if (a == "--small-layers") small_layers = v();
    else if (a == "--small-seqs") small_seqs = v();
    else if (a == "--reps") reps = std::max(2, v());
    else if (a == "--algo") algo = argv[i + 1];
    else if (a == "--old-pass") {
      const std::string m = argv[i + 1];
      if (m != "full" && m != "defer") {
        std::fprintf(stderr, "--old-pass %s: defer or full\n", m.c_str());
        return 2;
      }
      full_old_pass = m == "full";
    }
    else if (a == "--isa") {
      if (!model::set_linear_rows_isa(argv[i + 1])) {
        std::fprintf(stderr, "--isa %s: not an instruction set this CPU has\n", argv[i + 1]);
        return 2;
      }
    } else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  at::set_num_threads(threads);
  const bool tuned = cli::tune_malloc();  // as every moe-* program does
  std::printf("bench_train_step: threads %d, algo %s, kernels %s, K=2 mini-batches, E=1, fp32 CPU, old pass %s, malloc %s\n", threads,
              algo.c_str(), model::linear_rows_isa().c_str(),
              full_old_pass ? "over every sequence" : "offers the first mini-batch to its update (where the trainer can take it: not rspo)",
              tuned ? "tuned as the moe-* programs (cli::tune_malloc)" : "glibc's defaults (MOEKIT_MALLOC=glibc or GLIBC_TUNABLES)");
  if (seqs > 0) bench_one("tiny", model::preset_config("tiny", 98), seqs, P, R, algo, reps, full_old_pass);
  if (small_layers <= 0) return 0;
  if (small_seqs < 1) small_seqs = std::max(4, seqs / 8);
  auto small = model::preset_config("small", 98);
  small.num_hidden_layers = small_layers;
  bench_one("small/" + std::to_string(small_layers) + "L", small, small_seqs, P, R, algo, reps, full_old_pass);
  return 0;
}

int main(int argc, char** argv) { return moe::bench::bench_main("bench_train_step", bench_body, argc, argv); }
