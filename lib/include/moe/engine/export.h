// moekit rollout (+ routing) streams written in an engine's format, for training elsewhere with moekit's
// routing tools, and for the round trip moe-rollout -> export -> `moe-data import` (man/moe-route-dump.1).
#pragma once
#include <optional>
#include <string>

#include "moe/io/file.h"
#include "moe/model/config.h"

namespace moe::engine {

struct ExportOptions {
  std::string to;                          // "jsonl" | "sglang" | "verl"
  std::optional<model::ModelConfig> model;  // required for sglang and verl (their layer axis is every model layer)
};

// Reads the rollout stream `rollouts` and, when given, the routing stream `routing` (joined by id: every
// rollout needs its routing record), and writes `out`: JSON Lines for jsonl and sglang ("-" = stdout), a
// new directory of .npy files plus non_tensor_batch.jsonl for verl. Returns the number of records.
// Errors: moe::Error naming the stream and record; moe::UsageError for options that do not fit.
uint64_t export_rollouts(io::Input& rollouts, io::Input* routing, const std::string& out, const ExportOptions& opt);

}  // namespace moe::engine
