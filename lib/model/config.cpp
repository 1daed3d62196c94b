#include "moe/model/config.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdio>

#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/io/jsonl.h"

namespace moe::model {
namespace {
using nlohmann::json;

[[noreturn]] void fail(const std::string& origin, const std::string& msg) { throw Error(origin + ": " + msg); }

const json* find(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

int64_t get_int(const json& j, const std::string& origin, const char* key, const int64_t* dflt, int64_t min) {
  const json* v = find(j, key);
  if (!v) {
    if (dflt) return *dflt;
    fail(origin, std::string("missing key '") + key + "'");
  }
  if (!v->is_number_integer()) fail(origin, std::string("key '") + key + "' must be an integer, got " + v->dump());
  int64_t x = v->get<int64_t>();
  if (x < min) fail(origin, std::string("key '") + key + "' must be >= " + std::to_string(min) + ", got " + std::to_string(x));
  return x;
}
int64_t req_int(const json& j, const std::string& o, const char* key, int64_t min = 1) { return get_int(j, o, key, nullptr, min); }
int64_t opt_int(const json& j, const std::string& o, const char* key, int64_t dflt, int64_t min = 1) {
  return get_int(j, o, key, &dflt, min);
}
double opt_double(const json& j, const std::string& o, const char* key, double dflt) {
  const json* v = find(j, key);
  if (!v) return dflt;
  if (!v->is_number()) fail(o, std::string("key '") + key + "' must be a number, got " + v->dump());
  return v->get<double>();
}
bool opt_bool(const json& j, const std::string& o, const char* key, bool dflt) {
  const json* v = find(j, key);
  if (!v) return dflt;
  if (!v->is_boolean()) fail(o, std::string("key '") + key + "' must be true or false, got " + v->dump());
  return v->get<bool>();
}
// Token ids may be an integer or (for eos in some configs) a list; we keep the first.
int64_t opt_token(const json& j, const std::string& o, const char* key) {
  const json* v = find(j, key);
  if (!v) return -1;
  if (v->is_array() && !v->empty()) v = &(*v)[0];
  if (!v->is_number_integer() || v->get<int64_t>() < 0) fail(o, std::string("key '") + key + "' must be a token id, got " + v->dump());
  return v->get<int64_t>();
}
}  // namespace

bool ModelConfig::is_moe_layer(int64_t layer) const {
  if (num_experts <= 0) return false;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) return false;
  return (layer + 1) % decoder_sparse_step == 0;
}

std::vector<int> ModelConfig::moe_layer_ids() const {
  std::vector<int> ids;
  for (int64_t i = 0; i < num_hidden_layers; ++i)
    if (is_moe_layer(i)) ids.push_back(static_cast<int>(i));
  return ids;
}

ModelConfig parse_config(const json& j, const std::string& o) {
  if (!j.is_object()) fail(o, "config must be a JSON object");
  ModelConfig c;
  if (const json* mt = find(j, "model_type")) {
    if (!mt->is_string() || mt->get<std::string>() != "qwen3_moe")
      fail(o, "model_type " + mt->dump() + " is not supported (only \"qwen3_moe\")");
  } else {
    fail(o, "missing key 'model_type' (expected \"qwen3_moe\")");
  }
  c.vocab_size = req_int(j, o, "vocab_size");
  c.hidden_size = req_int(j, o, "hidden_size");
  c.num_hidden_layers = req_int(j, o, "num_hidden_layers");
  c.num_attention_heads = req_int(j, o, "num_attention_heads");
  c.num_key_value_heads = opt_int(j, o, "num_key_value_heads", c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail(o, "num_attention_heads (" + std::to_string(c.num_attention_heads) + ") is not a multiple of num_key_value_heads (" +
                std::to_string(c.num_key_value_heads) + ")");
  if (find(j, "head_dim")) {
    c.head_dim = req_int(j, o, "head_dim");
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) fail(o, "missing key 'head_dim' and hidden_size is not divisible by num_attention_heads");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0) fail(o, "head_dim must be even for rotary embeddings, got " + std::to_string(c.head_dim));
  // 4.x and the Hub say num_experts; transformers 5 writes num_local_experts.
  if (!find(j, "num_experts") && !find(j, "num_local_experts")) fail(o, "missing key 'num_experts' (or 'num_local_experts')");
  c.num_experts = find(j, "num_experts") ? req_int(j, o, "num_experts", 0) : req_int(j, o, "num_local_experts", 0);
  c.decoder_sparse_step = opt_int(j, o, "decoder_sparse_step", 1);
  if (const json* m = find(j, "mlp_only_layers")) {
    if (!m->is_array()) fail(o, "key 'mlp_only_layers' must be a list of layer indices, got " + m->dump());
    for (const auto& x : *m) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= c.num_hidden_layers)
        fail(o, "key 'mlp_only_layers' holds an invalid layer index " + x.dump());
      c.mlp_only_layers.push_back(x.get<int64_t>());
    }
  }
  bool any_moe = !c.moe_layer_ids().empty();
  bool any_dense = static_cast<int64_t>(c.moe_layer_ids().size()) < c.num_hidden_layers;
  if (any_moe) {
    c.num_experts_per_tok = req_int(j, o, "num_experts_per_tok");
    c.moe_intermediate_size = req_int(j, o, "moe_intermediate_size");
    if (c.num_experts_per_tok > c.num_experts)
      fail(o, "num_experts_per_tok (" + std::to_string(c.num_experts_per_tok) + ") exceeds num_experts (" + std::to_string(c.num_experts) + ")");
  } else {
    c.num_experts_per_tok = opt_int(j, o, "num_experts_per_tok", 0, 0);
    c.moe_intermediate_size = opt_int(j, o, "moe_intermediate_size", 0, 0);
  }
  c.intermediate_size = any_dense ? req_int(j, o, "intermediate_size") : opt_int(j, o, "intermediate_size", 0, 0);
  c.norm_topk_prob = opt_bool(j, o, "norm_topk_prob", false);
  c.rms_norm_eps = opt_double(j, o, "rms_norm_eps", 1e-6);
  if (!(c.rms_norm_eps > 0)) fail(o, "key 'rms_norm_eps' must be > 0");
  c.rope_theta = 10000.0;
  if (const json* rp = find(j, "rope_parameters")) {
    if (!rp->is_object()) fail(o, "key 'rope_parameters' must be an object");
    c.rope_theta = opt_double(*rp, o, "rope_theta", opt_double(j, o, "rope_theta", 10000.0));
    if (const json* t = find(*rp, "rope_type"); t && (!t->is_string() || t->get<std::string>() != "default"))
      fail(o, "rope_parameters.rope_type " + t->dump() + " is not supported (only \"default\")");
  } else {
    c.rope_theta = opt_double(j, o, "rope_theta", 10000.0);
  }
  if (!(c.rope_theta > 0)) fail(o, "rope_theta must be > 0");
  if (const json* rs = find(j, "rope_scaling")) {
    const json* t = rs->is_object() ? find(*rs, "rope_type") : nullptr;
    if (!t && rs->is_object()) t = find(*rs, "type");
    if (!t || !t->is_string() || t->get<std::string>() != "default")
      fail(o, "rope_scaling " + rs->dump() + " is not supported (only null or \"default\")");
  }
  if (opt_bool(j, o, "use_sliding_window", false)) fail(o, "use_sliding_window true is not supported");
  c.max_position_embeddings = opt_int(j, o, "max_position_embeddings", 32768);
  c.attention_bias = opt_bool(j, o, "attention_bias", false);
  c.tie_word_embeddings = opt_bool(j, o, "tie_word_embeddings", false);
  c.initializer_range = opt_double(j, o, "initializer_range", 0.02);
  c.router_aux_loss_coef = opt_double(j, o, "router_aux_loss_coef", 0.001);
  if (const json* a = find(j, "hidden_act")) {
    if (!a->is_string() || a->get<std::string>() != "silu") fail(o, "hidden_act " + a->dump() + " is not supported (only \"silu\")");
  }
  c.pad_token_id = opt_token(j, o, "pad_token_id");
  c.bos_token_id = opt_token(j, o, "bos_token_id");
  c.eos_token_id = opt_token(j, o, "eos_token_id");
  const json* dt = find(j, "torch_dtype");
  if (!dt) dt = find(j, "dtype");  // transformers 5 spelling
  if (dt && dt->is_string()) c.torch_dtype = dt->get<std::string>();
  for (int64_t id : {c.pad_token_id, c.bos_token_id, c.eos_token_id})
    if (id >= c.vocab_size) fail(o, "token id " + std::to_string(id) + " is outside vocab_size " + std::to_string(c.vocab_size));
  return c;
}

