// Decode figures of the generation engine. Prints numbers, never fails on a time.
//   bench_decode gen MODEL_DIR BATCH PROMPT NEW greedy|sampled|both THREADS [RUNS=5]
//       one warm-up, then RUNS timed rollout::generate (no eos: every row runs NEW tokens); prints the median
//       run's "moekit <mode> batch B: X tok/s (S s wall), Y tok/s per CPU second (C s)". Prompts: token (7 b + 3 t) % (V - 3) + 3, as ref_decode.py.
//       both: greedy and sampled runs alternate in the one process, each mode's line, then the median over the
//       pairs of sampled / greedy tokens per CPU second (the machine's drift cancels within a pair).
//   bench_decode experts THREADS [TOKENS...]
//       the expert dispatch of one MoE layer at a Qwen3-30B-A3B shape (hidden 2048, 128 experts, top-8,
//       moe_intermediate 768) and at the tiny preset's, random weights: the host loop, the loop on packed weights (rollout::generate's,
//       copies made in the first of the interleaved runs), the padded batched matmul (and at::_grouped_mm where
//       the libtorch has it), tokens/s, outputs compared.
//   bench_decode bandwidth THREADS [LAYERS=8] [BATCHES...=1 2 4]
//       the `small` preset cut to LAYERS layers (hidden 1024, 64 experts top-8), random weights: greedy KV-cached
//       decode steps at each batch; bytes of the weights a step touches (attention, routers, the distinct
//       experts chosen in each layer, lm_head rows) / step time, against this machine's copy bandwidth
//       measured in the same run (a 1 GiB memcpy, read + write bytes). Each batch runs with linear_rows' few-rows
//       kernel and without it ("none": at::linear, at::mv for one row).
//   bench_decode few-rows THREADS
//       one linear layer's product for 1-4 rows at the `small` preset's shapes (attention q/o 1024x1024, k/v
//       256x1024, an expert's gate/up 256x1024 and down 1024x256): model::linear_rows (the decode path)
//       against at::linear (a matrix product, which repacks the weight) and at::mv per row, interleaved,
//       over 64 distinct weights so that every call reads its weight from memory; GB/s of weight read.
//   bench_decode products THREADS
//       x W^T for 5-512 rows at the tiny and small presets' shapes: model::linear_packed (generation's products,
//       from packed panels of W^T) against at::mm on W^T and at::linear on W, interleaved, best of 9, over 8
//       distinct weights in turn; GFLOP/s and the time ratios.
//   bench_decode save MODEL_DIR PRESET   writes a randomly initialised model (for the Python side).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <link.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_util.h"
#include "moe/cli/app.h"
#include "moe/model/config.h"
#include "moe/model/few_rows.h"
#include "moe/model/qwen3_moe.h"
#include "moe/rollout/generate.h"

using namespace moe;
using moe::bench::blas_in_use;
using moe::bench::now;

namespace {
// CPU seconds of the whole process: on a loaded machine a fairer clock than the wall for 1-thread runs.
double cpu_now() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}


void banner(int threads) {
  at::set_num_threads(threads);
  const bool tuned = cli::tune_malloc();  // as every moe-* program does; MOEKIT_MALLOC=glibc: glibc's defaults
  std::fprintf(stderr, "bench_decode: libtorch %s, %d thread(s), BLAS %s, malloc %s\n", TORCH_VERSION, threads, blas_in_use().c_str(),
               tuned ? "tuned (cli::tune_malloc)" : "glibc defaults");
}

