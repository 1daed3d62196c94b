// The shared command-line layer: one option table for options every tool spells the same, and one place
// that turns exceptions into "prog: error: ..." and exit codes.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace CLI {
class App;
}

namespace moe::cli {

// Exit codes shared by every tool (each man page documents them; tools may add their own above 2).
enum Exit : int {
  kExitOk = 0,     // success
  kExitError = 1,  // bad input or runtime error
  kExitUsage = 2,  // bad command line
};

const char* version();

// Options spelled the same in every tool. A tool adds the ones it uses with add_* below.
struct Common {
  int verbose = 0;     // -v (repeatable)
  bool quiet = false;  // -q
  int threads = 0;     // --threads (0 = library default)
  uint64_t seed = 0;   // --seed
  std::string device = "cpu";
  std::string output = "-";  // -o
  std::string model;         // -m/--model
};

void add_quiet_verbose(CLI::App& app, Common& c);
void add_output(CLI::App& app, Common& c, const std::string& what = "output file ('-' = stdout)");
void add_seed(CLI::App& app, Common& c);
void add_threads(CLI::App& app, Common& c);
void add_device(CLI::App& app, Common& c);
void add_model(CLI::App& app, Common& c, bool required = true);

// Data-parallel and expert-parallel options (moe-train-step, moe-rollout), as given on the command line;
// moe::dist::dist_config fills what was not given from torchrun's environment.
struct DistOptions {
  std::optional<int> rank, world, port;
  std::string master_addr;
  std::string init_file;
  double timeout_s = 120;
  std::string backend = "gloo";
  int expert_parallel = 1;
};
void add_dist(CLI::App& app, DistOptions& d);

// Runs a tool: builds its CLI11 app with `setup`, parses argv, then calls `body`. Maps
//   --help -> usage on stdout, exit 0;   --version -> "prog moekit X.Y.Z" on stdout, exit 0;
//   parse errors and moe::UsageError -> one line + hint on stderr, exit 2;
//   moe::Error and other exceptions -> "prog: error: what" on stderr, exit 1;
//   moe::BrokenPipe (stdout reader gone) -> silent exit 0.
// SIGPIPE is ignored so that broken pipes surface as EPIPE. stdout is closed and checked at the end.
int run_tool(const char* prog, int argc, char** argv, const std::function<void(CLI::App&)>& setup,
             const std::function<int()>& body);

// The running tool's name (for messages).
const char* prog_name();

// Keeps memory libtorch frees in glibc's heap for the next allocation, instead of unmapping it (blocks
// above glibc's mmap threshold) or trimming it (the heap's top): otherwise every train step or decode batch
// faults in freshly zeroed pages for the tensors it allocates (bench_train_step small/1L: 1.1-1.2x faster
// with it; MOEKIT_MALLOC=glibc runs the bench without). The process's peak memory stays about the same
// (+2% there); what is freed stays mapped until exit. run_tool calls it first. Not when GLIBC_TUNABLES sets glibc.malloc.*
// (the user's choice) or MOEKIT_MALLOC=glibc (glibc's defaults, for comparison). Returns whether it did.
bool tune_malloc();

// Logging to stderr, prefixed with the program name. info() is silenced by -q; debug() needs -v.
void set_verbosity(int verbose, bool quiet);
void info(const std::string& msg);
void debug(const std::string& msg);
void warn(const std::string& msg);
bool quiet();

// A one-line progress bar on stderr, drawn only when stderr is a terminal and not -q.
class Progress {
 public:
  Progress(std::string label, int64_t total, std::string unit = "");
  ~Progress();
  void add(int64_t n = 1, int64_t extra = 0);  // extra: e.g. tokens, shown as a rate
  void finish();

 private:
  void draw(bool final);
  std::string label_, unit_;
  int64_t total_, done_ = 0, extra_ = 0;
  double start_, last_draw_ = 0;
  bool enabled_, finished_ = false;
};

}  // namespace moe::cli