ModelConfig load_config(const std::string& path) {
  // The one depth limit of every reader, checked while parsing: a hostile config.json is an error naming it.
  return parse_config(io::read_json_file(path), path);
}

json config_to_json(const ModelConfig& c) {
  json j;
  j["architectures"] = json::array({"Qwen3MoeForCausalLM"});
  j["model_type"] = "qwen3_moe";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["num_experts"] = c.num_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["decoder_sparse_step"] = c.decoder_sparse_step;
  j["mlp_only_layers"] = c.mlp_only_layers;
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = nullptr;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["attention_bias"] = c.attention_bias;
  j["attention_dropout"] = 0.0;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["initializer_range"] = c.initializer_range;
  j["router_aux_loss_coef"] = c.router_aux_loss_coef;
  j["output_router_logits"] = false;
  j["hidden_act"] = c.hidden_act;
  j["use_sliding_window"] = false;
  j["sliding_window"] = nullptr;
  j["use_cache"] = true;
  j["torch_dtype"] = c.torch_dtype;
  if (c.pad_token_id >= 0) j["pad_token_id"] = c.pad_token_id;
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_id >= 0) j["eos_token_id"] = c.eos_token_id;
  return j;
}

std::string config_digest(const ModelConfig& c) {
  // nlohmann::json objects keep keys sorted, so dump() is canonical.
  json a;
  a["model_type"] = "qwen3_moe";
  a["vocab_size"] = c.vocab_size;
  a["hidden_size"] = c.hidden_size;
  a["intermediate_size"] = c.intermediate_size;
  a["moe_intermediate_size"] = c.moe_intermediate_size;
  a["num_hidden_layers"] = c.num_hidden_layers;
  a["num_attention_heads"] = c.num_attention_heads;
  a["num_key_value_heads"] = c.num_key_value_heads;
  a["head_dim"] = c.head_dim;
  a["num_experts"] = c.num_experts;
  a["num_experts_per_tok"] = c.num_experts_per_tok;
  a["moe_layers"] = c.moe_layer_ids();  // decoder_sparse_step and mlp_only_layers, normalised
  a["norm_topk_prob"] = c.norm_topk_prob;
  a["rms_norm_eps"] = c.rms_norm_eps;
  a["rope_theta"] = c.rope_theta;
  a["attention_bias"] = c.attention_bias;
  a["tie_word_embeddings"] = c.tie_word_embeddings;
  std::string s = a.dump();
  char buf[32];
  std::snprintf(buf, sizeof buf, "xxh64:%016llx", static_cast<unsigned long long>(XXH64(s.data(), s.size(), 0)));
  return buf;
}

