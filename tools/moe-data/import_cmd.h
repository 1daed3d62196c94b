// `moe-data import`: rollouts sampled by SGLang, vLLM, verl or any engine (plain JSONL) as moekit rollout
// and routing streams (man/moe-data.1).
#pragma once
#include <string>

namespace CLI {
class App;
}

struct ImportArgs {
  std::string from, input = "-", output = "-", routing_out, model;
  double temperature = 0;
  bool no_logprobs = false, prefix_omitted = false;
  std::string engine_layers = "auto";
  int verbose = 0;
  bool quiet = false;
};

CLI::App* add_import_command(CLI::App& app, ImportArgs& a);
int run_import(const ImportArgs& a, int argc, char** argv);
