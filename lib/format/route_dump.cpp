#include "moe/format/route_dump.h"

#include "format/internal.h"

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <string_view>
#include <unordered_map>

#include "moe/format/rollout.h"
#include "moe/format/routing.h"
#include "moe/format/stream.h"
#include "moe/io/error.h"

namespace moe::format::route_dump {
namespace {

using detail::write_quoted;

// printf into a std::string.
template <class... Args>
std::string fmt(const char* f, Args... args) {
  int n = std::snprintf(nullptr, 0, f, args...);
  std::string s(size_t(n), '\0');
  std::snprintf(s.data(), s.size() + 1, f, args...);
  return s;
}

nlohmann::json header_json(const Header& h) {
  return {{"magic", kMagic}, {"kind", h.kind}, {"version", h.version}, {"producer", h.producer}, {"meta", h.meta}};
}

void write_json_line(io::Output& out, const nlohmann::json& j) {
  // Replace invalid UTF-8 (free text from a model) rather than failing on display.
  out.write(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  out.write("\n", 1);
}

// Column index of each selected layer (all when `layers` is empty); unknown layer ids are an error.
std::vector<int> select_layers(const RoutingMeta& m, const std::vector<int>& layers, const std::string& name) {
  std::vector<int> cols;
  if (layers.empty()) {
    for (int i = 0; i < m.num_layers; ++i) cols.push_back(i);
    return cols;
  }
  for (int id : layers) {
    auto it = std::find(m.layer_ids.begin(), m.layer_ids.end(), id);
    if (it == m.layer_ids.end()) {
      std::string have;
      for (int x : m.layer_ids) have += (have.empty() ? "" : " ") + std::to_string(x);
      throw Error(name + ": layer " + std::to_string(id) + " is not in this stream (layers: " + have + ")");
    }
    cols.push_back(int(it - m.layer_ids.begin()));
  }
  return cols;
}

void show_routing_text(io::Output& out, const RoutingMeta& m, const RoutingRecord& r, const std::vector<int>& cols) {
  const size_t L = m.num_layers, K = m.top_k;
  out.write(fmt("id %" PRIu64 "  positions %" PRId64 "..%" PRId64 " (%" PRId64 ")\n", r.id, r.first_pos,
                r.first_pos + r.n_pos - 1, r.n_pos));
  std::string line;
  for (int64_t t = 0; t < r.n_pos; ++t) {
    line = fmt("  pos %" PRId64, r.first_pos + t);
    for (int c : cols) {
      line += fmt("  | L%d", m.layer_ids[c]);
      for (size_t k = 0; k < K; ++k) {
        size_t i = (size_t(t) * L + size_t(c)) * K + k;
        line += r.probs.empty() ? fmt(" %u", unsigned(r.experts[i])) : fmt(" %u:%.3f", unsigned(r.experts[i]), double(r.probs[i]));
      }
    }
    line += '\n';
    out.write(line);
  }
}

nlohmann::json routing_json_selected(const RoutingMeta& m, const RoutingRecord& r, const std::vector<int>& cols,
                                     bool selected) {
  if (!selected) return routing_to_json(m, r);
  // Keep only the selected layer columns, and say which they are.
  RoutingMeta sub = m;
  sub.num_layers = int(cols.size());
  sub.layer_ids.clear();
  RoutingRecord s;
  s.id = r.id;
  s.first_pos = r.first_pos;
  s.n_pos = r.n_pos;
  const size_t L = m.num_layers, K = m.top_k;
  for (int c : cols) sub.layer_ids.push_back(m.layer_ids[c]);
  for (int64_t t = 0; t < r.n_pos; ++t)
    for (int c : cols)
      for (size_t k = 0; k < K; ++k) {
        size_t i = (size_t(t) * L + size_t(c)) * K + k;
        s.experts.push_back(r.experts[i]);
        if (!r.probs.empty()) s.probs.push_back(r.probs[i]);
      }
  nlohmann::json j = routing_to_json(sub, s);
  j["layers"] = sub.layer_ids;
  return j;
}

void show_rollout_text(io::Output& out, const RolloutRecord& r) {
  std::string s = fmt("id %" PRIu64 "  group %" PRIu64 "  sample %u  finish %s", r.id, r.group, r.sample,
                      r.finish_reason.empty() ? "-" : r.finish_reason.c_str());
  s += r.reward ? fmt("  reward %g", *r.reward) : "  reward -";
  s += r.advantage ? fmt("  advantage %g", *r.advantage) : "  advantage -";
  s += fmt("\n  prompt   (%zu tokens): ", r.prompt_tokens.size());
  out.write(s);
  write_quoted(out, r.prompt_text);
  s = fmt("\n  response (%zu tokens): ", r.response_tokens.size());
  out.write(s);
  write_quoted(out, r.response_text);
  s.clear();
  if (!r.logprobs.empty()) {
    double sum = 0;
    for (float x : r.logprobs) sum += x;
    s += fmt("\n  logprob sum %.4f  mean %.4f", sum, sum / double(r.logprobs.size()));
  }
  if (!r.task.empty()) s += "\n  task " + r.task.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (!r.reward_info.empty()) s += "\n  reward_info " + r.reward_info.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  for (const auto& kv : r.extra) s += "\n  " + kv.first + " (" + std::to_string(kv.second.size()) + " bytes msgpack)";
  s += '\n';
  out.write(s);
}

double share(uint64_t a, uint64_t b) { return b ? double(a) / double(b) : 0.0; }
nlohmann::json share_or_null(double num, uint64_t den) { return den ? nlohmann::json(num / double(den)) : nlohmann::json(nullptr); }
std::string num_or_na(double num, uint64_t den) { return den ? fmt("%.4f", num / double(den)) : std::string("n/a"); }

}  // namespace

// ------------------------------------------------------------------------------------------------ show

void show(io::Input& in, io::Output& out, const ShowOptions& opt) {
  StreamReader r(in);
  const Header& h = r.header();
  if (opt.header_only) {
    write_json_line(out, header_json(h));
    return;
  }
  const bool routing = h.kind == "routing";
  if (!routing && !opt.layers.empty()) throw UsageError("--layer applies to routing streams; " + r.name() + " is a " + h.kind + " stream");
  std::set<uint64_t> ids(opt.ids.begin(), opt.ids.end());
  RoutingMeta meta;
  std::vector<int> cols;
  if (routing) {
    meta = RoutingMeta::from_json(h.meta);
    cols = select_layers(meta, opt.layers, r.name());
  }
  const int64_t vocab = rollout_vocab_size(h);
  // On a terminal, show each record as soon as it is decoded (e.g. behind a running moe-rollout).
  const bool live = out.is_stdout() && ::isatty(1);
  Record raw;
  RoutingRecord rr;
  RolloutRecord ro;
  while (r.next(raw)) {
    if (routing) {
      decode_routing(r.name(), meta, raw, rr);
      if (!ids.empty() && !ids.count(rr.id)) continue;
      if (opt.jsonl) write_json_line(out, routing_json_selected(meta, rr, cols, !opt.layers.empty()));
      else show_routing_text(out, meta, rr, cols);
    } else {
      decode_rollout(r.name(), vocab, raw, ro);
      if (!ids.empty() && !ids.count(ro.id)) continue;
      if (opt.jsonl) write_rollout_json(out, ro);
      else show_rollout_text(out, ro);
    }
    if (live) out.flush();  // before the next read, which may wait for the producer
  }
}

// ----------------------------------------------------------------------------------------------- stats

namespace {

void stats_routing(StreamReader& r, io::Output& out, const StatsOptions& opt) {
  const RoutingMeta m = RoutingMeta::from_json(r.header().meta);
  const size_t L = m.num_layers, K = m.top_k, E = m.num_experts;
  std::vector<uint64_t> counts(L * E, 0);
  std::vector<double> entropy(L, 0), mass(L, 0);
  std::vector<uint64_t> prob_rows(L, 0);
  uint64_t records = 0, positions = 0;
  Record raw;
  RoutingRecord rec;
  while (r.next(raw)) {
    decode_routing(r.name(), m, raw, rec);
    ++records;
    positions += uint64_t(rec.n_pos);
    for (int64_t t = 0; t < rec.n_pos; ++t)
      for (size_t l = 0; l < L; ++l) {
        const size_t base = (size_t(t) * L + l) * K;
        for (size_t k = 0; k < K; ++k) ++counts[l * E + rec.experts[base + k]];
        if (rec.probs.empty()) continue;
        // H = -sum q ln q with q = p / S equals ln S - (sum p ln p) / S: one log per probability, in float
        // (ample for a mean over positions), accumulated in double.
        float sum = 0, plogp = 0;
        for (size_t k = 0; k < K; ++k) {
          const float p = std::max(0.0f, rec.probs[base + k]);
          sum += p;
          if (p > 0) plogp += p * std::log(p);
        }
        if (!(sum > 0) || !std::isfinite(sum)) continue;
        entropy[l] += std::max(0.0, double(std::log(sum)) - double(plogp) / double(sum));
        mass[l] += sum;
        ++prob_rows[l];
      }
  }
  const uint64_t choices = positions * K;  // per layer
  nlohmann::json layers = nlohmann::json::array();
  for (size_t l = 0; l < L; ++l) {
    const uint64_t* c = &counts[l * E];
    double mean = double(choices) / double(E), var = 0;
    size_t argmax = 0, argmin = 0;
    for (size_t e = 0; e < E; ++e) {
      var += (double(c[e]) - mean) * (double(c[e]) - mean);
      if (c[e] > c[argmax]) argmax = e;
      if (c[e] < c[argmin]) argmin = e;
    }
    var /= double(E);
    nlohmann::json sh = nlohmann::json::array();
    for (size_t e = 0; e < E; ++e) sh.push_back(share(c[e], choices));
    layers.push_back({{"layer", m.layer_ids[l]},
                      {"counts", std::vector<uint64_t>(c, c + E)},
                      {"share", sh},
                      {"cv", choices ? nlohmann::json(std::sqrt(var) / mean) : nlohmann::json(nullptr)},
                      {"max_expert", argmax},
                      {"max_share", share(c[argmax], choices)},
                      {"min_expert", argmin},
                      {"min_share", share(c[argmin], choices)},
                      {"entropy", share_or_null(entropy[l], prob_rows[l])},
                      {"topk_mass", share_or_null(mass[l], prob_rows[l])}});
  }
  nlohmann::json j = {{"kind", "routing"}, {"records", records},    {"positions", positions}, {"num_layers", L},
                      {"num_experts", E},  {"top_k", K},            {"prob_dtype", m.prob_dtype},
                      {"entropy_max", std::log(double(K))},       {"layers", layers}};
  if (opt.json) {
    write_json_line(out, j);
    return;
  }
  std::string s = fmt("%s: routing, %" PRIu64 " records, %" PRIu64 " positions, %zu layers, %zu experts, top-%zu, probs %s\n",
                      r.name().c_str(), records, positions, L, E, K, m.prob_dtype.c_str());
  s += "layer  cv      min_share (expert)  max_share (expert)  entropy  topk_mass\n";
  for (const auto& x : layers) {
    s += fmt("%-6d %-7s %-9.4f (%4zu)      %-9.4f (%4zu)      %-8s %s\n", x["layer"].get<int>(),
             x["cv"].is_null() ? "n/a" : fmt("%.4f", x["cv"].get<double>()).c_str(), x["min_share"].get<double>(),
             x["min_expert"].get<size_t>(), x["max_share"].get<double>(), x["max_expert"].get<size_t>(),
             x["entropy"].is_null() ? "n/a" : fmt("%.4f", x["entropy"].get<double>()).c_str(),
             x["topk_mass"].is_null() ? "n/a" : fmt("%.4f", x["topk_mass"].get<double>()).c_str());
  }
  s += fmt("entropy: nats over the renormalised top-%zu probabilities (max ln %zu = %.4f); "
           "topk_mass: mean sum of the recorded probabilities\n", K, K, std::log(double(K)));
  s += "load per expert (expert:count), per layer:\n";
  out.write(s);
  for (size_t l = 0; l < L; ++l) {
    s = fmt("L%d", m.layer_ids[l]);
    for (size_t e = 0; e < E; ++e) s += fmt(" %zu:%" PRIu64, e, counts[l * E + e]);
    s += '\n';
    out.write(s);
  }
}

void stats_rollout(StreamReader& r, io::Output& out, const StatsOptions& opt) {
  const int64_t vocab = rollout_vocab_size(r.header());
  uint64_t records = 0, groups = 0, prompt_tok = 0, resp_tok = 0, rewarded = 0, with_adv = 0;
  uint64_t max_resp = 0;
  double reward_sum = 0, reward_sq = 0, adv_sum = 0;
  std::map<std::string, uint64_t> finish;
  bool have_group = false;
  uint64_t last_group = 0;
  Record raw;
  RolloutRecord rec;
  while (r.next(raw)) {
    decode_rollout(r.name(), vocab, raw, rec);
    ++records;
    if (!have_group || rec.group != last_group) ++groups;
    have_group = true;
    last_group = rec.group;
    prompt_tok += rec.prompt_tokens.size();
    resp_tok += rec.response_tokens.size();
    max_resp = std::max<uint64_t>(max_resp, rec.response_tokens.size());
    ++finish[rec.finish_reason.empty() ? "-" : rec.finish_reason];
    if (rec.reward) {
      ++rewarded;
      reward_sum += *rec.reward;
      reward_sq += *rec.reward * *rec.reward;
    }
    if (rec.advantage) {
      ++with_adv;
      adv_sum += *rec.advantage;
    }
  }
  double rmean = rewarded ? reward_sum / double(rewarded) : 0;
  nlohmann::json j = {{"kind", "rollout"},
                      {"records", records},
                      {"groups", groups},
                      {"prompt_tokens_mean", share_or_null(double(prompt_tok), records)},
                      {"response_tokens_mean", share_or_null(double(resp_tok), records)},
                      {"response_tokens_max", max_resp},
                      {"finish_reason", finish},
                      {"rewarded", rewarded},
                      {"reward_mean", share_or_null(reward_sum, rewarded)},
                      {"reward_std", rewarded ? nlohmann::json(std::sqrt(std::max(0.0, reward_sq / double(rewarded) - rmean * rmean)))
                                              : nlohmann::json(nullptr)},
                      {"advantage_mean", share_or_null(adv_sum, with_adv)}};
  if (opt.json) {
    write_json_line(out, j);
    return;
  }
  std::string s = fmt("%s: rollout, %" PRIu64 " records in %" PRIu64 " groups\n", r.name().c_str(), records, groups);
  s += "prompt tokens mean " + num_or_na(double(prompt_tok), records) + ", response tokens mean " +
       num_or_na(double(resp_tok), records) + fmt(" (max %" PRIu64 ")\n", max_resp);
  s += "finish:";
  for (const auto& [k, v] : finish) s += fmt(" %s %" PRIu64, k.c_str(), v);
  s += fmt("\nreward: %" PRIu64 " rewarded, mean ", rewarded) + num_or_na(reward_sum, rewarded) + ", std " +
       (rewarded ? fmt("%.4f", j["reward_std"].get<double>()) : std::string("n/a")) + "; advantage mean " +
       num_or_na(adv_sum, with_adv) + "\n";
  out.write(s);
}

}  // namespace

void stats(io::Input& in, io::Output& out, const StatsOptions& opt) {
  StreamReader r(in);
  if (r.header().kind == "routing") stats_routing(r, out, opt);
  else stats_rollout(r, out, opt);
}

// ------------------------------------------------------------------------------------------------ diff

namespace {

struct LayerAcc {
  uint64_t pairs = 0, mismatch = 0, prob_n = 0;
  double jaccard = 0, prob_abs = 0;
  void add(const LayerAcc& o) {
    pairs += o.pairs;
    mismatch += o.mismatch;
    prob_n += o.prob_n;
    jaccard += o.jaccard;
    prob_abs += o.prob_abs;
  }
  nlohmann::json to_json() const {
    return {{"pairs", pairs},
            {"mismatch", share_or_null(double(mismatch), pairs)},
            {"jaccard", share_or_null(jaccard, pairs)},
            {"prob_mad", share_or_null(prob_abs, prob_n)}};
  }
};

struct Differ {
  RoutingMeta m;
  std::vector<LayerAcc> layers;
  uint64_t records = 0, tokens = 0, tokens_diff = 0, diff_layers = 0;
  uint64_t only_a_records = 0, only_b_records = 0, only_a_pos = 0, only_b_pos = 0;
  std::vector<uint32_t> seen;  // per expert: == tag when in A's current (position, layer) set
  std::vector<float> prob_a;   // per expert: A's probability in the current set
  uint32_t tag = 0;

