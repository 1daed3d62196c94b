// Policy losses, importance weights and their metrics (algorithms.md), as pure functions of tensors:
// no model, no I/O. Device- and dtype-agnostic: the policy loss is computed in logp's dtype (double in
// tests, fp32 in training) on logp's device; other inputs are converted to it.
//
// Shape conventions: B sequences x T positions.
// - Per-token tensors (logp, logp_old, logp_roll, logp_ref, router-shift factors) are [B, T].
// - mask [B, T], any dtype: > 0 (or true) on response tokens, 0 on prompt and padding. Values of the other
//   inputs at masked positions are ignored (they may even be NaN) and receive zero gradient.
// - advantages [B] (broadcast over the row) or [B, T].
// - Losses are 0-dim tensors; gradient flows only through logp (everything else is detached).
// - Metrics are plain doubles named exactly as in algorithms.md; means are over mask > 0 tokens and are 0
//   when no token is valid.
// Errors: moe::UsageError for an inconsistent configuration, moe::Error for missing or mis-shaped inputs.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <optional>
#include <string>
#include <utility>

#include "moe/algo/router.h"

namespace moe::algo {

using Metrics = std::map<std::string, double>;

// --loss-agg (algorithms.md "Aggregation").
enum class Agg { token_mean, seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm };
Agg parse_agg(const std::string& name);  // "token-mean" ... ; throws moe::UsageError
const char* to_string(Agg agg);

// Aggregates a per-token loss [B, T] over mask [B, T]:
//   token-mean               sum(m*l) / sum(m)
//   seq-mean-token-mean      (1/B') sum_i sum_t m*l / (L_i + 1e-8), B' = rows with L_i > 0
//   seq-mean-token-sum       (1/B') sum_i sum_t m*l
//   seq-mean-token-sum-norm  sum(m*l) / C, C = loss_scale, a constant (the train step defaults it to the
//                            rollout header's max_new_tokens); loss_scale <= 0 throws moe::Error
// An all-masked batch gives an exact 0 (never NaN).
at::Tensor aggregate(const at::Tensor& loss, const at::Tensor& mask, Agg agg, double loss_scale = 0);

// --algo. grpo/dapo/drgrpo share the PPO clip and differ in defaults; rspo = gmpo + router shift.
enum class Algo { grpo, dapo, drgrpo, gspo, gmpo, rspo };
Algo parse_algo(const std::string& name);  // throws moe::UsageError
const char* to_string(Algo algo);

// --tis token|seq and --mis LO,HI (algorithms.md "Train-inference mismatch correction").
enum class IsLevel { off, token, seq };
IsLevel parse_is_level(const std::string& name);  // "off" | "token" | "seq"
struct IsConfig {
  IsLevel level = IsLevel::off;
  double cap = 2;  // C of TIS
  // MIS: keep only tokens (sequences when level == seq) whose rho lies in [LO, HI]; kept tokens are weighted
  // by their untruncated rho. Without --tis the level is token.
  std::optional<std::pair<double, double>> mis;
  bool active() const { return level != IsLevel::off || mis.has_value(); }
};

struct LossConfig {
  Algo algo = Algo::grpo;
  std::optional<double> eps_low, eps_high;  // unset: the algorithm's default (see with_defaults)
  std::optional<Agg> loss_agg;              // unset: the algorithm's default
  double loss_scale = 0;                    // C of seq-mean-token-sum-norm (constant); <= 0: unset (an error there)
  double dual_clip = 3;                     // c, applied for A < 0 in grpo/dapo/drgrpo; <= 1 turns it off
  bool router_shift = false;                // --router-shift on grpo/dapo/drgrpo/gspo/gmpo (always on for rspo)
  RouterShiftConfig rs;
  IsConfig is;
  double kl_coef = 0;       // k3 KL to the reference (needs LossInputs::logp_ref)
  double entropy_coef = 0;  // entropy bonus (needs LossInputs::logits)
  double aux_coef = 0;      // load-balancing aux loss (needs LossInputs::aux_loss)
};

// Fills the unset fields from the algorithm's preset and checks the configuration:
//   grpo   eps 0.2/0.2,   token-mean
//   dapo   eps 0.2/0.28,  token-mean
//   drgrpo eps 0.2/0.2,   seq-mean-token-sum-norm (advantages from moe-reward's drgrpo)
//   gspo   eps 3e-4/4e-4, seq-mean-token-mean (forced: any other --loss-agg is a UsageError)
//   gmpo   eps 0.4/0.4 (log space); --loss-agg (default token-mean) only aggregates the KL/entropy terms
//   rspo   as gmpo, and router_shift = true
LossConfig with_defaults(LossConfig cfg);

// Aggregation used by the policy loss (and the KL / entropy terms) of a resolved config.
Agg effective_agg(const LossConfig& resolved);

// Inputs of compute_policy_loss. Optional tensors are left undefined (at::Tensor()) when absent.
struct LossInputs {
  at::Tensor logp;        // [B, T] current policy log-probs of the sampled tokens, with grad
  at::Tensor logp_old;    // [B, T] old-pass log-probs
  at::Tensor advantages;  // [B] or [B, T]
  at::Tensor mask;        // [B, T]
  at::Tensor logp_roll;   // optional [B, T] rollout log-probs: enables mismatch/* metrics; needed by --tis/--mis
  // Router shift, either precomputed floored factors g_t [B, T] (used as given, detached unless cfg.rs.grad;
  // --rs-mask is then not applied)
  at::Tensor rs_factors;
  // ... or old/current router probabilities at the old top-K indices [B, T, L, K] (see router_shift()).
  at::Tensor router_p_old, router_p_new;
  // optional [B, T, L, K] native top-K of the old pass's and of the current router logits (native on both
  // sides in every router mode, never replayed indices): adds router_shift/unshifted_frac.
  at::Tensor router_idx_old, router_idx_new;
  at::Tensor logp_ref;  // optional [B, T] reference-model log-probs: adds metric kl; needed when kl_coef != 0
  at::Tensor logits;    // optional [B, T, V] current logits: adds metric entropy; needed when entropy_coef != 0
  at::Tensor entropy;   // optional [B, T] token entropy of the current policy, used instead of logits (e.g. from
                        // model::head_logprobs, which never holds [B, T, V]); differentiable
  at::Tensor aux_loss;  // optional 0-dim load-balancing loss: adds metric aux_loss; needed when aux_coef != 0
};

struct LossOutputs {
  at::Tensor loss;  // 0-dim, differentiable in logp (and logits / aux_loss when their coefficients are set)
  Metrics metrics;
};

// The one entry point of the train-step driver. Order of operations:
//   d = logp - logp_old (masked); router shift g_t (rspo, or router_shift) and --rs-mask
//   -> importance weights w and --mis mask (detached, from logp_old and logp_roll)
//   -> base algorithm over the kept tokens, per-token loss times w after the dual clip
//      (gmpo/rspo: rows weighted by the geometric mean of w over the row; gspo: the token form then weights
//      each token's gradient by its own w, -A s_i w_t / L_i, rather than the row by its mean w)
//      with the router shift after the clip (cfg.rs.apply after_clip, default): per-token loss times g_t
//      (grpo/dapo/drgrpo after the dual clip; gspo), or d** = d* + log g_t (gmpo/rspo); pre_clip: the base
//      algorithm runs on d~ = d + log g_t instead
//   -> + kl_coef * agg(k3 KL) - entropy_coef * agg(entropy) + aux_coef * aux_loss.
// Metrics: pg_loss, ppo_kl (masked mean of -d, unshifted), and per algorithm pg_clipfrac and for the
// PPO-clip and GMPO families pg_clipfrac_lower (of the ratio the clip saw: d, or d~ under pre_clip);
// router_shift/* when shifted; mismatch/* whenever logp_roll is given; tis/* when --tis/--mis is on; kl,
// entropy (token-mean over the response), aux_loss when given.
// `cfg` need not be resolved: with_defaults is applied here.
LossOutputs compute_policy_loss(const LossConfig& cfg, const LossInputs& in);

// ---- Building blocks (each also usable alone; d is the (possibly shifted) log-ratio [B, T]) ----

// Per-token loss [B, T] (0 on masked tokens) with its metrics.
struct TokenLoss {
  at::Tensor loss;
  Metrics metrics;
};

// GRPO/PPO clip with dual clip: r = exp(clamp(d, -20, 20)), lc = max(-A r, -A clip(r, 1-eps_low, 1+eps_high)),
// l = min(lc, -A c) where A < 0 (c = dual_clip; <= 1: off). Metrics pg_clipfrac, pg_clipfrac_lower, ppo_kl.
TokenLoss ppo_clip_loss(const at::Tensor& d, const at::Tensor& advantages, const at::Tensor& mask,
                        double eps_low, double eps_high, double dual_clip = 3);

// GSPO sequence ratio s_i = exp(sum_t m*d / max(L_i, 1)), [B], differentiable.
at::Tensor gspo_seq_ratio(const at::Tensor& d, const at::Tensor& mask);

// GSPO token form: log s_it = d - sg(d) + sg(log s_i) clamped <= 10, l = max(-A s, -A clip(s, 1-eps_low,
// 1+eps_high)); aggregate with seq-mean-token-mean. Metrics pg_clipfrac (token-weighted share of clipped
// sequences), ppo_kl.
TokenLoss gspo_loss(const at::Tensor& d, const at::Tensor& advantages, const at::Tensor& mask, double eps_low,
                    double eps_high);

// GMPO sign-aware log-space clip d* = sigma * min(sigma*d, sigma*clamp(d, -eps_low, eps_high)), sigma = sign(A).
at::Tensor gmpo_clipped_log_ratio(const at::Tensor& d, const at::Tensor& advantages, double eps_low,
                                  double eps_high);
// GMPO geometric-mean ratio S_i = exp(sum_t m*(d* + log_shift) / (L_i + 1e-8)), [B], differentiable;
// log_shift [B, T] (undefined = 0) is RSPO's log g_t added after the clip.
at::Tensor gmpo_row_ratio(const at::Tensor& d, const at::Tensor& advantages, const at::Tensor& mask,
                          double eps_low, double eps_high, const at::Tensor& log_shift = {});
// GMPO loss = -(1/B) sum_i W_i * Abar_i * S_i, Abar_i = sum_t m*A / (L_i + 1e-8); W = row_weight [B]
// (detached; undefined = 1); S_i as gmpo_row_ratio with log_shift. Plain mean over all B rows.
// Metrics pg_clipfrac, pg_clipfrac_lower, ppo_kl (of d, before the shift).
LossOutputs gmpo_loss(const at::Tensor& d, const at::Tensor& advantages, const at::Tensor& mask,
                      double eps_low, double eps_high, const at::Tensor& row_weight = {},
                      const at::Tensor& log_shift = {});

// TIS / MIS weights from logp_old and logp_roll [B, T] (detached). rho = exp(clamp(logp_old - logp_roll,
// +-20)); token: w = min(rho, C); seq: w = min(exp(clamp(sum_t m log rho, +-20)), C) broadcast over the row;
// with mis: w = rho (token or sequence) and keep = LO <= rho <= HI. w is 1 on masked tokens.
// Metrics tis/w_mean, tis/w_max (over kept tokens), tis/clip_frac (share of response tokens truncated, or
// masked by MIS).
struct IsWeights {
  at::Tensor w;     // [B, T]
  at::Tensor keep;  // [B, T] bool
  Metrics metrics;
};
IsWeights importance_weights(const at::Tensor& logp_old, const at::Tensor& logp_roll, const at::Tensor& mask,
                             const IsConfig& cfg);

// mismatch/kl = mean(logp_roll - logp_old), mismatch/k3_kl = mean(rho - log rho - 1),
// mismatch/extreme_frac = share with max(rho, 1/rho) > 2, mismatch/chi2_token = mean(rho^2) - 1.
Metrics mismatch_metrics(const at::Tensor& logp_old, const at::Tensor& logp_roll, const at::Tensor& mask);

}  // namespace moe::algo
