// The fixed cost of one RL step (prints, never fails): what a moe-train-step process spends besides the
// step's compute, at the larger shape of issue 15 (the `small` preset cut to 8 layers: hidden 1024,
// 64 experts top-8, 424 M parameters with the char vocabulary).
//
//   bench_fixed_cost [--dir D] [--threads N] [--layers L] [--seqs S] [--prompt P] [--response R]
//                    [--tool PATH/moe-train-step] [--device-mb MB] [--save-every N]
//
// In one run: writes a random model into D/model (setup), then
//   load     load_model of the model dir (weights; fp32)
//   setup    Trainer construction + load_state (optimizer.safetensors when present)
//   compute  one step: old pass + K=2 mini-batch updates on S sequences of P + R random tokens
//   save     Trainer::save (weights + Adam moments + trainer_state.json, staged dir, fsync, swap)
// twice (the second round loads the optimizer state the first one saved), and prints the save rate
// (bytes of the checkpoint / save seconds), the fixed/compute ratio of one process per step (start + load +
// setup + save) and of `moe-train-step --follow` (save only: the process, the model and the optimizer stay),
// and with --follow --save-every N (default 4: one save per N steps).
// Process start: median of 3 runs of `TOOL --version` (skipped without --tool). The device bound: MB of
// zeros written with one fsync (0: skipped), so a disk-bound save can be told from a slow writer.
// D defaults to /tmp; pass a tmpfs (e.g. /dev/shm) to take the disk out.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <dirent.h>
#include <fcntl.h>
#include <link.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench_util.h"
#include "moe/model/config.h"
#include "moe/model/qwen3_moe.h"
#include "moe/train/step.h"

using namespace moe;
using moe::bench::blas_in_use;
using moe::bench::now;

namespace {

double dir_bytes(const std::string& dir) {
  double total = 0;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      struct stat st;
      if (stat((dir + "/" + e->d_name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) total += static_cast<double>(st.st_size);
    }
    closedir(d);
  }
  return total;
}

// Seconds of one `tool --version` (fork + exec + dynamic loading + static initialisers + exit).
double process_start(const std::string& tool) {
  const double t0 = now();
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0) dup2(null, 1);
    execl(tool.c_str(), tool.c_str(), "--version", static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
  return now() - t0;
}

// MB/s of writing mb MiB of zeros into dir with one fsync (the device's bound for a durable save).
double device_rate(const std::string& dir, int mb) {
  const std::string path = dir + "/bench_fixed_cost.device-test";
  std::vector<char> buf(size_t(16) << 20, 0);
  const double t0 = now();
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_EXCL, 0644);
  if (fd < 0) return -1;
  for (int64_t left = int64_t(mb) << 20; left > 0;) {
    ssize_t w = write(fd, buf.data(), static_cast<size_t>(std::min<int64_t>(left, buf.size())));
    if (w <= 0) break;
    left -= w;
  }
  fsync(fd);
  close(fd);
  const double t = now() - t0;
  unlink(path.c_str());
  return mb * 1.048576 / t;
}
}  // namespace

