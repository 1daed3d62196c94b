// Group advantages and reward shaping (algorithms.md, "Advantages"). Pure functions of doubles.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moe::reward {

enum class AdvKind {
  grpo,    // (r - mean) / (std + 1e-6), unbiased std (N-1); a group of one: mean 0, std 1
  drgrpo,  // r - mean; a group of one: mean 0
  rloo,    // r - mean of the other N-1; a group of one: baseline 0
};

// "grpo" | "drgrpo" | "rloo"; throws moe::UsageError otherwise.
AdvKind parse_adv_kind(const std::string& name);
const char* adv_kind_name(AdvKind kind);

// Advantages of one group's rewards, same order and size. Every reward must be finite.
std::vector<double> group_advantages(const std::vector<double>& rewards, AdvKind kind);

// True for a group of two or more whose rewards are all equal (its advantages carry no signal). A group of
// one is never uniform: with baseline 0 its advantage is its reward.
bool rewards_uniform(const std::vector<double>& rewards);

// DAPO overlong shaping, added to the reward: 0 for len <= l_max - l_cache, (l_max - l_cache - len) / l_cache
// up to l_max, -1 beyond. Requires 0 < l_cache <= l_max.
double overlong_penalty(int64_t len, int64_t l_max, int64_t l_cache);

}  // namespace moe::reward
