// Benchmark (not a test): encoding speed of moekit's HF tokenizer.json implementation, side by side with
// Hugging Face `tokenizers` (Rust, through its Python binding, one thread) on the same text in the same run.
//   build/bench/bench_tokenizer [--mb N] [--python PATH] [--tokenizer tokenizer.json(.zst)]
// The text is a few MB of mixed lines built from tests/fixtures/tokenizer/corpus.jsonl (every script,
// code, LaTeX, emoji, whitespace runs), each line numbered so that lines differ. Both sides encode it line
// by line, the timing covers encoding only, and the ids are compared. --python names an interpreter with
// `tokenizers` installed (without it only moekit is timed). BLAS: not used.
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/io/file.h"
#include "moe/tokenizer/hf_tokenizer.h"
#include "bench_util.h"

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

std::string maybe_unzstd(const std::string& path) {
  std::string z = moe::io::read_file(path);
  if (path.size() < 4 || path.substr(path.size() - 4) != ".zst") return z;
  std::string out, buf(1 << 20, '\0');
  ZSTD_DStream* d = ZSTD_createDStream();
  ZSTD_inBuffer in{z.data(), z.size(), 0};
  while (in.pos < in.size) {
    ZSTD_outBuffer o{buf.data(), buf.size(), 0};
    if (ZSTD_isError(ZSTD_decompressStream(d, &o, &in))) throw std::runtime_error(path + ": bad zstd");
    out.append(buf.data(), o.pos);
  }
  ZSTD_freeDStream(d);
  return out;
}

const char* kHfScript = R"(
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
lines = [json.loads(l)["text"] for l in open(sys.argv[2], encoding="utf-8")]
tok.encode(lines[0])
t0 = time.perf_counter()
ids = [tok.encode(l).ids for l in lines]
t = time.perf_counter() - t0
with open(sys.argv[3], "w") as f:
    json.dump({"seconds": t, "ids": ids}, f)
)";

}  // namespace

int bench_body(int argc, char** argv) {
  std::string src = MOEKIT_SRC_DIR;
  std::string tok_path = src + "/tests/fixtures/tokenizer/qwen3/tokenizer.json.zst", python;
  double mb = 4;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--mb") mb = moe::bench::arg_double(argv[i + 1]);
    else if (a == "--python") python = argv[i + 1];
    else if (a == "--tokenizer") tok_path = argv[i + 1];
    else return std::fprintf(stderr, "usage: bench_tokenizer [--mb N] [--python PATH] [--tokenizer FILE]\n"), 2;
  }
  const std::string json_text = maybe_unzstd(tok_path);
  moe::tokenizer::HfTokenizer tok = moe::tokenizer::HfTokenizer::from_json(json_text, tok_path);

  std::vector<std::string> corpus;
  {
    std::ifstream f(src + "/tests/fixtures/tokenizer/corpus.jsonl");
    for (std::string line; std::getline(f, line);) corpus.push_back(nlohmann::json::parse(line)["text"]);
  }
  std::vector<std::string> lines;
  size_t bytes = 0;
  for (size_t i = 0; bytes < mb * 1e6; ++i) {
    lines.push_back(corpus[(i * 7919) % corpus.size()] + " #" + std::to_string(i) + "\n");
    bytes += lines.back().size();
  }

  char dir[] = "/tmp/bench_tokenizer.XXXXXX";
  if (!mkdtemp(dir)) return std::perror("mkdtemp"), 1;
  const std::string d = dir, text_path = d + "/lines.jsonl", tok_file = d + "/tokenizer.json", out_path = d + "/hf.json";

  double t0 = now();
  std::vector<std::vector<int64_t>> ours;
  ours.reserve(lines.size());
  size_t tokens = 0;
  for (const auto& l : lines) {
    ours.push_back(tok.encode(l));
    tokens += ours.back().size();
  }
  const double t_ours = now() - t0;
  std::printf("text: %.2f MB in %zu lines, %zu tokens (%s)\n", bytes / 1e6, lines.size(), tokens, tok_path.c_str());
  std::printf("moekit HfTokenizer   %7.3f s  %7.2f MB/s  %9.0f tokens/s  (1 thread, PCRE2 JIT, utf8proc)\n", t_ours,
              bytes / 1e6 / t_ours, tokens / t_ours);

  if (!python.empty()) {
    {
      std::ofstream f(text_path);
      for (const auto& l : lines) f << nlohmann::json({{"text", l}}).dump() << "\n";
      std::ofstream g(tok_file);
      g << json_text;
    }
    pid_t pid = fork();
    if (pid == 0) {
      setenv("RAYON_NUM_THREADS", "1", 1);
      setenv("TOKENIZERS_PARALLELISM", "false", 1);
      execl(python.c_str(), python.c_str(), "-c", kHfScript, tok_file.c_str(), text_path.c_str(), out_path.c_str(), (char*)nullptr);
      _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return std::fprintf(stderr, "bench_tokenizer: %s failed\n", python.c_str()), 1;
    auto hf = nlohmann::json::parse(moe::io::read_file(out_path));
    const double t_hf = hf["seconds"];
    size_t same = 0;
    for (size_t i = 0; i < lines.size(); ++i) same += hf["ids"][i].get<std::vector<int64_t>>() == ours[i];
    std::printf("HF tokenizers (Rust) %7.3f s  %7.2f MB/s  %9.0f tokens/s  (1 thread, encode per line)\n", t_hf,
                bytes / 1e6 / t_hf, tokens / t_hf);
    std::printf("speed ratio moekit / HF: %.2fx; identical ids on %zu of %zu lines\n", t_hf / t_ours, same, lines.size());
    std::remove(text_path.c_str());
    std::remove(tok_file.c_str());
    std::remove(out_path.c_str());
  }
  rmdir(dir);
  return 0;
}

int main(int argc, char** argv) { return moe::bench::bench_main("bench_tokenizer", bench_body, argc, argv); }
