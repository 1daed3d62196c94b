#include "moe/rollout/run.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <sys/stat.h>

#include <cstring>
#include <memory>
#include <optional>

#include "moe/cli/app.h"
#include "moe/dist/communicator.h"
#include "moe/format/rollout.h"
#include "moe/format/routing.h"
#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/io/jsonl.h"
#include "moe/io/limits.h"
#include "moe/model/config.h"
#include "moe/model/qwen3_moe.h"
#include "moe/rollout/generate.h"
#include "moe/rollout/policy.h"
#include "moe/rollout/prompts.h"
#include "moe/tokenizer/stop_strings.h"

namespace moe::rollout {
namespace {

format::RoutingRecord routing_record(uint64_t id, SequenceRouting&& r, bool with_probs) {
  format::RoutingRecord rr;
  rr.id = id;
  rr.first_pos = 0;
  rr.n_pos = r.n_pos;
  rr.experts = std::move(r.experts);
  if (with_probs) rr.probs = std::move(r.probs);
  return rr;
}

// The routing stream's shape and source for this model (--routing-probs: prob_dtype).
format::RoutingMeta routing_meta(const RolloutRun& run, const Policy& l) {
  const auto& cfg = l.model->config();
  format::RoutingMeta meta;
  meta.layer_ids = l.model->moe_layer_ids();
  meta.num_layers = static_cast<int>(meta.layer_ids.size());
  meta.num_experts = static_cast<int>(cfg.num_experts);
  meta.top_k = static_cast<int>(cfg.num_experts_per_tok);
  meta.prob_dtype = run.routing_probs;
  meta.model_digest = l.digest;
  return meta;
}

// The routing stream's header: producer, dtype, and the seed of its rollouts (null: none), so that
// moe-train-step can tell a routing stream of other rollouts.
format::Header routing_header(const RolloutRun& run, const nlohmann::json& seed) {
  format::Header h;
  h.producer = run.producer;
  h.meta["dtype"] = run.dtype;
  if (!seed.is_null()) h.meta["seed"] = seed;
  return h;
}

// The rollout stream and, with --routing-out, the routing stream: flushed together after every batch,
// finished (trailers written, files renamed into place) only on success.
struct Outputs {
  io::Output out;
  format::RolloutWriter writer;
  std::unique_ptr<io::Output> rout;
  std::unique_ptr<format::RoutingWriter> rwriter;
  bool with_probs;

  Outputs(const RolloutRun& run, const Policy& l, format::Header h)
      : out(run.output), writer(out, h), with_probs(run.routing_probs != "none") {
    if (run.routing_out.empty()) return;
    rout = std::make_unique<io::Output>(run.routing_out);
    const nlohmann::json seed = h.meta.is_object() && h.meta.contains("seed") ? h.meta["seed"] : nlohmann::json();
    rwriter = std::make_unique<format::RoutingWriter>(*rout, routing_header(run, seed), routing_meta(run, l));
  }
  bool routing() const { return rwriter != nullptr; }
  void write(const format::RolloutRecord& rec, SequenceRouting&& r) {
    writer.write(rec);
    if (rwriter) rwriter->write(routing_record(rec.id, std::move(r), with_probs));
  }
  void flush() {
    writer.flush();
    if (rwriter) rwriter->flush();
  }
  void finish() {
    writer.finish();
    if (rwriter) {
      rwriter->finish();
      rout->close();
    }
    out.close();
  }
};

// Per-sequence results as bytes, for the trip to rank 0 (host byte order: the ranks are one build).
struct Packer {
  std::string s;
  template <class T>
  void put(const T& v) { s.append(reinterpret_cast<const char*>(&v), sizeof v); }
  template <class T>
  void put_vec(const std::vector<T>& v) {
    put<uint64_t>(v.size());
    s.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
  void put_routing(const SequenceRouting& r) {
    put<int64_t>(r.n_pos);
    put_vec(r.experts);
    put_vec(r.probs);
  }
};
struct Unpacker {
  const std::string& s;
  size_t off = 0;
  void raw(void* p, size_t n) {
    if (n > s.size() - off) throw Error("data parallel: a truncated result from a peer");
    std::memcpy(p, s.data() + off, n);
    off += n;
  }
  template <class T>
  T get() {
    T v;
    raw(&v, sizeof v);
    return v;
  }
  template <class T>
  std::vector<T> get_vec() {
    const uint64_t n = get<uint64_t>();
    if (n > (s.size() - off) / sizeof(T)) throw Error("data parallel: a truncated result from a peer");
    std::vector<T> v(n);
    raw(v.data(), n * sizeof(T));
    return v;
  }
  SequenceRouting get_routing() {
    SequenceRouting r;
    r.n_pos = get<int64_t>();
    r.experts = get_vec<uint16_t>();
    r.probs = get_vec<float>();
    return r;
  }
};

// moe-rollout under torchrun (data parallel, --expert-parallel N). The work goes in rounds of one batch per
// rank: batch k * world + r (the batches one process makes, in order) runs on rank r, and the results come
// to rank 0, which writes them in order, so the streams are those of one process. Within an expert group the
// ranks vote before every forward; a rank whose batch is done runs idle forwards (its experts serve the
// others' tokens) until the vote says every rank of its group is done.
struct Group {
  std::unique_ptr<dist::Communicator> comm;
  model::ExpertShard shard;
  std::string device;
  int rank = 0, world = 1;
  std::function<void()> vote;  // GenerateOptions::before_forward (empty without expert parallel)
  std::shared_ptr<model::ExpertParallel> ep;
  model::Qwen3Moe model{nullptr};

