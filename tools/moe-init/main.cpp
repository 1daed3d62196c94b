// moe-init: writes a randomly initialised Qwen3-MoE model dir (config.json, model.safetensors, tokenizer.json).
#include <ATen/Parallel.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "moe/cli/app.h"
#include "moe/io/error.h"
#include "moe/model/config.h"
#include "moe/model/qwen3_moe.h"
#include "moe/tokenizer/char_tokenizer.h"

namespace {
struct Options {
  moe::cli::Common common;
  std::string preset;
  std::string config;
  std::string tokenizer;
  std::string dtype = "f32";
  bool force = false;
};

std::string millions(double n) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f M", n / 1e6);
  return buf;
}

int run(Options& o) {
  using namespace moe;
  cli::set_verbosity(o.common.verbose, o.common.quiet);
  if (o.common.output.empty() || o.common.output == "-") throw UsageError("-o DIR is required (a model dir cannot go to stdout)");
  const std::string& dir = o.common.output;
  struct stat st;
  if (::stat(dir.c_str(), &st) == 0) {
    if (!o.force) throw Error(dir + ": already exists (use --force to replace it)");
    if (!S_ISDIR(st.st_mode)) throw Error(dir + ": exists and is not a directory");
  }
  c10::ScalarType dtype = model::parse_dtype(o.dtype);
  moe::model::set_threads(o.common.threads);

  tokenizer::CharTokenizer tok =
      o.tokenizer.empty() ? tokenizer::CharTokenizer::default_vocab() : tokenizer::CharTokenizer::load(o.tokenizer);
  model::ModelConfig cfg;
  if (!o.config.empty()) {
    cfg = model::load_config(o.config);
    // The embedding may have more rows than the tokenizer has tokens (real models pad their vocabularies),
    // never fewer; the special ids must agree.
    if (cfg.vocab_size < tok.size())
      throw Error(o.config + ": vocab_size " + std::to_string(cfg.vocab_size) + " is smaller than the tokenizer's " +
                  std::to_string(tok.size()) + " tokens");
    if (cfg.pad_token_id >= 0 && cfg.pad_token_id != tok.pad_id())
      throw Error(o.config + ": pad_token_id " + std::to_string(cfg.pad_token_id) + " differs from the tokenizer's " + std::to_string(tok.pad_id()));
    if (cfg.eos_token_id >= 0 && cfg.eos_token_id != tok.eos_id())
      throw Error(o.config + ": eos_token_id " + std::to_string(cfg.eos_token_id) + " differs from the tokenizer's " + std::to_string(tok.eos_id()));
  } else {
    cfg = model::preset_config(o.preset.empty() ? "tiny" : o.preset, tok.size());
  }
  cfg.pad_token_id = tok.pad_id();
  cfg.eos_token_id = tok.eos_id();
  if (tok.bos_id() >= 0) cfg.bos_token_id = tok.bos_id();

  model::Qwen3Moe m(cfg);
  model::init_weights(m, o.common.seed);
  m->to(dtype);

  double total = 0, expert = 0;
  for (auto& [name, t] : model::named_weights(m)) {
    total += t.numel();
    if (name.find(".mlp.experts.") != std::string::npos) expert += t.numel();
  }
  double active = total - expert + (cfg.num_experts ? expert * cfg.num_experts_per_tok / cfg.num_experts : 0);
  model::save_model(m, dir, {{"tokenizer.json", tok.to_json()}});
  cli::info("wrote " + dir + ": " + millions(total) + " parameters (" + millions(active) + " active), " +
            std::to_string(cfg.num_hidden_layers) + " layers, " + std::to_string(cfg.num_experts) + " experts top-" +
            std::to_string(cfg.num_experts_per_tok) + ", vocab " + std::to_string(cfg.vocab_size) + ", digest " +
            model::config_digest(cfg));
  return cli::kExitOk;
}
}  // namespace

int main(int argc, char** argv) {
  Options o;
  return moe::cli::run_tool(
      "moe-init", argc, argv,
      [&](CLI::App& app) {
        app.description("Write a randomly initialised Qwen3-MoE model dir (config.json, model.safetensors, tokenizer.json).");
        auto* p = app.add_option("--preset", o.preset, "model shape: tiny (CPU demos, default), top1 or fine (routing-regime studies) or small (benchmarks)")
                      ->check(CLI::IsMember({"tiny", "top1", "fine", "small"}));
        auto* c = app.add_option("--config", o.config, "a qwen3_moe config.json to use instead of a preset");
        p->excludes(c);
        app.add_option("--tokenizer", o.tokenizer, "char tokenizer.json (default: built-in printable ASCII vocabulary)");
        app.add_option("--dtype", o.dtype, "weight dtype written: f32, bf16 or f16")->capture_default_str();
        app.add_flag("--force", o.force, "replace an existing DIR (atomically)");
        moe::cli::add_output(app, o.common, "model directory to create (required)");
        moe::cli::add_seed(app, o.common);
        moe::cli::add_threads(app, o.common);
        moe::cli::add_quiet_verbose(app, o.common);
      },
      [&] { return run(o); });
}
