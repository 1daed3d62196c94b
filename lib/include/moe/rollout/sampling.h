// Next-token sampling: temperature, top-k, top-p, greedy; the log-prob of the chosen token under the
// untruncated tempered policy pi = softmax(logits / T), which is what moe-train-step recomputes.
#pragma once
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace moe::rollout {

struct SamplingParams {
  double temperature = 1.0;  // > 0; the policy whose log-probs are recorded
  double top_p = 1.0;        // (0, 1]: keep the smallest prefix of sorted probabilities reaching top_p
  int64_t top_k = 0;         // 0 = all tokens
  bool greedy = false;       // argmax (lowest index on ties); log-prob still under softmax(logits / T)
};

// A uniform double in [0, 1) that depends only on (seed, stream, step): each sequence draws from its own
// counter-based stream, so its sample does not depend on which sequences share its batch.
double stream_uniform(uint64_t seed, uint64_t stream, uint64_t step);

struct Sampled {
  at::Tensor tokens;    // [B] int64
  at::Tensor logprobs;  // [B] float32: log softmax(logits / T) at the token
  at::Tensor finite;    // [B] bool: the row had a finite log-prob (false: NaN or all -inf logits)
};

// logits [B, V] (any floating dtype and device); uniforms: B values in [0, 1) (ignored when greedy).
// Throws moe::Error on a bad parameter, and (check_finite) when a row is all -inf/NaN; without
// check_finite the caller checks `finite` (no host round trip here).
// Tokens are drawn by inverting the CDF with the row's uniform. With top-p, candidates are ordered by
// descending probability (ties in vocabulary order) and the kept prefix is inverted. Top-k alone needs no
// sort of the vocabulary (a top-k selection, then a sort of k entries); with neither, the CDF is inverted
// in vocabulary order and nothing is sorted.
Sampled sample_next(const at::Tensor& logits, const SamplingParams& params, const std::vector<double>& uniforms,
                    bool check_finite = true);

namespace detail {
// The untruncated draw of sample_next from log-probs [B, V] float32: on the CPU a loop over each row, or
// (tensor_ops, and on every other device) the same rule in tensor operations.
at::Tensor sample_untruncated(const at::Tensor& logp, const std::vector<double>& uniforms, bool tensor_ops);
}  // namespace detail

}  // namespace moe::rollout
