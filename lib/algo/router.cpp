// Router shift ratio, routing agreement, replay gating and the load-balancing loss (algorithms.md).
#include "moe/algo/router.h"

#include <ATen/ATen.h>

#include "algo/util.h"
#include "moe/io/error.h"

namespace moe::algo {

using namespace detail;

RsForm parse_rs_form(const std::string& name) {
  if (name == "paper") return RsForm::paper;
  if (name == "mean-exp") return RsForm::mean_exp;
  throw moe::UsageError("--rs-form: unknown form '" + name + "' (paper, mean-exp)");
}

RsLayerAgg parse_rs_layer_agg(const std::string& name) {
  if (name == "mean") return RsLayerAgg::mean;
  if (name == "product") return RsLayerAgg::product;
  if (name == "geomean") return RsLayerAgg::geomean;
  throw moe::UsageError("--rs-layer-agg: unknown mode '" + name + "' (mean, product, geomean)");
}

RsApply parse_rs_apply(const std::string& name) {
  if (name == "after-clip") return RsApply::after_clip;
  if (name == "pre-clip") return RsApply::pre_clip;
  throw moe::UsageError("--rs-apply: unknown placement '" + name + "' (after-clip, pre-clip)");
}

const char* to_string(RsForm form) { return form == RsForm::paper ? "paper" : "mean-exp"; }

const char* to_string(RsApply apply) { return apply == RsApply::after_clip ? "after-clip" : "pre-clip"; }

const char* to_string(RsLayerAgg agg) {
  switch (agg) {
    case RsLayerAgg::mean: return "mean";
    case RsLayerAgg::product: return "product";
    case RsLayerAgg::geomean: return "geomean";
  }
  return "?";
}

namespace {

void check_bt_mask(const at::Tensor& t, const at::Tensor& mask, const char* who) {
  require(t.defined() && t.dim() == 4,
          std::string(who) + ": expected [B, T, L, K]" + (t.defined() ? ", got " + shape_str(t.sizes()) : ""));
  require_shape(mask, t.sizes().slice(0, 2), (std::string(who) + ": mask").c_str());
}

// [B, T, L] true where the two index sets agree (sorted comparison: order-insensitive).
at::Tensor layer_sets_equal(const at::Tensor& a, const at::Tensor& b, const char* who) {
  require(a.defined() && b.defined() && a.sizes() == b.sizes(),
          std::string(who) + ": index tensors differ in shape: " + (a.defined() ? shape_str(a.sizes()) : "none") +
              " vs " + (b.defined() ? shape_str(b.sizes()) : "none"));
  auto sa = std::get<0>(a.to(at::kLong).sort(-1));
  auto sb = std::get<0>(b.to(at::kLong).sort(-1));
  return (sa == sb).all(-1);
}

}  // namespace

RouterShift router_shift(const at::Tensor& p_old, const at::Tensor& p_new, const at::Tensor& mask,
                         const RouterShiftConfig& cfg) {
  check_bt_mask(p_old, mask, "router_shift: p_old");
  require_shape(p_new, p_old.sizes(), "router_shift: p_new");
  auto dt = at_least_float(at::promote_types(p_old.scalar_type(), p_new.scalar_type()));
  auto valid = valid_of(mask);
  auto lo = at::log(p_old.detach().to(dt).clamp_min(1e-8));
  // --rs-grad keeps p_new's graph (the ablation without stop-gradient); metrics below use detached copies.
  auto ln = at::log((cfg.grad ? p_new : p_new.detach()).to(dt).clamp_min(1e-8));
  auto dlog = (ln - lo).abs();  // [B, T, L, K]
  at::Tensor gamma;
  if (cfg.form == RsForm::paper) {
    gamma = at::exp(-dlog.mean({2, 3}));
  } else {
    auto per_layer = at::exp(-dlog).mean(3);  // [B, T, L]
    switch (cfg.layer_agg) {
      case RsLayerAgg::mean: gamma = per_layer.mean(2); break;
      case RsLayerAgg::product: gamma = per_layer.prod(2); break;
      case RsLayerAgg::geomean: gamma = at::exp(at::log(per_layer).mean(2)); break;
    }
  }
  gamma = at::where(valid, gamma, at::ones_like(gamma));
  RouterShift out;
  out.g = gamma.clamp_min(cfg.floor);  // differentiable only with cfg.grad (ln carries no graph otherwise)
  gamma = gamma.detach();
  out.gamma = gamma;
  out.keep = cfg.mask_below > 0 ? (gamma >= cfg.mask_below) : at::ones_like(valid);

  auto delta = -at::log(gamma);
  Metrics& m = out.metrics;
  bool any = valid.any().item<bool>();
  if (any) {
    auto gv = gamma.masked_select(valid).to(at::kDouble);
    auto dv = delta.masked_select(valid).to(at::kDouble);
    m["router_shift/gamma_mean"] = to_double(gv.mean());
    m["router_shift/gamma_min"] = to_double(gv.min());
    m["router_shift/gamma_max"] = to_double(gv.max());
    m["router_shift/delta_mean"] = to_double(dv.mean());
    m["router_shift/delta_p90"] = to_double(at::quantile(dv, 0.9));
  } else {
    m["router_shift/gamma_mean"] = m["router_shift/gamma_min"] = m["router_shift/gamma_max"] = 1.0;
    m["router_shift/delta_mean"] = m["router_shift/delta_p90"] = 0.0;
  }
  m["router_shift/floor_frac"] = mean_metric(gamma < cfg.floor, valid);
  m["router_shift/mask_frac"] = mean_metric(~out.keep, valid);
  return out;
}

double unshifted_frac(const at::Tensor& idx_old, const at::Tensor& idx_new, const at::Tensor& mask) {
  check_bt_mask(idx_old, mask, "unshifted_frac");
  auto same = layer_sets_equal(idx_old, idx_new, "unshifted_frac").all(-1);  // [B, T]
  return mean_metric(same, valid_of(mask));
}

Metrics routing_agreement(const at::Tensor& idx_rollout, const at::Tensor& idx_native, const at::Tensor& mask) {
  check_bt_mask(idx_rollout, mask, "routing_agreement");
  auto valid = valid_of(mask);
  auto differ = ~layer_sets_equal(idx_rollout, idx_native, "routing_agreement");  // [B, T, L]
  auto n_layers = differ.to(at::kDouble).sum(-1);                                  // [B, T]
  const double L = static_cast<double>(idx_rollout.size(2));
  Metrics m;
  m["routing/layers_differing_mean"] = mean_metric(n_layers, valid);
  m["routing/layer_mismatch"] = L > 0 ? m["routing/layers_differing_mean"] / L : 0.0;
  m["routing/token_mismatch"] = mean_metric(n_layers > 0, valid);
  return m;
}

at::Tensor replay_gating(const at::Tensor& router_logits, const at::Tensor& indices, bool norm_topk_prob,
                         bool validate) {
  require(router_logits.defined() && indices.defined() && router_logits.dim() >= 1 &&
              indices.dim() == router_logits.dim() &&
              router_logits.sizes().slice(0, router_logits.dim() - 1) == indices.sizes().slice(0, indices.dim() - 1),
          "replay_gating: logits [..., E] and indices [..., K] disagree: " +
              (router_logits.defined() ? shape_str(router_logits.sizes()) : "none") + " vs " +
              (indices.defined() ? shape_str(indices.sizes()) : "none"));
  require(!at::isFloatingType(indices.scalar_type()), "replay_gating: indices must be integers");
  const int64_t E = router_logits.size(-1);
  auto idx = indices.to(at::kLong);
  if (validate && idx.numel() > 0) {
    auto lo = idx.min().item<int64_t>(), hi = idx.max().item<int64_t>();
    if (lo < 0 || hi >= E)
      throw moe::Error("replayed expert index " + std::to_string(lo < 0 ? lo : hi) + " is out of range [0, " +
                       std::to_string(E) + ")");
    if (idx.size(-1) > 1) {
      auto sorted = std::get<0>(idx.sort(-1));
      auto dup = (sorted.narrow(-1, 1, idx.size(-1) - 1) == sorted.narrow(-1, 0, idx.size(-1) - 1)).any();
      if (dup.item<bool>()) throw moe::Error("replayed expert indices repeat an expert within a token's top-K");
    }
  }
  auto dt = at_least_float(router_logits.scalar_type());
  auto probs = at::softmax(router_logits.to(dt), -1);
  auto w = probs.gather(-1, idx);
  if (norm_topk_prob) w = w / w.sum(-1, /*keepdim=*/true);
  return w;
}

at::Tensor load_balancing_loss(const at::Tensor& router_logits, const at::Tensor& indices, const at::Tensor& mask) {
  require(router_logits.defined() && indices.defined() && router_logits.dim() >= 1 &&
              indices.dim() == router_logits.dim() &&
              router_logits.sizes().slice(0, router_logits.dim() - 1) == indices.sizes().slice(0, indices.dim() - 1),
          "load_balancing_loss: logits [..., E] and indices [..., K] disagree");
  const int64_t E = router_logits.size(-1), K = indices.size(-1);
  auto dt = at_least_float(router_logits.scalar_type());
  auto probs = at::softmax(router_logits.to(dt), -1).reshape({-1, E});  // [N, E]
  auto idx = indices.to(at::kLong).reshape({-1, K});                     // [N, K]
  at::Tensor valid;
  if (mask.defined()) {
    require(mask.numel() == probs.size(0), "load_balancing_loss: mask must cover the tokens [...]");
    valid = valid_of(mask).reshape({-1});
  } else {
    valid = at::ones({probs.size(0)}, probs.options().dtype(at::kBool));
  }
  auto n = valid.sum().to(dt).clamp_min(1);
  auto vcol = valid.unsqueeze(1);
  auto P = zero_invalid(probs, vcol.expand_as(probs)).sum(0) / n;  // [E]
  auto counts = at::one_hot(idx, E).sum(1).to(dt);                 // [N, E]
  auto f = zero_invalid(counts, vcol.expand_as(counts)).sum(0) / (n * static_cast<double>(std::max<int64_t>(K, 1)));
  return static_cast<double>(E) * (f.detach() * P).sum();
}

}  // namespace moe::algo
