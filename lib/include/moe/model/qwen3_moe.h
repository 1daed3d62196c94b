// The Qwen3-MoE causal language model (Hugging Face Qwen3MoeForCausalLM, model_type "qwen3_moe").
// Module and parameter names are the Hub checkpoint keys (model.layers.N.mlp.experts.E.up_proj.weight, ...).
// Router hooks are explicit: every forward takes a RoutingPlan; nothing is global.
//
// Typical use (rollout: left-padded prompts, KV cache, routing capture):
//   Qwen3Moe m = load_model(dir, parse_device("cpu"), at::kFloat);
//   at::NoGradGuard ng;
//   KVCache cache;
//   ForwardOptions opt; opt.capture_routing = true; opt.last_logits_only = true;
//   ForwardOutput o = m->forward(prompt_ids, prompt_mask, RoutingPlan::native(), opt, &cache);  // [B, P]
//   ... sample next [B, 1] from o.logits[:, -1]; rows already finished pass mask 0 ...
//   o = m->forward(next, step_mask, RoutingPlan::native(), opt, &cache);                        // [B, 1]
// Training (R3): m->forward(ids, mask, RoutingPlan::replay(rollout_indices), opt_with_probs_at).
#pragma once
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <string>
#include <vector>

#include "moe/model/config.h"
#include "moe/model/expert_parallel.h"
#include "moe/model/few_rows.h"

namespace moe::model {

// How the MoE layers choose experts and gate them (algorithms.md "Router control").
enum class RouterMode {
  native,  // top-k of the current router's softmax; gating native (renormalised iff norm_topk_prob)
  frozen,  // as native, but the router weight is detached (never gets a gradient)
  replay,  // experts = plan.indices; gating = softmax over all E of the current logits gathered at them,
           // renormalised over them iff norm_topk_prob. Gradients reach the router.
  logits,  // selection and gating from plan.logits (copy-old-logits); no gradient through gating
};

// Layer axis L counts MoE layers only, in ascending model layer order (ModelConfig::moe_layer_ids()).
struct RoutingPlan {
  RouterMode mode = RouterMode::native;
  at::Tensor indices;  // replay: [B, T, L, k] integer expert ids for the positions of this forward
  at::Tensor logits;   // logits: [B, T, L, E] router logits (any float dtype; detached)

