// Policy losses of algorithms.md: aggregation, PPO clip (grpo/dapo/drgrpo), GSPO, GMPO/RSPO, TIS/MIS,
// and the compute_policy_loss entry point.
#include "moe/algo/loss.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "algo/util.h"
#include "moe/algo/terms.h"
#include "moe/io/error.h"

namespace moe::algo {

using namespace detail;

// ---- names ----

Agg parse_agg(const std::string& name) {
  if (name == "token-mean") return Agg::token_mean;
  if (name == "seq-mean-token-mean") return Agg::seq_mean_token_mean;
  if (name == "seq-mean-token-sum") return Agg::seq_mean_token_sum;
  if (name == "seq-mean-token-sum-norm") return Agg::seq_mean_token_sum_norm;
  throw moe::UsageError("--loss-agg: unknown mode '" + name +
                        "' (token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm)");
}

const char* to_string(Agg agg) {
  switch (agg) {
    case Agg::token_mean: return "token-mean";
    case Agg::seq_mean_token_mean: return "seq-mean-token-mean";
    case Agg::seq_mean_token_sum: return "seq-mean-token-sum";
    case Agg::seq_mean_token_sum_norm: return "seq-mean-token-sum-norm";
  }
  return "?";
}

Algo parse_algo(const std::string& name) {
  if (name == "grpo") return Algo::grpo;
  if (name == "dapo") return Algo::dapo;
  if (name == "drgrpo") return Algo::drgrpo;
  if (name == "gspo") return Algo::gspo;
  if (name == "gmpo") return Algo::gmpo;
  if (name == "rspo") return Algo::rspo;
  throw moe::UsageError("--algo: unknown algorithm '" + name + "' (grpo, dapo, drgrpo, gspo, gmpo, rspo)");
}

const char* to_string(Algo algo) {
  switch (algo) {
    case Algo::grpo: return "grpo";
    case Algo::dapo: return "dapo";
    case Algo::drgrpo: return "drgrpo";
    case Algo::gspo: return "gspo";
    case Algo::gmpo: return "gmpo";
    case Algo::rspo: return "rspo";
  }
  return "?";
}

IsLevel parse_is_level(const std::string& name) {
  if (name == "off") return IsLevel::off;
  if (name == "token") return IsLevel::token;
  if (name == "seq") return IsLevel::seq;
  throw moe::UsageError("--tis: unknown level '" + name + "' (token, seq)");
}

// ---- aggregation ----

at::Tensor aggregate(const at::Tensor& loss, const at::Tensor& mask, Agg agg, double loss_scale) {
  require(loss.dim() == 2, "aggregate: loss must be [B, T], got " + shape_str(loss.sizes()));
  require_shape(mask, loss.sizes(), "aggregate: mask");
  auto valid = valid_of(mask);
  auto dt = loss.scalar_type();
  auto l = zero_invalid(loss, valid);
  auto len = row_count(valid, dt);  // L_i
  // B' = rows with L_i > 0; clamped to 1 so an all-masked batch gives 0 / 1 = 0.
  auto rows = (len > 0).sum().to(dt).clamp_min(1);
  switch (agg) {
    case Agg::token_mean: return l.sum() / len.sum().clamp_min(1);
    case Agg::seq_mean_token_mean: return (l.sum(1) / (len + 1e-8)).sum() / rows;
    case Agg::seq_mean_token_sum: return l.sum(1).sum() / rows;
    case Agg::seq_mean_token_sum_norm:
      // A constant (Dr.GRPO): a per-batch length would scale every gradient of a batch by its longest row.
      if (!(loss_scale > 0))
        throw moe::Error("seq-mean-token-sum-norm needs a constant C > 0 (--loss-scale, by default the rollout "
                         "header's max_new_tokens)");
      return l.sum() / loss_scale;
  }
  throw moe::Error("aggregate: bad mode");
}

// ---- helpers ----

namespace {

// Advantages [B] or [B, T] as a detached [B, T] tensor of `like`'s dtype.
at::Tensor broadcast_adv(const at::Tensor& adv, const at::Tensor& like) {
  require(adv.defined(), "advantages: missing tensor");
  auto a = adv.detach().to(like.scalar_type());
  if (a.dim() == 1) {
    require(a.size(0) == like.size(0), "advantages: shape " + shape_str(a.sizes()) + ", expected [" +
                                           std::to_string(like.size(0)) + "] or " + shape_str(like.sizes()));
    return a.unsqueeze(1).expand_as(like);
  }
  require_shape(a, like.sizes(), "advantages");
  return a;
}

void check_bt(const at::Tensor& d, const at::Tensor& mask, const char* who) {
  require(d.defined() && d.dim() == 2,
          std::string(who) + ": log-ratio must be [B, T]" + (d.defined() ? ", got " + shape_str(d.sizes()) : ""));
  require_shape(mask, d.sizes(), (std::string(who) + ": mask").c_str());
}

}  // namespace

// ---- PPO clip (grpo, dapo, drgrpo) ----

TokenLoss ppo_clip_loss(const at::Tensor& d, const at::Tensor& advantages, const at::Tensor& mask,
                        double eps_low, double eps_high, double dual_clip) {
  check_bt(d, mask, "ppo_clip_loss");
  auto valid = valid_of(mask);
  auto dd = zero_invalid(d, valid);
  auto A = broadcast_adv(advantages, dd);
  auto r = at::exp(dd.clamp(-20, 20));
  auto l1 = -A * r;
  auto l2 = -A * r.clamp(1 - eps_low, 1 + eps_high);
  auto lc = at::maximum(l1, l2);
  at::Tensor l = lc;
  at::Tensor lower;
  if (dual_clip > 1) {
    auto cap = -A * dual_clip;
    auto neg = A < 0;
    l = at::where(neg, at::minimum(lc, cap), lc);
    lower = neg & (lc > cap);
  } else {
    lower = at::zeros_like(valid);
  }
  TokenLoss out;
  out.loss = zero_invalid(l, valid);
  out.metrics["pg_clipfrac"] = mean_metric(l2 > l1, valid);
  out.metrics["pg_clipfrac_lower"] = mean_metric(lower, valid);
  out.metrics["ppo_kl"] = mean_metric(-dd, valid);
  return out;
}

// ---- GSPO ----

at::Tensor gspo_seq_ratio(const at::Tensor& d, const at::Tensor& mask) {
  check_bt(d, mask, "gspo_seq_ratio");
  auto valid = valid_of(mask);
  auto len = row_count(valid, d.scalar_type());
  return at::exp(zero_invalid(d, valid).sum(1) / len.clamp_min(1));
}

TokenLoss gspo_loss(const at::Tensor& d, const at::Tensor& advantages, const at::Tensor& mask, double eps_low,
                    double eps_high) {
  check_bt(d, mask, "gspo_loss");
  auto valid = valid_of(mask);
  auto dd = zero_invalid(d, valid);
  auto A = broadcast_adv(advantages, dd);
  auto log_s = dd.sum(1) / row_count(valid, dd.scalar_type()).clamp_min(1);  // log s_i, [B]
  // Token form: the value of s_i on every token, the gradient of d_t (d - sg(d) is 0 with gradient 1).
  auto log_sit = (dd - dd.detach() + log_s.detach().unsqueeze(1)).clamp_max(10);
  auto s = at::exp(log_sit);
  auto l1 = -A * s;
  auto l2 = -A * s.clamp(1 - eps_low, 1 + eps_high);
  TokenLoss out;
  out.loss = zero_invalid(at::maximum(l1, l2), valid);
  out.metrics["pg_clipfrac"] = mean_metric(l2 > l1, valid);
  out.metrics["ppo_kl"] = mean_metric(-dd, valid);
  return out;
}

// ---- GMPO ----

at::Tensor gmpo_clipped_log_ratio(const at::Tensor& d, const at::Tensor& advantages, double eps_low,
                                  double eps_high) {
  auto A = broadcast_adv(advantages, d);
  auto sigma = at::sign(A);
  auto dc = d.clamp(-eps_low, eps_high);
  return sigma * at::minimum(sigma * d, sigma * dc);
}

at::Tensor gmpo_row_ratio(const at::Tensor& d, const at::Tensor& advantages, const at::Tensor& mask,
                          double eps_low, double eps_high, const at::Tensor& log_shift) {
  check_bt(d, mask, "gmpo_row_ratio");
  auto valid = valid_of(mask);
  auto dd = zero_invalid(d, valid);
  auto dstar = gmpo_clipped_log_ratio(dd, advantages, eps_low, eps_high);
  if (log_shift.defined()) {
    require_shape(log_shift, d.sizes(), "gmpo_row_ratio: log_shift");
    dstar = dstar + log_shift.to(dd.scalar_type());  // d** = d* + log g: after the clip
  }
  dstar = zero_invalid(dstar, valid);
  return at::exp(dstar.sum(1) / (row_count(valid, dd.scalar_type()) + 1e-8));
}

LossOutputs gmpo_loss(const at::Tensor& d, const at::Tensor& advantages, const at::Tensor& mask,
                      double eps_low, double eps_high, const at::Tensor& row_weight, const at::Tensor& log_shift) {
  check_bt(d, mask, "gmpo_loss");
  auto valid = valid_of(mask);
  auto dd = zero_invalid(d, valid);
  auto dt = dd.scalar_type();
  auto A = broadcast_adv(advantages, dd);
  auto S = gmpo_row_ratio(dd, A, valid, eps_low, eps_high, log_shift);
  auto abar = zero_invalid(A, valid).sum(1) / (row_count(valid, dt) + 1e-8);
  auto rows = abar * S;
  if (row_weight.defined()) {
    require(row_weight.dim() == 1 && row_weight.size(0) == dd.size(0),
            "gmpo_loss: row_weight must be [B], got " + shape_str(row_weight.sizes()));
    rows = rows * row_weight.detach().to(dt);
  }
  LossOutputs out;
  out.loss = -rows.sum() / static_cast<double>(std::max<int64_t>(dd.size(0), 1));
  auto clipped = dd != dd.clamp(-eps_low, eps_high);
  out.metrics["pg_clipfrac"] = mean_metric(clipped & (A > 0), valid);
  out.metrics["pg_clipfrac_lower"] = mean_metric(clipped & (A < 0), valid);
  out.metrics["ppo_kl"] = mean_metric(-dd, valid);
  return out;
}

// ---- train-inference mismatch ----

namespace {
at::Tensor clamped_log_rho(const at::Tensor& logp_old, const at::Tensor& logp_roll, const at::Tensor& valid) {
  return zero_invalid((logp_old.detach() - logp_roll.detach().to(logp_old.scalar_type())).clamp(-20, 20), valid);
}
}  // namespace

IsWeights importance_weights(const at::Tensor& logp_old, const at::Tensor& logp_roll, const at::Tensor& mask,
                             const IsConfig& cfg) {
  check_bt(logp_old, mask, "importance_weights");
  require_shape(logp_roll, logp_old.sizes(), "importance_weights: logp_roll");
  auto valid = valid_of(mask);
  auto log_rho = clamped_log_rho(logp_old, logp_roll, valid);
  at::Tensor rho;
  if (cfg.level == IsLevel::seq) {
    rho = at::exp(log_rho.sum(1).clamp(-20, 20)).unsqueeze(1).expand_as(log_rho);
  } else {
    rho = at::exp(log_rho);
  }
  IsWeights out;
  at::Tensor cut;  // tokens truncated (TIS) or dropped (MIS)
  if (cfg.mis) {
    out.keep = (rho >= cfg.mis->first) & (rho <= cfg.mis->second);
    out.w = rho;
    cut = ~out.keep;
  } else {
    out.keep = at::ones_like(valid);
    out.w = at::minimum(rho, at::full_like(rho, cfg.cap));
    cut = rho > cfg.cap;
  }
  out.w = at::where(valid, out.w, at::ones_like(out.w));
  auto kept = valid & out.keep;
  out.metrics["tis/w_mean"] = mean_metric(out.w, kept);
  out.metrics["tis/w_max"] = kept.any().item<bool>() ? to_double(zero_invalid(out.w, kept).max()) : 0.0;
  out.metrics["tis/clip_frac"] = mean_metric(cut, valid);
  return out;
}

Metrics mismatch_metrics(const at::Tensor& logp_old, const at::Tensor& logp_roll, const at::Tensor& mask) {
  check_bt(logp_old, mask, "mismatch_metrics");
  require_shape(logp_roll, logp_old.sizes(), "mismatch_metrics: logp_roll");
  auto valid = valid_of(mask);
  auto diff = zero_invalid(logp_old.detach().to(at::kDouble) - logp_roll.detach().to(at::kDouble), valid);
  auto log_rho = diff.clamp(-20, 20);
  auto rho = at::exp(log_rho);
  Metrics m;
  bool any = valid.any().item<bool>();
  m["mismatch/kl"] = mean_metric(-diff, valid);
  m["mismatch/k3_kl"] = mean_metric(rho - log_rho - 1, valid);
  m["mismatch/extreme_frac"] = mean_metric(at::maximum(rho, 1 / rho) > 2, valid);
  m["mismatch/chi2_token"] = any ? mean_metric(rho * rho, valid) - 1 : 0.0;
  return m;
}

// ---- configuration ----

LossConfig with_defaults(LossConfig cfg) {
  double lo = 0.2, hi = 0.2;
  Agg agg = Agg::token_mean;
  switch (cfg.algo) {
    case Algo::grpo: break;
    case Algo::dapo: hi = 0.28; break;
    case Algo::drgrpo: agg = Agg::seq_mean_token_sum_norm; break;
    case Algo::gspo:
      lo = 3e-4;
      hi = 4e-4;
      if (cfg.loss_agg && *cfg.loss_agg != Agg::seq_mean_token_mean)
        throw moe::UsageError(std::string("--algo gspo forces --loss-agg seq-mean-token-mean, got ") +
                              to_string(*cfg.loss_agg));
      agg = Agg::seq_mean_token_mean;
      break;
    case Algo::gmpo: lo = hi = 0.4; break;
    case Algo::rspo:
      lo = hi = 0.4;
      cfg.router_shift = true;
      break;
  }
  if (!cfg.eps_low) cfg.eps_low = lo;
  if (!cfg.eps_high) cfg.eps_high = hi;
  if (!cfg.loss_agg) cfg.loss_agg = agg;
  if (!(*cfg.eps_low >= 0) || !(*cfg.eps_high >= 0)) throw moe::UsageError("clip ranges must be >= 0");
  bool ppo = cfg.algo == Algo::grpo || cfg.algo == Algo::dapo || cfg.algo == Algo::drgrpo || cfg.algo == Algo::gspo;
  if (ppo && !(*cfg.eps_low < 1)) throw moe::UsageError("--eps-low must be < 1 for a ratio clip");
  if (!(cfg.loss_scale >= 0))
    throw moe::UsageError("--loss-scale must be >= 0 (0: the rollout header's max_new_tokens)");
  if (!(cfg.rs.floor >= 0 && cfg.rs.floor <= 1)) throw moe::UsageError("--rs-floor must be in [0, 1]");
  if (!(cfg.rs.mask_below >= 0 && cfg.rs.mask_below <= 1)) throw moe::UsageError("--rs-mask must be in [0, 1]");
  if (!(cfg.is.cap > 0)) throw moe::UsageError("--tis-cap must be > 0");
  if (cfg.is.mis && !(cfg.is.mis->first >= 0 && cfg.is.mis->first <= cfg.is.mis->second))
    throw moe::UsageError("--mis LO,HI needs 0 <= LO <= HI");
  return cfg;
}

Agg effective_agg(const LossConfig& resolved) {
  if (resolved.algo == Algo::gspo) return Agg::seq_mean_token_mean;
  return resolved.loss_agg.value_or(Agg::token_mean);
}

// ---- entry point ----

LossOutputs compute_policy_loss(const LossConfig& config, const LossInputs& in) {
  const LossConfig cfg = with_defaults(config);
  require(in.logp.defined() && in.logp.dim() == 2,
          "compute_policy_loss: logp must be [B, T]" + (in.logp.defined() ? ", got " + shape_str(in.logp.sizes()) : ""));
  require(at::isFloatingType(in.logp.scalar_type()), "compute_policy_loss: logp must be floating point");
  auto shape = in.logp.sizes();
  auto dt = in.logp.scalar_type();
  require_shape(in.logp_old, shape, "compute_policy_loss: logp_old");
  require_shape(in.mask, shape, "compute_policy_loss: mask");
  auto valid = valid_of(in.mask);
  auto logp = zero_invalid(in.logp, valid);
  auto d = zero_invalid(logp - in.logp_old.detach().to(dt), valid);
  auto A = broadcast_adv(in.advantages, d);

  Metrics metrics;
  auto eff = valid;  // tokens that train: response tokens minus --rs-mask and --mis drops

  // Router shift: log g_t on the response tokens (0 elsewhere). after-clip (default) reweights the clipped
  // per-token loss by g_t (GMPO/RSPO: d** = d* + log g); pre-clip (ablation) runs the base algorithm on
  // d~ = d + log g. g is detached unless --rs-grad.
  at::Tensor log_g;
  if (cfg.router_shift) {
    at::Tensor g;
    if (in.rs_factors.defined()) {
      require_shape(in.rs_factors, shape, "compute_policy_loss: rs_factors");
      g = (cfg.rs.grad ? in.rs_factors : in.rs_factors.detach()).to(dt);
    } else {
      require(in.router_p_old.defined() && in.router_p_new.defined(),
              std::string("--algo ") + to_string(cfg.algo) +
                  " with router shift needs router probabilities (router_p_old, router_p_new) or rs_factors");
      RouterShift rs = router_shift(in.router_p_old, in.router_p_new, in.mask, cfg.rs);
      g = rs.g.to(dt);
      eff = eff & rs.keep;
      metrics.insert(rs.metrics.begin(), rs.metrics.end());
    }
    require(at::where(valid, g.detach() > 0, at::ones_like(valid)).all().item<bool>(),
            "compute_policy_loss: router-shift factors must be > 0");
    log_g = zero_invalid(at::log(g), valid);
  }
  const bool pre_clip = log_g.defined() && cfg.rs.apply == RsApply::pre_clip;
  const at::Tensor dshift = pre_clip ? d + log_g : d;
  const at::Tensor g_after = log_g.defined() && !pre_clip ? at::exp(log_g) : at::Tensor();  // 1 off-response
  if (in.router_idx_old.defined() && in.router_idx_new.defined())
    metrics["router_shift/unshifted_frac"] = unshifted_frac(in.router_idx_old, in.router_idx_new, in.mask);

  at::Tensor w;  // importance weights, undefined when off
  if (in.logp_roll.defined()) {
    Metrics mm = mismatch_metrics(in.logp_old, in.logp_roll, in.mask);
    metrics.insert(mm.begin(), mm.end());
  }
  if (cfg.is.active()) {
    require(in.logp_roll.defined(), "--tis/--mis need rollout log-probs (logp_roll)");
    IsWeights isw = importance_weights(in.logp_old.detach().to(dt), in.logp_roll, in.mask, cfg.is);
    w = isw.w.to(dt);
    eff = eff & isw.keep;
    metrics.insert(isw.metrics.begin(), isw.metrics.end());
  }

  const double lo = *cfg.eps_low, hi = *cfg.eps_high;
  const Agg agg = effective_agg(cfg);
  at::Tensor pg;
  switch (cfg.algo) {
    case Algo::grpo:
    case Algo::dapo:
    case Algo::drgrpo: {
      TokenLoss tl = ppo_clip_loss(dshift, A, eff, lo, hi, cfg.dual_clip);
      auto l = w.defined() ? tl.loss * w : tl.loss;
      if (g_after.defined()) l = l * g_after;  // after the dual clip
      pg = aggregate(l, eff, agg, cfg.loss_scale);
      metrics.insert(tl.metrics.begin(), tl.metrics.end());
      break;
    }
    case Algo::gspo: {
      TokenLoss tl = gspo_loss(dshift, A, eff, lo, hi);
      auto l = w.defined() ? tl.loss * w : tl.loss;
      if (g_after.defined()) l = l * g_after;
      pg = aggregate(l, eff, agg, cfg.loss_scale);
      metrics.insert(tl.metrics.begin(), tl.metrics.end());
      break;
    }
    case Algo::gmpo:
    case Algo::rspo: {
      at::Tensor row_weight;
      if (w.defined())  // geometric mean of w over the row's kept tokens
        row_weight = at::exp(zero_invalid(at::log(w), eff).sum(1) / (row_count(eff, dt) + 1e-8));
      LossOutputs gl = gmpo_loss(dshift, A, eff, lo, hi, row_weight, g_after.defined() ? log_g : at::Tensor());
      pg = gl.loss;
      metrics.insert(gl.metrics.begin(), gl.metrics.end());
      break;
    }
  }
  // ppo_kl measures the policy change itself: unshifted d, over the tokens that train.
  metrics["ppo_kl"] = mean_metric(-d, eff);
  metrics["pg_loss"] = to_double(pg);

  at::Tensor loss = pg;
  if (in.logp_ref.defined()) {
    require_shape(in.logp_ref, shape, "compute_policy_loss: logp_ref");
    auto kl = aggregate(kl_k3(logp, zero_invalid(in.logp_ref.detach().to(dt), valid)), eff, agg, cfg.loss_scale);
    metrics["kl"] = to_double(kl);
    if (cfg.kl_coef != 0) loss = loss + cfg.kl_coef * kl;
  } else {
    require(cfg.kl_coef == 0, "--kl-coef needs reference log-probs (logp_ref)");
  }
  if (in.entropy.defined() || in.logits.defined()) {
    at::Tensor ent;
    if (in.entropy.defined()) {
      require_shape(in.entropy, shape, "compute_policy_loss: entropy");
      ent = in.entropy.to(dt);
    } else {
      require(in.logits.dim() == 3 && in.logits.size(0) == shape[0] && in.logits.size(1) == shape[1],
              "compute_policy_loss: logits must be [B, T, V], got " + shape_str(in.logits.sizes()));
      ent = token_entropy(in.logits).to(dt);
    }
    metrics["entropy"] = mean_metric(ent, valid);
    if (cfg.entropy_coef != 0) loss = loss - cfg.entropy_coef * aggregate(ent, eff, agg, cfg.loss_scale);
  } else {
    require(cfg.entropy_coef == 0, "--entropy-coef needs the logits or the entropy");
  }
  if (in.aux_loss.defined()) {
    require(in.aux_loss.numel() == 1, "compute_policy_loss: aux_loss must be a scalar");
    metrics["aux_loss"] = to_double(in.aux_loss);
    if (cfg.aux_coef != 0) loss = loss + cfg.aux_coef * in.aux_loss.reshape({}).to(dt);
  } else {
    require(cfg.aux_coef == 0, "--aux-coef needs the load-balancing loss (aux_loss)");
  }
  return {loss, metrics};
}

}  // namespace moe::algo
