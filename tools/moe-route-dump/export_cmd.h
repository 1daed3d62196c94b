// `moe-route-dump export`: rollout + routing streams in verl's, SGLang's or plain JSONL form
// (man/moe-route-dump.1).
#pragma once
#include <string>

namespace CLI {
class App;
}

struct ExportArgs {
  std::string to, rollouts = "-", routing, model, output = "-";
};

CLI::App* add_export_command(CLI::App& app, ExportArgs& a);
int run_export(const ExportArgs& a);
