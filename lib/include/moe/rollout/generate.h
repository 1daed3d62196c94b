// The generation engine of moe-rollout: batched KV-cached sampling with routing capture, and
// teacher-forced re-scoring of existing sequences (the "training engine" view of the same tokens).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "moe/model/qwen3_moe.h"
#include "moe/rollout/sampling.h"

namespace moe::rollout {

struct GenerateOptions {
  SamplingParams sampling;
  int64_t max_new_tokens = 64;  // >= 1
  int64_t eos_id = -1;          // -1: stop on length only
  std::vector<int64_t> eos_ids; // more ids that end a response as eos_id does (Qwen3: <|im_end|>, <|endoftext|>)
  // Called with the response so far after each token that is not an eos; true ends the response
  // (finish_reason "stop"), e.g. on a stop string.
  std::function<bool(const std::vector<int64_t>&)> stop;
  uint64_t seed = 0;
  bool capture_routing = false;
  // Called before every model forward (expert parallel: the group's vote that keeps its ranks in step).
  std::function<void()> before_forward;
};

// True if id ends a response (eos_id or one of eos_ids): finish_reason "eos".
inline bool is_eos(const GenerateOptions& o, int64_t id) {
  if (id == o.eos_id && id >= 0) return true;
  for (int64_t e : o.eos_ids)
    if (e == id) return true;
  return false;
}

struct Request {
  uint64_t stream = 0;          // the sequence's random stream (its record id): independent of batching
  std::vector<int64_t> prompt;  // >= 1 token
};

// Routing of the forwarded positions of one sequence, rows = positions 0 .. n-1.
struct SequenceRouting {
  std::vector<uint16_t> experts;  // [n, L, k]
  std::vector<float> probs;       // [n, L, k] full-softmax probability of each chosen expert
  int64_t n_pos = 0;
};

// While it lives, a model on the loop expert kernel runs on model::ExpertKernel::transposed (CPU float32:
// packed copies of its small experts' and linear layers' weights, made as they are used); then it gets the
// loop back and the copies are freed. generate runs in one; so must forwards that serve its experts to another rank's
// generate (expert parallel), for the same products bit for bit. Nested scopes leave the outer one's.
class TransposedExperts {
 public:
  explicit TransposedExperts(model::Qwen3Moe& m);
  ~TransposedExperts();
  TransposedExperts(const TransposedExperts&) = delete;
  TransposedExperts& operator=(const TransposedExperts&) = delete;

 private:
  model::Qwen3Moe& m_;
  bool on_;
};

struct Generation {
  std::vector<int64_t> tokens;  // the response; ends with an eos id when finish_reason is "eos"
  std::vector<float> logprobs;  // per response token, under softmax(logits / temperature)
  std::string finish_reason;    // "eos" | "stop" | "length"
  SequenceRouting routing;      // prompt + response positions except the last token (never forwarded)
};

// Samples one response per request. Consecutive requests with equal prompts share one prefill.
// Prompts of different lengths are left-padded; a sequence's result does not depend on its batch-mates
// (its positions count real tokens only and its random draws come from its own stream). The call runs in a
// TransposedExperts scope.
std::vector<Generation> generate(model::Qwen3Moe& model, const std::vector<Request>& requests,
                                 const GenerateOptions& opt);

struct ScoreRequest {
  std::vector<int64_t> prompt, response;
};
struct Scored {
  std::vector<float> logprobs;  // per response token, under softmax(logits / temperature)
  SequenceRouting routing;      // positions 0 .. prompt + response - 2, as moe-rollout records them
};

// One teacher-forced full-sequence forward per call (right-padded batch).
// `before_forward` as GenerateOptions::before_forward.
std::vector<Scored> score(model::Qwen3Moe& model, const std::vector<ScoreRequest>& requests, double temperature,
                          bool capture_routing, const std::function<void()>& before_forward = {});

}  // namespace moe::rollout
