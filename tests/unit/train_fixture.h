// Fixtures of the trainer unit tests (train_test.cpp, train_memory_test.cpp): a tiny model, random
// sequences, and one update of a Trainer over all of them.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <random>
#include <vector>

#include "moe/algo/loss.h"
#include "moe/model/config.h"
#include "moe/model/qwen3_moe.h"
#include "moe/train/step.h"

namespace moe::testing {

inline model::Qwen3Moe tiny_model(uint64_t seed = 1) {
  model::Qwen3Moe m(model::preset_config("tiny", 98));
  model::init_weights(m, seed);
  return m;
}

// n sequences of random printable tokens: prompts of 3-6 tokens, responses of min_response to
// min_response + response_span - 1 tokens, advantages alternating -0.5 and 1.
inline std::vector<train::Sequence> random_seqs(int n, uint64_t seed, int min_response, int response_span) {
  std::mt19937_64 g(seed);
  std::vector<train::Sequence> v;
  for (int i = 0; i < n; ++i) {
    train::Sequence s;
    s.id = i;
    const int P = 3 + static_cast<int>(g() % 4), R = min_response + static_cast<int>(g() % response_span);
    for (int k = 0; k < P; ++k) s.prompt.push_back(3 + g() % 90);
    for (int k = 0; k < R; ++k) s.response.push_back(3 + g() % 90);
    s.advantage = (i % 2) ? 1.0 : -0.5;
    v.push_back(s);
  }
  return v;
}

inline std::vector<size_t> all_of(const std::vector<train::Sequence>& s) {
  std::vector<size_t> v(s.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = i;
  return v;
}
inline int64_t tokens_of(const std::vector<train::Sequence>& s) {
  int64_t t = 0;
  for (auto& x : s) t += static_cast<int64_t>(x.response.size());
  return t;
}
inline int64_t max_len(const std::vector<train::Sequence>& s) {
  int64_t t = 0;
  for (auto& x : s) t = std::max<int64_t>(t, x.response.size());
  return t;
}

// The old pass, then one update over every sequence as the only mini-batch.
inline algo::Metrics one_update(train::Trainer& t, const std::vector<train::Sequence>& seqs) {
  std::vector<train::OldPass> old;
  t.old_pass(seqs, old);
  return t.update(seqs, old, all_of(seqs), static_cast<int64_t>(seqs.size()), tokens_of(seqs), max_len(seqs));
}

}  // namespace moe::testing
