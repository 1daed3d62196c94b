#include "export_cmd.h"

#include <CLI/CLI.hpp>
#include <memory>

#include "moe/cli/app.h"
#include "moe/engine/export.h"
#include "moe/io/error.h"

CLI::App* add_export_command(CLI::App& app, ExportArgs& a) {
  CLI::App* c = app.add_subcommand("export", "rollouts and their routing in verl's, SGLang's or plain JSONL form");
  c->add_option("--to", a.to, "output format")->required()->check(CLI::IsMember({"verl", "sglang", "jsonl"}));
  c->add_option("rollouts", a.rollouts, "rollout stream ('-' or none = stdin)");
  c->add_option("--routing", a.routing, "routing stream of those rollouts (joined by id)");
  c->add_option("-m,--model", a.model, "model dir (needed by --to verl and sglang: their layer axis is every model layer)");
  c->add_option("-o,--output", a.output, "output ('-' = stdout; verl: a new directory)");
  return c;
}

int run_export(const ExportArgs& a) {
  moe::engine::ExportOptions o;
  o.to = a.to;
  if (a.to != "jsonl" && a.model.empty())
    throw moe::UsageError("--to " + a.to + " needs the model (-m DIR): the engine's layer axis holds every model layer");
  if (!a.model.empty()) o.model = moe::model::load_config(a.model + "/config.json");
  if ((a.rollouts == "-" || a.rollouts.empty()) && a.routing == "-") throw moe::UsageError("export: at most one of ROLLOUTS and --routing can be stdin");
  moe::io::Input in(a.rollouts);
  std::unique_ptr<moe::io::Input> rin;
  if (!a.routing.empty()) rin = std::make_unique<moe::io::Input>(a.routing);
  const uint64_t n = moe::engine::export_rollouts(in, rin.get(), a.output, o);
  moe::cli::info("exported " + std::to_string(n) + " records as " + a.to);
  return moe::cli::kExitOk;
}
