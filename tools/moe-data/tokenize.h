// moe-data tokenize / detokenize: a model directory's tokenizer over JSON Lines (no libtorch).
#pragma once
#include <string>

#include "moe/cli/app.h"

namespace CLI {
class App;
}

namespace moe_data {

struct TokenizeArgs {
  std::string input = "-";
  std::string key;           // tokenize: text key (default "prompt"); detokenize: ids key (default "ids")
  std::string out_key;       // tokenize: "ids" ("n_tokens" with --count); detokenize: "text"
  bool count = false;        // tokenize: the number of tokens instead of the ids
  bool skip_special = false; // detokenize: drop special tokens
};

// Adds the two subcommands; run_tokenize() runs whichever was parsed (returns -1 if neither).
void add_tokenize_commands(CLI::App& app, TokenizeArgs& a, moe::cli::Common& c, CLI::App*& tok, CLI::App*& detok);
int run_tokenize(bool detokenize, const TokenizeArgs& a, const moe::cli::Common& c);

}  // namespace moe_data