  explicit Group(const RolloutRun& run) {
    if (run.dist.world_size > 1 && run.input == "-")
      throw UsageError("with world size " + std::to_string(run.dist.world_size) + " every rank reads the input: give a file, not stdin");
    c10::Device d = model::parse_device(run.device);
    comm = dist::open_group(run.dist, d, shard);
    device = d.str();
    if (!comm) return;
    rank = comm->rank();
    world = comm->world_size();
  }
  void attach(model::Qwen3Moe& m) {
    if (shard.size <= 1) return;
    model = m;
    ep = comm->expert_parallel();
    ep->exact_rows = true;  // every forward here produces records: one process's results bit for bit
    m->set_expert_parallel(ep);
    vote = [c = comm.get()] { c->any_in_expert_group(true); };
  }
  // This rank's batch of the round is done: serve the group until all of it is, with the experts' products of
  // the others' forwards (generate's when generating: rollout::TransposedExperts).
  void drain(bool generating) {
    if (!ep) return;
    torch::NoGradGuard ng;
    std::optional<TransposedExperts> transposed;
    if (generating) transposed.emplace(model);
    at::Tensor ids = at::zeros({1, 1}, at::TensorOptions().dtype(at::kLong).device(model->embed_weight.device()));
    model::ForwardOptions fo;
    fo.hidden_only = true;
    while (comm->any_in_expert_group(false)) {
      ep->idle = true;
      try {
        model->forward(ids, {}, model::RoutingPlan::native(), fo);
      } catch (...) {
        ep->idle = false;
        throw;
      }
      ep->idle = false;
    }
  }
  // Every rank's bytes of the round, in rank order, on rank 0.
  std::vector<std::string> collect(std::string mine) {
    if (!comm) return {std::move(mine)};
    return dist::gather_bytes(*comm, mine);
  }
  // Rank 0 has written everything: the others exit only then (and non-zero if it failed).
  void finish() {
    if (comm) comm->sum(1.0);
  }
};

void check_run(const RolloutRun& run) {
  if (run.samples < 1) throw UsageError("-G/--samples must be >= 1");
  if (run.batch_size < 1) throw UsageError("--batch-size must be >= 1");
  if (run.gen.max_new_tokens < 1) throw UsageError("--max-new-tokens must be >= 1");
  if (run.routing_probs != "f16" && run.routing_probs != "f32" && run.routing_probs != "none")
    throw UsageError("--routing-probs must be f16, f32 or none");
}

}  // namespace

namespace {
// How prompts are read and rendered for this model.
PromptFormat prompt_format(const RolloutRun& run, const Policy& l) {
  PromptFormat fmt;
  fmt.key = run.prompt_key;
  fmt.chat = run.chat;
  fmt.thinking = !run.no_thinking;
  fmt.vocab_size = l.model->config().vocab_size;
  return fmt;
}

// run.gen with the tokenizer's end-of-sequence ids and the stop strings (which must outlive the result).
GenerateOptions generate_options(const RolloutRun& run, const Policy& l, const tokenizer::StopStrings& stops) {
  GenerateOptions gen = run.gen;
  gen.eos_id = l.tok.eos_id();
  gen.eos_ids = l.tok.stop_ids();
  if (!stops.empty()) gen.stop = [&stops](const std::vector<int64_t>& ids) { return stops.hit(ids); };
  return gen;
}

// The record of sample `sample` of prompt `group` (id group * G + sample).
format::RolloutRecord sample_record(const Prompt& pr, size_t group, uint32_t sample, int64_t G, const std::vector<int64_t>& tokens,
                                    std::vector<float> logprobs, std::string finish_reason, const Policy& l,
                                    const tokenizer::StopStrings& stops) {
  format::RolloutRecord rec;
  rec.id = static_cast<uint64_t>(group * G + sample);
  rec.group = group;
  rec.sample = sample;
  rec.prompt_tokens = to_i32(pr.tokens);
  rec.response_tokens = to_i32(tokens);
  rec.logprobs = std::move(logprobs);
  rec.finish_reason = std::move(finish_reason);
  rec.prompt_text = pr.text;
  rec.response_text = stops.cut(l.tok.decode(tokens, /*skip_special=*/true));
  rec.task = pr.task;
  return rec;
}

// The rollout stream's header: what a consumer needs to interpret the records (formats/rollout.md).
format::Header rollout_header(const RolloutRun& run, const Policy& l, const GenerateOptions& gen) {
  format::Header h;
  h.producer = run.producer;
  h.meta = {{"vocab_size", l.model->config().vocab_size},
            {"model_digest", l.digest},
            {"eos_id", l.tok.eos_id()},
            {"eos_ids", l.tok.stop_ids()},
            {"stop", run.stop},
            {"chat", run.chat || run.no_thinking},
            {"pad_id", l.tok.pad_id()},
            {"temperature", gen.sampling.temperature},
            {"top_p", gen.sampling.top_p},
            {"top_k", gen.sampling.top_k},
            {"greedy", gen.sampling.greedy},
            {"max_new_tokens", gen.max_new_tokens},
            {"samples_per_prompt", run.samples},
            {"seed", gen.seed},
            {"dtype", run.dtype},
            {"prompt_key", run.prompt_key}};
  return h;
}
}  // namespace

std::string checkpoint_id(const std::string& model_dir) {
  std::string id;
  auto add = [&id](const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      id += "-;";
      return;
    }
    id += std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" +
          std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + ";";
  };
  add(model_dir);
  add(model_dir + "/model.safetensors");
  add(model_dir + "/model.safetensors.index.json");
  struct stat st;
  const std::string ts = model_dir + "/trainer_state.json";
  if (::stat(ts.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
    try {
      id += io::read_file(ts);
    } catch (const Error&) {
      id += "?";  // swapped away between stat and open: the inodes differ next time anyway
    }
  }
  return id;
}

namespace {
// --follow: see run.h.
void run_sample_follow(const RolloutRun& run) {
  std::string loaded = checkpoint_id(run.model_dir);
  Policy l = load_policy(run.model_dir, run.device, run.dtype);
  const PromptFormat fmt = prompt_format(run, l);
  const tokenizer::StopStrings stops(l.tok, run.stop);
  GenerateOptions gen = generate_options(run, l, stops);
  gen.capture_routing = !run.routing_out.empty();
  const int64_t G = run.samples;
  const int64_t prompts_per_batch = std::max<int64_t>(1, run.batch_size / G);
  const bool with_probs = run.routing_probs != "none";
  const format::RoutingMeta rmeta = routing_meta(run, l);

  io::Input in(run.input);
  io::Output out(run.output);
  // Waiting for the next prompt batch ends (quietly, as a broken pipe) when the next stage has ended.
  in.watch(out);
  // --routing-out R: one routing stream per batch, written whole after that batch's rollout stream is whole
  // on the output, and opened only then (a FIFO's open waits for its reader, which reads R only after the
  // rollouts). Why the pipeline with moe-train-step --follow --routing R cannot deadlock: step.cpp,
  // run_train_step. A regular file is written to a temporary and renamed into place at the end, as without
  // --follow (so it is for later runs, not for a reader running alongside); a FIFO or a device in place.
  // A FIFO's reader (the trainer, down the pipeline from the output) that exited before it opened R never
  // comes: the open gives up with an error once the output's reader has gone too (moe-reward --follow ends
  // when the trainer does), rather than wait for ever.
  std::unique_ptr<io::Output> rout;
  std::vector<format::RoutingRecord> routes;  // the batch's routing, held until its rollouts are out
  std::string line;
  bool eof = false;
  for (int64_t n = 0; !eof; ++n) {
    // One batch: prompt lines up to a blank line or the end of the input.
    std::vector<Prompt> prompts;
    for (;;) {
      const uint64_t at = in.offset();
      if (!in.getline(line, io::kMaxRecordBytes)) {
        eof = true;
        break;
      }
      nlohmann::json j;
      const std::string where = in.name() + ": offset " + std::to_string(at) + ": ";
      if (!io::parse_jsonl_line(line, where, j, at)) {
        if (prompts.empty()) continue;  // blank lines before a batch
        break;
      }
      prompts.push_back(parse_prompt(std::move(j), where, fmt, l.tok));
    }
    if (prompts.empty()) break;
    check_prompt_lengths(prompts, run.input, l.model->config().max_position_embeddings);
    // The checkpoint in place now. A swap during the load is seen by the id afterwards: load again.
    for (int tries = 0; checkpoint_id(run.model_dir) != loaded; ++tries) {
      if (tries == 10) throw Error(run.model_dir + ": the checkpoint kept changing while it was being loaded");
      const std::string id = checkpoint_id(run.model_dir);
      const model::ModelConfig c = model::load_config(run.model_dir + "/config.json");
      if (model::config_digest(c) != l.digest || c.vocab_size != l.model->config().vocab_size)
        throw Error(run.model_dir + ": the new checkpoint has another shape (config digest " + model::config_digest(c) +
                    ", loaded " + l.digest + ")");
      model::load_weights(l.model, run.model_dir);
      loaded = id;
      cli::info(run.model_dir + ": loaded a new checkpoint before batch " + std::to_string(n + 1));
    }
    gen.seed = run.gen.seed + static_cast<uint64_t>(n);
    // batch (1-based) and seed identify the batch in both headers; moe-train-step checks they agree.
    format::Header rh = rollout_header(run, l, gen);
    rh.meta["batch"] = n + 1;
    format::RolloutWriter writer(out, rh);
    routes.clear();
    for (size_t first = 0; first < prompts.size(); first += prompts_per_batch) {
      size_t last = std::min(prompts.size(), first + static_cast<size_t>(prompts_per_batch));
      std::vector<Request> reqs;
      for (size_t p = first; p < last; ++p)
        for (int64_t s = 0; s < G; ++s) reqs.push_back({static_cast<uint64_t>(p * G + s), prompts[p].tokens});
      std::vector<Generation> gens = generate(l.model, reqs, gen);
      for (size_t i = 0; i < reqs.size(); ++i) {
        const Prompt& pr = prompts[first + i / G];
        Generation& g = gens[i];
        writer.write(sample_record(pr, first + i / G, static_cast<uint32_t>(i % G), G, g.tokens, std::move(g.logprobs),
                                   std::move(g.finish_reason), l, stops));
        if (gen.capture_routing) routes.push_back(routing_record(reqs[i].stream, std::move(g.routing), with_probs));
      }
      writer.flush();
    }
    writer.finish();  // trailer, end of frame, flushed: the next stage has the whole stream
    if (gen.capture_routing) {
      if (!rout) rout = std::make_unique<io::Output>(run.routing_out, out);
      format::Header h = routing_header(run, gen.seed);
      h.meta["batch"] = n + 1;
      format::RoutingWriter rw(*rout, h, rmeta);
      for (const format::RoutingRecord& rr : routes) rw.write(rr);
      rw.finish();  // trailer, end of frame, flushed
      routes.clear();
    }
    cli::info("batch " + std::to_string(n + 1) + ": wrote " + std::to_string(writer.count()) + " rollouts (" +
              std::to_string(prompts.size()) + " prompts x " + std::to_string(G) + ")");
  }
  if (rout) rout->close();
  out.close();
}
}  // namespace

void run_sample(const RolloutRun& run) {
  check_run(run);
  if (run.follow) {
    if (run.dist.world_size > 1) throw UsageError("--follow runs in one process (world size 1)");
    return run_sample_follow(run);
  }
  Group grp(run);
  Policy l = load_policy(run.model_dir, grp.device, run.dtype, grp.shard);
  grp.attach(l.model);
  const PromptFormat fmt = prompt_format(run, l);
  std::vector<Prompt> prompts = read_prompts(run.input, fmt, l.tok);
  check_prompt_lengths(prompts, run.input, l.model->config().max_position_embeddings);

  const tokenizer::StopStrings stops(l.tok, run.stop);
  GenerateOptions gen = generate_options(run, l, stops);
  gen.capture_routing = !run.routing_out.empty();
  gen.before_forward = grp.vote;

  std::unique_ptr<Outputs> o;
  if (grp.rank == 0) o = std::make_unique<Outputs>(run, l, rollout_header(run, l, gen));
  const int64_t G = run.samples;
  const size_t prompts_per_batch = static_cast<size_t>(std::max<int64_t>(1, run.batch_size / G));
  const size_t n_batches = (prompts.size() + prompts_per_batch - 1) / prompts_per_batch;
  auto prompt_range = [&](size_t batch) {
    const size_t first = std::min(prompts.size(), batch * prompts_per_batch);
    return std::make_pair(first, std::min(prompts.size(), first + prompts_per_batch));
  };
  std::unique_ptr<cli::Progress> progress;
  if (grp.rank == 0) progress = std::make_unique<cli::Progress>("rollout", static_cast<int64_t>(prompts.size()) * G, "tok");
  for (size_t round = 0; round < n_batches; round += static_cast<size_t>(grp.world)) {
    // This rank's batch of the round.
    Packer mine;
    {
      auto [first, last] = prompt_range(round + static_cast<size_t>(grp.rank));
      std::vector<Request> reqs;
      for (size_t p = first; p < last; ++p)
        for (int64_t s = 0; s < G; ++s) reqs.push_back({static_cast<uint64_t>(p * G + s), prompts[p].tokens});
      std::vector<Generation> gens = generate(l.model, reqs, gen);
      grp.drain(true);
      for (const Generation& g : gens) {
        mine.put_vec(g.tokens);
        mine.put_vec(g.logprobs);
        mine.put_vec(std::vector<char>(g.finish_reason.begin(), g.finish_reason.end()));
        mine.put_routing(g.routing);
      }
    }
    std::vector<std::string> parts = grp.collect(std::move(mine.s));
    if (!o) continue;
    for (size_t r = 0; r < parts.size(); ++r) {
      auto [first, last] = prompt_range(round + r);
      Unpacker u{parts[r]};
      int64_t n_seqs = 0, new_tokens = 0;
      for (size_t p = first; p < last; ++p)
        for (int64_t s = 0; s < G; ++s) {
          const Prompt& pr = prompts[p];
          std::vector<int64_t> tokens = u.get_vec<int64_t>();
          std::vector<float> logprobs = u.get_vec<float>();
          std::vector<char> reason = u.get_vec<char>();
          o->write(sample_record(pr, p, static_cast<uint32_t>(s), G, tokens, std::move(logprobs),
                                 std::string(reason.begin(), reason.end()), l, stops),
                   u.get_routing());
          ++n_seqs;
          new_tokens += static_cast<int64_t>(tokens.size());
        }
      if (u.off != parts[r].size()) throw Error("data parallel: rank " + std::to_string(r) + " sent more results than its batch holds");
      o->flush();
      progress->add(n_seqs, new_tokens);
    }
  }
  if (o) {
    progress->finish();
    o->finish();
    cli::info("wrote " + std::to_string(o->writer.count()) + " rollouts (" + std::to_string(prompts.size()) + " prompts x " +
              std::to_string(G) + ")");
  }
  grp.finish();
}

void run_score(const RolloutRun& run) {
  check_run(run);
  Group grp(run);
  Policy l = load_policy(run.model_dir, grp.device, run.dtype, grp.shard);
  grp.attach(l.model);
  io::Input in(run.input);
  format::RolloutReader reader(in);
  const auto& in_meta = reader.header().meta;
  double temperature = run.gen.sampling.temperature;
  if (!run.temperature_given && in_meta.contains("temperature") && in_meta["temperature"].is_number())
    temperature = in_meta["temperature"].get<double>();
  if (grp.rank == 0 && in_meta.contains("model_digest") && in_meta["model_digest"].is_string() && in_meta["model_digest"] != l.digest)
    cli::warn(reader.name() + ": rollouts come from a model of another shape (digest " +
              in_meta["model_digest"].get<std::string>() + ", this model " + l.digest + ")");

  format::Header h;
  h.producer = run.producer;
  h.meta = in_meta;
  h.meta["temperature"] = temperature;
  h.meta["scored"] = {{"model_digest", l.digest}, {"dtype", run.dtype}};
  std::unique_ptr<Outputs> o;
  if (grp.rank == 0) o = std::make_unique<Outputs>(run, l, std::move(h));
  const bool capture = !run.routing_out.empty();

  std::unique_ptr<cli::Progress> progress;
  if (grp.rank == 0) progress = std::make_unique<cli::Progress>("score", 0, "tok");
  // A round: one batch of batch_size records per rank (the last ones shorter or empty).
  const size_t bs = static_cast<size_t>(run.batch_size);
  std::vector<format::RolloutRecord> round;
  auto flush_round = [&] {
    if (round.empty()) return;
    Packer mine;
    {
      const size_t first = std::min(round.size(), static_cast<size_t>(grp.rank) * bs), last = std::min(round.size(), first + bs);
      std::vector<ScoreRequest> reqs;
      for (size_t i = first; i < last; ++i) reqs.push_back({to_i64(round[i].prompt_tokens), to_i64(round[i].response_tokens)});
      std::vector<Scored> sc;
      if (!reqs.empty()) sc = score(l.model, reqs, temperature, capture, grp.vote);
      grp.drain(false);
      for (const Scored& x : sc) {
        mine.put_vec(x.logprobs);
        mine.put_routing(x.routing);
      }
    }
    std::vector<std::string> parts = grp.collect(std::move(mine.s));
    if (o) {
      for (size_t r = 0; r < parts.size(); ++r) {
        const size_t first = std::min(round.size(), r * bs), last = std::min(round.size(), first + bs);
        Unpacker u{parts[r]};
        int64_t tokens = 0;
        for (size_t i = first; i < last; ++i) {
          round[i].prev_logprobs = std::move(round[i].logprobs);
          round[i].logprobs = u.get_vec<float>();
          tokens += static_cast<int64_t>(round[i].prompt_tokens.size() + round[i].response_tokens.size());
          o->write(round[i], u.get_routing());
        }
        if (u.off != parts[r].size()) throw Error("data parallel: rank " + std::to_string(r) + " sent more results than its batch holds");
        o->flush();
        progress->add(static_cast<int64_t>(last - first), tokens);
      }
    }
    round.clear();
  };
  format::RolloutRecord rec;
  while (reader.next(rec)) {
    if (rec.prompt_tokens.empty())
      throw Error(reader.name() + ": offset " + std::to_string(reader.offset()) + ": record " + std::to_string(rec.id) +
                  " has no prompt tokens");
    round.push_back(std::move(rec));
    rec = format::RolloutRecord{};
    if (round.size() >= bs * static_cast<size_t>(grp.world)) flush_round();
  }
  flush_round();
  if (o) {
    progress->finish();
    o->finish();
    cli::info("re-scored " + std::to_string(o->writer.count()) + " rollouts");
  }
  grp.finish();
}

}  // namespace moe::rollout
