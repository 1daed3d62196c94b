// moe-rollout's two modes as library calls: sample responses to prompt JSONL, or re-score a rollout
// stream by teacher forcing. The tool's main only parses options into a RolloutRun.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/dist/communicator.h"
#include "moe/rollout/generate.h"

namespace moe::rollout {

struct RolloutRun {
  std::string model_dir;
  std::string device = "cpu";
  std::string dtype = "f32";
  std::string input = "-";        // prompt JSONL (sample) or rollout stream (score)
  std::string output = "-";       // rollout stream
  std::string routing_out;        // routing stream ("" = none)
  std::string routing_probs = "f16";  // f16 | f32 | none
  std::string prompt_key = "prompt";
  bool chat = false;              // render prompt text with the chat template (one user message)
  bool no_thinking = false;       // Qwen3 chat: enable_thinking=False
  std::vector<std::string> stop;  // stop strings (finish_reason "stop"; response_text cut before them)
  int64_t samples = 1;        // responses per prompt (G)
  int64_t batch_size = 64;    // sequences per forward batch
  GenerateOptions gen;        // sampling, max_new_tokens, seed (eos comes from the tokenizer)
  bool temperature_given = false;  // score mode: else the input stream's temperature
  bool follow = false;        // sample: prompt batches (blank-line separated) in, one stream per batch out
  nlohmann::json producer;    // header producer (program, version, argv)
  dist::DistConfig dist;      // world size > 1: batches split over the ranks, rank 0 writes (run.cpp)
};

// Reads prompt JSONL (one object per line: `prompt_key` text, "messages" or "prompt_ids" as read_prompts
// says; every other field is carried into the record's task payload), samples `samples` responses per prompt and writes the rollout stream (and the
// routing stream). Record ids are group * samples + sample. Throws moe::Error for bad input (file:line).
void run_sample(const RolloutRun& run);
// With run.follow: the prompt JSONL is read as it arrives, in batches ended by a blank line (or the end of
// the input); each batch becomes one complete rollout stream (header .. trailer, flushed) on the output, so
// the output is a sequence of concatenated streams (for moe-reward --follow | moe-train-step --follow).
// Before each batch the model dir's checkpoint is checked (checkpoint_id) and, when it changed, its weights
// are reloaded into the model in place: batch n is sampled from the checkpoint in place when it starts, with
// seed + n, record ids from 0: as a fresh `moe-rollout --seed SEED+n` on that checkpoint and batch would.
// A checkpoint of another shape is an error. With routing_out, batch n's routing stream is written there
// after its rollout stream is complete on the output (R gets one routing stream per batch; both headers carry
// "batch" n + 1 and "seed"); R is opened after the first batch's rollouts. See step.cpp for why
// `moe-rollout --follow --routing-out R | moe-reward --follow | moe-train-step --follow --routing R` with R a
// FIFO does not deadlock.

// What identifies the checkpoint in a model dir: the dir's and the weight file's inode, the weight file's
// size and mtime, trainer_state.json's contents. Changes whenever moe-train-step (or moe-init --force)
// replaces the dir.
std::string checkpoint_id(const std::string& model_dir);

// Reads a rollout stream and writes it with log-probs recomputed in one full-sequence forward per batch
// (previous values kept as prev_logprobs), and with `routing_out` the routing of that forward.
void run_score(const RolloutRun& run);

}  // namespace moe::rollout
