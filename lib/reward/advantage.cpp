#include "moe/reward/advantage.h"

#include <cmath>

#include "moe/io/error.h"

namespace moe::reward {

AdvKind parse_adv_kind(const std::string& name) {
  if (name == "grpo") return AdvKind::grpo;
  if (name == "drgrpo") return AdvKind::drgrpo;
  if (name == "rloo") return AdvKind::rloo;
  throw UsageError("--adv: unknown advantage estimator '" + name + "' (grpo, drgrpo, rloo)");
}

const char* adv_kind_name(AdvKind kind) {
  switch (kind) {
    case AdvKind::grpo: return "grpo";
    case AdvKind::drgrpo: return "drgrpo";
    default: return "rloo";
  }
}

std::vector<double> group_advantages(const std::vector<double>& rewards, AdvKind kind) {
  const size_t n = rewards.size();
  std::vector<double> adv(n, 0.0);
  if (n == 0) return adv;
  if (n == 1) {
    // No other sample to compare with: baseline 0 (and std 1 for grpo), so the advantage is the reward.
    adv[0] = kind == AdvKind::grpo ? rewards[0] / (1.0 + 1e-6) : rewards[0];
    return adv;
  }
  double sum = 0;
  for (double r : rewards) sum += r;
  const double mean = sum / n;
  switch (kind) {
    case AdvKind::grpo: {
      double ss = 0;
      for (double r : rewards) ss += (r - mean) * (r - mean);
      const double std = std::sqrt(ss / (n - 1));
      for (size_t i = 0; i < n; ++i) adv[i] = (rewards[i] - mean) / (std + 1e-6);
      break;
    }
    case AdvKind::drgrpo:
      for (size_t i = 0; i < n; ++i) adv[i] = rewards[i] - mean;
      break;
    case AdvKind::rloo:
      // r_i - (sum - r_i) / (n - 1), which equals n / (n - 1) * (r_i - mean).
      for (size_t i = 0; i < n; ++i) adv[i] = rewards[i] - (sum - rewards[i]) / (n - 1);
      break;
  }
  return adv;
}

bool rewards_uniform(const std::vector<double>& rewards) {
  if (rewards.size() < 2) return false;
  for (double r : rewards)
    if (r != rewards.front()) return false;
  return true;
}

double overlong_penalty(int64_t len, int64_t l_max, int64_t l_cache) {
  const int64_t soft = l_max - l_cache;
  if (len <= soft) return 0.0;
  if (len <= l_max) return double(soft - len) / double(l_cache);
  return -1.0;
}

}  // namespace moe::reward