int bench_body(int argc, char** argv) {
  int threads = 2, layers = 8, seqs = 16, P = 32, R = 96, device_mb = 512, save_every = 4;
  std::string dir = "/tmp", tool;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i], v = argv[i + 1];
    if (a == "--threads") threads = moe::bench::arg_int(v);
    else if (a == "--layers") layers = moe::bench::arg_int(v);
    else if (a == "--seqs") seqs = moe::bench::arg_int(v);
    else if (a == "--prompt") P = moe::bench::arg_int(v);
    else if (a == "--response") R = moe::bench::arg_int(v);
    else if (a == "--device-mb") device_mb = moe::bench::arg_int(v);
    else if (a == "--save-every") save_every = static_cast<int>(std::max<long long>(1, moe::bench::arg_int(v)));
    else if (a == "--dir") dir = v;
    else if (a == "--tool") tool = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  at::set_num_threads(threads);
  std::printf("bench_fixed_cost: libtorch %s, %d thread(s), BLAS %s, dir %s\n", TORCH_VERSION, threads,
              blas_in_use().c_str(), dir.c_str());
  char tmpl[PATH_MAX];
  std::snprintf(tmpl, sizeof tmpl, "%s/bench_fixed_cost.XXXXXX", dir.c_str());
  if (!mkdtemp(tmpl)) {
    std::perror(tmpl);
    return 1;
  }
  const std::string work = tmpl, mdir = work + "/model";
  auto cfg = model::preset_config("small", 98);
  cfg.num_hidden_layers = layers;
  {
    model::Qwen3Moe m(cfg);
    model::init_weights(m, 1);
    model::save_model(m, mdir);
  }
  std::mt19937_64 g(7);
  std::vector<train::Sequence> data;
  for (int i = 0; i < seqs; ++i) {
    train::Sequence s;
    s.id = i;
    for (int k = 0; k < P; ++k) s.prompt.push_back(3 + g() % (cfg.vocab_size - 3));
    for (int k = 0; k < R; ++k) s.response.push_back(3 + g() % (cfg.vocab_size - 3));
    s.advantage = (i % 2) ? 1.0 : -1.0;
    data.push_back(s);
  }
  double t_start = -1;
  if (!tool.empty()) {
    std::vector<double> v;
    for (int i = 0; i < 3; ++i) v.push_back(process_start(tool));
    std::sort(v.begin(), v.end());
    t_start = v[1];
  }
  double params = 0;
  for (int round = 1; round <= 2; ++round) {
    const double a = now();
    model::Qwen3Moe m = model::load_model(mdir, c10::Device(c10::kCPU), at::kFloat);
    const double b = now();
    train::TrainConfig tc;
    tc.loss.algo = algo::parse_algo("grpo");
    train::Trainer t(m, tc);
    t.load_state(mdir);
    const double c = now();
    std::vector<train::OldPass> old;
    t.old_pass(data, old);
    for (int k = 0; k < 2; ++k) {
      std::vector<size_t> mb;
      for (int i = k * seqs / 2; i < (k + 1) * seqs / 2; ++i) mb.push_back(i);
      t.update(data, old, mb, mb.size(), static_cast<int64_t>(mb.size()) * R, R);
    }
    const double d = now();
    t.save(mdir, {});
    const double e = now();
    params = 0;
    for (auto& p : m->parameters()) params += static_cast<double>(p.numel());
    const double bytes = dir_bytes(mdir);
    const double load = b - a, setup = c - b, compute = d - c, save = e - d;
    const double start = std::max(0.0, t_start);
    std::printf("round %d: %.1f M params, %d seqs x (%d+%d) tok\n", round, params / 1e6, seqs, P, R);
    std::printf("  load %.3f s  setup (trainer + optimizer state) %.3f s  compute %.3f s  save %.3f s (%.2f GB, %.2f GB/s)\n",
                load, setup, compute, save, bytes / 1e9, bytes / 1e9 / save);
    std::printf("  fixed/compute: one process per step %.3f (start %s + load + setup + save = %.3f s); --follow %.3f (save)\n",
                (start + load + setup + save) / compute, t_start < 0 ? "not measured" : (std::to_string(t_start) + " s").c_str(),
                start + load + setup + save, save / compute);
    std::printf("  fixed/compute with --follow --save-every %d: %.3f (save / %d)\n", save_every, save / save_every / compute, save_every);
  }
  if (device_mb > 0) std::printf("device: %d MiB written with one fsync in %s: %.0f MB/s\n", device_mb, work.c_str(), device_rate(work, device_mb));
  std::string rm = "rm -rf '" + work + "'";
  if (std::system(rm.c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", work.c_str());
  return 0;
}

int main(int argc, char** argv) { return moe::bench::bench_main("bench_fixed_cost", bench_body, argc, argv); }
