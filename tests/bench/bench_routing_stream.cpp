// Benchmark (prints figures, never fails on a time): write and read a routing stream of the
// Qwen3-30B-A3B shape (48 MoE layers, 128 experts -> u8 indices, top-8, f16 probabilities) with skewed
// expert choices, next to `zstd -d` on the same compressed bytes, and the peak RSS of the writer and the
// reader for two stream lengths (the peak should not grow with the length).
//
//   build/bench/bench_routing_stream [--positions N]... [--seq-len 1000] [--level 3] [--dir /tmp] [--keep]
//
// Each measurement runs in a forked child so getrusage(RUSAGE_CHILDREN)-style peaks are per run.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <zstd.h>

#include "../support/stream_forge.h"
#include "moe/format/routing.h"
#include "moe/format/stream.h"
#include "moe/io/file.h"
#include "bench_util.h"

namespace {

constexpr int kLayers = 48, kExperts = 128, kTopK = 8;

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Figures {
  double seconds = 0;        // timed section
  double gen_seconds = 0;    // synthetic data generation (writer only, not in the timed section)
  uint64_t bytes = 0;        // payload bytes (indices + probabilities), uncompressed
  uint64_t checksum = 0;     // keeps the reader's work observable
  long peak_rss_kb = 0;
};

// Runs fn in a child; returns its figures (through a pipe) and its peak RSS (wait4).
template <class Fn>
Figures in_child(Fn fn) {
  int p[2];
  if (pipe(p) != 0) std::exit(1);
  std::fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    Figures f = fn();
    if (write(p[1], &f, sizeof f) != ssize_t(sizeof f)) _exit(1);
    _exit(0);
  }
  close(p[1]);
  Figures f;
  ssize_t n = read(p[0], &f, sizeof f);
  close(p[0]);
  int status = 0;
  rusage ru{};
  wait4(pid, &status, 0, &ru);
  if (n != ssize_t(sizeof f) || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "bench: child failed\n");
    std::exit(1);
  }
  f.peak_rss_kb = ru.ru_maxrss;
  return f;
}

Figures write_stream(const std::string& path, int64_t positions, int64_t seq_len, int level) {
  moe::format::RoutingMeta m;
  m.num_layers = kLayers;
  m.num_experts = kExperts;
  m.top_k = kTopK;
  m.prob_dtype = "f16";
  moe::format::Header h;
  h.producer = {{"program", "bench_routing_stream"}};
  moe::testing::RoutingSynth synth(kLayers, kExperts, kTopK, 42);
  moe::io::Output out(path);
  moe::format::RoutingWriter w(out, h, m, level);
  moe::format::RoutingRecord rec;
  Figures f;
  uint64_t id = 0;
  for (int64_t done = 0; done < positions; done += seq_len, ++id) {
    int64_t n = std::min(seq_len, positions - done);
    double t0 = now();
    synth.fill(id, 0, n, true, 0, 0, rec);
    double t1 = now();
    w.write(rec);
    if (id % 16 == 15) w.flush();
    f.gen_seconds += t1 - t0;
    f.seconds += now() - t1;
    f.bytes += uint64_t(n) * kLayers * kTopK * 3;
  }
  double t0 = now();
  w.finish();
  out.close();
  f.seconds += now() - t0;
  return f;
}

Figures read_typed(const std::string& path) {
  Figures f;
  double t0 = now();
  moe::io::Input in(path);
  moe::format::RoutingReader r(in);
  moe::format::RoutingRecord rec;
  while (r.next(rec)) {
    f.bytes += rec.experts.size() * 3;
    f.checksum += rec.experts[rec.experts.size() / 2] + uint64_t(rec.probs.back() * 1000);
  }
  f.seconds = now() - t0;
  return f;
}

Figures read_raw(const std::string& path) {  // container only: zstd, msgpack framing, checksum, trailer
  Figures f;
  double t0 = now();
  moe::io::Input in(path);
  moe::format::StreamReader r(in, "routing");
  moe::format::Record rec;
  while (r.next(rec)) {
    f.bytes += rec.find("experts")->via.bin.size + rec.find("probs")->via.bin.size;
  }
  f.seconds = now() - t0;
  return f;
}

// libzstd alone, in process: stream the file through ZSTD_decompressStream into a 1 MiB buffer and drop
// the output. The floor of any reader built on libzstd.
Figures read_libzstd(const std::string& path) {
  Figures f;
  double t0 = now();
  moe::io::Input in(path);
  ZSTD_DCtx* d = ZSTD_createDCtx();
  std::vector<char> ibuf(ZSTD_DStreamInSize()), obuf(1 << 20);
  for (size_t n; (n = in.read(ibuf.data(), ibuf.size())) > 0;) {
    ZSTD_inBuffer zin{ibuf.data(), n, 0};
    while (zin.pos < zin.size) {
      ZSTD_outBuffer zout{obuf.data(), obuf.size(), 0};
      size_t ret = ZSTD_decompressStream(d, &zout, &zin);
      if (ZSTD_isError(ret)) std::exit(1);
      f.bytes += zout.pos;
    }
  }
  ZSTD_freeDCtx(d);
  f.seconds = now() - t0;
  return f;
}

