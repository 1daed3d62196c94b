// KL to the reference, entropy, token log-probs and the SFT loss (algorithms.md "Optional terms").
#include "moe/algo/terms.h"

#include <ATen/ATen.h>

#include "algo/util.h"
#include "moe/algo/loss.h"

namespace moe::algo {

using namespace detail;

at::Tensor kl_k3(const at::Tensor& logp, const at::Tensor& logp_ref) {
  require(logp.defined() && logp_ref.defined() && logp.sizes() == logp_ref.sizes(),
          "kl_k3: logp and logp_ref differ in shape");
  auto c = (logp_ref.detach().to(logp.scalar_type()) - logp).clamp(-20, 20);
  return (at::exp(c) - c - 1).clamp(-10, 10);
}

at::Tensor token_logprobs(const at::Tensor& logits, const at::Tensor& targets) {
  require(logits.defined() && targets.defined() && logits.dim() == targets.dim() + 1 &&
              logits.sizes().slice(0, targets.dim()) == targets.sizes(),
          "token_logprobs: logits [B, T, V] and targets [B, T] disagree");
  auto lp = at::log_softmax(logits.to(at_least_float(logits.scalar_type())), -1);
  return lp.gather(-1, targets.to(at::kLong).unsqueeze(-1)).squeeze(-1);
}

at::Tensor token_entropy(const at::Tensor& logits) {
  require(logits.defined() && logits.dim() >= 1, "token_entropy: logits must be [..., V]");
  auto lp = at::log_softmax(logits.to(at_least_float(logits.scalar_type())), -1);
  return -(at::exp(lp) * lp).sum(-1);
}

at::Tensor sft_loss(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& mask) {
  auto valid = valid_of(mask);
  // Padding targets may be anything (e.g. -100): gather a safe index there; those tokens are masked anyway.
  auto safe = at::where(valid, targets.to(at::kLong), at::zeros_like(targets, at::kLong));
  return aggregate(-token_logprobs(logits, safe), valid, Agg::token_mean);
}

}  // namespace moe::algo
