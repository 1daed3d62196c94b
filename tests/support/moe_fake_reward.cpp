// Test-only: gives every rollout record a deterministic reward so that a random model's rollouts have
// non-zero advantages after `moe-reward --task keep` (a random model never solves a task).
//
//   moe_fake_reward [--mode parity|length] [STREAM|-]  > rewarded-without-advantage stream
//     parity: reward = 1 for odd record ids, 0 for even ones (both in every group of size >= 2)
//     length: reward = response length in tokens / 10
#include <cstdio>
#include <cstring>
#include <string>

#include "moe/format/rollout.h"
#include "moe/io/error.h"
#include "moe/io/file.h"

int main(int argc, char** argv) {
  std::string mode = "parity", path = "-";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--mode") == 0 && i + 1 < argc) mode = argv[++i];
    else path = argv[i];
  }
  if (mode != "parity" && mode != "length") {
    std::fprintf(stderr, "moe_fake_reward: unknown --mode %s\n", mode.c_str());
    return 2;
  }
  try {
    moe::io::Input in(path);
    moe::format::RolloutReader r(in);
    moe::io::Output out("-");
    moe::format::Header h = r.header();
    moe::format::RolloutWriter w(out, h);
    moe::format::RolloutRecord rec;
    while (r.next(rec)) {
      rec.reward = mode == "parity" ? static_cast<double>(rec.id % 2) : rec.response_tokens.size() / 10.0;
      rec.advantage.reset();
      w.write(rec);
      rec = moe::format::RolloutRecord{};
    }
    w.finish();
    out.close();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_fake_reward: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