int gen(int argc, char** argv) {
  if (argc < 8) return 2;
  std::string dir = argv[2], mode = argv[6];
  if (mode != "greedy" && mode != "sampled" && mode != "both") return 2;
  int64_t B = moe::bench::arg_int(argv[3]), P = moe::bench::arg_int(argv[4]), N = moe::bench::arg_int(argv[5]);
  banner(moe::bench::arg_int(argv[7]));
  model::Qwen3Moe m = model::load_model(dir, c10::Device(c10::kCPU), at::kFloat);
  const int64_t V = m->config().vocab_size;
  std::vector<rollout::Request> reqs;
  for (int64_t b = 0; b < B; ++b) {
    rollout::Request r;
    r.stream = static_cast<uint64_t>(b);
    for (int64_t t = 0; t < P; ++t) r.prompt.push_back((7 * b + 3 * t) % (V - 3) + 3);
    reqs.push_back(r);
  }
  std::vector<std::string> modes = mode == "both" ? std::vector<std::string>{"greedy", "sampled"} : std::vector<std::string>{mode};
  std::vector<rollout::GenerateOptions> opts;
  for (const auto& md : modes) {
    rollout::GenerateOptions opt;
    opt.max_new_tokens = N;
    opt.seed = 1;
    opt.sampling.greedy = md == "greedy";
    opt.sampling.temperature = 1.0;
    auto warm = opt;
    warm.max_new_tokens = 4;
    rollout::generate(m, reqs, warm);
    opts.push_back(opt);
  }
  // RUNS timed runs (the same work, the same seed) of each mode, interleaved; the median run's rates: one
  // run of a small batch is tens of milliseconds, which a shared machine's noise swamps.
  const int runs = argc > 8 ? static_cast<int>(std::max<long long>(1, moe::bench::arg_int(argv[8]))) : 5;
  std::vector<std::vector<double>> cpus(modes.size()), walls(modes.size());
  std::vector<double> ratios;  // both: sampled / greedy rate of each pair of runs
  int64_t toks = 0;
  for (int r = 0; r < runs; ++r) {
    for (size_t k = 0; k < modes.size(); ++k) {
      double t0 = now(), c0 = cpu_now();
      auto out = rollout::generate(m, reqs, opts[k]);
      cpus[k].push_back(cpu_now() - c0);
      walls[k].push_back(now() - t0);
      int64_t n = 0;
      for (auto& g : out) n += g.tokens.size();
      if (k > 0 && n != toks) throw std::runtime_error("bench_decode: the modes generated different token counts");
      toks = n;
    }
    if (modes.size() == 2) ratios.push_back(cpus[0].back() / cpus[1].back());
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  for (size_t k = 0; k < modes.size(); ++k) {
    const double c = median(cpus[k]), t = median(walls[k]);
    std::printf("moekit %s batch %lld: %.0f tok/s (%.3f s wall), %.0f tok/s per CPU second (%.3f s)\n", modes[k].c_str(),
                (long long)B, toks / t, t, toks / c, c);
  }
  if (!ratios.empty()) std::printf("moekit sampled / greedy batch %lld: x%.3f (median of %d interleaved pairs, CPU time)\n", (long long)B, median(ratios), runs);
  return 0;
}

int experts(int argc, char** argv) {
  if (argc < 3) return 2;
  banner(moe::bench::arg_int(argv[2]));
  std::vector<int64_t> ntoks;
  for (int i = 3; i < argc; ++i) ntoks.push_back(moe::bench::arg_int(argv[i]));
  if (ntoks.empty()) ntoks = {1, 4, 64, 256};
  nlohmann::json big = {{"model_type", "qwen3_moe"}, {"hidden_size", 2048}, {"num_experts", 128}, {"num_experts_per_tok", 8},
                        {"moe_intermediate_size", 768}, {"norm_topk_prob", true}, {"vocab_size", 16},
                        {"num_hidden_layers", 1}, {"num_attention_heads", 32}, {"num_key_value_heads", 4},
                        {"head_dim", 128}, {"intermediate_size", 6144}};
  const std::pair<const char*, model::ModelConfig> shapes[] = {
      {"Qwen3-30B-A3B's: hidden 2048, 128 experts, top-8, moe_intermediate 768", model::parse_config(big)},
      {"the tiny preset's: hidden 96, 8 experts, top-2, moe_intermediate 96", model::preset_config("tiny", 98)}};
  std::vector<std::pair<const char*, model::ExpertKernel>> kernels{{"loop", model::ExpertKernel::loop},
                                                                   {"transposed", model::ExpertKernel::transposed},
                                                                   {"padded", model::ExpertKernel::padded}};
  if (model::grouped_mm_available()) kernels.push_back({"grouped", model::ExpertKernel::grouped});
  torch::NoGradGuard ng;
  for (const auto& [name, c] : shapes) {
    model::SparseMoe moe(c);
    at::manual_seed(0);
    for (auto& p : moe->parameters()) p.normal_(0, 0.02);
    std::printf("expert dispatch of one layer, %s (fp32):\n", name);
    for (int64_t n : ntoks) {
      at::Tensor x = at::randn({n, c.hidden_size});
      std::vector<double> best(kernels.size(), 1e30);
      std::vector<at::Tensor> outs(kernels.size());
      const int64_t work = n * c.hidden_size * c.moe_intermediate_size * c.num_experts_per_tok;
      const int reps = work <= (int64_t{1} << 26) ? 101 : n <= 64 ? 7 : 3;
      for (int r = 0; r < reps; ++r)  // interleaved, best of reps
        for (size_t k = 0; k < kernels.size(); ++k) {
          moe->kernel = kernels[k].second;
          double t0 = now();
          outs[k] = moe->forward(x, model::RouterMode::native, {}, {}, {}, {}, false, false).hidden;
          best[k] = std::min(best[k], now() - t0);
        }
      std::printf("  %4lld tokens:", (long long)n);
      for (size_t k = 0; k < kernels.size(); ++k)
        std::printf("  %s %.0f tok/s (%.3f ms)", kernels[k].first, n / best[k], 1e3 * best[k]);
      double d = 0;
      for (size_t k = 1; k < kernels.size(); ++k) d = std::max(d, (outs[k] - outs[0]).abs().max().item<double>());
      std::printf("  loop/transposed time x%.2f  max |diff| %.1e\n", best[0] / best[1], d);
    }
  }
  return 0;
}

int bandwidth(int argc, char** argv) {
  if (argc < 3) return 2;
  const int threads = moe::bench::arg_int(argv[2]);
  banner(threads);
  const int64_t layers = argc > 3 ? moe::bench::arg_int(argv[3]) : 8;
  std::vector<int64_t> batches;
  for (int i = 4; i < argc; ++i) batches.push_back(moe::bench::arg_int(argv[i]));
  if (batches.empty()) batches = {1, 2, 4};
  // Memory bandwidth: memcpy of 1 GiB, best of 3 (bytes read + written).
  double bw = 0;
  {
    std::vector<char> a(1 << 30, 1), b(1 << 30, 2);
    for (int r = 0; r < 3; ++r) {
      double t0 = now();
      std::memcpy(b.data(), a.data(), a.size());
      bw = std::max(bw, 2.0 * a.size() / (now() - t0));
      a[r] = b[r + 1];
    }
  }
  model::ModelConfig cfg = model::preset_config("small", 98);
  cfg.num_hidden_layers = layers;
  model::Qwen3Moe m(cfg);
  model::init_weights(m, 1);
  m->eval();
  int64_t params = 0;
  for (auto& p : m->parameters()) params += p.numel();
  const int64_t H = cfg.hidden_size, I = cfg.moe_intermediate_size, E = cfg.num_experts;
  const double attn_bytes = 4.0 * (m->layers[0]->self_attn->q_proj->weight.numel() + m->layers[0]->self_attn->k_proj->weight.numel() +
                                   m->layers[0]->self_attn->v_proj->weight.numel() + m->layers[0]->self_attn->o_proj->weight.numel() +
                                   E * H + 4 * H);
  const double expert_bytes = 4.0 * 3 * H * I;
  std::printf("decode at the larger shape: hidden %lld, %lld layers, %lld experts top-%lld, moe_intermediate %lld, %.0f M parameters\n",
              (long long)H, (long long)layers, (long long)E, (long long)cfg.num_experts_per_tok, (long long)I, params / 1e6);
  std::printf("  memory bandwidth (memcpy, read + write): %.1f GB/s\n", bw / 1e9);
  torch::NoGradGuard ng;
  // Each batch with linear_rows' kernel (the CPU's best instruction set) and without it (at::linear, at::mv
  // for one row: the path before the kernel), one after the other.
  const std::string best = model::linear_rows_isa();
  std::vector<std::string> isas{best};
  if (best != "none") isas.push_back("none");
  for (int64_t B : batches)
  for (const std::string& isa : isas) {
    model::set_linear_rows_isa(isa);
    model::KVCache cache;
    cache.reserve = 64;
    model::ForwardOptions fo;
    fo.last_logits_only = true;
    fo.capture_routing = true;
    at::Tensor next = at::randint(3, 98, {B, 8}, at::kLong);
    m->forward(next, {}, model::RoutingPlan::native(), fo, &cache);  // prefill, also builds the fused experts
    next = next.narrow(1, 7, 1).contiguous();
    double t = 0, bytes = 0;
    const int steps = 24;
    std::vector<double> times;
    for (int s = 0; s < steps; ++s) {
      double t0 = now();
      model::ForwardOutput o = m->forward(next, {}, model::RoutingPlan::native(), fo, &cache);
      next = o.logits.select(1, 0).argmax(-1, true);
      double dt = now() - t0;
      // distinct experts per layer this step
      at::Tensor idx = o.routing_indices.reshape({B, layers, -1}).transpose(0, 1).reshape({layers, -1});
      double touched = 0;
      for (int64_t l = 0; l < layers; ++l) touched += std::get<0>(at::_unique(idx[l])).numel();
      double b = layers * attn_bytes + touched * expert_bytes + 4.0 * (cfg.vocab_size * H + B * H);
      if (s >= 4) {  // the first steps warm up
        t += dt;
        bytes += b;
        times.push_back(dt);
      }
    }
    std::sort(times.begin(), times.end());
    std::printf("  batch %lld, few-rows kernel %s: %.2f ms/step (median %.2f), %.0f MB touched/step, %.1f GB/s = %.0f%% of the bandwidth bound\n",
                (long long)B, isa.c_str(), 1e3 * t / times.size(), 1e3 * times[times.size() / 2], bytes / times.size() / 1e6, bytes / t / 1e9,
                100.0 * (bytes / t) / bw);
  }
  return 0;
}

int few_rows(int argc, char** argv) {
  if (argc < 3) return 2;
  banner(moe::bench::arg_int(argv[2]));
  at::NoGradGuard ng;
  const std::string best = model::linear_rows_isa();
  std::printf("linear_rows kernel on this CPU: %s\n", best.c_str());
  std::vector<std::string> isas;
  if (best == "avx512") isas.push_back("avx512");
  if (best != "none") isas.push_back("avx2");
  const std::pair<int64_t, int64_t> shapes[] = {{1024, 1024}, {256, 1024}, {1024, 256}};
  for (auto [O, H] : shapes) {
    std::vector<at::Tensor> ws;
    for (int i = 0; i < 64; ++i) ws.push_back(at::randn({O, H}));
    const double gb = 4.0 * O * H * ws.size() / 1e9;
    for (int64_t n = 1; n <= 4; ++n) {
      at::Tensor x = at::randn({n, 1, H});
      std::vector<double> t_isa(isas.size(), 1e9);
      double t_lin = 1e9, t_mv = 1e9, diff = 0;
      for (int rep = 0; rep < 7; ++rep) {
        for (size_t i = 0; i < isas.size(); ++i) {
          model::set_linear_rows_isa(isas[i]);
          double t0 = now();
          for (auto& w : ws) model::linear_rows(x, w);
          t_isa[i] = std::min(t_isa[i], now() - t0);
        }
        double t0 = now();
        for (auto& w : ws) at::linear(x, w);
        t_lin = std::min(t_lin, now() - t0);
        t0 = now();
        for (auto& w : ws)
          for (int64_t r = 0; r < n; ++r) at::mv(w, x[r][0]);
        t_mv = std::min(t_mv, now() - t0);
      }
      model::set_linear_rows_isa(best);
      for (auto& w : ws) diff = std::max(diff, (model::linear_rows(x, w) - at::linear(x, w)).abs().max().item<double>());
      std::printf("  W %lldx%lld, %lld row(s):", (long long)O, (long long)H, (long long)n);
      for (size_t i = 0; i < isas.size(); ++i)
        std::printf(" linear_rows/%s %.1f GB/s (%.2fx at::linear),", isas[i].c_str(), gb / t_isa[i], t_lin / t_isa[i]);
      std::printf(" at::linear %.1f GB/s, at::mv per row %.1f GB/s; max diff %.1e\n", gb / t_lin, gb / t_mv, diff);
    }
  }
  return 0;
}

int products(int argc, char** argv) {
  if (argc < 3) return 2;
  banner(moe::bench::arg_int(argv[2]));
  at::NoGradGuard ng;
  struct Shape {
    int64_t rows, H, O;
  };
  // tiny: q/o and an expert's products 96x96, k/v 96 -> 48; small: q/o 1024x1024, an expert's gate/up 1024 -> 256
  // and down 256 -> 1024.
  const Shape shapes[] = {{16, 96, 96},     {64, 96, 96},     {256, 96, 96},    {512, 96, 48},     {5, 1024, 1024},
                          {64, 1024, 1024}, {256, 1024, 1024}, {16, 1024, 256}, {64, 1024, 256},  {64, 256, 1024}};
  for (const Shape& s : shapes) {
    std::vector<at::Tensor> w, wT;
    std::vector<model::PackedWeight> wp;
    for (int i = 0; i < 8; ++i) {
      w.push_back(at::randn({s.O, s.H}));
      wT.push_back(w.back().t().contiguous());
      wp.push_back(model::pack_weight(w.back()));
    }
    at::Tensor x = at::randn({s.rows, s.H});
    double t_ours = 1e30, t_mm = 1e30, t_lin = 1e30, diff = 0;
    const int inner = std::max<int64_t>(1, (int64_t{1} << 24) / (s.rows * s.H * s.O));  // ~16 M multiply-adds a run
    for (int rep = 0; rep < 9; ++rep) {
      double t0 = now();
      for (int k = 0; k < inner; ++k)
        for (auto& p : wp) model::linear_packed(x, p);
      t_ours = std::min(t_ours, now() - t0);
      t0 = now();
      for (int k = 0; k < inner; ++k)
        for (auto& t : wT) at::mm(x, t);
      t_mm = std::min(t_mm, now() - t0);
      t0 = now();
      for (int k = 0; k < inner; ++k)
        for (auto& t : w) at::linear(x, t);
      t_lin = std::min(t_lin, now() - t0);
    }
    for (size_t i = 0; i < w.size(); ++i) diff = std::max(diff, (model::linear_packed(x, wp[i]) - at::linear(x, w[i])).abs().max().item<double>());
    const double gf = 2.0 * s.rows * s.H * s.O * inner * w.size() / 1e9;
    std::printf("  %4lld rows x [%4lld -> %4lld]: linear_packed %5.1f GFLOP/s, at::mm(W^T) %5.1f (x%.2f), at::linear %5.1f (x%.2f); max diff %.1e\n",
                (long long)s.rows, (long long)s.H, (long long)s.O, gf / t_ours, gf / t_mm, t_mm / t_ours, gf / t_lin, t_lin / t_ours, diff);
  }
  return 0;
}

int save(int argc, char** argv) {
  if (argc < 4) return 2;
  model::ModelConfig cfg = model::preset_config(argv[3], 98);
  model::Qwen3Moe m(cfg);
  model::init_weights(m, 1);
  model::save_model(m, argv[2]);
  return 0;
}
}  // namespace

int bench_body(int argc, char** argv) {
  std::string what = argc > 1 ? argv[1] : "";
  int rc = 2;
  if (what == "gen") rc = gen(argc, argv);
  else if (what == "experts") rc = experts(argc, argv);
  else if (what == "save") rc = save(argc, argv);
  else if (what == "bandwidth") rc = bandwidth(argc, argv);
  else if (what == "few-rows") rc = few_rows(argc, argv);
  else if (what == "products") rc = products(argc, argv);
  if (rc == 2) std::fprintf(stderr, "usage: see the comment at the top of tests/bench/bench_decode.cpp\n");
  return rc;
}

int main(int argc, char** argv) { return moe::bench::bench_main("bench_decode", bench_body, argc, argv); }
