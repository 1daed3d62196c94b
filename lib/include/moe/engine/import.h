// Rollouts sampled by an inference engine (SGLang, vLLM, verl's batch, plain JSON Lines) turned into moekit
// rollout and routing streams (man/moe-data.1, formats/routing.md "Engines"). No libtorch: the model's
// shape comes from its config.json.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/format/stream.h"
#include "moe/io/file.h"
#include "moe/model/config.h"

namespace moe::engine {

// The layer axis of an engine's routing array. SGLang and vLLM size it by num_hidden_layers and index it
// by the model layer (dense layers' rows are never written); Megatron-style recorders (verl's R2) and
// moekit keep only the MoE layers, in ascending model order.
enum class LayerAxis {
  detect,  // from the array's layer count: num_hidden_layers -> all, number of MoE layers -> moe
  all,     // row l = model layer l (dense rows ignored)
  moe,     // row j = j-th MoE layer
};
LayerAxis parse_layer_axis(const std::string& s);  // "auto" | "all" | "moe"; throws moe::UsageError

// For each MoE layer of the model (ascending), the row of the engine's layer axis holding its experts.
// `engine_layers` = size of that axis; throws moe::Error saying what the model has when it fits neither.
std::vector<int> engine_rows_of_moe_layers(const model::ModelConfig& mc, int64_t engine_layers, LayerAxis axis);

// One response as an engine wrote it, before checks. Empty optionals = not given by the input.
struct EngineRecord {
  std::string where;  // "<file>:<line>" (or "<file>: row N"): the record's place, for messages
  std::optional<uint64_t> id, group;
  std::optional<uint32_t> sample;
  std::vector<int64_t> prompt, response;
  std::optional<std::vector<double>> logprobs;  // [response]; a missing value inside is NaN
  std::string finish_reason;                    // "eos" | "length" | "stop" | ""
  std::string prompt_text, response_text;
  nlohmann::json task = nlohmann::json::object();
  // Routing as given: rows x layers x k expert ids, row-major. layers = 0: the engine gave a flat array
  // whose layer count follows from the options (SGLang's base64 int32 buffer).
  bool has_routing = false;
  int64_t rows = 0, layers = 0, k = 0;
  std::vector<int64_t> experts;
  std::vector<float> probs;         // [rows, layers, k] or empty (moekit's own JSONL export only)
  std::optional<int64_t> first_pos;  // position of row 0 when the input says so
};

struct ImportOptions {
  std::string from;             // "sglang" | "vllm" | "verl" | "jsonl", for the header and messages
  double temperature = 0;       // the temperature the engine's log-probs were computed at (> 0)
  bool require_logprobs = true;  // false: records without log-probs are written with empty ones
  bool prefix_omitted = false;   // accept routing that starts after position 0 (see formats/routing.md)
  LayerAxis layers = LayerAxis::detect;
  std::string tokenizer_json;    // model dir's tokenizer.json: decodes texts the input lacks (char vocab)
  nlohmann::json producer;       // the header's producer (format::make_producer)
};

// Checks records against the model and writes them. Ids, groups and samples the input lacks are assigned
// in input order: ids 0, 1, ...; a new group whenever the prompt changes. Every defect is a moe::Error
// "<where>: record <id>: <what>" (exit 1).
class Importer {
 public:
  Importer(const model::ModelConfig& mc, ImportOptions opt, io::Output& rollouts, io::Output* routing);
  ~Importer();
  void add(EngineRecord& r);
  // Writes both trailers (an empty input gives two valid empty streams): the routing stream first, and
  // closes its output, so it is in place before the rollout stream ends. The caller closes `rollouts`.
  void finish();
  uint64_t count() const { return count_; }
  uint64_t routed_positions() const { return routed_positions_; }

 private:
  struct Writers;
  void open_writers(bool with_probs);
  model::ModelConfig mc_;
  ImportOptions opt_;
  io::Output& rollouts_out_;
  io::Output* routing_out_;
  std::unique_ptr<Writers> w_;
  std::vector<int> moe_ids_;
  std::optional<std::vector<int>> rows_of_layer_;  // fixed by the first routed record
  int64_t engine_layers_ = 0;
  uint64_t count_ = 0, routed_positions_ = 0, next_id_ = 0, next_group_ = 0;
  bool have_prev_ = false, prev_explicit_group_ = false;
  uint64_t prev_group_ = 0;
  uint32_t prev_sample_ = 0;
  std::vector<int64_t> prev_prompt_;
  std::unordered_set<uint64_t> ids_seen_, groups_closed_;
  std::vector<std::string> vocab_;  // char tokenizer tokens, when the model dir has one
  int64_t eos_id_ = -1;
};

// Readers of each engine's files: call `sink` once per record, in file order. Errors name file and line
// (or row). `path` "-" = stdin (not for verl, whose batch is a directory or a safetensors file).
using Sink = std::function<void(EngineRecord&)>;
void read_sglang(const std::string& path, const Sink& sink);
void read_vllm(const std::string& path, const Sink& sink);
void read_verl(const std::string& path, const Sink& sink);
void read_jsonl(const std::string& path, const Sink& sink);

// Routing given as nested JSON arrays [rows][layers][k], or a base64 .npy string (vLLM's OpenAI server),
// into `r` (rows, layers, k, experts). `what` names the field in messages.
void routing_from_json(const nlohmann::json& v, const std::string& where, const std::string& what, EngineRecord& r);

}  // namespace moe::engine
