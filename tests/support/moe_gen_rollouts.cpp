// Test-only: builds rollout streams from JSONL without a model, and prints rollout streams as JSONL, so the
// Bats tests of moe-reward can run real pipes.
//
//   moe_gen_rollouts [--no-trailer] [--kind routing] [--response-key K] [IN.jsonl|-]
//       JSONL -> rollout stream on stdout
//   moe_gen_rollouts --to-jsonl [--header] [--field K] [STREAM|-]
//       rollout stream -> JSONL on stdout (--field: only that field of each record, as JSON)
//
// Input lines: {"prompt": text, "response": text, "group": n, ...}. Optional record fields: "group"
// (default: line number), "id" (default: line number), "sample" (default: index within the group), "tokens"
// (response length in tokens, default: one token per byte of the response), "reward", "finish_reason".
// --response-key K takes the response from field K plus "<eos>" (e.g. moe-data's "solution").
// Keys starting with "x_" become unknown record keys (kept as packed msgpack); every other key goes into
// the task payload.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

#include "moe/format/rollout.h"
#include "moe/format/routing.h"
#include "moe/io/error.h"
#include "moe/io/file.h"

namespace {

using moe::format::RolloutRecord;

int to_stream(const std::string& path, bool trailer, const std::string& kind, const std::string& response_key) {
  moe::io::Input in(path);
  moe::io::Output out("-");
  moe::format::Header h;
  h.kind = kind;
  h.producer = {{"program", "moe_gen_rollouts"}, {"version", "test"}};
  h.meta = {{"vocab_size", 256}, {"temperature", 1.0}, {"model_digest", "test"}};
  if (kind == "routing") {
    moe::format::RoutingMeta m;
    m.num_layers = 1;
    m.layer_ids = {0};
    m.num_experts = 4;
    m.top_k = 1;
    m.prob_dtype = "none";
    moe::format::RoutingWriter w(out, h, m);
    moe::format::RoutingRecord r;
    r.n_pos = 1;
    r.experts = {0};
    w.write(r);
    w.finish();
    out.close();
    return 0;
  }
  moe::format::RolloutWriter w(out, h);
  std::string line;
  uint64_t n = 0, last_group = ~uint64_t{0};
  uint32_t sample = 0;
  while (in.getline(line)) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line);
    RolloutRecord r;
    r.id = j.value("id", n);
    r.group = j.value("group", n);
    sample = r.group == last_group ? sample + 1 : 0;
    last_group = r.group;
    r.sample = j.value("sample", sample);
    r.prompt_text = j.value("prompt", "");
    r.response_text = response_key.empty() ? j.value("response", "") : j.at(response_key).get<std::string>() + "<eos>";
    for (unsigned char c : r.prompt_text) r.prompt_tokens.push_back(c);
    size_t ntok = j.value("tokens", r.response_text.size());
    for (size_t i = 0; i < ntok; ++i) {
      r.response_tokens.push_back(i < r.response_text.size() ? (unsigned char)r.response_text[i] : 0);
      r.logprobs.push_back(-0.5f);
    }
    r.finish_reason = j.value("finish_reason", "eos");
    if (j.contains("reward")) r.reward = j["reward"].is_number() ? j["reward"].get<double>() : std::nan("");
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& k = it.key();
      if (k == "id" || k == "group" || k == "sample" || k == "prompt" || k == "response" || k == "tokens" ||
          k == "reward" || k == "finish_reason")
        continue;
      if (k.rfind("x_", 0) == 0) {
        std::vector<uint8_t> mp = nlohmann::json::to_msgpack(it.value());
        r.extra.emplace_back(k, std::string(mp.begin(), mp.end()));
      } else {
        r.task[k] = it.value();
      }
    }
    w.write(r);
    ++n;
  }
  if (trailer) w.finish();
  else w.flush();
  out.close();
  return 0;
}

int to_jsonl(const std::string& path, bool header, const std::string& field) {
  moe::io::Input in(path);
  moe::format::RolloutReader reader(in);
  if (header) {
    const auto& h = reader.header();
    nlohmann::json j = {{"kind", h.kind}, {"version", h.version}, {"producer", h.producer}, {"meta", h.meta}};
    std::cout << j.dump() << "\n";
  }
  RolloutRecord r;
  for (;;) {
    r = RolloutRecord{};
    if (!reader.next(r)) break;
    nlohmann::ordered_json j;
    j["id"] = r.id;
    j["group"] = r.group;
    j["sample"] = r.sample;
    j["prompt"] = r.prompt_text;
    j["response"] = r.response_text;
    j["tokens"] = r.response_tokens.size();
    j["task"] = r.task;
    j["reward"] = r.reward ? nlohmann::json(*r.reward) : nlohmann::json(nullptr);
    j["advantage"] = r.advantage ? nlohmann::json(*r.advantage) : nlohmann::json(nullptr);
    j["reward_info"] = r.reward_info;
    for (const auto& [k, v] : r.extra) j[k] = nlohmann::json::from_msgpack(v);
    if (!field.empty()) std::cout << (j.contains(field) ? j[field].dump() : "absent") << "\n";
    else std::cout << j.dump() << "\n";
  }
  std::cout.flush();
  return std::cout ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  bool dump = false, header = false, trailer = true;
  std::string kind = "rollout", path = "-", response_key, field;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--to-jsonl") dump = true;
    else if (a == "--header") header = true;
    else if (a == "--no-trailer") trailer = false;
    else if (a == "--kind" && i + 1 < argc) kind = argv[++i];
    else if (a == "--response-key" && i + 1 < argc) response_key = argv[++i];
    else if (a == "--field" && i + 1 < argc) field = argv[++i];
    else path = a;
  }
  try {
    return dump ? to_jsonl(path, header, field) : to_stream(path, trailer, kind, response_key);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_gen_rollouts: error: %s\n", e.what());
    return 1;
  }
}