  void compare(const RoutingRecord& a, const RoutingRecord& b) {
    ++records;
    const int64_t lo = std::max(a.first_pos, b.first_pos);
    const int64_t hi = std::min(a.first_pos + a.n_pos, b.first_pos + b.n_pos);
    const int64_t overlap = std::max<int64_t>(0, hi - lo);
    only_a_pos += uint64_t(a.n_pos - overlap);
    only_b_pos += uint64_t(b.n_pos - overlap);
    const size_t L = m.num_layers, K = m.top_k;
    const bool probs = !a.probs.empty() && !b.probs.empty();
    if (seen.size() != size_t(m.num_experts)) {
      seen.assign(size_t(m.num_experts), 0);
      prob_a.assign(size_t(m.num_experts), 0.f);
      tag = 0;
    }
    for (int64_t t = lo; t < hi; ++t) {
      uint64_t differing = 0;
      for (size_t l = 0; l < L; ++l) {
        const size_t ia = (size_t(t - a.first_pos) * L + l) * K, ib = (size_t(t - b.first_pos) * L + l) * K;
        // Mark A's experts (a stamp per expert: no clearing, no sorting), then look B's up.
        if (++tag == 0) {
          std::fill(seen.begin(), seen.end(), 0);
          tag = 1;
        }
        for (size_t k = 0; k < K; ++k) {
          seen[a.experts[ia + k]] = tag;
          if (probs) prob_a[a.experts[ia + k]] = a.probs[ia + k];
        }
        size_t inter = 0;
        LayerAcc& acc = layers[l];
        for (size_t k = 0; k < K; ++k) {
          const uint16_t e = b.experts[ib + k];
          if (seen[e] != tag) continue;
          ++inter;
          if (probs) {
            acc.prob_abs += std::fabs(double(prob_a[e]) - double(b.probs[ib + k]));
            ++acc.prob_n;
          }
        }
        ++acc.pairs;
        acc.jaccard += double(inter) / double(2 * K - inter);
        if (inter != K) {
          ++acc.mismatch;
          ++differing;
        }
      }
      ++tokens;
      tokens_diff += differing > 0;
      diff_layers += differing;
    }
  }
};

void check_same_shape(const RoutingMeta& a, const RoutingMeta& b, const std::string& na, const std::string& nb) {
  auto bad = [&](const std::string& what, const std::string& x, const std::string& y) {
    throw Error(na + " and " + nb + " are not comparable: " + what + " " + x + " vs " + y);
  };
  if (a.num_layers != b.num_layers) bad("num_layers", std::to_string(a.num_layers), std::to_string(b.num_layers));
  if (a.top_k != b.top_k) bad("top_k", std::to_string(a.top_k), std::to_string(b.top_k));
  if (a.num_experts != b.num_experts) bad("num_experts", std::to_string(a.num_experts), std::to_string(b.num_experts));
  if (a.layer_ids != b.layer_ids) bad("layer_ids", nlohmann::json(a.layer_ids).dump(), nlohmann::json(b.layer_ids).dump());
}

}  // namespace

DiffSummary diff(io::Input& a_in, io::Input& b_in, io::Output& out, const DiffOptions& opt) {
  RoutingReader ra(a_in), rb(b_in);
  check_same_shape(ra.meta(), rb.meta(), ra.name(), rb.name());
  const std::string& da = ra.meta().model_digest;
  const std::string& db = rb.meta().model_digest;
  Differ d;
  d.m = ra.meta();
  d.layers.resize(d.m.num_layers);
  // Records seen in one stream and not yet in the other. Empty while both streams keep the same id order.
  std::unordered_map<uint64_t, RoutingRecord> pend_a, pend_b;
  size_t max_pending = 0;
  bool more_a = true, more_b = true;
  RoutingRecord a, b;
  while (more_a || more_b) {
    bool got_a = more_a && (more_a = ra.next(a));
    bool got_b = more_b && (more_b = rb.next(b));
    if (got_a && got_b && a.id == b.id) {
      d.compare(a, b);
      continue;
    }
    if (got_a) {
      auto it = pend_b.find(a.id);
      if (it != pend_b.end()) {
        d.compare(a, it->second);
        pend_b.erase(it);
      } else if (!pend_a.emplace(a.id, std::move(a)).second) {
        throw Error(ra.name() + ": offset " + std::to_string(ra.offset()) + ": duplicate record id " + std::to_string(a.id));
      }
    }
    if (got_b) {
      auto it = pend_a.find(b.id);
      if (it != pend_a.end()) {
        d.compare(it->second, b);
        pend_a.erase(it);
      } else if (!pend_b.emplace(b.id, std::move(b)).second) {
        throw Error(rb.name() + ": offset " + std::to_string(rb.offset()) + ": duplicate record id " + std::to_string(b.id));
      }
    }
    max_pending = std::max(max_pending, pend_a.size() + pend_b.size());
  }
  for (const auto& kv : pend_a) {
    ++d.only_a_records;
    d.only_a_pos += uint64_t(kv.second.n_pos);
  }
  for (const auto& kv : pend_b) {
    ++d.only_b_records;
    d.only_b_pos += uint64_t(kv.second.n_pos);
  }

  DiffSummary sum;
  sum.tokens_compared = d.tokens;
  sum.positions_only_a = d.only_a_pos;
  sum.positions_only_b = d.only_b_pos;
  sum.token_mismatch = d.tokens ? double(d.tokens_diff) / double(d.tokens) : (d.only_a_pos + d.only_b_pos ? 1.0 : 0.0);

  LayerAcc all;
  nlohmann::json layers = nlohmann::json::array();
  for (size_t l = 0; l < d.layers.size(); ++l) {
    nlohmann::json j = d.layers[l].to_json();
    j["layer"] = d.m.layer_ids[l];
    layers.push_back(j);
    all.add(d.layers[l]);
  }
  if (opt.json) {
    nlohmann::json j = {{"a", ra.name()},
                        {"b", rb.name()},
                        {"records_compared", d.records},
                        {"tokens_compared", d.tokens},
                        {"only_a", {{"records", d.only_a_records}, {"positions", d.only_a_pos}}},
                        {"only_b", {{"records", d.only_b_records}, {"positions", d.only_b_pos}}},
                        {"layers", layers},
                        {"overall", all.to_json()},
                        {"token_mismatch", share_or_null(double(d.tokens_diff), d.tokens)},
                        {"mean_differing_layers", share_or_null(double(d.diff_layers), d.tokens)},
                        {"max_buffered_records", max_pending}};
    if (!da.empty() && !db.empty() && da != db) j["model_digest_differs"] = true;
    write_json_line(out, j);
    return sum;
  }
  std::string s = fmt("A %s\nB %s\n", ra.name().c_str(), rb.name().c_str());
  if (!da.empty() && !db.empty() && da != db) s += "note: model digests differ (" + da + " vs " + db + ")\n";
  s += fmt("compared: %" PRIu64 " records, %" PRIu64 " positions x %d layers\n", d.records, d.tokens, d.m.num_layers);
  s += fmt("only in A: %" PRIu64 " records, %" PRIu64 " positions; only in B: %" PRIu64 " records, %" PRIu64 " positions\n",
           d.only_a_records, d.only_a_pos, d.only_b_records, d.only_b_pos);
  s += "layer  pairs       mismatch  jaccard  prob_mad\n";
  auto row = [&](const std::string& name, const LayerAcc& x) {
    return fmt("%-6s %-11" PRIu64 " %-9s %-8s %s\n", name.c_str(), x.pairs, num_or_na(double(x.mismatch), x.pairs).c_str(),
               num_or_na(x.jaccard, x.pairs).c_str(), num_or_na(x.prob_abs, x.prob_n).c_str());
  };
  for (size_t l = 0; l < d.layers.size(); ++l) s += row(std::to_string(d.m.layer_ids[l]), d.layers[l]);
  s += row("all", all);
  s += "tokens with >= 1 differing layer: " + num_or_na(double(d.tokens_diff), d.tokens) +
       fmt(" (%" PRIu64 " of %" PRIu64 ")\n", d.tokens_diff, d.tokens);
  s += "mean differing layers per token: " + num_or_na(double(d.diff_layers), d.tokens) + "\n";
  out.write(s);
  return sum;
}

}  // namespace moe::format::route_dump