ModelConfig preset_config(const std::string& name, int64_t vocab_size) {
  ModelConfig c;
  c.vocab_size = vocab_size;
  c.norm_topk_prob = true;
  c.decoder_sparse_step = 1;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  c.initializer_range = 0.02;
  if (name == "tiny") {
    c.hidden_size = 96;
    c.num_hidden_layers = 3;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 24;
    c.num_experts = 8;
    c.num_experts_per_tok = 2;
    c.moe_intermediate_size = 96;
    c.intermediate_size = 192;  // unused unless a config adds mlp_only_layers
    c.max_position_embeddings = 512;
    c.tie_word_embeddings = false;
  } else if (name == "top1" || name == "fine") {
    // The routing-regime presets of the stability study, scaled to a CPU: tiny's attention, and the same
    // active FFN width per token (192) from 1536 expert units. top1: 8 experts, top-1 routing without
    // renormalisation (Qwen2-MoE style: the gate weight is the softmax probability, so the router still gets
    // a gradient, and every routing flip changes the whole FFN output). fine: 32 fine-grained experts, top-4.
    c = preset_config("tiny", vocab_size);
    if (name == "top1") {
      c.num_experts = 8;
      c.num_experts_per_tok = 1;
      c.moe_intermediate_size = 192;
      c.norm_topk_prob = false;
    } else {
      c.num_experts = 32;
      c.num_experts_per_tok = 4;
      c.moe_intermediate_size = 48;
    }
  } else if (name == "small") {
    c.hidden_size = 1024;
    c.num_hidden_layers = 16;
    c.num_attention_heads = 16;
    c.num_key_value_heads = 4;
    c.head_dim = 64;
    c.num_experts = 64;
    c.num_experts_per_tok = 8;
    c.moe_intermediate_size = 256;
    c.intermediate_size = 2048;
    c.max_position_embeddings = 4096;
    c.tie_word_embeddings = false;
  } else {
    throw UsageError("unknown preset '" + name + "' (known: tiny, top1, fine, small)");
  }
  return c;
}

}  // namespace moe::model
