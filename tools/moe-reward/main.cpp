// moe-reward: rule-based rewards and group advantages on a rollout stream (man/moe-reward.1).
#include <CLI/CLI.hpp>
#include <cmath>

#include "moe/cli/app.h"
#include "moe/format/rollout.h"
#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/reward/scorer.h"

namespace {

// "L_MAX,L_C" -> the two integers; throws moe::UsageError.
void parse_overlong(const std::string& s, moe::reward::RewardOptions& o) {
  size_t comma = s.find(',');
  try {
    if (comma == std::string::npos) throw std::invalid_argument("no comma");
    size_t n1 = 0, n2 = 0;
    long long lmax = std::stoll(s.substr(0, comma), &n1), lc = std::stoll(s.substr(comma + 1), &n2);
    if (n1 != comma || n2 != s.size() - comma - 1) throw std::invalid_argument("trailing text");
    if (lc <= 0 || lc > lmax) throw std::invalid_argument("range");
    o.overlong_max = lmax;
    o.overlong_cache = lc;
  } catch (const std::exception&) {
    throw moe::UsageError("--overlong: expected L_MAX,L_C with 0 < L_C <= L_MAX, got '" + s + "'");
  }
}

}  // namespace

int main(int argc, char** argv) {
  moe::cli::Common common;
  std::string input = "-", task, adv = "grpo", overlong;
  bool follow = false;
  moe::reward::RewardOptions opts;
  return moe::cli::run_tool(
      "moe-reward", argc, argv,
      [&](CLI::App& app) {
        app.description("Score the responses of a rollout stream and compute group advantages.");
        app.add_option("rollouts", input, "rollout stream ('-' = stdin)")->capture_default_str();
        app.add_option("--task", task, "countdown, math, or keep (use the rewards already in the records)")
            ->required()
            ->check(CLI::IsMember({"countdown", "math", "keep"}));
        app.add_option("--format-reward", opts.format_reward, "reward of a well-formed but wrong answer")
            ->check(CLI::Range(-1e9, 1e9))
            ->capture_default_str();
        app.add_option("--answer-key", opts.answer_key, "task payload key of the reference answer (math)")
            ->capture_default_str();
        app.add_option("--adv", adv, "advantage estimator: grpo, drgrpo, rloo")
            ->check(CLI::IsMember({"grpo", "drgrpo", "rloo"}))
            ->capture_default_str();
        app.add_flag("--drop-uniform-groups", opts.drop_uniform_groups,
                     "do not write groups whose rewards are all equal (DAPO dynamic sampling)");
        app.add_option("--overlong", overlong, "L_MAX,L_C: DAPO overlong penalty on the response length in tokens");
        app.add_flag("--follow", follow,
                     "the input holds rollout streams one after another (e.g. from moe-rollout --follow): write one "
                     "rewarded stream per input stream");
        moe::cli::add_output(app, common);
        moe::cli::add_quiet_verbose(app, common);
      },
      [&] {
        moe::cli::set_verbosity(common.verbose, common.quiet);
        opts.task = moe::reward::parse_task(task);
        opts.adv = moe::reward::parse_adv_kind(adv);
        if (!overlong.empty()) parse_overlong(overlong, opts);

        moe::io::Input in(input);
        moe::io::Output out(common.output);
        // --follow: one output stream per input stream, each written whole (trailer and flush) before the
        // next input stream is read; waiting for it ends (quietly, as a broken pipe) when the next stage has
        // ended, so that the stages before this one end too.
        if (follow) in.watch(out);
        moe::format::RolloutReader reader(in, follow);
        for (int64_t stream_no = 1;; ++stream_no) {
          try {
            if (stream_no > 1 && !reader.next_stream()) break;
            const moe::format::Header& ih = reader.header();
            moe::format::Header oh;
            oh.kind = "rollout";
            oh.version = moe::format::kRolloutVersion;
            oh.producer = moe::format::make_producer("moe-reward", argc, argv);
            oh.meta = ih.meta.is_object() ? ih.meta : nlohmann::json::object();
            oh.meta["reward"] = opts.to_json();
            oh.meta["reward"]["input_producer"] = ih.producer;

            moe::format::RolloutWriter writer(out, oh);
            // Batches end at group boundaries, so a downstream stage sees whole groups early.
            const uint64_t kFlushRecords = 256;
            uint64_t pending = 0;
            auto emit = [&](moe::format::RolloutRecord& r) {
              writer.write(r);
              ++pending;
            };
            moe::reward::GroupStage stage(opts);
            moe::format::RolloutRecord rec;
            for (;;) {
              rec = moe::format::RolloutRecord{};  // no field of the previous record may leak into this one
              if (!reader.next(rec)) break;
              const uint64_t id = rec.id;
              try {
                stage.push(std::move(rec), emit);
              } catch (const moe::Error& e) {
                throw moe::Error(reader.name() + ": offset " + std::to_string(reader.offset()) + ": record id " +
                                 std::to_string(id) + ": " + e.what());
              }
              if (pending >= kFlushRecords) {
                writer.flush();
                pending = 0;
              }
            }
            stage.finish(emit);
            writer.finish();
            moe::cli::info(stage.summary().to_string(opts.task));
            if (!follow) break;
          } catch (const moe::Error& e) {
            if (!follow) throw;
            throw moe::Error("stream " + std::to_string(stream_no) + ": " + e.what());
          }
        }
        out.close();
        return int(moe::cli::kExitOk);
      });
}
