// Optional loss terms and SFT (algorithms.md "Optional terms"), pure tensor functions.
// Shapes: logits [B, T, V] aligned with targets [B, T] (logits at t score target t; the caller shifts);
// mask [B, T] > 0 on the tokens that count. Softmax-based functions compute in at least fp32.
#pragma once
#include <ATen/core/Tensor.h>

namespace moe::algo {

// Per-token k3 ("low-var-kl") estimate of KL(pi || ref): c = clamp(logp_ref - logp, -20, 20),
// kl = clamp(exp(c) - c - 1, -10, 10). [B, T], differentiable in logp. Aggregate with aggregate().
at::Tensor kl_k3(const at::Tensor& logp, const at::Tensor& logp_ref);

// log softmax(logits)[target]: [B, T] from logits [B, T, V] and integer targets [B, T].
at::Tensor token_logprobs(const at::Tensor& logits, const at::Tensor& targets);

// Entropy of the next-token distribution, -sum_v p log p: [B, T] from logits [B, T, V].
at::Tensor token_entropy(const at::Tensor& logits);

// SFT: token-mean cross-entropy -log p(target) over mask > 0 tokens (0 when none).
at::Tensor sft_loss(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& mask);

}  // namespace moe::algo
