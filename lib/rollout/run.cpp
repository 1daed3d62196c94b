#include "moe/rollout/run.h"

#include <ATen/ATen.h>

#include <sys/stat.h>

#include <memory>

#include "moe/cli/app.h"
#include "moe/format/rollout.h"
#include "moe/format/routing.h"
#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/io/jsonl.h"
#include "moe/io/limits.h"
#include "moe/model/config.h"
#include "moe/model/qwen3_moe.h"
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

// The rollout stream and, with --routing-out, the routing stream: flushed together after every batch,
// finished (trailers written, files renamed into place) only on success.
struct Outputs {
  io::Output out;
  format::RolloutWriter writer;
  std::unique_ptr<io::Output> rout;
  std::unique_ptr<format::RoutingWriter> rwriter;
  bool with_probs;

  Outputs(const RolloutRun& run, const Policy& l, format::Header h)
      : out(run.output), writer(out, std::move(h)), with_probs(run.routing_probs != "none") {
    if (run.routing_out.empty()) return;
    rout = std::make_unique<io::Output>(run.routing_out);
    const auto& cfg = l.model->config();
    format::RoutingMeta meta;
    meta.layer_ids = l.model->moe_layer_ids();
    meta.num_layers = static_cast<int>(meta.layer_ids.size());
    meta.num_experts = static_cast<int>(cfg.num_experts);
    meta.top_k = static_cast<int>(cfg.num_experts_per_tok);
    meta.prob_dtype = run.routing_probs;
    meta.model_digest = l.digest;
    format::Header rh;
    rh.producer = run.producer;
    rh.meta["dtype"] = run.dtype;
    rwriter = std::make_unique<format::RoutingWriter>(*rout, rh, meta);
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

void check_run(const RolloutRun& run) {
  if (run.samples < 1) throw UsageError("-G/--samples must be >= 1");
  if (run.batch_size < 1) throw UsageError("--batch-size must be >= 1");
  if (run.gen.max_new_tokens < 1) throw UsageError("--max-new-tokens must be >= 1");
  if (run.routing_probs != "f16" && run.routing_probs != "f32" && run.routing_probs != "none")
    throw UsageError("--routing-probs must be f16, f32 or none");
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
  if (!run.routing_out.empty()) throw UsageError("--follow does not take --routing-out");
  std::string loaded = checkpoint_id(run.model_dir);
  Policy l = load_policy(run.model_dir, run.device, run.dtype);
  PromptFormat fmt;
  fmt.key = run.prompt_key;
  fmt.chat = run.chat;
  fmt.thinking = !run.no_thinking;
  fmt.vocab_size = l.model->config().vocab_size;
  GenerateOptions gen = run.gen;
  gen.eos_id = l.tok.eos_id();
  gen.eos_ids = l.tok.stop_ids();
  const tokenizer::StopStrings stops(l.tok, run.stop);
  if (!stops.empty()) gen.stop = [&stops](const std::vector<int64_t>& ids) { return stops.hit(ids); };
  const int64_t G = run.samples;
  const int64_t prompts_per_batch = std::max<int64_t>(1, run.batch_size / G);

  io::Input in(run.input);
  io::Output out(run.output);
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
    format::Header h;
    h.producer = run.producer;
    gen.seed = run.gen.seed + static_cast<uint64_t>(n);
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
    format::RolloutWriter writer(out, std::move(h));
    for (size_t first = 0; first < prompts.size(); first += prompts_per_batch) {
      size_t last = std::min(prompts.size(), first + static_cast<size_t>(prompts_per_batch));
      std::vector<Request> reqs;
      for (size_t p = first; p < last; ++p)
        for (int64_t s = 0; s < G; ++s) reqs.push_back({static_cast<uint64_t>(p * G + s), prompts[p].tokens});
      std::vector<Generation> gens = generate(l.model, reqs, gen);
      for (size_t i = 0; i < reqs.size(); ++i) {
        const Prompt& pr = prompts[first + i / G];
        Generation& g = gens[i];
        format::RolloutRecord rec;
        rec.id = reqs[i].stream;
        rec.group = first + i / G;
        rec.sample = static_cast<uint32_t>(i % G);
        rec.prompt_tokens = to_i32(pr.tokens);
        rec.response_tokens = to_i32(g.tokens);
        rec.logprobs = g.logprobs;
        rec.finish_reason = g.finish_reason;
        rec.prompt_text = pr.text;
        rec.response_text = stops.cut(l.tok.decode(g.tokens, /*skip_special=*/true));
        rec.task = pr.task;
        writer.write(rec);
      }
      writer.flush();
    }
    writer.finish();  // trailer, end of frame, flushed: the next stage has the whole stream
    cli::info("batch " + std::to_string(n + 1) + ": wrote " + std::to_string(writer.count()) + " rollouts (" +
              std::to_string(prompts.size()) + " prompts x " + std::to_string(G) + ")");
  }
  out.close();
}
}  // namespace

