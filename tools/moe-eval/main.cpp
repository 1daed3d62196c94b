// moe-eval: accuracy of a model on prompt datasets (greedy pass@1, sampled mean@k and pass@k), and
// `moe-eval report`: markdown and plots of train-step metrics (man/moe-eval.1).
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>

#include "moe/model/qwen3_moe.h"
#include "moe/cli/app.h"
#include "moe/eval/eval.h"
#include "moe/eval/report.h"
#include "moe/format/stream.h"
#include "moe/io/error.h"

int main(int argc, char** argv) {
  moe::cli::Common common;
  moe::eval::EvalRun run;
  moe::eval::ReportRun report;
  std::string task;
  CLI::App* report_cmd = nullptr;
  return moe::cli::run_tool(
      "moe-eval", argc, argv,
      [&](CLI::App& app) {
        app.description(
            "Evaluate a model on prompt JSONL datasets: greedy pass@1 and, with k samples at temperature T, mean@k "
            "and pass@k, one row per --data file and overall. 'moe-eval report' summarises and plots train-step "
            "metrics.");
        moe::cli::add_model(app, common, /*required=*/false);
        app.add_option("--data", run.data, "prompt JSONL file (repeat for more: one row each; '-' = stdin)")
            ->allow_extra_args(false);
        app.add_option("--task", task, "checker: countdown or math")->check(CLI::IsMember({"countdown", "math"}));
        app.add_option("-k,--samples", run.samples, "sampled responses per prompt for mean@k and pass@k (0 = greedy only)")
            ->capture_default_str();
        app.add_option("--temperature", run.temperature, "temperature of the sampled responses (> 0)")->capture_default_str();
        app.add_option("--top-p", run.top_p, "nucleus sampling mass in (0, 1]")->capture_default_str();
        app.add_option("--top-k", run.top_k, "sample among the k most likely tokens (0 = all)")->capture_default_str();
        app.add_option("--max-new-tokens", run.max_new_tokens, "stop a response after this many tokens")->capture_default_str();
        app.add_option("--batch-size", run.batch_size, "sequences per forward batch")->capture_default_str();
        app.add_option("--prompt-key", run.prompt_key, "JSONL key holding the prompt text")->capture_default_str();
        app.add_flag("--chat", run.chat, "render prompt text as one user message of the model's chat template (ChatML)");
        app.add_flag("--no-thinking", run.no_thinking, "chat: Qwen3's enable_thinking=False (implies --chat)");
        app.add_option("--stop", run.stop, "end a response when its text contains this string (repeatable)");
        app.add_option("--answer-key", run.reward.answer_key, "JSONL key of the reference answer (math)")->capture_default_str();
        app.add_flag("--json", run.json, "one JSON object instead of the table");
        app.add_flag("--markdown", run.markdown, "the table as a markdown table");
        app.add_option("--rollouts-out", run.rollouts_out, "write every response with its reward as a rollout stream here");
        app.add_option("--dtype", run.dtype, "model dtype: f32 or bf16")->capture_default_str();
        moe::cli::add_seed(app, common);
        moe::cli::add_device(app, common);
        moe::cli::add_threads(app, common);
        moe::cli::add_output(app, common, "table or JSON ('-' = stdout)");
        moe::cli::add_quiet_verbose(app, common);

        report_cmd = app.add_subcommand("report", "markdown summary and PNG plots of moe-train-step metrics JSONL");
        report_cmd->add_option("metrics", report.files, "metrics JSONL files, one run each ('-' = stdin)")->required();
        report_cmd->add_option("-o,--output", report.out_dir, "write DIR/report.md and DIR/*.png (default: markdown on stdout, no plots)");
        report_cmd->add_option("--label", report.labels, "run label, once per file in order (default: file name stems)")
            ->allow_extra_args(false);
        report_cmd->add_option("--metric", report.extra_metrics, "also summarise and plot this key (repeatable)")
            ->allow_extra_args(false);
        report_cmd->add_option("--gnuplot", report.gnuplot, "gnuplot program")->capture_default_str();
        report_cmd->add_flag("--group", report.group,
                             "group runs by label up to its last '/' (e.g. NAME/s1, NAME/s2): runs as thin lines, each "
                             "group's mean as a thick one, and a table of the groups' last values");
        moe::cli::add_quiet_verbose(*report_cmd, common);
      },
      [&]() -> int {
        moe::cli::set_verbosity(common.verbose, common.quiet);
        if (report_cmd->parsed()) {
          moe::eval::run_report(report);
          return 0;
        }
        if (common.model.empty()) throw moe::UsageError("-m/--model is required");
        if (run.data.empty()) throw moe::UsageError("--data is required");
        if (task.empty()) throw moe::UsageError("--task is required (countdown or math)");
        moe::model::set_threads(common.threads);
        run.reward.task = moe::reward::parse_task(task);
        run.model_dir = common.model;
        run.device = common.device;
        run.seed = common.seed;
        run.output = common.output;
        run.producer = moe::format::make_producer("moe-eval", argc, argv);
        if (run.no_thinking) run.chat = true;
        moe::eval::run_eval(run);
        return 0;
      });
}
