// Model configuration: the Hugging Face `qwen3_moe` config.json keys (Qwen3MoeForCausalLM).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moe::model {

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;      // dense SwiGLU MLP width (layers in mlp_only_layers / off the sparse step)
  int64_t moe_intermediate_size = 0;  // width of each expert
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // its own key; defaults to hidden_size / num_attention_heads when absent
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  bool norm_topk_prob = false;  // the class default; real configs set it
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;  // `rope_theta` (4.x) or `rope_parameters.rope_theta` (5.x)
  int64_t max_position_embeddings = 32768;
  bool attention_bias = false;
  bool tie_word_embeddings = false;
  double initializer_range = 0.02;
  double router_aux_loss_coef = 0.001;
  std::string hidden_act = "silu";  // only silu is supported
  int64_t pad_token_id = -1;        // -1 = absent
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;
  std::string torch_dtype = "float32";  // dtype the weights were saved in (informational)

  // Layer i is MoE iff i is not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0.
  bool is_moe_layer(int64_t layer) const;
  std::vector<int> moe_layer_ids() const;  // ascending model layer indices of the MoE layers
  int64_t num_moe_layers() const { return static_cast<int64_t>(moe_layer_ids().size()); }
};

// Parses a config.json object. Missing required keys, wrong types and inconsistent values (e.g. heads not
// dividing, top-k > experts, unsupported rope_scaling / sliding window / activation) throw moe::Error
// naming `origin` and the key. Unknown keys are ignored.
ModelConfig parse_config(const nlohmann::json& j, const std::string& origin = "config.json");
ModelConfig load_config(const std::string& path);  // reads and parses a config.json file

// The config.json object written for a model dir: HF keys incl. model_type "qwen3_moe" and architectures.
nlohmann::json config_to_json(const ModelConfig& c);

// Stable digest of the architecture-defining keys (shapes, layer kinds, routing, norms, rope): equal configs
// give equal digests across runs and machines; token ids, dtype and init settings do not count.
// Format "xxh64:<16 hex digits>". Streams carry it as `model_digest`.
std::string config_digest(const ModelConfig& c);

// Presets of moe-init: "tiny" (CPU demos, char vocabulary) and "small" (shape of a small real MoE, for
// benchmarks). vocab_size is set to `vocab_size`. Throws moe::UsageError for an unknown name.
ModelConfig preset_config(const std::string& name, int64_t vocab_size);

}  // namespace moe::model
