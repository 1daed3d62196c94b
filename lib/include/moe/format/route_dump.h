// The work of moe-route-dump (man/moe-route-dump.1): show records of any stream kind, routing statistics,
// and the disagreement between two routing streams. Throws moe::Error on bad input (exit 1) and
// moe::UsageError on options that do not fit the stream (exit 2).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "moe/io/file.h"

namespace moe::format::route_dump {

struct ShowOptions {
  bool jsonl = false;         // one JSON object per record instead of text blocks
  bool header_only = false;   // print the header as JSON and stop (records are not read)
  std::vector<uint64_t> ids;  // only these record ids (empty = all)
  std::vector<int> layers;    // routing: only these model layers (empty = all)
};
// Prints every selected record; still reads the whole stream so a broken one is an error.
void show(io::Input& in, io::Output& out, const ShowOptions& opt);

struct StatsOptions {
  bool json = false;
};
// Routing: per-layer expert load, its coefficient of variation, router entropy of the recorded top-k.
// Rollout: counts, lengths, finish reasons, rewards.
void stats(io::Input& in, io::Output& out, const StatsOptions& opt);

struct DiffOptions {
  bool json = false;
};
struct DiffSummary {
  uint64_t tokens_compared = 0;
  uint64_t positions_only_a = 0, positions_only_b = 0;
  // Share of compared tokens with at least one layer whose expert set differs; 1 when nothing could be
  // compared although either stream has positions; 0 when both are empty.
  double token_mismatch = 0;
};
// Joins the records of two routing streams by id and position and prints their disagreement. Streams in
// the same id order are compared with bounded memory; out-of-order records are buffered until matched.
DiffSummary diff(io::Input& a, io::Input& b, io::Output& out, const DiffOptions& opt);

}  // namespace moe::format::route_dump
