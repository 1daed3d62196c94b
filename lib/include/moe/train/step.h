// The train-step driver of moe-train-step: old pass, mini-batch updates with AdamW, checkpoint and
// optimizer state, metrics, data parallel over c10d. The tool's main only fills a StepConfig.
//
// Positions: a sequence of n = P + R tokens (P prompt, R response) is forwarded as its first n - 1 tokens;
// input position p predicts token p + 1, so the R response tokens are predicted at input positions
// P-1 .. P+R-2. Those are the "response-producing" positions: log-probs, router probabilities of the router
// shift, routing agreement and the loss all live there. Routing (rollout stream, old pass, replay) covers
// every input position 0 .. P+R-2, as moe-rollout's routing stream does (formats/routing.md).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/algo/loss.h"
#include "moe/dist/communicator.h"
#include "moe/model/qwen3_moe.h"

namespace moe::format {
class RolloutReader;
}

namespace moe::train {

// --router (algorithms.md "Router control").
enum class RouterControl { free, freeze, replay_old, replay_rollout, copy_old_logits };
RouterControl parse_router_control(const std::string& name);  // throws moe::UsageError
const char* to_string(RouterControl r);

struct OptimConfig {
  double lr = 1e-4;            // peak learning rate (AdamW)
  double weight_decay = 0.0;   // decoupled (AdamW)
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double grad_clip = 1.0;      // max global L2 norm; <= 0: no clipping (the norm is still measured)
  int64_t warmup = 0;          // linear warmup over this many optimizer steps (global step counter), then constant
};
// lr of optimizer step `global_step` (0-based): lr * min(1, (global_step + 1) / warmup), or lr when warmup <= 0.
double scheduled_lr(const OptimConfig& o, int64_t global_step);

// One training sequence.
struct Sequence {
  uint64_t id = 0;
  std::vector<int64_t> prompt, response;  // P >= 1, R >= 1 tokens
  double advantage = 0;                   // RL only
  std::vector<float> logp_roll;           // [R] rollout log-probs, or empty
  at::Tensor rollout_routing;             // [P+R-1, L, K] int64 experts recorded by the rollout, or undefined
};

// What the old pass leaves on each sequence (CPU tensors, all detached).
struct OldPass {
  at::Tensor logp_old;     // [R] float32, under softmax(logits / T)
  at::Tensor idx;          // [P+R-1, L, K] int64 experts used by the old pass (native, or replayed for R3)
  at::Tensor prob;         // [R, L, K] float32 full-softmax probability of idx at response-producing positions
  at::Tensor native_idx;   // [R, L, K] int64 native top-K of the old pass's router at response-producing positions
  at::Tensor logits;       // [P+R-1, L, E] float32 router logits (copy-old-logits only)
  at::Tensor logp_ref;     // [R] float32 reference-model log-probs (with a reference model)
  at::Tensor routing_idx, routing_prob;  // [P+R-1, L, K] native top-K and its full-softmax probabilities at
                                         // every input position (TrainConfig::record_routing only)
  bool deferred = false;  // left to the first update's own forward (Trainer::old_pass, first_update); that
                          // update fills the fields above and clears this
};

struct TrainConfig {
  bool sft = false;
  algo::LossConfig loss;  // RL only
  RouterControl router = RouterControl::free;
  OptimConfig optim;
  double temperature = 1.0;   // log-probs under softmax(logits / T); SFT uses T = 1
  int64_t micro_batch = 64;   // sequences per forward of the old pass
  bool record_routing = false;  // old pass keeps OldPass::routing_idx/routing_prob (--routing-out)
  // Compute dtype of forward and backward (--dtype). kBFloat16: the float32 weights the model arrives with
  // become the master weights (the optimizer and its states stay float32; the checkpoint is written from
  // them), and the model computes on bf16 copies refreshed after every update.
  c10::ScalarType compute_dtype = c10::kFloat;
  bool checkpoint_activations = false;  // recompute each decoder layer in the backward pass (--checkpoint-activations)
};

// Model + AdamW + the step's bookkeeping. Deterministic for a seed and thread count.
class Trainer {
 public:
  // comm: the data-parallel group (nullptr = one process).
  Trainer(model::Qwen3Moe model, TrainConfig cfg, Communicator* comm = nullptr);
  ~Trainer();

