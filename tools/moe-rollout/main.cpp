// moe-rollout: sample G responses per prompt with a KV cache, recording log-probs and routing; or, with
// --score, re-score existing rollouts in one teacher-forced forward per batch.
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>

#include "moe/model/qwen3_moe.h"
#include "moe/cli/app.h"
#include "moe/dist/communicator.h"
#include "moe/format/stream.h"
#include "moe/io/error.h"
#include "moe/rollout/run.h"

int main(int argc, char** argv) {
  moe::cli::Common common;
  moe::rollout::RolloutRun run;
  moe::cli::DistOptions dist;
  bool score = false;
  std::vector<CLI::Option*> sample_only;  // options that make no sense with --score
  CLI::Option* temperature = nullptr;
  return moe::cli::run_tool(
      "moe-rollout", argc, argv,
      [&](CLI::App& app) {
        app.description(
            "Sample responses to prompt JSONL (or re-score a rollout stream with --score) and write a rollout "
            "stream; --routing-out also writes the routing of every forwarded position.");
        moe::cli::add_model(app, common);
        app.add_option("input", run.input, "prompt JSONL, or a rollout stream with --score ('-' = stdin)");
        moe::cli::add_output(app, common, "rollout stream ('-' = stdout)");
        sample_only.push_back(app.add_option("-G,--samples", run.samples, "responses per prompt")->capture_default_str());
        sample_only.push_back(app.add_option("--max-new-tokens", run.gen.max_new_tokens, "stop a response after this many tokens")
            ->capture_default_str());
        temperature = app.add_option("--temperature", run.gen.sampling.temperature, "sampling temperature (> 0); log-probs are under softmax(logits/T)")
            ->capture_default_str();
        sample_only.push_back(app.add_option("--top-p", run.gen.sampling.top_p, "nucleus sampling mass in (0, 1]")->capture_default_str());
        sample_only.push_back(app.add_option("--top-k", run.gen.sampling.top_k, "sample among the k most likely tokens (0 = all)")
            ->capture_default_str());
        sample_only.push_back(app.add_flag("--greedy", run.gen.sampling.greedy, "argmax decoding"));
        moe::cli::add_seed(app, common);
        app.add_option("--batch-size", run.batch_size, "sequences per forward batch")->capture_default_str();
        app.add_option("--dtype", run.dtype, "model dtype: f32 or bf16")->capture_default_str();
        moe::cli::add_device(app, common);
        moe::cli::add_threads(app, common);
        app.add_option("--routing-out", run.routing_out, "write the routing stream here");
        app.add_option("--routing-probs", run.routing_probs, "probability precision in the routing stream: f16, f32, none")
            ->capture_default_str();
        sample_only.push_back(app.add_option("--prompt-key", run.prompt_key, "JSONL key holding the prompt text")->capture_default_str());
        sample_only.push_back(app.add_flag("--chat", run.chat, "render prompt text as one user message of the model's chat template (ChatML)"));
        sample_only.push_back(app.add_flag("--no-thinking", run.no_thinking, "chat: Qwen3's enable_thinking=False (implies --chat)"));
        sample_only.push_back(app.add_option("--stop", run.stop, "end a response when its text contains this string (repeatable)"));
        sample_only.push_back(app.add_flag(
            "--follow", run.follow,
            "read prompt batches ended by blank lines as they arrive; write one rollout stream per batch, reloading "
            "the model dir's weights first when its checkpoint changed; with --routing-out, one routing stream per "
            "batch, written after that batch's rollout stream"));
        app.add_flag("--score", score, "re-score the rollout stream on input by teacher forcing");
        moe::cli::add_dist(app, dist);
        moe::cli::add_quiet_verbose(app, common);
      },
      [&]() -> int {
        moe::cli::set_verbosity(common.verbose, common.quiet);
        moe::model::set_threads(common.threads);
        run.model_dir = common.model;
        run.output = common.output;
        run.device = common.device;
        run.gen.seed = common.seed;
        run.producer = moe::format::make_producer("moe-rollout", argc, argv);
        run.dist = moe::dist::dist_config(dist);
        if (run.no_thinking) run.chat = true;
        if (score) {
          for (CLI::Option* o : sample_only)
            if (o->count() > 0) throw moe::UsageError(o->get_name() + " does not apply to --score");
          run.temperature_given = temperature->count() > 0;
          moe::rollout::run_score(run);
        } else {
          moe::rollout::run_sample(run);
        }
        return 0;
      });
}
