// Router-side quantities of algorithms.md as pure tensor functions: the router shift ratio of RSPO,
// routing-agreement metrics, gating weights under replay, and the Switch load-balancing loss.
//
// Shapes: B sequences x T positions x L MoE layers x K selected experts; E experts in all.
// Index tensors are any integer dtype; probability and logit tensors any floating dtype (computed in at
// least fp32: fp16/bf16 inputs are upcast). Masks are [B, T], > 0 (or true) on the tokens that count.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>

namespace moe::algo {

using Metrics = std::map<std::string, double>;

// --rs-form: paper (default) = exp(-mean over layers and k of |dlog p|);
// mean-exp (the paper's code listing) = per layer mean_k exp(-|dlog p|), then --rs-layer-agg over layers.
enum class RsForm { paper, mean_exp };
enum class RsLayerAgg { mean, product, geomean };
// --rs-apply: after-clip (default, the paper) reweights the clipped objective by g_t; pre-clip (an ablation)
// multiplies the ratio by g_t before the clip.
enum class RsApply { after_clip, pre_clip };
RsForm parse_rs_form(const std::string& name);           // "paper" | "mean-exp"; throws moe::UsageError
RsLayerAgg parse_rs_layer_agg(const std::string& name);  // "mean" | "product" | "geomean"
RsApply parse_rs_apply(const std::string& name);         // "after-clip" | "pre-clip"
const char* to_string(RsForm form);
const char* to_string(RsLayerAgg agg);
const char* to_string(RsApply apply);

struct RouterShiftConfig {
  RsForm form = RsForm::paper;
  RsLayerAgg layer_agg = RsLayerAgg::geomean;  // mean-exp form only (the paper aggregates multiplicatively)
  double floor = 0.5;                          // gamma_min (--rs-floor)
  double mask_below = 0;                       // --rs-mask T: tokens with raw gamma < T are dropped; 0 = off
  RsApply apply = RsApply::after_clip;         // --rs-apply
  bool grad = false;  // --rs-grad: no stop-gradient, g_t = max(gamma_t, floor) carries p_new's gradient
};

struct RouterShift {
  at::Tensor gamma;  // [B, T] raw gamma_t (1 on masked-out tokens), detached
  at::Tensor g;      // [B, T] sg(max(gamma_t, floor)); with cfg.grad max(gamma_t, floor) differentiable in p_new
  at::Tensor keep;   // [B, T] bool, false where --rs-mask drops the token (all true when mask_below == 0)
  Metrics metrics;   // router_shift/{gamma_mean,gamma_min,gamma_max,floor_frac,delta_mean,delta_p90,mask_frac}
};

// Router shift (algorithms.md "Router shift ratio and RSPO"). p_old: router probabilities of the old pass at
// its top-K indices, p_new: the current forward's probabilities at the same (old) indices; both
// [B, T, L, K], clamped >= 1e-8 here, detached here (p_new keeps its gradient in g when cfg.grad). Delta_t is reported as -log gamma_t (for the paper form
// that is exactly mean |dlog p|). Metrics are over mask > 0 tokens (gamma stats are raw, before the floor);
// delta_p90 is the linear-interpolation 0.9 quantile. Throws moe::Error on shape mismatch.
RouterShift router_shift(const at::Tensor& p_old, const at::Tensor& p_new, const at::Tensor& mask,
                         const RouterShiftConfig& cfg = {});

// router_shift/unshifted_frac: share of mask > 0 tokens whose current native top-K expert set equals the old
// set in every layer (order-insensitive). idx_old, idx_new: [B, T, L, K] integer.
double unshifted_frac(const at::Tensor& idx_old, const at::Tensor& idx_new, const at::Tensor& mask);

// Routing agreement of a rollout's recorded indices with the training forward's native top-K, both
// [B, T, L, K] (sets compared per token and layer, order-insensitive), over mask > 0 tokens:
// routing/layer_mismatch (share of differing (token, layer) pairs), routing/token_mismatch (share of tokens
// with >= 1 differing layer), routing/layers_differing_mean (mean count of differing layers per token).
Metrics routing_agreement(const at::Tensor& idx_rollout, const at::Tensor& idx_native, const at::Tensor& mask);

// Gating weights at replayed indices (worked example 7): softmax over all E of `router_logits` [..., E],
// gathered at `indices` [..., K]; renormalised over the K selected when norm_topk_prob (= softmax over the
// selected logits). Differentiable in the logits. Returns [..., K] in the softmax dtype (>= fp32).
// With validate, throws moe::Error on an index outside [0, E) or an index repeated within a row.
at::Tensor replay_gating(const at::Tensor& router_logits, const at::Tensor& indices, bool norm_topk_prob,
                         bool validate = true);

// Switch-Transformer load-balancing loss of one MoE layer:
//   loss = E * sum_e f_e * P_e,
//   f_e = share of the N*K routing assignments (token n, slot k) that went to expert e  (sum_e f_e = 1),
//   P_e = mean over tokens of softmax(router_logits)_e                                   (sum_e P_e = 1),
// over the N tokens with mask > 0. Perfectly uniform routing gives 1 for any K; the minimum is 1 when f = P
// is uniform. (Hugging Face's load_balancing_loss_func counts f per slot and so returns K times this.)
// router_logits [..., E] (native, un-replayed scores), indices [..., K] the selected experts, mask [...]
// optional (undefined = all tokens). Gradient flows through P only. Average over layers in the caller.
at::Tensor load_balancing_loss(const at::Tensor& router_logits, const at::Tensor& indices,
                               const at::Tensor& mask = {});

}  // namespace moe::algo
