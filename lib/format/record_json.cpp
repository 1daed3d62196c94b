#include "format/internal.h"
#include "moe/format/rollout.h"
#include "moe/format/routing.h"
#include "moe/format/stream.h"
#include "moe/io/error.h"

namespace moe::format {
namespace {

// Unknown keys of a record, shown generically.
void add_unknown(const Record& rec, std::initializer_list<const char*> known, nlohmann::json& j) {
  const msgpack::object& m = rec.map();
  for (uint32_t i = 0; i < m.via.map.size; ++i) {
    auto k = detail::as_key(m.via.map.ptr[i].key);
    bool is_known = false;
    for (const char* kk : known) is_known |= (k == kk);
    if (!is_known) j[std::string(k)] = detail::to_json(m.via.map.ptr[i].val);
  }
}

}  // namespace

nlohmann::json routing_to_json(const RoutingMeta& m, const RoutingRecord& r) {
  nlohmann::json j = {{"id", r.id}, {"first_pos", r.first_pos}, {"n_pos", r.n_pos}};
  const size_t L = m.num_layers, K = m.top_k;
  nlohmann::json e = nlohmann::json::array(), p = nlohmann::json::array();
  for (int64_t t = 0; t < r.n_pos; ++t) {
    nlohmann::json el = nlohmann::json::array(), pl = nlohmann::json::array();
    for (size_t l = 0; l < L; ++l) {
      nlohmann::json ek = nlohmann::json::array(), pk = nlohmann::json::array();
      for (size_t k = 0; k < K; ++k) {
        size_t i = (size_t(t) * L + l) * K + k;
        ek.push_back(r.experts[i]);
        if (!r.probs.empty()) pk.push_back(r.probs[i]);
      }
      el.push_back(std::move(ek));
      pl.push_back(std::move(pk));
    }
    e.push_back(std::move(el));
    p.push_back(std::move(pl));
  }
  j["experts"] = std::move(e);
  if (!r.probs.empty()) j["probs"] = std::move(p);
  return j;
}

nlohmann::json rollout_to_json(const RolloutRecord& r) {
  nlohmann::json j = {{"id", r.id},
                      {"group", r.group},
                      {"sample", r.sample},
                      {"prompt_tokens", r.prompt_tokens},
                      {"response_tokens", r.response_tokens},
                      {"logprobs", r.logprobs}};
  if (!r.prev_logprobs.empty()) j["prev_logprobs"] = r.prev_logprobs;
  j["finish_reason"] = r.finish_reason;
  j["prompt_text"] = r.prompt_text;
  j["response_text"] = r.response_text;
  j["task"] = r.task;
  if (r.reward) j["reward"] = *r.reward;
  if (r.advantage) j["advantage"] = *r.advantage;
  if (!r.reward_info.empty()) j["reward_info"] = r.reward_info;
  for (const auto& [k, v] : r.extra) {
    // str and bin values are referenced in `v` (it outlives `h`), not copied into the zone first.
    msgpack::object_handle h = msgpack::unpack(v.data(), v.size(), [](msgpack::type::object_type, std::size_t, void*) { return true; });
    j[k] = detail::to_json(h.get());
  }
  return j;
}

nlohmann::json record_to_json(const Header& header, const Record& rec) { return record_to_json(header, rec, "record"); }

nlohmann::json record_to_json(const Header& header, const Record& rec, const std::string& name) {
  if (header.kind == "routing") {
    RoutingMeta m = RoutingMeta::from_json(header.meta);
    RoutingRecord r;
    decode_routing(name, m, rec, r);
    nlohmann::json j = routing_to_json(m, r);
    add_unknown(rec, {"id", "first_pos", "n_pos", "experts", "probs"}, j);
    return j;
  }
  if (header.kind == "rollout") {
    RolloutRecord r;
    decode_rollout(name, rollout_vocab_size(header), rec, r);
    return rollout_to_json(r);
  }
  return detail::to_json(rec.map());
}

}  // namespace moe::format
