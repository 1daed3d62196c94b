#include "format/internal.h"

#include <algorithm>
#include <functional>
#include <map>
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

std::string dump(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

// A numeric array as nlohmann dumps it, converted and written 64 Ki elements at a time.
template <class T>
void write_array(io::Output& out, const std::vector<T>& v) {
  constexpr size_t kChunk = size_t(1) << 16;
  out.write("[", 1);
  for (size_t at = 0; at < v.size(); at += kChunk) {
    if (at) out.write(",", 1);
    nlohmann::json part(std::vector<T>(v.begin() + at, v.begin() + std::min(v.size(), at + kChunk)));
    const std::string text = dump(part);
    out.write(text.data() + 1, text.size() - 2);
  }
  out.write("]", 1);
}

}  // namespace

namespace detail {

std::string quoted(std::string_view s) { return dump(nlohmann::json(std::string(s))); }

// Pieces end before an ASCII byte, where the UTF-8 decoding of the whole text starts afresh too (a sequence
// cut short there is replaced by U+FFFD either way): the output is byte for byte that of quoted(s).
void write_quoted(io::Output& out, std::string_view s) {
  constexpr size_t kPiece = size_t(1) << 20;
  out.write("\"", 1);
  for (size_t at = 0; at < s.size();) {
    size_t cut = std::min(s.size(), at + kPiece);
    while (cut < s.size() && static_cast<unsigned char>(s[cut]) >= 0x80) ++cut;
    const std::string q = quoted(s.substr(at, cut - at));
    out.write(q.data() + 1, q.size() - 2);
    at = cut;
  }
  out.write("\"", 1);
}

void write_object(io::Output& out, const Fields& fields) {
  out.write("{", 1);
  bool first = true;
  for (const auto& [k, write] : fields) {
    if (!first) out.write(",", 1);
    first = false;
    out.write(detail::quoted(k));
    out.write(":", 1);
    write();
  }
  out.write("}", 1);
}

void write_json(io::Output& out, const msgpack::object& o) {
  using msgpack::type::object_type;
  switch (o.type) {
    case object_type::STR: write_quoted(out, std::string_view(o.via.str.ptr, o.via.str.size)); return;
    case object_type::ARRAY:
      out.write("[", 1);
      for (uint32_t i = 0; i < o.via.array.size; ++i) {
        if (i) out.write(",", 1);
        write_json(out, o.via.array.ptr[i]);
      }
      out.write("]", 1);
      return;
    case object_type::MAP: {
      // As to_json: keys named by json_key, in nlohmann's (sorted) order, the first of equal keys kept.
      Fields fields;
      for (uint32_t i = 0; i < o.via.map.size; ++i) {
        const msgpack::object* v = &o.via.map.ptr[i].val;
        fields.emplace(json_key(o.via.map.ptr[i].key), [&out, v] { write_json(out, *v); });
      }
      write_object(out, fields);
      return;
    }
    default: out.write(dump(to_json(o)));
  }
}

}  // namespace detail

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

void write_rollout_json(io::Output& out, const RolloutRecord& r) {
  // The members of rollout_to_json(r) in nlohmann's (sorted) key order; an extra key replaces a known one
  // of the same name, as the assignment in rollout_to_json does.
  detail::Fields fields;
  auto scalar = [&](const nlohmann::json& j) { return [&out, text = dump(j)] { out.write(text); }; };
  fields["id"] = scalar(r.id);
  fields["group"] = scalar(r.group);
  fields["sample"] = scalar(r.sample);
  fields["prompt_tokens"] = [&] { write_array(out, r.prompt_tokens); };
  fields["response_tokens"] = [&] { write_array(out, r.response_tokens); };
  fields["logprobs"] = [&] { write_array(out, r.logprobs); };
  if (!r.prev_logprobs.empty()) fields["prev_logprobs"] = [&] { write_array(out, r.prev_logprobs); };
  fields["finish_reason"] = [&] { detail::write_quoted(out, r.finish_reason); };
  fields["prompt_text"] = [&] { detail::write_quoted(out, r.prompt_text); };
  fields["response_text"] = [&] { detail::write_quoted(out, r.response_text); };
  fields["task"] = [&] { out.write(dump(r.task)); };
  if (r.reward) fields["reward"] = scalar(*r.reward);
  if (r.advantage) fields["advantage"] = scalar(*r.advantage);
  if (!r.reward_info.empty()) fields["reward_info"] = [&] { out.write(dump(r.reward_info)); };
  std::vector<msgpack::object_handle> extras;
  extras.reserve(r.extra.size());
  for (const auto& [k, v] : r.extra) {
    // str and bin values are referenced in `v` (it outlives the handle), not copied into the zone first.
    extras.push_back(msgpack::unpack(v.data(), v.size(), [](msgpack::type::object_type, std::size_t, void*) { return true; }));
    fields[k] = [&out, o = extras.back().get()] { detail::write_json(out, o); };
  }
  detail::write_object(out, fields);
  out.write("\n", 1);
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
