// run_eval: greedy and sampled generation over prompt datasets (lib/rollout generate()), scored by the
// task checkers of lib/reward.
#include <msgpack.hpp>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>

#include "moe/cli/app.h"
#include "moe/eval/eval.h"
#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/model/config.h"
#include "moe/model/qwen3_moe.h"
#include "moe/rollout/generate.h"
#include "moe/rollout/policy.h"
#include "moe/rollout/prompts.h"
#include "moe/tokenizer/stop_strings.h"

namespace moe::eval {
namespace {

using rollout::Prompt;
using rollout::to_i32;

std::vector<Prompt> read_prompt_set(const std::string& path, const rollout::PromptFormat& fmt,
                                    const tokenizer::Tokenizer& tok) {
  std::vector<Prompt> prompts = rollout::read_prompts(path, fmt, tok);
  if (prompts.empty()) throw Error((path == "-" || path.empty() ? std::string("<stdin>") : path) + ": no prompts");
  return prompts;
}

void check(const EvalRun& run) {
  if (run.data.empty()) throw UsageError("no --data file");
  if (std::count(run.data.begin(), run.data.end(), "-") + std::count(run.data.begin(), run.data.end(), "") > 1)
    throw UsageError("--data: standard input ('-') can be read only once");
  if (run.samples < 0) throw UsageError("--samples must be >= 0");
  if (run.max_new_tokens < 1) throw UsageError("--max-new-tokens must be >= 1");
  if (run.batch_size < 1) throw UsageError("--batch-size must be >= 1");
  if (!(run.temperature > 0)) throw UsageError("--temperature must be > 0");
  if (!(run.top_p > 0 && run.top_p <= 1)) throw UsageError("--top-p must be in (0, 1]");
  if (run.top_k < 0) throw UsageError("--top-k must be >= 0");
  if (run.reward.task == reward::Task::keep) throw UsageError("--task must be countdown or math");
  if (run.json && run.markdown) throw UsageError("--json and --markdown exclude each other");
}

std::string packed_eval_key(const std::string& dataset, const char* decode) {
  std::map<std::string, std::string> m = {{"dataset", dataset}, {"decode", decode}};
  msgpack::sbuffer sb;
  msgpack::pack(sb, m);
  return std::string(sb.data(), sb.size());
}

// A row's name: the path as given, "<stdin>" for standard input.
std::string dataset_name(const std::string& path) { return path.empty() || path == "-" ? "<stdin>" : path; }

}  // namespace

EvalResult run_eval(const EvalRun& run) {
  check(run);
  rollout::Policy policy = rollout::load_policy(run.model_dir, run.device, run.dtype);
  model::Qwen3Moe& m = policy.model;
  const tokenizer::Tokenizer& tok = policy.tok;
  const std::string& digest = policy.digest;

  // Every dataset is read (and checked) before the first token is generated.
  std::vector<std::vector<Prompt>> sets;
  rollout::PromptFormat fmt;
  fmt.key = run.prompt_key;
  fmt.chat = run.chat;
  fmt.thinking = !run.no_thinking;
  fmt.vocab_size = m->config().vocab_size;
  for (const auto& path : run.data) {
    sets.push_back(read_prompt_set(path, fmt, tok));
    rollout::check_prompt_lengths(sets.back(), path, m->config().max_position_embeddings);
  }
  // A payload the checker cannot use fails now, not after generating everything before it: the checkers
  // look at the payload before the response.
  for (size_t d = 0; d < sets.size(); ++d)
    for (const Prompt& p : sets[d]) {
      format::RolloutRecord probe;
      probe.task = p.task;
      try {
        reward::score_record(probe, run.reward);
      } catch (const Error& e) {
        throw Error(dataset_name(run.data[d]) + ":" + std::to_string(p.lineno) + ": " + e.what());
      }
    }

  io::Output out(run.output);  // opened early: a bad path fails before the work

  const int64_t k = run.samples;
  rollout::GenerateOptions greedy_opt;
  greedy_opt.sampling.greedy = true;
  greedy_opt.sampling.temperature = run.temperature;  // log-probs of every record under one policy
  greedy_opt.max_new_tokens = run.max_new_tokens;
  greedy_opt.eos_id = tok.eos_id();
  greedy_opt.eos_ids = tok.stop_ids();
  const tokenizer::StopStrings stops(tok, run.stop);
  if (!stops.empty()) greedy_opt.stop = [&stops](const std::vector<int64_t>& ids) { return stops.hit(ids); };
  greedy_opt.seed = run.seed;
  rollout::GenerateOptions sample_opt = greedy_opt;
  sample_opt.sampling.greedy = false;
  sample_opt.sampling.top_p = run.top_p;
  sample_opt.sampling.top_k = run.top_k;

  EvalResult res;
  res.k = k;
  res.settings = {{"model", run.model_dir},       {"model_digest", digest},
                  {"task", reward::task_name(run.reward.task)},
                  {"temperature", run.temperature}, {"top_p", run.top_p},
                  {"top_k", run.top_k},             {"max_new_tokens", run.max_new_tokens},
                  {"seed", run.seed},               {"dtype", run.dtype}};
  if (run.reward.task == reward::Task::math) res.settings["answer_key"] = run.reward.answer_key;
  res.overall.name = "overall";

  std::unique_ptr<io::Output> rout;
  std::unique_ptr<format::RolloutWriter> writer;
  if (!run.rollouts_out.empty()) {
    nlohmann::json datasets = nlohmann::json::array();
    uint64_t first = 0;
    for (size_t d = 0; d < sets.size(); ++d) {
      datasets.push_back({{"name", dataset_name(run.data[d])}, {"first_group", first}, {"prompts", sets[d].size()}});
      first += sets[d].size();
    }
    format::Header h;
    h.producer = run.producer;
    h.meta = {{"vocab_size", m->config().vocab_size},
              {"model_digest", digest},
              {"eos_id", tok.eos_id()},
              {"eos_ids", tok.stop_ids()},
              {"stop", run.stop},
              {"pad_id", tok.pad_id()},
              {"temperature", run.temperature},
              {"top_p", run.top_p},
              {"top_k", run.top_k},
              {"greedy", false},
              {"max_new_tokens", run.max_new_tokens},
              {"samples_per_prompt", k + 1},
              {"seed", run.seed},
              {"dtype", run.dtype},
              {"prompt_key", run.prompt_key},
              {"reward", run.reward.to_json()},
              {"eval", {{"k", k}, {"greedy_sample", 0}, {"datasets", datasets}}}};
    rout = std::make_unique<io::Output>(run.rollouts_out);
    writer = std::make_unique<format::RolloutWriter>(*rout, h);
  }

  const auto t0 = std::chrono::steady_clock::now();
  int64_t total_tokens = 0;
  uint64_t group_base = 0;  // record groups count prompts over all datasets
  const int64_t per_prompt = 1 + k;
  const int64_t prompts_per_batch = std::max<int64_t>(1, run.batch_size / std::max<int64_t>(1, k));
  for (size_t d = 0; d < sets.size(); ++d) {
    const std::vector<Prompt>& prompts = sets[d];
    DatasetScore score;
    score.name = dataset_name(run.data[d]);
    const std::string eval_greedy = packed_eval_key(score.name, "greedy");
    const std::string eval_sample = packed_eval_key(score.name, "sample");
    cli::Progress progress("eval " + score.name, static_cast<int64_t>(prompts.size()) * per_prompt, "tok");
    for (size_t first = 0; first < prompts.size(); first += prompts_per_batch) {
      const size_t last = std::min(prompts.size(), first + static_cast<size_t>(prompts_per_batch));
      // Random streams are numbered within the dataset, so a dataset's row does not depend on the others.
      std::vector<rollout::Request> greq, sreq;
      for (size_t p = first; p < last; ++p) {
        const uint64_t base = static_cast<uint64_t>(p) * per_prompt;
        greq.push_back({base, prompts[p].tokens});
        for (int64_t s = 1; s <= k; ++s) sreq.push_back({base + s, prompts[p].tokens});
      }
      std::vector<rollout::Generation> gg = rollout::generate(m, greq, greedy_opt);
      std::vector<rollout::Generation> sg;
      if (k > 0) sg = rollout::generate(m, sreq, sample_opt);

      int64_t new_tokens = 0;  // of this batch
      for (size_t p = first; p < last; ++p) {
        const Prompt& pr = prompts[p];
        const uint64_t group = group_base + p;
        auto make = [&](rollout::Generation& g, uint32_t sample) {
          format::RolloutRecord rec;
          rec.id = group * per_prompt + sample;
          rec.group = group;
          rec.sample = sample;
          rec.prompt_tokens = to_i32(pr.tokens);
          rec.response_tokens = to_i32(g.tokens);
          rec.logprobs = std::move(g.logprobs);
          rec.finish_reason = g.finish_reason;
          rec.prompt_text = pr.text;
          rec.response_text = stops.cut(tok.decode(g.tokens, /*skip_special=*/true));
          rec.task = pr.task;
          rec.extra.emplace_back("eval", sample == 0 ? eval_greedy : eval_sample);
          new_tokens += static_cast<int64_t>(g.tokens.size());
          return rec;
        };
        format::RolloutRecord greedy = make(gg[p - first], 0);
        std::vector<format::RolloutRecord> sampled;
        for (int64_t s = 1; s <= k; ++s) sampled.push_back(make(sg[(p - first) * k + (s - 1)], static_cast<uint32_t>(s)));
        try {
          score_prompt(&greedy, sampled, run.reward, score);
        } catch (const Error& e) {
          throw Error(score.name + ":" + std::to_string(pr.lineno) + ": " + e.what());
        }
        if (writer) {
          writer->write(greedy);
          for (const auto& r : sampled) writer->write(r);
        }
      }
      if (writer) writer->flush();
      progress.add(static_cast<int64_t>(last - first) * per_prompt, new_tokens);
      total_tokens += new_tokens;
    }
    progress.finish();
    group_base += prompts.size();
    res.overall.merge(score);
    res.datasets.push_back(std::move(score));
  }
  if (writer) {
    writer->finish();
    rout->close();
  }

  const std::string text = run.json ? result_json(res).dump() + "\n" : format_table(res, run.markdown);
  out.write(text);
  out.close();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  char buf[96];
  std::snprintf(buf, sizeof buf, "%lld tokens in %.1f s, %.0f tokens/s", static_cast<long long>(total_tokens), secs,
                secs > 0 ? static_cast<double>(total_tokens) / secs : 0.0);
  cli::info("evaluated " + std::to_string(res.overall.prompts) + (res.overall.prompts == 1 ? " prompt" : " prompts") +
            " (greedy + " + std::to_string(k) + (k == 1 ? " sample" : " samples") + " each): " + buf);
  return res;
}

}  // namespace moe::eval
