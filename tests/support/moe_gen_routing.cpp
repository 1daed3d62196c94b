// moe_gen_routing: test-only generator of routing and rollout streams (build/test-bin, not installed).
//
//   moe_gen_routing [options] [-o FILE]     a routing (or --kind rollout) stream with known content
//   moe_gen_routing --bad DIR               the hand-made broken streams of tests/data/bad
//
// Routing rows are a deterministic function of (--seed, id, position, layer), so two runs that differ only
// in --perturb / --records / --positions have known differences: with --perturb R a share R of the
// (position, layer) rows get one expert replaced (Jaccard (k-1)/(k+1) on those rows).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <string>

#include "moe/cli/app.h"
#include "moe/format/rollout.h"
#include "moe/format/routing.h"
#include "moe/io/error.h"
#include "moe/io/file.h"
#include "stream_forge.h"

using moe::testing::Forge;
using nlohmann::json;

namespace {

struct Opts {
  std::string kind = "routing", output = "-", bad_dir, prob_dtype = "f16", index_dtype;
  uint64_t records = 4, seed = 1, perturb_seed = 12345;
  int64_t positions = 16, first_pos = 0;
  int layers = 4, experts = 16, top_k = 2;
  double perturb = 0;
  bool no_trailer = false, reverse = false;
  int64_t truncate = -1;
  uint64_t flush_every = 0;
};

// The writer's output; with --truncate, the bytes are cut after N compressed bytes.
void write_out(const Opts& o, const std::string& bytes) {
  moe::io::Output out(o.output);
  size_t n = o.truncate >= 0 ? std::min<size_t>(size_t(o.truncate), bytes.size()) : bytes.size();
  out.write(bytes.data(), n);
  out.close();
}

void gen_routing(const Opts& o, int argc, char** argv) {
  moe::format::RoutingMeta m;
  m.num_layers = o.layers;
  m.num_experts = o.experts;
  m.top_k = o.top_k;
  m.prob_dtype = o.prob_dtype;
  m.index_dtype = o.index_dtype;
  m.model_digest = "gen-seed-" + std::to_string(o.seed);
  moe::format::Header h;
  h.producer = moe::format::make_producer("moe_gen_routing", argc, argv);
  moe::testing::RoutingSynth synth(o.layers, o.experts, o.top_k, o.seed);
  // Streams are written to a temporary file so that --truncate and --no-trailer can cut them.
  const bool direct = o.truncate < 0 && !o.no_trailer;
  const std::string tmp = std::string("/tmp/moe_gen.") + std::to_string(getpid());
  auto out = std::make_unique<moe::io::Output>(direct ? o.output : tmp);
  {
    moe::format::RoutingWriter w(*out, h, m);
    moe::format::RoutingRecord r;
    for (uint64_t i = 0; i < o.records; ++i) {
      uint64_t id = o.reverse ? o.records - 1 - i : i;
      synth.fill(id, o.first_pos, o.positions, o.prob_dtype != "none", o.perturb, o.perturb_seed, r);
      w.write(r);
      if (o.flush_every && (i + 1) % o.flush_every == 0) w.flush();
    }
    if (!o.no_trailer) w.finish();
    else w.flush();
  }
  out->close();
  if (!direct) {
    std::string bytes = moe::io::read_file(tmp);
    std::remove(tmp.c_str());
    write_out(o, bytes);
  }
}

void gen_rollout(const Opts& o, int argc, char** argv) {
  moe::format::Header h;
  h.producer = moe::format::make_producer("moe_gen_routing", argc, argv);
  h.meta = {{"vocab_size", 64}, {"temperature", 1.0}, {"model_digest", ""}};
  moe::io::Output out(o.output);
  moe::format::RolloutWriter w(out, h);
  moe::format::RolloutRecord r;
  for (uint64_t i = 0; i < o.records; ++i) {
    uint64_t s = moe::testing::splitmix(o.seed ^ i);
    r.id = i;
    r.group = i / 4;
    r.sample = uint32_t(i % 4);
    r.prompt_tokens = {1, 2, 3, int32_t(s % 60)};
    r.response_tokens.assign(size_t(1 + s % 5), int32_t(i % 64));
    r.logprobs.assign(r.response_tokens.size(), -0.5f);
    r.finish_reason = s % 3 ? "eos" : "length";
    r.prompt_text = "prompt " + std::to_string(i);
    r.response_text = "response " + std::to_string(i);
    r.task = {{"target", int(s % 100)}};
    if (i % 2 == 0) r.reward = double(s % 2);
    else r.reward.reset();
    w.write(r);
    if (o.flush_every && (i + 1) % o.flush_every == 0) w.flush();
  }
  w.finish();
  out.close();
}

// ------------------------------------------------------------------------------------------ bad files

std::string rec_bytes(uint64_t id, int64_t n_pos, const std::string& experts, const std::string& probs) {
  json r = {{"id", id}, {"first_pos", 0}, {"n_pos", n_pos}, {"experts", moe::testing::bin(experts)}};
  if (!probs.empty()) r["probs"] = moe::testing::bin(probs);
  return moe::testing::pack_json(r);
}

// 2 layers, 8 experts, top-2, u8 indices, f16 probs; records of 3 positions.
Forge base() {
  Forge f;
  f.header = moe::testing::pack_json(Forge::header_json("routing", 1, Forge::routing_meta()));
  std::string e = {0, 1, 2, 3, 4, 5, 6, 7, 1, 0, 3, 2};
  for (uint64_t id = 0; id < 3; ++id) f.records.push_back(rec_bytes(id, 3, e, std::string(24, '\x10')));
  return f;
}

void put(const std::string& dir, const std::string& name, const std::string& bytes) {
  moe::io::write_file_atomic(dir + "/" + name, bytes);
}

void gen_bad(const std::string& dir) {
  { Forge f = base(); f.header = moe::testing::pack_json(Forge::header_json("routing", 1, Forge::routing_meta(), "moekat"));
    put(dir, "bad_magic.zst", f.zst()); }
  { Forge f = base(); f.header = moe::testing::pack_json(Forge::header_json("routings", 1, Forge::routing_meta()));
    put(dir, "unknown_kind.zst", f.zst()); }
  { Forge f = base(); f.header = moe::testing::pack_json(Forge::header_json("routing", 99, Forge::routing_meta()));
    put(dir, "future_version.zst", f.zst()); }
  { Forge f = base(); f.trailer = false; put(dir, "missing_trailer.zst", f.zst()); }
  { Forge f = base(); f.trailer = false; std::string raw = f.raw(); raw.resize(raw.size() - 10);
    put(dir, "truncated_record.zst", Forge::compress_frames(raw, {})); }
  { std::string z = base().zst(); z.resize(z.size() * 2 / 3); put(dir, "truncated_frame.zst", z); }
  { Forge f = base(); f.count_delta = 1; put(dir, "count_mismatch.zst", f.zst()); }
  { Forge f = base(); f.checksum_xor = 0x5a5a; put(dir, "checksum_mismatch.zst", f.zst()); }
  { Forge f = base(); f.records[1] = rec_bytes(1, 3, std::string(11, '\1'), std::string(24, '\x10'));
    put(dir, "wrong_payload_length.zst", f.zst()); }
  { Forge f = base(); f.records[1] = moe::testing::pack_json(json::array({1, 2, 3}));
    put(dir, "non_map_record.zst", f.zst()); }
  { Forge f = base(); f.records[2] = rec_bytes(2, 3, {0, 1, 2, 3, 4, 5, 6, 7, 5, 5, 3, 2}, std::string(24, '\x10'));
    put(dir, "duplicate_expert.zst", f.zst()); }
  { Forge f = base(); f.records[0] = rec_bytes(0, 3, {0, 1, 2, 3, 4, 5, 6, 7, 1, 0, 3, 8}, std::string(24, '\x10'));
    put(dir, "expert_out_of_range.zst", f.zst()); }
  put(dir, "not_zstd.txt", "id\tfirst_pos\texperts\n0\t0\t1,2\n");
  put(dir, "empty.zst", "");
  { put(dir, "trailing_garbage.zst", base().zst() + "\nextra bytes after the stream\n"); }
  { Forge f = base(); f.trailer = false;
    f.records.push_back(std::string("\x81\xa1x\xc6\x7f\xff\xff\xff", 8) + "tiny");  // bin32 claiming 2 GiB
    put(dir, "hostile_length.zst", f.zst()); }
  { Forge f = base(); std::string r = f.records[0];
    r[0] = char(uint8_t(r[0]) + 1);  // one more map entry: a second "id"
    r += moe::testing::pack_json(json("id")) + moe::testing::pack_json(json(7));
    f.records[0] = r; put(dir, "duplicate_key.zst", f.zst()); }
  { Forge f = base(); f.header = moe::testing::pack_json(Forge::header_json("routing", 1, Forge::routing_meta(2, 8, 9)));
    put(dir, "bad_meta.zst", f.zst()); }
}

}  // namespace

