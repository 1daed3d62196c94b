#include "moe/rollout/policy.h"

#include <c10/util/Exception.h>

#include "moe/io/error.h"
#include "moe/model/config.h"

namespace moe::rollout {

Policy load_policy(const std::string& dir, const std::string& device, const std::string& dtype, model::ExpertShard shard) {
  Policy p;
  try {
    p.model = model::load_model(dir, model::parse_device(device), model::parse_dtype(dtype), shard);
  } catch (const c10::Error& e) {  // e.g. a CUDA device in a CPU-only build
    throw Error(dir + ": " + e.what_without_backtrace());
  }
  p.tok = tokenizer::Tokenizer::load_dir(dir);
  const int64_t vocab = p.model->config().vocab_size;
  if (p.tok.size() > vocab)
    throw Error(dir + ": tokenizer has " + std::to_string(p.tok.size()) + " tokens but config.json vocab_size is " +
                std::to_string(vocab));
  p.digest = model::config_digest(p.model->config());
  return p;
}

}  // namespace moe::rollout
