#include "moe/engine/import.h"

#include <algorithm>
#include <cmath>

#include "moe/engine/npy.h"
#include "moe/format/rollout.h"
#include "moe/format/routing.h"
#include "moe/io/error.h"
#include "moe/tokenizer/char_tokenizer.h"

namespace moe::engine {

LayerAxis parse_layer_axis(const std::string& s) {
  if (s == "auto") return LayerAxis::detect;
  if (s == "all") return LayerAxis::all;
  if (s == "moe") return LayerAxis::moe;
  throw UsageError("--engine-layers must be auto, all or moe, not '" + s + "'");
}

std::vector<int> engine_rows_of_moe_layers(const model::ModelConfig& mc, int64_t engine_layers, LayerAxis axis) {
  const std::vector<int> moe = mc.moe_layer_ids();
  const int64_t H = mc.num_hidden_layers, M = int64_t(moe.size());
  auto describe = [&] {
    std::string ids;
    for (int x : moe) ids += (ids.empty() ? "" : ",") + std::to_string(x);
    return "the model has " + std::to_string(H) + " layers, " + std::to_string(M) + " of them MoE (" + ids + ")";
  };
  if (axis == LayerAxis::detect) {
    if (engine_layers == H) axis = LayerAxis::all;
    else if (engine_layers == M) axis = LayerAxis::moe;
    else
      throw Error("routing has " + std::to_string(engine_layers) + " layers: " + describe() +
                  "; an engine array holds either every layer (SGLang, vLLM) or the MoE layers only");
  }
  std::vector<int> rows;
  if (axis == LayerAxis::all) {
    if (engine_layers != H)
      throw Error("routing has " + std::to_string(engine_layers) + " layers, --engine-layers all needs one per model layer: " + describe());
    rows = moe;  // row l = model layer l; dense rows are skipped
  } else {
    if (engine_layers != M)
      throw Error("routing has " + std::to_string(engine_layers) + " layers, --engine-layers moe needs one per MoE layer: " + describe());
    for (int j = 0; j < M; ++j) rows.push_back(j);
  }
  return rows;
}

namespace {

void expert_value(const nlohmann::json& x, const std::string& where, const std::string& what, std::vector<int64_t>& out) {
  if (!x.is_number_integer()) throw Error(where + ": " + what + " holds " + x.dump() + ", not an integer expert id");
  out.push_back(x.get<int64_t>());
}

}  // namespace

void routing_from_json(const nlohmann::json& v, const std::string& where, const std::string& what, EngineRecord& r) {
  r.experts.clear();
  if (v.is_string()) {
    const std::string raw = base64_decode(v.get<std::string>(), where + ": " + what);
    NumArray a = parse_npy(reinterpret_cast<const uint8_t*>(raw.data()), raw.size(), where + ": " + what);
    if (a.kind == 'f') throw Error(where + ": " + what + " is " + a.dtype_name() + ", expert ids must be integers");
    if (a.shape.size() != 3)
      throw Error(where + ": " + what + " has " + std::to_string(a.shape.size()) + " dimensions, expected [positions, layers, top_k]");
    r.rows = a.shape[0];
    r.layers = a.shape[1];
    r.k = a.shape[2];
    const size_t n = a.numel();
    r.experts.resize(n);
    for (size_t i = 0; i < n; ++i) r.experts[i] = a.int_at(i);
    r.has_routing = true;
    return;
  }
  if (!v.is_array()) throw Error(where + ": " + what + " must be [positions][layers][top_k] integers or a base64 .npy string");
  r.rows = int64_t(v.size());
  r.layers = r.k = 0;
  for (size_t t = 0; t < v.size(); ++t) {
    const auto& row = v[t];
    if (!row.is_array()) throw Error(where + ": " + what + "[" + std::to_string(t) + "] is not a list of layers");
    if (t == 0) r.layers = int64_t(row.size());
    if (int64_t(row.size()) != r.layers)
      throw Error(where + ": " + what + "[" + std::to_string(t) + "] has " + std::to_string(row.size()) + " layers, row 0 has " +
                  std::to_string(r.layers));
    for (size_t l = 0; l < row.size(); ++l) {
      const auto& ks = row[l];
      if (!ks.is_array()) throw Error(where + ": " + what + "[" + std::to_string(t) + "][" + std::to_string(l) + "] is not a list of experts");
      if (t == 0 && l == 0) r.k = int64_t(ks.size());
      if (int64_t(ks.size()) != r.k)
        throw Error(where + ": " + what + "[" + std::to_string(t) + "][" + std::to_string(l) + "] has " + std::to_string(ks.size()) +
                    " experts, the first row has " + std::to_string(r.k));
      for (const auto& x : ks) expert_value(x, where, what, r.experts);
    }
  }
  r.has_routing = true;
}

struct Importer::Writers {
  std::unique_ptr<format::RolloutWriter> rollouts;
  std::unique_ptr<format::RoutingWriter> routing;
};

Importer::Importer(const model::ModelConfig& mc, ImportOptions opt, io::Output& rollouts, io::Output* routing)
    : mc_(mc), opt_(std::move(opt)), rollouts_out_(rollouts), routing_out_(routing), moe_ids_(mc.moe_layer_ids()) {
  if (!(opt_.temperature > 0) || !std::isfinite(opt_.temperature)) throw UsageError("--temperature must be > 0");
  if (routing_out_ && moe_ids_.empty()) throw UsageError("--routing-out: the model has no MoE layer");
  if (!opt_.tokenizer_json.empty()) {
    try {
      tokenizer::CharTokenizer tok = tokenizer::CharTokenizer::load(opt_.tokenizer_json);
      vocab_ = tok.tokens();
      eos_id_ = tok.eos_id();
    } catch (const Error&) {
      // Not a character vocabulary: texts the input lacks stay empty.
    }
  }
  if (eos_id_ < 0) eos_id_ = mc_.eos_token_id;
}

Importer::~Importer() = default;

void Importer::open_writers(bool with_probs) {
  w_ = std::make_unique<Writers>();
  format::Header h;
  h.producer = opt_.producer;
  h.meta = {{"vocab_size", mc_.vocab_size},
            {"temperature", opt_.temperature},
            {"model_digest", model::config_digest(mc_)},
            {"source", {{"engine", opt_.from}}}};
  w_->rollouts = std::make_unique<format::RolloutWriter>(rollouts_out_, h);
  if (routing_out_) {
    format::Header rh;
    rh.producer = h.producer;
    rh.meta = {{"source", {{"engine", opt_.from}}}};
    format::RoutingMeta m;
    m.num_layers = int(moe_ids_.size());
    m.layer_ids = moe_ids_;
    m.num_experts = int(mc_.num_experts);
    m.top_k = int(mc_.num_experts_per_tok);
    m.prob_dtype = with_probs ? "f32" : "none";
    m.model_digest = model::config_digest(mc_);
    w_->routing = std::make_unique<format::RoutingWriter>(*routing_out_, rh, m);
  }
}

void Importer::add(EngineRecord& r) {
  if (!w_) open_writers(!r.probs.empty());
  // ids, groups, samples
  const uint64_t id = r.id ? *r.id : next_id_;
  const std::string at = r.where + ": record " + std::to_string(id) + ": ";
  if (ids_seen_.count(id)) throw Error(at + "duplicate id " + std::to_string(id));
  uint64_t group;
  uint32_t sample;
  if (r.group) {
    group = *r.group;
    if (have_prev_ && group == prev_group_) {
      sample = r.sample ? *r.sample : prev_sample_ + 1;
    } else {
      if (groups_closed_.count(group))
        throw Error(at + "group " + std::to_string(group) + " appears again after another group (a group's records must be adjacent)");
      sample = r.sample ? *r.sample : 0;
    }
  } else {
    const bool same = have_prev_ && !prev_explicit_group_ && r.prompt == prev_prompt_;
    group = same ? prev_group_ : next_group_;
    sample = r.sample ? *r.sample : same ? prev_sample_ + 1 : 0;
  }
  if (have_prev_ && group != prev_group_) groups_closed_.insert(prev_group_);
  next_group_ = std::max(next_group_, group + 1);
  next_id_ = std::max(next_id_, id + 1);

  format::RolloutRecord out;
  out.id = id;
  out.group = group;
  out.sample = sample;
  if (r.prompt.empty()) throw Error(at + "no prompt tokens");
  if (r.response.empty()) throw Error(at + "no response tokens");
  for (const auto* v : {&r.prompt, &r.response})
    for (size_t i = 0; i < v->size(); ++i) {
      const int64_t t = (*v)[i];
      if (t < 0 || t >= mc_.vocab_size)
        throw Error(at + (v == &r.prompt ? "prompt" : "response") + " token " + std::to_string(i) + " is " + std::to_string(t) +
                    ", outside the model's vocabulary 0.." + std::to_string(mc_.vocab_size - 1));
    }
  out.prompt_tokens.assign(r.prompt.begin(), r.prompt.end());
  out.response_tokens.assign(r.response.begin(), r.response.end());
  const size_t R = r.response.size();
  if (r.logprobs) {
    if (r.logprobs->size() != R)
      throw Error(at + std::to_string(r.logprobs->size()) + " log-probs for " + std::to_string(R) + " response tokens");
    for (size_t i = 0; i < R; ++i) {
      const double x = (*r.logprobs)[i];
      if (std::isnan(x)) throw Error(at + "log-prob of response token " + std::to_string(i) + " is missing");
      if (!std::isfinite(x) || x > 1e-4)
        throw Error(at + "log-prob of response token " + std::to_string(i) + " is " + std::to_string(x) + ", not a log-probability");
      out.logprobs.push_back(float(std::min(x, 0.0)));
    }
  } else if (opt_.require_logprobs) {
    throw Error(at + "no log-probs: moe-train-step needs the sampling policy's log-probs (mismatch metrics, TIS/MIS); "
                     "ask the engine for them (SGLang return_logprob, vLLM logprobs=0) or import with --no-logprobs");
  }
  out.finish_reason = r.finish_reason;
  if (out.finish_reason.empty() && eos_id_ >= 0) out.finish_reason = r.response.back() == eos_id_ ? "eos" : "length";
  auto decode = [&](const std::vector<int64_t>& ids) {
    std::string s;
    for (int64_t t : ids) s += size_t(t) < vocab_.size() ? vocab_[size_t(t)] : std::string();
    return s;
  };
  out.prompt_text = !r.prompt_text.empty() || vocab_.empty() ? r.prompt_text : decode(r.prompt);
  out.response_text = !r.response_text.empty() || vocab_.empty() ? r.response_text : decode(r.response);
  if (!r.task.is_object()) throw Error(at + "task payload must be a JSON object");
  out.task = r.task;

  if (w_->routing) {
    if (!r.has_routing)
      throw Error(at + "no routed experts (start the engine with --enable-return-routed-experts and ask for them per request), "
                       "or import without --routing-out");
    const int64_t K = mc_.num_experts_per_tok, M = int64_t(moe_ids_.size()), T = int64_t(r.prompt.size() + R);
    if (r.layers == 0) {
      // A flat buffer: the layer count comes from --engine-layers (SGLang: every model layer).
      const int64_t L = opt_.layers == LayerAxis::moe ? M : mc_.num_hidden_layers;
      const int64_t n = int64_t(r.experts.size());
      if (n % (L * K) != 0)
        throw Error(at + "routed experts hold " + std::to_string(n) + " ids, not a multiple of layers x top_k = " + std::to_string(L) +
                    " x " + std::to_string(K));
      r.layers = L;
      r.k = K;
      r.rows = n / (L * K);
    }
    if (r.k != K)
      throw Error(at + "routing has top-" + std::to_string(r.k) + " experts per layer, the model routes to " + std::to_string(K));
    if (!rows_of_layer_) {
      try {
        rows_of_layer_ = engine_rows_of_moe_layers(mc_, r.layers, opt_.layers);
      } catch (const Error& e) {
        throw Error(at + e.what());
      }
      engine_layers_ = r.layers;
    }
    if (r.layers != engine_layers_)
      throw Error(at + "routing has " + std::to_string(r.layers) + " layers, earlier records have " + std::to_string(engine_layers_));
    // Positions: row t covers position first + t. moekit covers 0 .. T-2 (the last token is never forwarded).
    int64_t rows = r.rows, first = 0;
    if (r.first_pos) {
      first = *r.first_pos;
      if (first < 0 || first + rows > T - 1)
        throw Error(at + "routing covers positions " + std::to_string(first) + ".." + std::to_string(first + rows - 1) +
                    ", a sequence of " + std::to_string(T) + " tokens has forwarded positions 0.." + std::to_string(T - 2));
    } else if (rows == T) {
      rows = T - 1;  // a row for the last token, which was never forwarded: dropped
    } else if (rows > T) {
      throw Error(at + "routing has " + std::to_string(rows) + " positions for " + std::to_string(T) + " tokens (" +
                  std::to_string(r.prompt.size()) + " prompt + " + std::to_string(R) + " response); expected " + std::to_string(T - 1));
    } else if (rows < T - 1) {
      if (!opt_.prefix_omitted)
        throw Error(at + "routing has " + std::to_string(rows) + " positions for " + std::to_string(T) + " tokens (" +
                    std::to_string(r.prompt.size()) + " prompt + " + std::to_string(R) + " response); expected " + std::to_string(T - 1) +
                    " (every position but the last). If the engine left out a prompt prefix, --prefix-omitted aligns the rows to the end");
      first = T - 1 - rows;
    }
    if (first > 0 && !opt_.prefix_omitted)
      throw Error(at + "routing starts at position " + std::to_string(first) + "; pass --prefix-omitted to accept routing without the prompt prefix");
    format::RoutingRecord rr;
    rr.id = id;
    rr.first_pos = first;
    rr.n_pos = rows;
    rr.experts.resize(size_t(rows * M * K));
    const int64_t E = mc_.num_experts;
    for (int64_t t = 0; t < rows; ++t)
      for (int64_t j = 0; j < M; ++j) {
        const int64_t src = (t * r.layers + (*rows_of_layer_)[size_t(j)]) * K;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t e = r.experts[size_t(src + k)];
          bool dup = false;
          for (int64_t k2 = 0; k2 < k; ++k2) dup |= r.experts[size_t(src + k2)] == e;
          if (e < 0 || e >= E || dup) {
            const std::string cell = "position " + std::to_string(first + t) + ", layer " + std::to_string(moe_ids_[size_t(j)]) + ": ";
            throw Error(at + cell + "expert " + std::to_string(e) +
                        (dup ? " appears twice" : " out of range (the model has " + std::to_string(E) + " experts)"));
          }
          rr.experts[size_t((t * M + j) * K + k)] = uint16_t(e);
        }
      }
    if (!r.probs.empty()) {
      if (int64_t(r.probs.size()) != r.rows * r.layers * r.k)
        throw Error(at + "routed_probs holds " + std::to_string(r.probs.size()) + " values for " + std::to_string(r.rows) + " x " +
                    std::to_string(r.layers) + " x " + std::to_string(r.k) + " experts");
      rr.probs.resize(rr.experts.size());
      for (int64_t t = 0; t < rows; ++t)
        for (int64_t j = 0; j < M; ++j)
          for (int64_t k = 0; k < K; ++k)
            rr.probs[size_t((t * M + j) * K + k)] = r.probs[size_t((t * r.layers + (*rows_of_layer_)[size_t(j)]) * K + k)];
    }
    if (rr.probs.empty() != (w_->routing->meta().prob_dtype == "none"))
      throw Error(at + (rr.probs.empty() ? "no routed_probs, earlier records have them" : "routed_probs, earlier records have none"));
    w_->routing->write(rr);
    routed_positions_ += uint64_t(rows);
  }
  w_->rollouts->write(out);
  ids_seen_.insert(id);
  have_prev_ = true;
  prev_explicit_group_ = r.group.has_value();
  prev_group_ = group;
  prev_sample_ = sample;
  prev_prompt_ = r.prompt;
  ++count_;
  if (count_ % 64 == 0) {
    w_->rollouts->flush();
    if (w_->routing) w_->routing->flush();
  }
}

void Importer::finish() {
  if (!w_) open_writers(false);
  // The routing stream is complete and in place before the rollout stream's trailer leaves: in
  // `moe-data import --routing-out R | moe-reward | moe-train-step --routing R` the trainer opens R once
  // the rollouts have ended.
  if (w_->routing) {
    w_->routing->finish();
    routing_out_->close();
  }
  w_->rollouts->finish();
}

}  // namespace moe::engine