int main(int argc, char** argv) {
  Opts o;
  return moe::cli::run_tool("moe_gen_routing", argc, argv, [&](CLI::App& app) {
    app.description("Test-only generator of moekit routing/rollout streams with known content.");
    app.add_option("--kind", o.kind, "routing | rollout")->check(CLI::IsMember({"routing", "rollout"}));
    app.add_option("-o,--output", o.output, "output file ('-' = stdout)");
    app.add_option("--records", o.records, "records (one per sequence id)");
    app.add_option("--positions", o.positions, "positions per record");
    app.add_option("--first-pos", o.first_pos, "first position of every record");
    app.add_option("--layers", o.layers, "MoE layers");
    app.add_option("--experts", o.experts, "experts per layer");
    app.add_option("--top-k", o.top_k, "experts per token");
    app.add_option("--seed", o.seed, "routing seed");
    app.add_option("--perturb", o.perturb, "share of (position, layer) rows with one expert replaced");
    app.add_option("--perturb-seed", o.perturb_seed, "which rows are perturbed");
    app.add_option("--prob-dtype", o.prob_dtype, "f16 | f32 | none")->check(CLI::IsMember({"f16", "f32", "none"}));
    app.add_option("--index-dtype", o.index_dtype, "u8 | u16 (default: by expert count)");
    app.add_flag("--no-trailer", o.no_trailer, "stop without a trailer (a broken stream)");
    app.add_option("--truncate", o.truncate, "cut the output after N compressed bytes (a broken stream)");
    app.add_flag("--reverse", o.reverse, "write records in descending id order");
    app.add_option("--flush-every", o.flush_every, "flush after every N records");
    app.add_option("--bad", o.bad_dir, "write the hand-made broken streams into DIR and exit");
  }, [&] {
    if (!o.bad_dir.empty()) gen_bad(o.bad_dir);
    else if (o.kind == "rollout") gen_rollout(o, argc, argv);
    else gen_routing(o, argc, argv);
    return 0;
  });
}
