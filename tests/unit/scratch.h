// Scratch directories of the unit tests: made under $TMPDIR (default /tmp) and removed with everything in them when the test
// process ends, whether its tests passed or failed (CTest runs one test case per process).
#pragma once
#include <stdlib.h>

#include <cstdlib>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace moe::testing {

class ScratchDirs {
 public:
  static ScratchDirs& instance() {
    static ScratchDirs dirs;
    return dirs;
  }
  std::string make(const std::string& prefix) {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/" + prefix + "-XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp " + tmpl + " failed");
    dirs_.push_back(tmpl);
    return tmpl;
  }
  ~ScratchDirs() {
    for (const auto& d : dirs_) {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
  }

 private:
  std::vector<std::string> dirs_;
};

// A fresh directory "$TMPDIR/<prefix>-XXXXXX", removed when the process ends.
inline std::string make_scratch_dir(const std::string& prefix) { return ScratchDirs::instance().make(prefix); }

}  // namespace moe::testing
