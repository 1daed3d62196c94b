#include "import_cmd.h"

#include <CLI/CLI.hpp>

#include "moe/cli/app.h"
#include "moe/engine/import.h"
#include "moe/format/stream.h"
#include "moe/io/error.h"
#include "moe/model/config.h"

CLI::App* add_import_command(CLI::App& app, ImportArgs& a) {
  CLI::App* c = app.add_subcommand("import", "rollouts from SGLang, vLLM, verl or plain JSONL as moekit rollout/routing streams");
  c->add_option("--from", a.from, "the input's format")->required()->check(CLI::IsMember({"sglang", "vllm", "verl", "jsonl"}));
  c->add_option("file", a.input, "engine output ('-' or none = stdin; verl: a directory of .npy files or a .safetensors file)");
  c->add_option("-o,--output", a.output, "rollout stream ('-' = stdout)");
  c->add_option("--routing-out", a.routing_out, "also write the routed experts as a routing stream");
  c->add_option("-m,--model", a.model, "model dir (config.json: layers, experts, top-k, vocabulary)")->required();
  c->add_option("--temperature", a.temperature, "temperature the engine computed the log-probs at (vLLM's default raw logprobs: 1)")
      ->required()
      ->check(CLI::PositiveNumber);
  c->add_flag("--no-logprobs", a.no_logprobs, "accept records without log-probs (written empty)");
  c->add_flag("--prefix-omitted", a.prefix_omitted, "accept routing that leaves out a prompt prefix (rows aligned to the end)");
  c->add_option("--engine-layers", a.engine_layers, "the routing's layer axis: every model layer (all), MoE layers only (moe), or auto")
      ->check(CLI::IsMember({"auto", "all", "moe"}))
      ->capture_default_str();
  c->add_flag("-v,--verbose", a.verbose, "more messages");
  c->add_flag("-q,--quiet", a.quiet, "no summary on stderr");
  return c;
}

int run_import(const ImportArgs& a, int argc, char** argv) {
  moe::cli::set_verbosity(a.verbose, a.quiet);
  const moe::model::ModelConfig mc = moe::model::load_config(a.model + "/config.json");
  moe::engine::ImportOptions o;
  o.from = a.from;
  o.temperature = a.temperature;
  o.require_logprobs = !a.no_logprobs;
  o.prefix_omitted = a.prefix_omitted;
  o.layers = moe::engine::parse_layer_axis(a.engine_layers);
  o.tokenizer_json = a.model + "/tokenizer.json";
  o.producer = moe::format::make_producer("moe-data", argc, argv);
  if (!a.routing_out.empty() && a.routing_out == a.output) throw moe::UsageError("-o and --routing-out name the same file");
  moe::io::Output out(a.output);
  std::unique_ptr<moe::io::Output> rout;
  if (!a.routing_out.empty()) rout = std::make_unique<moe::io::Output>(a.routing_out);
  moe::engine::Importer imp(mc, o, out, rout.get());
  auto sink = [&](moe::engine::EngineRecord& r) { imp.add(r); };
  if (a.from == "sglang") moe::engine::read_sglang(a.input, sink);
  else if (a.from == "vllm") moe::engine::read_vllm(a.input, sink);
  else if (a.from == "verl") moe::engine::read_verl(a.input, sink);
  else moe::engine::read_jsonl(a.input, sink);
  imp.finish();  // closes the routing output first
  out.close();
  moe::cli::info("imported " + std::to_string(imp.count()) + " " + a.from + " records" +
                 (rout ? " with routing for " + std::to_string(imp.routed_positions()) + " positions" : ""));
  return moe::cli::kExitOk;
}
