// Small helpers shared by the benchmarks: a wall clock in seconds, the BLAS library a run really used
// (Debian's libtorch does its matrix products through whichever libblas.so.3 is selected; a figure means
// little without it), numbers from the command line, and a main that reports errors instead of aborting.
#pragma once
#include <limits.h>
#include <link.h>
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>

namespace moe::bench {

inline double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// The shared object that provides libblas.so.3 (or OpenBLAS) in this process, resolved through its symlinks.
inline std::string blas_in_use() {
  std::string found;
  dl_iterate_phdr(
      [](struct dl_phdr_info* info, size_t, void* data) {
        std::string name = info->dlpi_name ? info->dlpi_name : "";
        if (name.find("libblas") != std::string::npos || name.find("openblas") != std::string::npos) {
          char real[PATH_MAX];
          *static_cast<std::string*>(data) = realpath(name.c_str(), real) ? real : name;
        }
        return 0;
      },
      &found);
  return found.empty() ? "(no libblas loaded)" : found;
}

// A number from the command line: the whole argument, else std::invalid_argument naming it (bench_main
// reports it; atoi's 0 for "x" ran a benchmark on garbage, stoi's bare "stoi" aborted). parse is stoll or
// stod with the position of the first character it did not read.
template <class T, class Parse>
T arg_number(const std::string& s, const char* kind, Parse parse) {
  size_t pos = 0;
  T v{};
  try {
    v = parse(s, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (s.empty() || pos != s.size()) throw std::invalid_argument(std::string("not ") + kind + ": '" + s + "'");
  return v;
}
inline long long arg_int(const std::string& s) {
  return arg_number<long long>(s, "an integer", [](const std::string& t, size_t* p) { return std::stoll(t, p); });
}
inline double arg_double(const std::string& s) {
  return arg_number<double>(s, "a number", [](const std::string& t, size_t* p) { return std::stod(t, p); });
}

// A benchmark's main: body's exit status; a bad argument prints "PROG: message" and exits 2, any other error
// (libtorch's included) exits 1 with its message, where an uncaught exception aborted with a core.
inline int bench_main(const char* prog, int (*body)(int, char**), int argc, char** argv) {
  try {
    return body(argc, argv);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "%s: %s\n", prog, e.what());
    return 2;
  } catch (const std::exception& e) {
    std::string m = e.what();
    std::fprintf(stderr, "%s: %s\n", prog, m.substr(0, m.find('\n')).c_str());
    return 1;
  }
}

}  // namespace moe::bench