// `zstd -d` of the same file to /dev/null, wall time (best of `runs`).
double zstd_cli_seconds(const std::string& path, int runs) {
  double best = 1e30;
  std::string cmd = "zstd -d -q -c '" + path + "' > /dev/null";
  for (int i = 0; i < runs; ++i) {
    double t0 = now();
    if (std::system(cmd.c_str()) != 0) {
      std::fprintf(stderr, "bench: '%s' failed (is the zstd CLI installed?)\n", cmd.c_str());
      return -1;
    }
    best = std::min(best, now() - t0);
  }
  return best;
}

uint64_t file_size(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  return uint64_t(f.tellg());
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

}  // namespace

int bench_body(int argc, char** argv) {
  std::vector<int64_t> sizes;
  int64_t seq_len = 1000;
  int level = 3, runs = 3;
  std::string dir = "/tmp";
  bool keep = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--positions") sizes.push_back(moe::bench::arg_int(val()));
    else if (a == "--seq-len") seq_len = moe::bench::arg_int(val());
    else if (a == "--level") level = moe::bench::arg_int(val());
    else if (a == "--runs") runs = moe::bench::arg_int(val());
    else if (a == "--dir") dir = val();
    else if (a == "--keep") keep = true;
    else {
      std::fprintf(stderr, "usage: %s [--positions N]... [--seq-len N] [--level L] [--runs N] [--dir D] [--keep]\n", argv[0]);
      return 2;
    }
  }
  if (sizes.empty()) sizes = {100000, 1000000};

  std::printf("routing stream benchmark: %d layers x top-%d of %d experts (u8 indices, f16 probs), "
              "%lld positions per record, zstd level %d (libzstd %s)\ncpu: %s, %ld online cores\n",
              kLayers, kTopK, kExperts, (long long)seq_len, level, ZSTD_versionString(), cpu_model().c_str(),
              sysconf(_SC_NPROCESSORS_ONLN));
  std::printf("MB = 1e6 bytes of uncompressed payload (indices + probabilities: %d bytes per position)\n\n",
              kLayers * kTopK * 3);
  std::printf("%10s %9s %10s %9s %9s %9s %9s %9s %7s %9s %9s\n", "positions", "payloadMB", "compressMB", "B/pos",
              "writeMB/s", "readMB/s", "rawMB/s", "zstd-d", "read/", "writeRSS", "readRSS");
  std::printf("%10s %9s %10s %9s %9s %9s %9s %9s %7s %9s %9s\n", "", "", "", "", "", "(typed)", "(records)", "MB/s",
              "zstd", "peak MB", "peak MB");
  for (int64_t n : sizes) {
    std::string path = dir + "/bench_routing_" + std::to_string(n) + ".zst";
    Figures w = in_child([&] { return write_stream(path, n, seq_len, level); });
    // Warm the page cache once so the reader and zstd -d see the same state; best of `runs` each.
    zstd_cli_seconds(path, 1);
    Figures r, raw, lib;
    r.seconds = raw.seconds = lib.seconds = 1e30;
    for (int i = 0; i < runs; ++i) {
      Figures x = in_child([&] { return read_typed(path); });
      if (x.seconds < r.seconds) r = x;
      Figures y = in_child([&] { return read_raw(path); });
      if (y.seconds < raw.seconds) raw = y;
      Figures z = read_libzstd(path);
      if (z.seconds < lib.seconds) lib = z;
    }
    double z = zstd_cli_seconds(path, runs);
    const uint64_t csize = file_size(path);
    const double mb = double(w.bytes) / 1e6;
    std::printf("%10lld %9.1f %10.1f %9.1f %9.1f %9.1f %9.1f %9.1f %6.0f%% %9.1f %9.1f\n", (long long)n, mb,
                double(csize) / 1e6, double(csize) / double(n), mb / w.seconds, mb / r.seconds, mb / raw.seconds,
                z > 0 ? mb / z : 0.0, z > 0 ? 100.0 * z / r.seconds : 0.0, w.peak_rss_kb / 1024.0,
                r.peak_rss_kb / 1024.0);
    std::fflush(stdout);
    if (r.bytes != w.bytes || raw.bytes != w.bytes) {
      std::fprintf(stderr, "bench: read %llu payload bytes, wrote %llu\n", (unsigned long long)r.bytes,
                   (unsigned long long)w.bytes);
      return 1;
    }
    std::printf("%10s libzstd alone in process: %.1f MB/s of decompressed stream (typed read = %.0f%% of it); "
                "synthetic data generation (not timed) %.1f s; reader checksum %llu\n", "",
                double(lib.bytes) / 1e6 / lib.seconds, 100.0 * lib.seconds / r.seconds * double(w.bytes) / double(lib.bytes),
                w.gen_seconds, (unsigned long long)r.checksum);
    if (!keep) std::remove(path.c_str());
  }
  std::printf("\nread/zstd = our typed decode throughput as a share of `zstd -d` on the same file (goal >= 50%%).\n"
              "typed = RoutingReader::next into RoutingRecord (u8 -> u16, f16 -> f32, range and duplicate checks);\n"
              "records = StreamReader::next only (zstd, msgpack framing, XXH3 checksum, trailer).\n");
  return 0;
}

int main(int argc, char** argv) { return moe::bench::bench_main("bench_routing_stream", bench_body, argc, argv); }
