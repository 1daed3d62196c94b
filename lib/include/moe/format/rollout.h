// Rollout records (formats/rollout.md): one sampled response per record.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "moe/format/stream.h"

namespace moe::format {

struct RolloutRecord {
  uint64_t id = 0;      // unique within the stream; joins to routing records
  uint64_t group = 0;   // prompt index: records of one group are adjacent in a stream
  uint32_t sample = 0;  // index within the group
  std::vector<int32_t> prompt_tokens;
  std::vector<int32_t> response_tokens;
  std::vector<float> logprobs;       // [response_tokens.size()] rollout log-probs (empty if unknown)
  std::vector<float> prev_logprobs;  // [response] values replaced by `moe-rollout --score` (else empty)
  std::string finish_reason;         // "eos" | "length" | "stop"
  std::string prompt_text, response_text;
  nlohmann::json task = nlohmann::json::object();  // payload from the prompt JSONL (answer, numbers, ...)
  std::optional<double> reward;
  std::optional<double> advantage;
  nlohmann::json reward_info = nlohmann::json::object();  // reward components, e.g. {"format": 0.1}
  // Keys this build does not know, kept as packed msgpack so filters pass them through unchanged.
  std::vector<std::pair<std::string, std::string>> extra;
};

// Header meta for rollout streams (see formats/rollout.md): at least "vocab_size", "temperature",
// "model_digest"; anything else is free-form.
class RolloutWriter {
 public:
  RolloutWriter(io::Output& out, Header header, int zstd_level = 3);  // header.kind forced to "rollout"
  void write(const RolloutRecord& rec);
  void flush();
  void finish();
  uint64_t count() const;

 private:
  StreamWriter w_;
  msgpack::sbuffer buf_;
};

// Decodes and checks one rollout record read by a StreamReader of a rollout stream. `vocab_size` > 0
// also checks every token id against it (0 = unknown). Errors: moe::Error "<name>: offset N: <what>".
void decode_rollout(const std::string& name, int64_t vocab_size, const Record& raw, RolloutRecord& rec);
// A rollout record as JSON (tokens and log-probs as arrays, extra keys decoded).
nlohmann::json rollout_to_json(const RolloutRecord& rec);
// rollout_to_json(rec).dump() (invalid UTF-8 replaced by U+FFFD) and a newline, byte for byte, written
// piece by piece: a record of hundreds of MiB costs a few MiB more, not several times its size.
void write_rollout_json(io::Output& out, const RolloutRecord& rec);
// The header's meta.vocab_size, or 0 when absent.
int64_t rollout_vocab_size(const Header& header);

class RolloutReader {
 public:
  // Rejects other kinds. `concatenated`: see StreamReader (next_stream() goes on to the next stream).
  explicit RolloutReader(io::Input& in, bool concatenated = false);
  const Header& header() const;
  // Next record; false at the verified end. Missing required fields or wrong types, or an id already seen
  // in this stream: moe::Error with offset.
  bool next(RolloutRecord& rec);
  // After next() returned false on a concatenated input: true when another rollout stream follows.
  bool next_stream();
  uint64_t offset() const;  // offset of the last record returned
  const std::string& name() const;

 private:
  StreamReader r_;
  Record raw_;
  int64_t vocab_size_ = 0;
  std::unordered_set<uint64_t> seen_ids_;  // record ids are unique within a stream
};

}  // namespace moe::format
