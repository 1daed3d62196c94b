// The JSON Lines readers: the prompt reader of moe-rollout and moe-eval (prompt text through the tokenizer,
// every other key as the task payload) and the generic reader. Every prompt read is written as a rollout
// record and read back, so a payload the reader accepts never makes a stream its own readers reject.
#include <cstdint>

#include "fuzz_common.h"
#include "moe/format/rollout.h"
#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/io/jsonl.h"
#include "moe/rollout/prompts.h"
#include "moe/tokenizer/tokenizer.h"

using namespace moe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::MemFile f(data, size);
  try {
    io::JsonlReader r(f.path());
    nlohmann::json j;
    while (r.next(j)) (void)j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } catch (const Error&) {
  }
  static const tokenizer::Tokenizer tok(tokenizer::CharTokenizer::default_vocab());
  std::vector<rollout::Prompt> prompts;
  try {
    prompts = rollout::read_prompts(f.path(), rollout::PromptFormat{}, tok);
    rollout::check_prompt_lengths(prompts, f.path(), 512);
  } catch (const Error&) {
    return 0;
  }
  fuzz::MemFile out_file;
  {
    io::Output out(out_file.path());
    format::Header h;
    h.meta = {{"vocab_size", tok.size()}};
    format::RolloutWriter w(out, h);
    uint64_t id = 0;
    for (const auto& p : prompts) {
      format::RolloutRecord rec;
      rec.id = id++;
      rec.prompt_tokens.assign(p.tokens.begin(), p.tokens.end());
      rec.prompt_text = p.text;
      rec.task = p.task;
      w.write(rec);  // must not throw: the payload passed the reader's limits
    }
    w.finish();
    out.close();
  }
  io::Input in(out_file.path());
  format::RolloutReader rr(in);
  format::RolloutRecord rec;
  size_t n = 0;
  while (rr.next(rec)) {
    if (rec.task != prompts[n].task) __builtin_trap();
    ++n;
  }
  if (n != prompts.size()) __builtin_trap();
  return 0;
}
