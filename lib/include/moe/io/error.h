// Exceptions the library throws; moe::cli::run_tool maps them to exit codes.
#pragma once
#include <stdexcept>
#include <string>

namespace moe {

// Bad input data or a failed operation: exit 1. The message names the file (and where known the offset).
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Bad command line: exit 2 with a hint to --help.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The reader of our stdout went away (EPIPE): the tool stops quietly with exit 0.
struct BrokenPipe : std::runtime_error {
  BrokenPipe() : std::runtime_error("broken pipe") {}
};

}  // namespace moe
