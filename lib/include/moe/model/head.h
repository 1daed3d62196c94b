// The output head as the trainer and --score use it: token log-probs (and entropies) of the tempered policy
// softmax(hidden W^T / temperature) over the whole vocabulary, computed in chunks of positions, so that no
// [positions, vocab] float32 tensor lives longer than one chunk, in the forward or the backward pass (the
// backward recomputes each chunk's logits instead of keeping them: 151,936 x fp32 is 600 KB per position).
#pragma once
#include <ATen/core/Tensor.h>

namespace moe::model {

struct HeadOutput {
  at::Tensor logp;     // [...] float32: log softmax(hidden W^T / temperature)[target]; shape of targets
  at::Tensor entropy;  // [...] float32: entropy of that distribution (undefined unless asked for)
};

// hidden [..., H] in the model dtype (may require grad); weight [V, H] (lm_head); targets [...] int64 in
// [0, V) (not checked here: the caller's ids come from the vocabulary). Differentiable in hidden and weight,
// through logp and entropy. Logits are computed in the model dtype and cast to float32, as
// log_softmax(linear(hidden, W).float() / T) would. chunk_rows <= 0 picks the number of positions per chunk
// that keeps one chunk's logits near 64 MiB. Throws moe::Error on shape mismatches.
HeadOutput head_logprobs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                         double temperature, bool want_entropy, int64_t chunk_rows = 0);

// Positions per chunk for a vocabulary of `vocab` when chunk_rows <= 0 (about 16 M logits per chunk).
int64_t head_chunk_rows(int64_t vocab);

}  // namespace moe::model