  static RoutingPlan native() { return {}; }
  static RoutingPlan frozen() { return {RouterMode::frozen, {}, {}}; }
  static RoutingPlan replay(at::Tensor indices) { return {RouterMode::replay, std::move(indices), {}}; }
  static RoutingPlan use_logits(at::Tensor logits) { return {RouterMode::logits, {}, std::move(logits)}; }
};

struct ForwardOptions {
  bool capture_routing = false;     // fill ForwardOutput::routing_indices / routing_probs
  bool return_router_logits = false;  // fill ForwardOutput::router_logits
  at::Tensor probs_at;              // [B, T, L, k] expert ids: fill ForwardOutput::probs_at
  bool last_logits_only = false;    // lm_head on the last position only: logits [B, 1, V]
  bool check_ids = true;            // check token ids against the vocabulary (a host round trip); off for
                                    // ids the caller produced itself (sampled tokens)
  bool hidden_only = false;         // no lm_head: ForwardOutput::hidden instead of logits (see model/head.h)
  bool checkpoint_layers = false;   // with gradients and no cache: keep only each decoder layer's input for the
                                    // backward pass, which recomputes the layer (memory for one more forward)
};

struct ForwardOutput {
  at::Tensor logits;           // [B, T, V] in the model dtype (undefined with hidden_only)
  at::Tensor hidden;           // [B, T, H] final-norm hidden states, the lm_head's input (hidden_only)
  at::Tensor routing_indices;  // [B, T, L, k] int64: experts used (native top-k, replayed, or from given logits)
  at::Tensor routing_probs;    // [B, T, L, k] float32, detached: full-softmax probability of each used expert
                               // (of the given logits in mode logits), before renormalisation
  at::Tensor probs_at;         // [B, T, L, k] float32 with gradient: current router's full-softmax probability
                               // at ForwardOptions::probs_at (router weight detached in mode frozen)
  at::Tensor router_logits;    // [B, T, L, E] float32 with gradient: the current router's logits
};

// Keys and values of every layer for incremental decoding, preallocated and written in place (no copy of
// the cache per token). Slot s of a row holds the token fed at step s (pad slots included); `mask` says which
// slots are real tokens. Slots [length(), capacity()) are allocated but unused.
struct KVCache {
  std::vector<at::Tensor> k, v;  // per layer [B, num_key_value_heads, capacity, head_dim] (k may be a
                                 // transposed view: on the CPU in float32 its storage is [B, kvH, D, capacity])
  at::Tensor mask;               // [B, capacity] int64, 1 = real token; 0 beyond length()
  int64_t len = 0;               // slots in use
  int64_t reserve = 0;           // slots to allocate when the cache first fills (e.g. prompt + new tokens);
                                 // when exceeded, the capacity doubles (copying the used slots once)
  int64_t length() const { return len; }
  int64_t capacity() const { return mask.defined() ? mask.size(1) : 0; }
  void clear() { k.clear(); v.clear(); mask = at::Tensor(); len = 0; }
  // Keeps only the rows `rows` (int64 indices), e.g. to drop finished sequences or to repeat prompts. On the
  // CPU, indices in ascending order move the kept rows down in place (tensors taken from the cache before,
  // and copies of it, see them move); else the rows are gathered into new tensors.
  void select_rows(const at::Tensor& rows);
};

// How a MoE layer runs its experts (chosen once at load, see choose_expert_kernel):
enum class ExpertKernel {
  loop,     // host loop over experts with tokens (expert counts on the host: free on the CPU)
  transposed,  // no-grad only: the loop, an expert's block of more than 4 rows on packed copies of its weights
               // (CPU float32, experts up to 4 MiB; made at first use: swiglu_packed), and the other linear
               // layers' products likewise (LinearImpl::set_packed); rollout::generate takes it for a call
  padded,   // no-grad only: one batched matmul over all experts, each padded to the batch's rows (no host copy)
  grouped,  // no-grad only: at::_grouped_mm over the rows sorted by expert (libtorch >= 2.9; else padded)
};
bool grouped_mm_available();  // this libtorch has at::_grouped_mm

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  at::Tensor forward(const at::Tensor& x);  // fp32 compute, cast back, times weight
  at::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// y = x W^T (+ b); weight [out, in] as nn.Linear. Parameters are allocated uninitialised.
class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in, int64_t out, bool bias);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight, bias;
  // Generation's products (ExpertKernel::transposed sets it): with gradients off, more than 4 rows go through
  // linear_packed on a packed copy of a weight of at most 4 MiB, made at first use and not kept current (the
  // weights do not change while it is set); setting it off frees the copy.
  void set_packed(bool on);

 private:
  bool packed_ = false;
  PackedWeight wp_;
};
TORCH_MODULE(Linear);

class MlpImpl : public torch::nn::Module {  // SwiGLU: down(silu(gate(x)) * up(x))
 public:
  MlpImpl(int64_t hidden, int64_t inner);
  at::Tensor forward(const at::Tensor& x);
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

struct MoeLayerOutput {
  at::Tensor hidden, indices, probs, probs_at, router_logits;  // as ForwardOutput, flattened to [N, ...]
};

// Which experts a rank materialises: with size > 1, experts [rank * E / size, (rank + 1) * E / size) only
// (moe/model/expert_parallel.h); the others are never allocated and never named by named_weights.
struct ExpertShard {
  int rank = 0, size = 1;
};

class SparseMoeImpl : public torch::nn::Module {
 public:
  explicit SparseMoeImpl(const ModelConfig& c, ExpertShard shard = {});
  // x [N, H]; indices/logits [N, k]/[N, E] per the plan mode; valid [N] bool: rows whose replay indices count
  // (other rows use native routing); run_rows [N] bool (undefined = all): rows the experts run on (padding
  // gets a zero MLP output, its routing is still computed). Experts run only on the rows routed to them.
  // The kernel: the loop when gradients flow or `differentiable` says they will (the first, gradient-free
  // run of an activation-checkpointed layer, so its recompute matches it bit for bit), else `kernel`.
  MoeLayerOutput forward(const at::Tensor& x, RouterMode mode, const at::Tensor& indices, const at::Tensor& logits,
                         const at::Tensor& valid, const at::Tensor& probs_at, bool want_logits, bool want_capture,
                         const at::Tensor& run_rows = {}, bool differentiable = false);
  Linear gate{nullptr};
  std::vector<Mlp> experts;  // the materialised experts: global ids first_expert .. first_expert + size - 1
  int64_t num_experts, top_k;  // num_experts: all of them (the router's width)
  int64_t first_expert = 0;
  std::shared_ptr<ExpertParallel> ep;  // set (Qwen3MoeImpl::set_expert_parallel) when experts are sharded
  bool norm_topk_prob;
  ExpertKernel kernel = ExpertKernel::loop;  // used without gradients; with gradients always the loop (see forward)
  // Frees the packed copies of ExpertKernel::transposed (they are not kept current: made once, for weights
  // that do not change while the kernel is set).
  void drop_transposed() { wt_.clear(); }