  // Loads optimizer.safetensors / trainer_state.json of a model dir when present (else fresh state).
  // A moment whose shape differs from its parameter is an error naming the tensor.
  void load_state(const std::string& dir);
  // Writes the model, optimizer.safetensors and trainer_state.json into `dir` atomically (staged dir +
  // replace_dir); `extra_files` are copied in (e.g. tokenizer.json); weights above max_shard_bytes are
  // sharded (model::save_model). Only rank 0 writes; under expert parallel every rank calls save and the
  // ranks of the first expert group write their own experts' weights and Adam moments (rank 0 also the
  // replicated tensors) as model-/optimizer-0000i-of-0000n.safetensors shards into one staging dir that rank 0
  // indexes and swaps in (a failure on any rank: every rank throws, `dir` untouched). The result is an
  // ordinary sharded checkpoint that loads with any expert-parallel size or none.
  // `before_swap` (optional) runs with the new checkpoint fully staged, just before it is swapped in: the
  // step prepares its other outputs there, so an error in them leaves the old checkpoint in place.
  void save(const std::string& dir, const std::vector<std::pair<std::string, std::string>>& extra_files,
            const nlohmann::json& state_extra = nlohmann::json::object(),
            const std::function<void()>& before_swap = nullptr, int64_t max_shard_bytes = 5'000'000'000);

  // No-grad pass with the current weights: fills old[i] for seqs[i] (see OldPass). R3 replays the rollout
  // routing, so every sequence needs rollout_routing then. `ref` (optional) gives logp_ref.
  // first_update (empty, or one flag per sequence): the sequences of the first update after this pass. The
  // weights have not moved for that update, so its own forward computes what the old pass would (verl's
  // actor takes log_prob.detach() as the old log-probs when a step has one mini-batch and one epoch); where
  // the trainer can take them from there, those sequences are left out of this pass (OldPass::deferred). It
  // can with the router free, frozen or replaying the rollout's routing, without the router shift (RSPO's
  // probabilities at the old experts feed that forward), a reference model, expert parallelism or
  // record_routing (--routing-out's records are the old pass's, batched by micro_batch); else it computes
  // them here.
  void old_pass(const std::vector<Sequence>& seqs, std::vector<OldPass>& old, model::Qwen3Moe* ref = nullptr,
                const std::vector<char>& first_update = {});

  // One optimizer update on this rank's share `local` (indices into seqs/old) of a mini-batch whose sizes
  // over all ranks are `global_rows` sequences, `global_tokens` response tokens and `global_max_len` longest
  // response. The gradient equals that of the single-process loss on the whole mini-batch (see step.cpp).
  // Fills the deferred old-pass values of its sequences (only the first update after old_pass may hold any).
  // Throws moe::Error on a non-finite loss or gradient (weights untouched then).
  algo::Metrics update(const std::vector<Sequence>& seqs, std::vector<OldPass>& old, const std::vector<size_t>& local,
                       int64_t global_rows, int64_t global_tokens, int64_t global_max_len);

  model::Qwen3Moe& model() { return model_; }
  int64_t global_step() const { return global_step_; }
  const nlohmann::json& state() const { return state_; }
  // Parameters the optimizer updates, with their checkpoint names (router weights excluded under
  // freeze and copy-old-logits).
  const std::vector<std::pair<std::string, at::Tensor>>& trained() const { return trained_; }
  // Settings a rollout stream carries, for the next stream of `moe-train-step --follow`.
  void set_temperature(double t) { cfg_.temperature = t; }
  void set_loss_scale(double c) { cfg_.loss.loss_scale = c; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  model::Qwen3Moe model_;
  TrainConfig cfg_;
  Communicator* comm_;
  std::vector<std::pair<std::string, at::Tensor>> trained_;
  int64_t global_step_ = 0;
  nlohmann::json state_ = nlohmann::json::object();
  bool fresh_ = false;  // no update since the last old pass
};

// Everything moe-train-step does.
struct StepConfig {
  std::string model_dir;
  std::string output_dir;      // "" = replace model_dir
  int64_t max_shard_bytes = 5'000'000'000;  // weights above this are written as shards + index
  std::string input = "-";     // rollout stream, or (SFT) prompt+solution JSONL; detected by magic bytes
  bool follow = false;         // input holds concatenated rollout streams: one step (and checkpoint) per stream
  int64_t save_every = 1;      // --follow: the checkpoint after every Nth step, after the last and before an input error
  std::string routing;         // rollout routing stream ("" = none)
  std::string routing_out;     // write the old pass's native routing here ("" = no)
  std::string ref_dir;         // reference model for --kl-coef
  std::string metrics_path;    // append JSON lines here ("" = none)
  bool wait_lock = false;      // wait for another step holding the output dir's lock (else fail at once)
  TrainConfig train;
  int64_t mini_batches = 2, epochs = 1;
  bool shuffle = true;          // shuffle sequences before splitting into mini-batches (by seed and epoch)
  int64_t sft_steps = 0, sft_batch_size = 0;  // SFT: run this many steps of this many examples (0 = one pass)
  uint64_t seed = 0;
  int threads = 0;
  std::string device = "cpu";
  std::string dtype = "f32";  // compute dtype: f32 or bf16 (TrainConfig::compute_dtype)
  std::string prompt_key = "prompt", solution_key = "solution";
  DistConfig dist;
  nlohmann::json producer;  // header of --routing-out
};

// Runs one train step (or SFT); with cfg.follow one per rollout stream of the input, the model and the
// optimizer kept in memory between them and the model dir locked throughout (an error in stream N names it
// and leaves the N - 1 checkpoints written). Returns the (last) summary metrics. Throws moe::Error (exit 1)
// or moe::UsageError.
algo::Metrics run_train_step(const StepConfig& cfg);

// Reads a rewarded rollout stream (and joins a routing stream by id) into sequences. `need_advantage`
// makes a record without advantage an error. Returns the stream's temperature (1 when absent); `meta`
// (optional) receives the header's meta map (e.g. max_new_tokens, the default C of seq-mean-token-sum-norm).
double read_rollouts(const std::string& path, const std::string& routing_path, const model::ModelConfig& mc,
                     bool need_advantage, std::vector<Sequence>& out, nlohmann::json* meta = nullptr);
// The same from an open reader: its current stream up to the trailer (for concatenated inputs).
double read_rollouts(format::RolloutReader& r, const std::string& routing_path, const model::ModelConfig& mc,
                     bool need_advantage, std::vector<Sequence>& out, nlohmann::json* meta = nullptr);

}  // namespace moe::train
