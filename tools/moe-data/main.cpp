// moe-data: generate task datasets as prompt JSONL (man/moe-data.1).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "import_cmd.h"
#include "moe/cli/app.h"
#include "moe/io/file.h"
#include "moe/reward/countdown.h"
#include "tokenize.h"

namespace {

struct CountdownArgs {
  int64_t n = 0;
  int numbers = 3;
  int64_t max_number = 20, max_target = 100;
  bool solutions = false, unique = false;
  std::string split = "train";
  int test_percent = 10;
};

int run_countdown(const CountdownArgs& a, const moe::cli::Common& c) {
  moe::reward::CountdownGenOptions o;
  o.count = a.numbers;
  o.max_number = a.max_number;
  o.max_target = a.max_target;
  o.test = a.split == "test";
  o.test_percent = a.test_percent;
  o.unique = a.unique;
  moe::reward::CountdownGenerator gen(o, c.seed);
  moe::io::Output out(c.output);
  std::string line;
  for (int64_t i = 0; i < a.n; ++i) {
    moe::reward::CountdownProblem p = gen.next();
    nlohmann::ordered_json j;
    j["prompt"] = moe::reward::countdown_prompt(p.numbers, p.target);
    j["numbers"] = p.numbers;
    j["target"] = p.target;
    if (a.solutions) j["solution"] = p.solution;
    line = j.dump();
    line += '\n';
    out.write(line);
  }
  out.close();
  moe::cli::info("wrote " + std::to_string(a.n) + " countdown problems (" + a.split + " split, seed " +
                 std::to_string(c.seed) + ")");
  return moe::cli::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  moe::cli::Common common;
  CountdownArgs cd;
  CLI::App* countdown = nullptr;
  ImportArgs imp;
  CLI::App* import_cmd = nullptr;
  moe_data::TokenizeArgs tk;
  CLI::App *tokenize = nullptr, *detokenize = nullptr;
  return moe::cli::run_tool(
      "moe-data", argc, argv,
      [&](CLI::App& app) {
        app.description("Generate task datasets as prompt JSONL (one problem per line); tokenize and detokenize "
                        "JSON Lines; import engine rollouts.");
        app.require_subcommand(1);
        countdown = app.add_subcommand("countdown", "Countdown: reach a target with + - * / over given numbers");
        countdown->add_option("-n,--count", cd.n, "number of problems")->required()->check(CLI::NonNegativeNumber);
        moe::cli::add_seed(*countdown, common);
        countdown->add_option("--numbers", cd.numbers, "numbers per problem")->check(CLI::IsMember({3, 4}))->capture_default_str();
        countdown->add_option("--max-number", cd.max_number, "numbers are drawn from 1..M")
            ->check(CLI::Range(int64_t{1}, int64_t{1000000}))
            ->capture_default_str();
        countdown->add_option("--max-target", cd.max_target, "targets lie in 1..T")
            ->check(CLI::Range(int64_t{1}, int64_t{1} << 40))
            ->capture_default_str();
        countdown->add_flag("--solutions", cd.solutions, "add a reference 'solution' (SFT data)");
        countdown->add_option("--split", cd.split, "train or test: disjoint sets of problems")
            ->check(CLI::IsMember({"train", "test"}))
            ->capture_default_str();
        countdown->add_option("--test-percent", cd.test_percent, "share of all problems in the test split")
            ->check(CLI::Range(1, 99))
            ->capture_default_str();
        countdown->add_flag("--unique", cd.unique, "never repeat a problem (numbers in any order)");
        moe::cli::add_output(*countdown, common);
        moe::cli::add_quiet_verbose(*countdown, common);
        import_cmd = add_import_command(app, imp);
        moe_data::add_tokenize_commands(app, tk, common, tokenize, detokenize);
      },
      [&] {
        moe::cli::set_verbosity(common.verbose, common.quiet);
        if (countdown->parsed()) return run_countdown(cd, common);
        if (import_cmd->parsed()) return run_import(imp, argc, argv);
        if (tokenize->parsed() || detokenize->parsed()) return moe_data::run_tokenize(detokenize->parsed(), tk, common);
        return int(moe::cli::kExitUsage);
      });
}
