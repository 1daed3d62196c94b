#include "moe/cli/app.h"

#include <malloc.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <iostream>

#include "moe/io/error.h"

namespace moe::cli {
namespace {
const char* g_prog = "moekit";
int g_verbose = 0;
bool g_quiet = false;

double now_seconds() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

void print_error(const std::string& msg) { std::fprintf(stderr, "%s: error: %s\n", g_prog, msg.c_str()); }

// stdout must reach its reader: a full disk or closed pipe at the very end is still an error (or, for
// EPIPE, a quiet stop).
int close_stdout(int code) {
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
    if (errno == EPIPE) return code;
    print_error(std::string("write error on stdout: ") + std::strerror(errno));
    return code == kExitOk ? kExitError : code;
  }
  if (std::fclose(stdout) != 0) {
    if (errno == EPIPE) return code;
    print_error(std::string("write error on stdout: ") + std::strerror(errno));
    return code == kExitOk ? kExitError : code;
  }
  return code;
}
}  // namespace

const char* prog_name() { return g_prog; }

void set_verbosity(int verbose, bool quiet) {
  g_verbose = verbose;
  g_quiet = quiet;
}
bool quiet() { return g_quiet; }
void info(const std::string& msg) {
  if (!g_quiet) std::fprintf(stderr, "%s: %s\n", g_prog, msg.c_str());
}
void debug(const std::string& msg) {
  if (g_verbose > 0 && !g_quiet) std::fprintf(stderr, "%s: %s\n", g_prog, msg.c_str());
}
void warn(const std::string& msg) { std::fprintf(stderr, "%s: warning: %s\n", g_prog, msg.c_str()); }

void add_quiet_verbose(CLI::App& app, Common& c) {
  app.add_flag("-q,--quiet", c.quiet, "no progress or summaries on stderr");
  app.add_flag("-v,--verbose", c.verbose, "more detail on stderr (repeatable)");
}
void add_output(CLI::App& app, Common& c, const std::string& what) { app.add_option("-o,--output", c.output, what); }
void add_seed(CLI::App& app, Common& c) { app.add_option("--seed", c.seed, "random seed")->capture_default_str(); }
void add_threads(CLI::App& app, Common& c) {
  app.add_option("--threads", c.threads, "intra-op CPU threads (0 = default)")->check(CLI::NonNegativeNumber);
}
void add_device(CLI::App& app, Common& c) {
  app.add_option("--device", c.device, "torch device: cpu, cuda, cuda:N")->capture_default_str();
}
void add_model(CLI::App& app, Common& c, bool required) {
  auto* o = app.add_option("-m,--model", c.model, "model directory");
  if (required) o->required();
}

void add_dist(CLI::App& app, DistOptions& d) {
  app.add_option("--rank", d.rank, "data-parallel rank (default: $RANK or 0)");
  app.add_option("--world-size", d.world, "data-parallel processes (default: $WORLD_SIZE or 1)");
  app.add_option("--master-addr", d.master_addr, "rendezvous host (default: $MASTER_ADDR or 127.0.0.1)");
  app.add_option("--master-port", d.port, "rendezvous TCP port (default: $MASTER_PORT or 29500)");
  app.add_option("--dist-init-file", d.init_file, "rendezvous through this shared file instead of TCP");
  app.add_option("--dist-timeout", d.timeout_s, "seconds before a missing peer is an error")->capture_default_str();
  app.add_option("--dist-backend", d.backend, "gloo (CPU) or nccl (CUDA builds)")->capture_default_str();
  app.add_option("--expert-parallel", d.expert_parallel,
                 "expert parallel: groups of N consecutive ranks share out the experts of every MoE layer")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
}

bool tune_malloc() {
  const char* t = std::getenv("GLIBC_TUNABLES");
  const char* m = std::getenv("MOEKIT_MALLOC");
  if ((t && std::strstr(t, "glibc.malloc.")) || (m && std::strcmp(m, "glibc") == 0)) return false;
#ifdef __GLIBC__
  // No block from mmap (the heap serves them all; glibc still maps memory when the heap cannot grow), the
  // heap's free top kept up to 2 GiB, and the heap grown 64 MiB beyond each request.
  return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max()) == 1 &&
         mallopt(M_TOP_PAD, 64 << 20) == 1;
#else
  return false;
#endif
}

int run_tool(const char* prog, int argc, char** argv, const std::function<void(CLI::App&)>& setup,
             const std::function<int()>& body) {
  g_prog = prog;
  tune_malloc();
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app;
  app.name(prog);
  app.set_version_flag("--version", std::string(prog) + " (moekit) " + version());
  int code = kExitOk;
  try {
    setup(app);
    try {
      app.parse(argc, argv);
    } catch (const CLI::CallForHelp&) {
      std::fputs(app.help().c_str(), stdout);
      return close_stdout(kExitOk);
    } catch (const CLI::CallForAllHelp&) {
      std::fputs(app.help("", CLI::AppFormatMode::All).c_str(), stdout);
      return close_stdout(kExitOk);
    } catch (const CLI::CallForVersion& e) {
      std::fprintf(stdout, "%s\n", e.what());
      return close_stdout(kExitOk);
    } catch (const CLI::ParseError& e) {
      throw UsageError(e.what());
    }
    code = body();
  } catch (const UsageError& e) {
    print_error(e.what());
    std::fprintf(stderr, "Try '%s --help' for more information.\n", prog);
    return kExitUsage;
  } catch (const BrokenPipe&) {
    return kExitOk;
  } catch (const Error& e) {
    print_error(e.what());
    return close_stdout(kExitError) == kExitOk ? kExitError : kExitError;
  } catch (const std::bad_alloc&) {
    print_error("out of memory");
    return kExitError;
  } catch (const std::exception& e) {
    // libtorch's errors (c10::Error) append a C++ backtrace, and newer versions hints on more lines, that
    // mean nothing to a user: keep the first line of the message, whatever the version.
    std::string msg = e.what();
    const auto first = msg.find_first_not_of("\n");
    msg = first == std::string::npos ? std::string() : msg.substr(first);
    auto nl = msg.find('\n');
    if (nl != std::string::npos) msg.resize(nl);
    print_error(msg);
    return kExitError;
  }
  return close_stdout(code);
}

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), start_(now_seconds()) {
  enabled_ = !g_quiet && isatty(2);
}
Progress::~Progress() {
  if (enabled_ && !finished_) std::fputc('\n', stderr);
}
void Progress::add(int64_t n, int64_t extra) {
  done_ += n;
  extra_ += extra;
  if (!enabled_) return;
  double t = now_seconds();
  if (t - last_draw_ >= 0.1 || done_ >= total_) {
    last_draw_ = t;
    draw(false);
  }
}
void Progress::finish() {
  if (enabled_ && !finished_) {
    draw(true);
    std::fputc('\n', stderr);
  }
  finished_ = true;
}
void Progress::draw(bool) {
  double el = now_seconds() - start_;
  const int width = 30;
  int filled = total_ > 0 ? static_cast<int>(width * std::min<double>(1.0, double(done_) / total_)) : 0;
  std::string bar(filled, '#');
  bar.append(width - filled, '.');
  char rate[64] = "";
  if (!unit_.empty() && el > 0) std::snprintf(rate, sizeof rate, "  %.0f %s/s", extra_ / el, unit_.c_str());
  std::fprintf(stderr, "\r%s: %s [%s] %lld/%lld  %.1fs%s\033[K", g_prog, label_.c_str(), bar.c_str(),
               (long long)done_, (long long)total_, el, rate);
  std::fflush(stderr);
}

}  // namespace moe::cli