 private:
  // The experts' weights as two tensors, gate_up [E, 2I, H] (gate rows, then up rows: transformers 5's
  // layout) and down [E, H, I]. Built on first use; the per-expert parameters are then views into them, so
  // optimizer steps and loads keep them current; rebuilt if a parameter was moved (to(dtype/device)).
  void fuse_experts();
  at::Tensor gate_up_w_, down_w_;
  std::vector<PackedWeight> wt_;  // ExpertKernel::transposed: gate, up and down of each expert packed, made at first use
  // Expert e on its rows xe; transposed (no gradients): ExpertKernel::transposed's path where it applies.
  at::Tensor run_expert(size_t e, const at::Tensor& xe, bool transposed);
  at::Tensor dispatch_loop(const at::Tensor& x, const at::Tensor& slot_expert, const at::Tensor& gating, bool transposed = false);
  at::Tensor dispatch_padded(const at::Tensor& x, const at::Tensor& slot_expert, const at::Tensor& gating, bool grouped);
  // Expert parallel: all-to-all to the experts' owners and back (lib/model/expert_parallel.cpp).
  // transposed: as dispatch_loop's (the experts' products as one process's, bit for bit).
  at::Tensor dispatch_ep(const at::Tensor& x, const at::Tensor& slot_expert, const at::Tensor& gating, bool transposed = false);
};
TORCH_MODULE(SparseMoe);

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const ModelConfig& c);
  // x [B, T, H]; cos/sin [B, T, head_dim]; allowed [B, 1, T, S] bool (S = past + T). Without a cache
  // (cache_k undefined) past is 0; with one, the new keys/values are written into slots [past, past + T) of
  // cache_k/cache_v [B, kvH, capacity, D] and attention reads slots [0, S). Query heads share their key/value
  // head without a repeated copy.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& allowed,
                     const at::Tensor& cache_k = {}, const at::Tensor& cache_v = {}, int64_t past = 0);
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};
  int64_t heads, kv_heads, head_dim;
};
TORCH_MODULE(Attention);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& c, int64_t layer, ExpertShard shard = {});
  Attention self_attn{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Mlp dense{nullptr};     // registered as "mlp" when the layer is dense
  SparseMoe moe{nullptr};  // registered as "mlp" when the layer is MoE
};
TORCH_MODULE(DecoderLayer);

class Qwen3MoeImpl : public torch::nn::Module {
 public:
  explicit Qwen3MoeImpl(const ModelConfig& c, ExpertShard shard = {});

  // input_ids [B, T] int64; attention_mask [B, T] (1 = token, 0 = pad; undefined = all ones). Positions count
  // real tokens only (cumsum of the mask over cache + input), so left- or right-padded rows give each
  // sequence the result it gets alone. With a cache, the T new tokens attend to the cached slots and are
  // appended to it. Throws moe::Error for bad shapes, out-of-range or duplicate replay indices.
  ForwardOutput forward(const at::Tensor& input_ids, const at::Tensor& attention_mask = {},
                        const RoutingPlan& plan = RoutingPlan::native(), const ForwardOptions& opt = {},
                        KVCache* cache = nullptr);

  const ModelConfig& config() const { return cfg_; }
  const std::vector<int>& moe_layer_ids() const { return moe_layers_; }
  // Sets the expert kernel of every MoE layer (padded/grouped fall back as ExpertKernel says), and the linear
  // layers' packed products with transposed; leaving transposed frees its copies. expert_kernel: the first MoE
  // layer's (loop without one).
  void set_expert_kernel(ExpertKernel k);
  ExpertKernel expert_kernel() const;
  // The fastest kernel for the model's device: loop on the CPU (its counts are already on the host),
  // grouped (or padded) on an accelerator, where a host copy per layer stalls the device.
  void choose_expert_kernel();
  // Expert parallel: the group every MoE layer exchanges its tokens over (size() must be the shard's size).
  void set_expert_parallel(std::shared_ptr<ExpertParallel> ep);
  const ExpertShard& expert_shard() const { return shard_; }
  // The router weights ([E, H] each, one per MoE layer), e.g. to freeze them in an optimizer.
  std::vector<at::Tensor> router_parameters();
  at::Tensor lm_head_weight();  // lm_head.weight, or embed_tokens.weight when tied

