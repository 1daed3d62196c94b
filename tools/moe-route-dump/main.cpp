// moe-route-dump: show, summarise and compare routing (and rollout) streams. See man/moe-route-dump.1.
#include <CLI/CLI.hpp>

#include "export_cmd.h"
#include "moe/cli/app.h"
#include "moe/format/route_dump.h"
#include "moe/io/error.h"
#include "moe/io/file.h"

namespace {
// Exit status of `diff --fail-above X` when the token-level mismatch exceeds X.
constexpr int kExitAboveThreshold = 3;
}  // namespace

int main(int argc, char** argv) {
  namespace rd = moe::format::route_dump;
  moe::cli::Common common;
  std::string file = "-", file_b;
  rd::ShowOptions show;
  rd::StatsOptions stats;
  rd::DiffOptions diff;
  double fail_above = -1;
  CLI::App *show_cmd = nullptr, *stats_cmd = nullptr, *diff_cmd = nullptr;
  ExportArgs exp;
  CLI::App* export_cmd = nullptr;

  return moe::cli::run_tool("moe-route-dump", argc, argv, [&](CLI::App& app) {
    app.description("Show, summarise, compare and export moekit routing (and rollout) streams.");
    app.require_subcommand(1);
    app.fallthrough();  // -q/-v also after the subcommand
    moe::cli::add_quiet_verbose(app, common);

    show_cmd = app.add_subcommand("show", "print records as text or JSON lines");
    show_cmd->add_option("file", file, "stream to read ('-' or none = stdin)");
    show_cmd->add_flag("--jsonl", show.jsonl, "one JSON object per record");
    show_cmd->add_flag("--header", show.header_only, "print the header as JSON and stop");
    show_cmd->add_option("--id", show.ids, "only the record with this id (repeatable)")->allow_extra_args(false);
    show_cmd->add_option("--layer", show.layers, "routing: only this model layer (repeatable)")->allow_extra_args(false);

    stats_cmd = app.add_subcommand("stats", "expert load, balance and router entropy per layer");
    stats_cmd->add_option("file", file, "stream to read ('-' or none = stdin)");
    stats_cmd->add_flag("--json", stats.json, "one JSON object instead of a table");

    diff_cmd = app.add_subcommand("diff", "per-layer disagreement of two routing streams");
    diff_cmd->add_option("a", file, "first routing stream ('-' = stdin)")->required();
    diff_cmd->add_option("b", file_b, "second routing stream ('-' = stdin)")->required();
    diff_cmd->add_flag("--json", diff.json, "one JSON object instead of a table");
    diff_cmd->add_option("--fail-above", fail_above, "exit 3 when the share of tokens with a differing layer exceeds X")
        ->check(CLI::Range(0.0, 1.0));

    export_cmd = add_export_command(app, exp);
  }, [&] {
    moe::cli::set_verbosity(common.verbose, common.quiet);
    if (export_cmd->parsed()) return run_export(exp);
    moe::io::Output out("-");
    if (show_cmd->parsed()) {
      moe::io::Input in(file);
      rd::show(in, out, show);
    } else if (stats_cmd->parsed()) {
      moe::io::Input in(file);
      rd::stats(in, out, stats);
    } else {
      if ((file == "-" || file.empty()) && (file_b == "-" || file_b.empty()))
        throw moe::UsageError("diff: at most one of A and B can be stdin");
      moe::io::Input a(file), b(file_b);
      rd::DiffSummary s = rd::diff(a, b, out, diff);
      out.close();
      if (fail_above >= 0 && s.token_mismatch > fail_above) {
        moe::cli::info("token mismatch " + std::to_string(s.token_mismatch) + " exceeds --fail-above " +
                       std::to_string(fail_above));
        return kExitAboveThreshold;
      }
      return int(moe::cli::kExitOk);
    }
    out.close();
    return int(moe::cli::kExitOk);
  });
}
