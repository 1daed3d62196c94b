// Small helpers shared by the benchmarks: a wall clock in seconds and the BLAS library a run really used
// (Debian's libtorch does its matrix products through whichever libblas.so.3 is selected; a figure means
// little without it).
#pragma once
#include <limits.h>
#include <link.h>
#include <stdlib.h>

#include <chrono>
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

}  // namespace moe::bench