  torch::nn::Module& model() { return *model_; }
  at::Tensor embed_weight;  // model.embed_tokens.weight [V, H]
  std::vector<DecoderLayer> layers;
  RMSNorm norm{nullptr};
  Linear lm_head{nullptr};  // null when tie_word_embeddings

 private:
  ModelConfig cfg_;
  ExpertShard shard_;
  std::vector<int> moe_layers_;
  std::shared_ptr<torch::nn::Module> model_;  // "model" holding embed_tokens / layers / norm
  at::Tensor inv_freq_;                       // [head_dim / 2] float32, CPU
};
TORCH_MODULE(Qwen3Moe);

// The load-balancing auxiliary loss of transformers' Qwen3-MoE (Switch-Transformer style), over all MoE
// layers and real tokens: num_experts * sum_{slot, e} f[slot, e] * P[e], f = share of (token, layer) pairs whose
// slot-th top-k choice is e, P[e] = mean router probability of e. router_logits [B, T, L, E] (e.g.
// ForwardOutput::router_logits), mask [B, T] (undefined = all tokens). Returns a scalar float32 with gradient;
// the caller multiplies by router_aux_loss_coef.
at::Tensor load_balancing_loss(const at::Tensor& router_logits, const at::Tensor& mask, int64_t top_k);

// Initialises every parameter as Hugging Face does: Linear and Embedding weights ~ N(0, initializer_range),
// biases 0, norm weights 1, the pad_token_id row of the embedding 0. Deterministic for a seed (CPU generator,
// parameters in registration order), whatever the model's device.
void init_weights(Qwen3Moe& m, uint64_t seed);

// Checkpoint tensor names of the model (Hub spelling, per-expert), in registration order.
std::vector<std::pair<std::string, at::Tensor>> named_weights(Qwen3Moe& m);

// Loads the weights of a model dir (model.safetensors or sharded index) into m, converting F32/BF16/F16 to
// the model's dtype. Experts load from per-expert names or the fused transformers-5 spelling
// (mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj [E, H, I]). A missing tensor or a shape that
// differs from the config throws moe::Error naming the tensor and both shapes. lm_head.weight is ignored
// when tied. A checkpoint tensor the model does not use (e.g. attention biases with attention_bias false)
// throws moe::Error naming it.
void load_weights(Qwen3Moe& m, const std::string& dir);

// config.json + weights -> a model on `device` in `dtype`, in eval mode. With a shard of size > 1 only the
// shard's experts are read (and allocated); the checkpoint's other experts are skipped.
Qwen3Moe load_model(const std::string& dir, const c10::Device& device, c10::ScalarType dtype = c10::kFloat,
                    ExpertShard shard = {});

// Writes config.json, model.safetensors (Hub names, the model's dtype) and `extra_files` (name -> contents)
// into a staged sibling directory, lets `add_files(staged_dir)` write more (e.g. optimizer state), then swaps
// it in with io::replace_dir: `dir` is the old or the new complete model at every moment. Weights above
// max_shard_bytes are written as shards + model.safetensors.index.json. Of an existing dir every regular
// file that is not a weight file and not written anew is carried over (model/checkpoint_files.h); a
// subdirectory in it throws before anything is written. `weights` (when not empty) are written instead of
// named_weights(m): e.g. every expert of an expert-parallel model, gathered by the trainer.
void save_model(Qwen3Moe& m, const std::string& dir, const std::vector<std::pair<std::string, std::string>>& extra_files = {},
                const std::function<void(const std::string& staged_dir)>& add_files = {},
                int64_t max_shard_bytes = 5'000'000'000,
                const std::vector<std::pair<std::string, at::Tensor>>& weights = {});

// "cpu", "cuda", "cuda:1" -> device; "f32"/"float32", "bf16"/"bfloat16", "f16"/"float16" -> dtype.
// Throw moe::UsageError on an unknown spelling.
c10::Device parse_device(const std::string& s);
// Intra-op CPU threads: n > 0 threads, 0 libtorch's default count. Either way the count is set through
// at::set_num_threads, which also turns off MKL's dynamic thread adjustment: left on, MKL picks fewer
// threads when the machine is loaded, and the float sums (so the sampled tokens) change with the load.
void set_threads(int n);
c10::ScalarType parse_dtype(const std::string& s);

}  // namespace moe::model
