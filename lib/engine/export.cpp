#include "moe/engine/export.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "moe/engine/npy.h"
#include "moe/format/rollout.h"
#include "moe/format/routing.h"
#include "moe/io/error.h"

namespace moe::engine {
namespace {
using nlohmann::json;

struct Routed {
  int64_t first_pos = 0, n_pos = 0;
  std::vector<uint16_t> experts;
  std::vector<float> probs;
};

std::string dump_line(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n"; }

// experts of one record on the engine's layer axis: [n_pos, H, K] int32 with dense layers zero (SGLang,
// vLLM, verl), or [n_pos, M, K] on the MoE axis (jsonl).
std::vector<int32_t> engine_rows(const Routed& r, const format::RoutingMeta& m, int64_t H) {
  const int64_t M = m.num_layers, K = m.top_k;
  std::vector<int32_t> out(size_t(r.n_pos * H * K), 0);
  for (int64_t t = 0; t < r.n_pos; ++t)
    for (int64_t j = 0; j < M; ++j)
      for (int64_t k = 0; k < K; ++k)
        out[size_t((t * H + m.layer_ids[size_t(j)]) * K + k)] = r.experts[size_t((t * M + j) * K + k)];
  return out;
}

// v as nested arrays [rows][L][K] (expert ids or probabilities).
template <class T>
json nested(const std::vector<T>& v, int64_t rows, int64_t L, int64_t K) {
  json a = json::array();
  for (int64_t t = 0; t < rows; ++t) {
    json row = json::array();
    for (int64_t l = 0; l < L; ++l) {
      json ks = json::array();
      for (int64_t k = 0; k < K; ++k) ks.push_back(v[size_t((t * L + l) * K + k)]);
      row.push_back(std::move(ks));
    }
    a.push_back(std::move(row));
  }
  return a;
}

}  // namespace

uint64_t export_rollouts(io::Input& rin, io::Input* route_in, const std::string& out_path, const ExportOptions& opt) {
  if (opt.to != "jsonl" && opt.to != "sglang" && opt.to != "verl") throw UsageError("--to must be verl, sglang or jsonl");
  if (opt.to != "jsonl" && !opt.model)
    throw UsageError("--to " + opt.to + " needs the model (-m DIR): the engine's layer axis holds every model layer");
  format::RolloutReader rr(rin);
  std::unordered_map<uint64_t, Routed> routes;
  format::RoutingMeta meta;
  std::string rname;
  int64_t H = 0;
  if (route_in) {
    format::RoutingReader rt(*route_in);
    rname = rt.name();
    meta = rt.meta();
    if (opt.model) {
      const auto& mc = *opt.model;
      H = mc.num_hidden_layers;
      if (meta.layer_ids != mc.moe_layer_ids() || meta.top_k != mc.num_experts_per_tok || meta.num_experts != mc.num_experts)
        throw Error(rname + ": routing stream layers/top-k/experts do not match the model's MoE layers");
    }
    format::RoutingRecord rec;
    while (rt.next(rec)) {
      Routed r{rec.first_pos, rec.n_pos, std::move(rec.experts), std::move(rec.probs)};
      if (!routes.emplace(rec.id, std::move(r)).second)
        throw Error(rname + ": offset " + std::to_string(rt.offset()) + ": duplicate routing record id " + std::to_string(rec.id));
    }
  }
  const int64_t K = meta.top_k, M = meta.num_layers;
  const int64_t eos = opt.model ? opt.model->eos_token_id : -1;

  auto routed_of = [&](const format::RolloutRecord& rec) -> const Routed* {
    if (!route_in) return nullptr;
    auto it = routes.find(rec.id);
    if (it == routes.end()) throw Error(rname + ": no routing record for rollout id " + std::to_string(rec.id));
    return &it->second;
  };
  auto need_full = [&](const format::RolloutRecord& rec, const Routed& r) {
    const int64_t T = int64_t(rec.prompt_tokens.size() + rec.response_tokens.size());
    if (r.first_pos != 0 || r.n_pos != T - 1)
      throw Error(rname + ": routing record " + std::to_string(rec.id) + " covers positions " + std::to_string(r.first_pos) + ".." +
                  std::to_string(r.first_pos + r.n_pos - 1) + "; " + opt.to + "'s format holds positions 0.." + std::to_string(T - 2));
  };

  uint64_t n = 0;
  format::RolloutRecord rec;
  if (opt.to == "jsonl" || opt.to == "sglang") {
    io::Output out(out_path);
    while (rr.next(rec)) {
      const Routed* r = routed_of(rec);
      json j;
      if (opt.to == "jsonl") {
        j = {{"id", rec.id},
             {"group", rec.group},
             {"sample", rec.sample},
             {"prompt_ids", rec.prompt_tokens},
             {"response_ids", rec.response_tokens},
             {"logprobs", rec.logprobs},
             {"finish_reason", rec.finish_reason},
             {"prompt_text", rec.prompt_text},
             {"response_text", rec.response_text},
             {"task", rec.task}};
        if (rec.logprobs.empty()) j.erase("logprobs");
        if (r) {
          j["first_pos"] = r->first_pos;
          j["routed_experts"] = nested(r->experts, r->n_pos, M, K);
          if (!r->probs.empty()) j["routed_probs"] = nested(r->probs, r->n_pos, M, K);
        }
      } else {
        json mi = {{"id", "moekit-" + std::to_string(rec.id)},
                   {"prompt_tokens", rec.prompt_tokens.size()},
                   {"completion_tokens", rec.response_tokens.size()}};
        if (rec.finish_reason == "length") mi["finish_reason"] = {{"type", "length"}, {"length", rec.response_tokens.size()}};
        else if (rec.finish_reason == "eos") mi["finish_reason"] = {{"type", "stop"}, {"matched", eos >= 0 ? json(eos) : json(rec.response_tokens.back())}};
        else if (rec.finish_reason == "stop") mi["finish_reason"] = {{"type", "stop"}, {"matched", ""}};
        else mi["finish_reason"] = nullptr;
        if (!rec.logprobs.empty()) {
          json lp = json::array();
          for (size_t i = 0; i < rec.logprobs.size(); ++i) lp.push_back({rec.logprobs[i], rec.response_tokens[i], nullptr});
          mi["output_token_logprobs"] = std::move(lp);
        }
        if (r) {
          need_full(rec, *r);
          std::vector<int32_t> rows = engine_rows(*r, meta, H);
          mi["routed_experts"] = base64_encode(rows.data(), rows.size() * 4);
        }
        j = {{"text", rec.response_text}, {"output_ids", rec.response_tokens}, {"meta_info", std::move(mi)},
             {"input_ids", rec.prompt_tokens}, {"group", rec.group}, {"task", rec.task}};
      }
      out.write(dump_line(j));
      ++n;
    }
    out.close();
    return n;
  }

  // verl: the whole batch, padded: prompts left, responses right.
  std::vector<format::RolloutRecord> recs;
  while (rr.next(rec)) recs.push_back(std::move(rec)), rec = format::RolloutRecord{};
  if (out_path == "-" || out_path.empty()) throw UsageError("--to verl writes a directory: give it with -o DIR");
  if (::mkdir(out_path.c_str(), 0777) != 0)
    throw Error(out_path + ": cannot create the batch directory: " + std::strerror(errno) + (errno == EEXIST ? " (it must not exist yet)" : ""));
  const int64_t B = int64_t(recs.size());
  int64_t Pp = 0, Pr = 0;
  bool all_lp = B > 0;
  for (const auto& x : recs) {
    Pp = std::max<int64_t>(Pp, int64_t(x.prompt_tokens.size()));
    Pr = std::max<int64_t>(Pr, int64_t(x.response_tokens.size()));
    all_lp &= !x.logprobs.empty();
  }
  const int64_t pad = opt.model->pad_token_id >= 0 ? opt.model->pad_token_id : 0;
  std::vector<int64_t> prompts(size_t(B * Pp), pad), responses(size_t(B * Pr), pad), input_ids(size_t(B * (Pp + Pr)), pad),
      mask(size_t(B * (Pp + Pr)), 0);
  std::vector<float> lps(size_t(B * Pr), 0.f);
  std::vector<int32_t> experts(route_in ? size_t(B * (Pp + Pr) * H * K) : 0, 0);
  std::string non_tensor;
  for (int64_t b = 0; b < B; ++b) {
    const auto& x = recs[size_t(b)];
    const int64_t np = int64_t(x.prompt_tokens.size()), nr = int64_t(x.response_tokens.size());
    for (int64_t j = 0; j < np; ++j) {
      prompts[size_t(b * Pp + Pp - np + j)] = x.prompt_tokens[size_t(j)];
      input_ids[size_t(b * (Pp + Pr) + Pp - np + j)] = x.prompt_tokens[size_t(j)];
      mask[size_t(b * (Pp + Pr) + Pp - np + j)] = 1;
    }
    for (int64_t j = 0; j < nr; ++j) {
      responses[size_t(b * Pr + j)] = x.response_tokens[size_t(j)];
      input_ids[size_t(b * (Pp + Pr) + Pp + j)] = x.response_tokens[size_t(j)];
      mask[size_t(b * (Pp + Pr) + Pp + j)] = 1;
      if (all_lp) lps[size_t(b * Pr + j)] = x.logprobs[size_t(j)];
    }
    if (route_in) {
      const Routed* r = routed_of(x);
      need_full(x, *r);
      std::vector<int32_t> rows = engine_rows(*r, meta, H);
      std::copy(rows.begin(), rows.end(), experts.begin() + (b * (Pp + Pr) + (Pp - np)) * H * K);
    }
    non_tensor += dump_line({{"id", x.id},
                             {"group", x.group},
                             {"sample", x.sample},
                             {"uid", std::to_string(x.group)},
                             {"finish_reason", x.finish_reason},
                             {"prompt_text", x.prompt_text},
                             {"response_text", x.response_text},
                             {"task", x.task}});
  }
  auto put = [&](const std::string& name, const std::string& descr, const std::vector<int64_t>& shape, const void* data, size_t bytes) {
    io::Output o(out_path + "/" + name);
    o.write(write_npy(descr, shape, data, bytes));
    o.close();
  };
  put("prompts.npy", "<i8", {B, Pp}, prompts.data(), prompts.size() * 8);
  put("responses.npy", "<i8", {B, Pr}, responses.data(), responses.size() * 8);
  put("input_ids.npy", "<i8", {B, Pp + Pr}, input_ids.data(), input_ids.size() * 8);
  put("attention_mask.npy", "<i8", {B, Pp + Pr}, mask.data(), mask.size() * 8);
  if (all_lp) put("rollout_log_probs.npy", "<f4", {B, Pr}, lps.data(), lps.size() * 4);
  if (route_in) put("routed_experts.npy", "<i4", {B, Pp + Pr, H, K}, experts.data(), experts.size() * 4);
  io::Output o(out_path + "/non_tensor_batch.jsonl");
  o.write(non_tensor);
  o.close();
  return uint64_t(B);
}

}  // namespace moe::engine
