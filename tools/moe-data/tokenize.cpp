// moe-data tokenize / detokenize (man/moe-data.1).
#include "tokenize.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/io/jsonl.h"
#include "moe/tokenizer/tokenizer.h"

namespace moe_data {

void add_tokenize_commands(CLI::App& app, TokenizeArgs& a, moe::cli::Common& c, CLI::App*& tok, CLI::App*& detok) {
  tok = app.add_subcommand("tokenize", "Add the token ids of a text key to every JSON line (the model dir's tokenizer)");
  detok = app.add_subcommand("detokenize", "Add the text of an ids key to every JSON line (the model dir's tokenizer)");
  for (CLI::App* s : {tok, detok}) {
    moe::cli::add_model(*s, c);
    s->add_option("input", a.input, "JSON Lines ('-' = stdin)")->capture_default_str();
    moe::cli::add_output(*s, c);
    moe::cli::add_quiet_verbose(*s, c);
  }
  tok->add_option("--key", a.key, "key of the text to tokenize (default: prompt)");
  tok->add_flag("--count", a.count, "write the number of tokens (key n_tokens) instead of the ids (key ids)");
  detok->add_option("--key", a.key, "key of the ids to decode (default: ids)");
  detok->add_flag("--skip-special", a.skip_special, "leave special tokens (eos, <|im_end|>, ...) out of the text");
}

int run_tokenize(bool detokenize, const TokenizeArgs& a, const moe::cli::Common& c) {
  using nlohmann::ordered_json;
  const std::string key = !a.key.empty() ? a.key : detokenize ? "ids" : "prompt";
  const std::string out_key = detokenize ? "text" : a.count ? "n_tokens" : "ids";
  const moe::tokenizer::Tokenizer tok = moe::tokenizer::Tokenizer::load_dir(c.model);
  moe::io::Input in(a.input);
  moe::io::Output out(c.output);
  std::string line;
  int64_t lineno = 0, lines = 0, tokens = 0;
  while (in.getline(line)) {
    ++lineno;
    const std::string at = in.name() + ":" + std::to_string(lineno) + ": ";
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    ordered_json j = moe::io::parse_ordered_json(line, at);
    if (!j.is_object()) throw moe::Error(at + "not a JSON object");
    auto it = j.find(key);
    if (it == j.end()) throw moe::Error(at + "no \"" + key + "\" key (see --key)");
    try {
      if (detokenize) {
        if (!it->is_array()) throw moe::Error("\"" + key + "\" is not a list of token ids");
        std::vector<int64_t> ids;
        for (const auto& x : *it) {
          if (!x.is_number_integer() || x.get<int64_t>() < 0) throw moe::Error("\"" + key + "\": " + x.dump() + " is not a token id");
          ids.push_back(x.get<int64_t>());
        }
        tokens += static_cast<int64_t>(ids.size());
        j[out_key] = tok.decode(ids, a.skip_special);
      } else {
        if (!it->is_string()) throw moe::Error("\"" + key + "\" is not a string");
        std::vector<int64_t> ids = tok.encode(it->get<std::string>());
        tokens += static_cast<int64_t>(ids.size());
        if (a.count)
          j[out_key] = ids.size();
        else
          j[out_key] = ids;
      }
    } catch (const moe::Error& e) {
      throw moe::Error(at + e.what());
    }
    out.write(j.dump() + "\n");
    ++lines;
  }
  out.close();
  moe::cli::info((detokenize ? "detokenized " : "tokenized ") + std::to_string(lines) + " lines, " + std::to_string(tokens) + " tokens");
  return moe::cli::kExitOk;
}

}  // namespace moe_data
