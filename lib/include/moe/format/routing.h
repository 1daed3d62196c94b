// Routing records (formats/routing.md): per forwarded position x MoE layer x k, the chosen experts and
// their router probabilities (full softmax over all experts, before any top-k renormalisation).
#pragma once
#include <cstdint>
#include <string>
#include <unordered_set>
#include <vector>

#include "moe/format/stream.h"

namespace moe::format {

struct RoutingMeta {
  int num_layers = 0;            // MoE layers covered by each row (the record's layer axis)
  std::vector<int> layer_ids;    // model layer index of each covered MoE layer, size num_layers
  int num_experts = 0;
  int top_k = 0;
  std::string index_dtype;       // "u8" (num_experts <= 256) or "u16"; chosen by the writer
  std::string prob_dtype;        // "f16", "f32", or "none"
  std::string model_digest;      // digest of the model config the routing came from ("" if unknown)

  nlohmann::json to_json() const;
  static RoutingMeta from_json(const nlohmann::json& j);  // throws moe::Error on a bad shape
};

struct RoutingRecord {
  uint64_t id = 0;         // joins to the rollout record with the same id
  int64_t first_pos = 0;   // sequence position of row 0 (0 = first prompt token)
  int64_t n_pos = 0;       // rows: positions first_pos .. first_pos + n_pos - 1
  std::vector<uint16_t> experts;  // [n_pos, num_layers, top_k]
  std::vector<float> probs;       // [n_pos, num_layers, top_k], empty when prob_dtype is "none"
};

class RoutingWriter {
 public:
  // header.kind forced to "routing"; meta written into header.meta (index_dtype filled in if empty).
  RoutingWriter(io::Output& out, Header header, RoutingMeta meta, int zstd_level = 3);
  void write(const RoutingRecord& rec);  // throws moe::Error if shapes disagree with the meta
  void flush();
  void finish();
  uint64_t count() const;
  const RoutingMeta& meta() const { return meta_; }

 private:
  StreamWriter w_;
  RoutingMeta meta_;
  msgpack::sbuffer buf_;
  std::string scratch_;
};

class RoutingReader {
 public:
  // Rejects other kinds. `concatenated`: see StreamReader (next_stream() goes on to the next stream).
  explicit RoutingReader(io::Input& in, bool concatenated = false);
  const Header& header() const;
  // After next() returned false on a concatenated input: true when another routing stream follows (its
  // header and meta read and checked; record ids may repeat those of the previous stream).
  bool next_stream();
  const RoutingMeta& meta() const { return meta_; }
  // Next record; false at the verified end. Payload length not matching the declared shape, an expert
  // index >= num_experts, duplicate experts within a (position, layer): moe::Error with offset.
  bool next(RoutingRecord& rec);
  uint64_t offset() const;
  const std::string& name() const;
  // Records declaring more than n positions are errors before their payload is decoded (0 = no limit).
  void set_max_positions(int64_t n) { max_positions_ = n; }

 private:
  StreamReader r_;
  RoutingMeta meta_;
  Record raw_;
  int64_t max_positions_ = 0;
  std::unordered_set<uint64_t> seen_ids_;  // record ids are unique within a stream
};

// A routing record as JSON: experts (and probs) as nested arrays [n_pos][num_layers][top_k].
nlohmann::json routing_to_json(const RoutingMeta& meta, const RoutingRecord& rec);

// IEEE half <-> float, round to nearest even (subnormals, infinities and NaN kept; NaN stays NaN).
uint16_t float_to_half(float f);
float half_to_float(uint16_t h);
// The same over arrays of little-endian halves (unaligned is fine); uses F16C when the CPU has it.
void halves_to_floats(const void* src_le, float* dst, size_t n);
void floats_to_halves(const float* src, void* dst_le, size_t n);

// Decodes and checks one routing record read by a StreamReader of a routing stream with header meta
// `meta`: the same checks as RoutingReader::next. Errors are moe::Error "<name>: offset N: <what>".
void decode_routing(const std::string& name, const RoutingMeta& meta, const Record& raw, RoutingRecord& rec);
// Checks rows of top-k expert indices: each < num_experts and distinct within a row. Returns the index of
// the first bad element, or -1; `why` says what is wrong.
int64_t check_expert_rows(const uint16_t* experts, size_t rows, int top_k, int num_experts, std::string* why);

}  // namespace moe::format