void run_sample(const RolloutRun& run) {
  check_run(run);
  if (run.follow) return run_sample_follow(run);
  Policy l = load_policy(run.model_dir, run.device, run.dtype);
  PromptFormat fmt;
  fmt.key = run.prompt_key;
  fmt.chat = run.chat;
  fmt.thinking = !run.no_thinking;
  fmt.vocab_size = l.model->config().vocab_size;
  std::vector<Prompt> prompts = read_prompts(run.input, fmt, l.tok);
  check_prompt_lengths(prompts, run.input, l.model->config().max_position_embeddings);

  GenerateOptions gen = run.gen;
  gen.eos_id = l.tok.eos_id();
  gen.eos_ids = l.tok.stop_ids();
  const tokenizer::StopStrings stops(l.tok, run.stop);
  if (!stops.empty()) gen.stop = [&stops](const std::vector<int64_t>& ids) { return stops.hit(ids); };
  gen.capture_routing = !run.routing_out.empty();

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
  Outputs o(run, l, std::move(h));
  const int64_t G = run.samples;
  const int64_t prompts_per_batch = std::max<int64_t>(1, run.batch_size / G);
  cli::Progress progress("rollout", static_cast<int64_t>(prompts.size()) * G, "tok");
  for (size_t first = 0; first < prompts.size(); first += prompts_per_batch) {
    size_t last = std::min(prompts.size(), first + static_cast<size_t>(prompts_per_batch));
    std::vector<Request> reqs;
    for (size_t p = first; p < last; ++p)
      for (int64_t s = 0; s < G; ++s) reqs.push_back({static_cast<uint64_t>(p * G + s), prompts[p].tokens});
    std::vector<Generation> gens = generate(l.model, reqs, gen);
    int64_t new_tokens = 0;
    for (size_t i = 0; i < reqs.size(); ++i) {
      const Prompt& pr = prompts[first + i / G];
      Generation& g = gens[i];
      format::RolloutRecord rec;
      rec.id = reqs[i].stream;
      rec.group = first + i / G;
      rec.sample = static_cast<uint32_t>(i % G);
      rec.prompt_tokens = to_i32(pr.tokens);
      rec.response_tokens = to_i32(g.tokens);
      rec.logprobs = g.logprobs;
      rec.finish_reason = g.finish_reason;
      rec.prompt_text = pr.text;
      rec.response_text = stops.cut(l.tok.decode(g.tokens, /*skip_special=*/true));
      rec.task = pr.task;
      o.write(rec, std::move(g.routing));
      new_tokens += static_cast<int64_t>(g.tokens.size());
    }
    o.flush();
    progress.add(static_cast<int64_t>(reqs.size()), new_tokens);
  }
  progress.finish();
  o.finish();
  cli::info("wrote " + std::to_string(o.writer.count()) + " rollouts (" + std::to_string(prompts.size()) + " prompts x " +
            std::to_string(G) + ")");
}

void run_score(const RolloutRun& run) {
  check_run(run);
  Policy l = load_policy(run.model_dir, run.device, run.dtype);
  io::Input in(run.input);
  format::RolloutReader reader(in);
  const auto& in_meta = reader.header().meta;
  double temperature = run.gen.sampling.temperature;
  if (!run.temperature_given && in_meta.contains("temperature") && in_meta["temperature"].is_number())
    temperature = in_meta["temperature"].get<double>();
  if (in_meta.contains("model_digest") && in_meta["model_digest"].is_string() && in_meta["model_digest"] != l.digest)
    cli::warn(reader.name() + ": rollouts come from a model of another shape (digest " +
              in_meta["model_digest"].get<std::string>() + ", this model " + l.digest + ")");

  format::Header h;
  h.producer = run.producer;
  h.meta = in_meta;
  h.meta["temperature"] = temperature;
  h.meta["scored"] = {{"model_digest", l.digest}, {"dtype", run.dtype}};
  Outputs o(run, l, std::move(h));

  cli::Progress progress("score", 0, "tok");
  std::vector<format::RolloutRecord> batch;
  auto flush_batch = [&] {
    if (batch.empty()) return;
    std::vector<ScoreRequest> reqs;
    int64_t tokens = 0;
    for (const auto& r : batch) {
      reqs.push_back({to_i64(r.prompt_tokens), to_i64(r.response_tokens)});
      tokens += static_cast<int64_t>(r.prompt_tokens.size() + r.response_tokens.size());
    }
    std::vector<Scored> sc = score(l.model, reqs, temperature, o.routing());
    for (size_t i = 0; i < batch.size(); ++i) {
      batch[i].prev_logprobs = std::move(batch[i].logprobs);
      batch[i].logprobs = std::move(sc[i].logprobs);
      o.write(batch[i], std::move(sc[i].routing));
    }
    o.flush();
    progress.add(static_cast<int64_t>(batch.size()), tokens);
    batch.clear();
  };
  format::RolloutRecord rec;
  while (reader.next(rec)) {
    if (rec.prompt_tokens.empty())
      throw Error(reader.name() + ": offset " + std::to_string(reader.offset()) + ": record " + std::to_string(rec.id) +
                  " has no prompt tokens");
    batch.push_back(std::move(rec));
    rec = format::RolloutRecord{};
    if (static_cast<int64_t>(batch.size()) >= run.batch_size) flush_batch();
  }
  flush_batch();
  progress.finish();
  o.finish();
  cli::info("re-scored " + std::to_string(o.writer.count()) + " rollouts");
}

}  // namespace moe::rollout
