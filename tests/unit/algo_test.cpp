// lib/algo against algorithms.md: every worked example (values, metrics, autograd gradients, 1e-6 in double),
// finite-difference gradient checks on random inputs, on-policy sanity and edge cases.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "moe/algo/loss.h"
#include "moe/algo/router.h"
#include "moe/algo/terms.h"
#include "moe/io/error.h"

using namespace moe::algo;

namespace {

using Rows = std::vector<std::vector<double>>;
constexpr double kTol = 1e-6;
const double kNaN = std::numeric_limits<double>::quiet_NaN();

at::Tensor mat(const Rows& rows) {
  const int64_t B = rows.size(), T = rows.at(0).size();
  auto t = at::zeros({B, T}, at::kDouble);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t j = 0; j < T; ++j) t[i][j] = rows[i].at(j);
  return t;
}

at::Tensor vec(const std::vector<double>& v) {
  auto t = at::zeros({static_cast<int64_t>(v.size())}, at::kDouble);
  for (size_t i = 0; i < v.size(); ++i) t[i] = v[i];
  return t;
}

double val(const at::Tensor& t) { return t.detach().to(at::kDouble).item<double>(); }

// Elementwise |got - want| <= tol.
void check_close(const at::Tensor& got, const at::Tensor& want, double tol = kTol) {
  REQUIRE(got.sizes() == want.sizes());
  auto g = got.detach().to(at::kDouble).contiguous().reshape({-1});
  auto w = want.to(at::kDouble).contiguous().reshape({-1});
  for (int64_t i = 0; i < g.numel(); ++i) {
    INFO("element " << i << ": got " << g[i].item<double>() << ", want " << w[i].item<double>());
    CHECK(std::abs(g[i].item<double>() - w[i].item<double>()) <= tol);
  }
}

void check_close(double got, double want, double tol = kTol) {
  INFO("got " << got << ", want " << want);
  CHECK(std::abs(got - want) <= tol);
}

void check_metric(const Metrics& m, const std::string& name, double want, double tol = kTol) {
  INFO("metric " << name);
  auto it = m.find(name);
  REQUIRE(it != m.end());
  check_close(it->second, want, tol);
}

at::Tensor grad_of(const at::Tensor& loss, const at::Tensor& x) {
  auto g = torch::autograd::grad({loss}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/false,
                                 /*allow_unused=*/true)[0];
  return g.defined() ? g : at::zeros_like(x);
}

// The worked-example batch of algorithms.md (padding 0 with m = 0).
struct Example {
  at::Tensor logp_old = mat({{-1.0, -0.5, -2.0, -0.3}, {-0.3, -2.4, -0.7, 0}});
  at::Tensor logp = mat({{-0.8, -0.6, -1.5, -0.35}, {-0.5, -1.2, -1.15, 0}}).requires_grad_(true);
  at::Tensor mask = mat({{1, 1, 1, 1}, {1, 1, 1, 0}});
  at::Tensor adv = vec({0.70710578, -0.70710578});
  at::Tensor logp_roll = logp_old - mat({{0, 0.1, 1.0, -0.05}, {0.02, -0.3, 0, 0}});

  LossInputs inputs() const {
    LossInputs in;
    in.logp = logp;
    in.logp_old = logp_old;
    in.advantages = adv;
    in.mask = mask;
    return in;
  }
  at::Tensor d() const { return logp.detach() - logp_old; }
};

LossConfig config(Algo algo) {
  LossConfig c;
  c.algo = algo;
  c.loss_scale = 4;  // C of seq-mean-token-sum-norm (worked example 1: the generation budget 4)
  return c;
}

// Random batch: B = 3 rows with 5, 3 and 4 valid tokens; mixed-sign advantages; rollout log-probs and router
// probabilities [B, T, 2 layers, 2] near the old ones.
struct RandomBatch {
  at::Tensor logp, logp_old, logp_roll, logp_ref, mask, adv, adv_tok, p_old, p_new;
  explicit RandomBatch(unsigned seed) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<double> u(0, 1);
    const int64_t B = 3, T = 5;
    const int64_t len[B] = {5, 3, 4};
    logp_old = at::zeros({B, T}, at::kDouble);
    logp = at::zeros({B, T}, at::kDouble);
    logp_roll = at::zeros({B, T}, at::kDouble);
    logp_ref = at::zeros({B, T}, at::kDouble);
    mask = at::zeros({B, T}, at::kDouble);
    adv_tok = at::zeros({B, T}, at::kDouble);
    p_old = at::zeros({B, T, 2, 2}, at::kDouble);
    p_new = at::zeros({B, T, 2, 2}, at::kDouble);
    adv = vec({0.9, -1.3, 0.4});
    for (int64_t i = 0; i < B; ++i)
      for (int64_t j = 0; j < T; ++j) {
        double lo = -3 + 2.9 * u(gen);
        logp_old[i][j] = lo;
        logp[i][j] = lo + 1.2 * (u(gen) - 0.5);
        logp_roll[i][j] = lo + 1.6 * (u(gen) - 0.5);
        logp_ref[i][j] = lo + 1.0 * (u(gen) - 0.5);
        mask[i][j] = j < len[i] ? 1.0 : 0.0;
        adv_tok[i][j] = 2 * (u(gen) - 0.5);
        for (int l = 0; l < 2; ++l)
          for (int k = 0; k < 2; ++k) {
            double p = 0.05 + 0.5 * u(gen);
            p_old[i][j][l][k] = p;
            p_new[i][j][l][k] = p * std::exp(1.0 * (u(gen) - 0.5));
          }
      }
  }
  LossInputs inputs(const at::Tensor& x) const {
    LossInputs in;
    in.logp = x;
    in.logp_old = logp_old;
    in.advantages = adv;
    in.mask = mask;
    in.logp_roll = logp_roll;
    in.router_p_old = p_old;
    in.router_p_new = p_new;
    return in;
  }
};

// Autograd gradient of loss_of at x0 against central differences (h = 1e-6), elementwise.
void fd_check(const std::function<at::Tensor(const at::Tensor&)>& loss_of, const at::Tensor& x0) {
  auto x = x0.detach().clone().requires_grad_(true);
  auto g = grad_of(loss_of(x), x).contiguous();
  const double h = 1e-6;
  auto base = x0.detach().contiguous();
  for (int64_t i = 0; i < base.numel(); ++i) {
    auto xp = base.clone(), xm = base.clone();
    xp.data_ptr<double>()[i] += h;
    xm.data_ptr<double>()[i] -= h;
    double fd = (val(loss_of(xp)) - val(loss_of(xm))) / (2 * h);
    double ga = g.data_ptr<double>()[i];
    INFO("element " << i << ": autograd " << ga << ", finite difference " << fd);
    CHECK(std::abs(ga - fd) <= 1e-6 * (1 + std::abs(fd)));
  }
}

}  // namespace

// ---------------------------------------------------------------- worked examples

TEST_CASE("algo: worked example 1, GRPO token-mean (values, metrics, gradient)", "[algo]") {
  Example ex;
  auto out = compute_policy_loss(config(Algo::grpo), ex.inputs());
  check_close(val(out.loss), 0.036634535);
  check_metric(out.metrics, "pg_clipfrac", 3.0 / 7);
  check_metric(out.metrics, "pg_clipfrac_lower", 1.0 / 7);
  check_metric(out.metrics, "ppo_kl", -0.15714286);
  check_close(grad_of(out.loss, ex.logp), mat({{0, -0.091402253, 0, -0.096088546}, {0.082704178, 0, 0, 0}}));
  // The building blocks give the same.
  auto tl = ppo_clip_loss(ex.d(), ex.adv, ex.mask, 0.2, 0.2, 3);
  check_close(val(aggregate(tl.loss, ex.mask, Agg::token_mean)), 0.036634535);
  check_metric(tl.metrics, "pg_clipfrac", 3.0 / 7);
}

TEST_CASE("algo: worked example 1, aggregations, DAPO and Dr.GRPO", "[algo]") {
  Example ex;
  auto with_agg = [&](Agg agg, double scale) {
    auto c = config(Algo::grpo);
    c.loss_agg = agg;
    c.loss_scale = scale;
    return val(compute_policy_loss(c, ex.inputs()).loss);
  };
  check_close(with_agg(Agg::token_mean, 0), 0.036634535);
  check_close(with_agg(Agg::seq_mean_token_mean, 0), 0.16813568);
  check_close(with_agg(Agg::seq_mean_token_sum, 0), 0.12822087);
  check_close(with_agg(Agg::seq_mean_token_sum_norm, 4), 0.064110437);
  // C is a constant: never defaulted to a batch's longest response (the train step passes max_new_tokens).
  CHECK_THROWS_AS(with_agg(Agg::seq_mean_token_sum_norm, 0), moe::Error);

  auto dapo = compute_policy_loss(config(Algo::dapo), ex.inputs());
  check_close(val(dapo.loss), 0.026391324);
  check_metric(dapo.metrics, "pg_clipfrac", 2.0 / 7);

  ex.adv = vec({0.5, -0.5});  // moe-reward's drgrpo advantages
  auto drc = config(Algo::drgrpo);
  drc.loss_scale = 4;
  auto dr = compute_policy_loss(drc, ex.inputs());
  check_close(val(dr.loss), 0.045332989);
}

TEST_CASE("algo: seq-mean-token-sum-norm: one long response does not rescale the others' gradients", "[algo]") {
  // Dr.GRPO with C = 4: appending a row of 9 tokens leaves the gradient of the first two rows unchanged
  // (with the old per-batch C = longest response it was divided by 9 / 4).
  Example ex;
  auto c = config(Algo::drgrpo);
  c.loss_scale = 4;
  auto in = ex.inputs();
  auto g2 = grad_of(compute_policy_loss(c, in).loss, ex.logp);
  auto pad = [](const at::Tensor& t, double v) { return at::cat({t, at::full({t.size(0), 5}, v, t.options())}, 1); };
  auto logp = at::cat({pad(ex.logp.detach(), 0), at::full({1, 9}, -1.0, at::kDouble)}).requires_grad_(true);
  LossInputs big;
  big.logp = logp;
  big.logp_old = at::cat({pad(ex.logp_old, 0), at::full({1, 9}, -1.1, at::kDouble)});
  big.mask = at::cat({pad(ex.mask, 0), at::ones({1, 9}, at::kDouble)});
  big.advantages = vec({0.70710578, -0.70710578, 0.3});
  auto g3 = grad_of(compute_policy_loss(c, big).loss, logp);
  check_close(g3.narrow(0, 0, 2).narrow(1, 0, 4), g2, 1e-12);
}

TEST_CASE("algo: worked example 2, GRPO + TIS token and mismatch metrics", "[algo]") {
  Example ex;
  IsConfig is;
  is.level = IsLevel::token;
  auto isw = importance_weights(ex.logp_old, ex.logp_roll, ex.mask, is);
  check_close(isw.w, mat({{1, 1.1051709, 2, 0.95122942}, {1.0202013, 0.74081822, 1, 1}}));

  auto c = config(Algo::grpo);
  c.is = is;
  auto in = ex.inputs();
  in.logp_roll = ex.logp_roll;
  auto out = compute_policy_loss(c, in);
  check_close(val(out.loss), -0.16638326);
  check_close(grad_of(out.loss, ex.logp), mat({{0, -0.10101511, 0, -0.091402253}, {0.084374914, 0, 0, 0}}));
  check_metric(out.metrics, "mismatch/kl", -0.11);
  check_metric(out.metrics, "mismatch/k3_kl", 0.10938596);
  check_metric(out.metrics, "mismatch/chi2_token", 0.87213124);
  check_metric(out.metrics, "mismatch/extreme_frac", 1.0 / 7);
  check_metric(out.metrics, "tis/w_mean", (1 + 1.1051709 + 2 + 0.95122942 + 1.0202013 + 0.74081822 + 1) / 7);
  check_metric(out.metrics, "tis/w_max", 2);
  check_metric(out.metrics, "tis/clip_frac", 1.0 / 7);
  // The PPO metrics are those of example 1: TIS only reweights.
  check_metric(out.metrics, "pg_clipfrac", 3.0 / 7);

  // Mismatch metrics are logged whenever rollout log-probs are present, even without --tis.
  auto plain = compute_policy_loss(config(Algo::grpo), in);
  check_close(val(plain.loss), 0.036634535);
  check_metric(plain.metrics, "mismatch/k3_kl", 0.10938596);
  CHECK(plain.metrics.count("tis/w_mean") == 0);
}

TEST_CASE("algo: worked example 3, GSPO", "[algo]") {
  Example ex;
  check_close(gspo_seq_ratio(ex.d(), ex.mask), vec({1.1474017, 1.2012147}));
  auto out = compute_policy_loss(config(Algo::gspo), ex.inputs());
  check_close(val(out.loss), 0.070998633);
  check_metric(out.metrics, "pg_clipfrac", 4.0 / 7);
  const double g = 0.14156431;
  check_close(grad_of(out.loss, ex.logp), mat({{0, 0, 0, 0}, {g, g, g, 0}}));
}

TEST_CASE("algo: worked example 4, GMPO", "[algo]") {
  Example ex;
  auto dstar = gmpo_clipped_log_ratio(ex.d(), ex.adv, 0.4, 0.4) * ex.mask;
  check_close(dstar, mat({{0.2, -0.1, 0.4, -0.05}, {-0.2, 1.2, -0.4, 0}}));
  check_close(gmpo_row_ratio(ex.d(), ex.adv, ex.mask, 0.4, 0.4), vec({1.1190723, 1.2214028}));
  auto out = compute_policy_loss(config(Algo::gmpo), ex.inputs());
  check_close(val(out.loss), 0.036179244);
  check_metric(out.metrics, "pg_clipfrac", 1.0 / 7);
  check_metric(out.metrics, "pg_clipfrac_lower", 2.0 / 7);
  const double a = -0.098912807, b = 0.14394349;
  check_close(grad_of(out.loss, ex.logp), mat({{a, a, 0, a}, {b, b, 0, 0}}));
}

TEST_CASE("algo: worked example 5, RSPO, GRPO and GSPO + router shift, after and before the clip", "[algo]") {
  Example ex;
  auto g = mat({{1, 0.9, 0.8, 0.95}, {0.85, 1, 0.8, 1}});
  auto in = ex.inputs();
  in.rs_factors = g;
  auto with = [&](Algo algo, RsApply apply) {
    auto c = config(algo);
    c.router_shift = true;
    c.rs.apply = apply;
    return compute_policy_loss(c, in);
  };
  SECTION("rspo after the clip (default): d** = d* + log g") {
    auto dstar = gmpo_clipped_log_ratio(ex.d(), ex.adv, 0.4, 0.4) + at::log(g);
    check_close(dstar * ex.mask,
                mat({{0.2, -0.20536052, 0.17685645, -0.10129329}, {-0.36251893, 1.2, -0.62314355, 0}}));
    check_close(gmpo_row_ratio(ex.d(), ex.adv, ex.mask, 0.4, 0.4, at::log(g)), vec({1.0177056, 1.0740601}));
    auto out = compute_policy_loss(config(Algo::rspo), in);  // the default placement
    check_close(val(out.loss), 0.019924261);
    const double a = -0.089953187, b = 0.12657900;
    check_close(grad_of(out.loss, ex.logp), mat({{a, a, 0, a}, {b, b, 0, 0}}));
    check_close(val(with(Algo::rspo, RsApply::after_clip).loss), 0.019924261);
    // The clip saw the unshifted d: GMPO's clip fractions of example 4.
    check_metric(out.metrics, "pg_clipfrac", 1.0 / 7);
    check_metric(out.metrics, "pg_clipfrac_lower", 2.0 / 7);
  }
  SECTION("rspo before the clip (ablation): d~ = d + log g") {
    auto dt = ex.d() + at::log(g);
    check_close(dt * ex.mask,
                mat({{0.2, -0.20536052, 0.27685645, -0.10129329}, {-0.36251893, 1.2, -0.67314355, 0}}));
    check_close(gmpo_row_ratio(dt, ex.adv, ex.mask, 0.4, 0.4), vec({1.0434689, 1.1569960}));
    auto out = with(Algo::rspo, RsApply::pre_clip);
    check_close(val(out.loss), 0.040137841);
    const double a = -0.092230362, b = 0.13635310;
    check_close(grad_of(out.loss, ex.logp), mat({{a, a, a, a}, {b, b, 0, 0}}));
  }
  SECTION("grpo + router shift, both placements") {
    auto out = with(Algo::grpo, RsApply::after_clip);
    check_close(val(out.loss), 0.046254770);
    check_close(grad_of(out.loss, ex.logp), mat({{0, -0.082262027, 0, -0.091284119}, {0.070298551, 0, 0, 0}}));
    check_metric(out.metrics, "pg_clipfrac", 3.0 / 7);  // example 1's clipping, untouched by g
    auto pre = with(Algo::grpo, RsApply::pre_clip);
    check_close(val(pre.loss), 0.048687099);
    // Before the clip, the drifted A < 0 token (1, 0) has ratio 0.6956 < 1 - eps: clipped, zero gradient.
    check_close(val(grad_of(pre.loss, ex.logp)[1][0]), 0, 1e-15);
  }
  SECTION("gspo + router shift, both placements") {
    auto out = with(Algo::gspo, RsApply::after_clip);
    check_close(val(out.loss), 0.052399376);
    check_close(grad_of(out.loss, ex.logp), mat({{0, 0, 0, 0}, {0.120329668, 0.141564315, 0.113251452, 0}}));
    // Before the clip: the sequence ratio of d~; row 1 clipped at 1 + 4e-4 (A > 0), row 2 unclipped (A < 0).
    auto pre = with(Algo::gspo, RsApply::pre_clip);
    auto s = gspo_seq_ratio(ex.d() + at::log(g), ex.mask);
    check_close(val(pre.loss), 0.5 * (-0.70710578 * 1.0004 + 0.70710578 * val(s[1])));
  }
  // rspo without any router-shift input is an error, not a silent gmpo.
  CHECK_THROWS_AS(compute_policy_loss(config(Algo::rspo), ex.inputs()), moe::Error);
}

TEST_CASE("algo: --rs-grad lets the gradient reach the router through g, the default stops it", "[algo]") {
  RandomBatch rb(5);
  for (Algo algo : {Algo::grpo, Algo::gspo, Algo::rspo})
    for (RsApply apply : {RsApply::after_clip, RsApply::pre_clip}) {
      INFO("algo " << to_string(algo) << ", " << to_string(apply));
      auto c = config(algo);
      c.router_shift = true;
      c.rs.apply = apply;
      c.rs.floor = 0.3;
      auto loss_of_pnew = [&](const at::Tensor& p_new) {
        auto in = rb.inputs(rb.logp);
        in.router_p_new = p_new;
        return compute_policy_loss(c, in).loss;
      };
      auto p = rb.p_new.clone().requires_grad_(true);
      auto x = rb.logp.clone().requires_grad_(true);  // the loss has a graph in every case
      auto loss_of_pnew_x = [&](const at::Tensor& p_new) {
        auto in = rb.inputs(x);
        in.router_p_new = p_new;
        return compute_policy_loss(c, in).loss;
      };
      // Default: stop-gradient, the router gets nothing from g.
      CHECK(val(grad_of(loss_of_pnew_x(p), p).abs().sum()) == 0);
      c.rs.grad = true;
      auto gp = grad_of(loss_of_pnew_x(p), p);
      CHECK(val(gp.abs().sum()) > 0);
      fd_check(loss_of_pnew, rb.p_new);
      // The value is the same with or without the stop-gradient.
      auto c0 = c;
      c0.rs.grad = false;
      auto in = rb.inputs(rb.logp);
      check_close(val(compute_policy_loss(c, in).loss), val(compute_policy_loss(c0, in).loss), 1e-15);
    }
}

TEST_CASE("algo: worked example 6, router shift (paper and mean-exp forms)", "[algo]") {
  auto p_old = at::tensor({0.40, 0.20, 0.30, 0.25}, at::kDouble).reshape({1, 1, 2, 2});
  auto p_new = at::tensor({0.50, 0.10, 0.30, 0.20}, at::kDouble).reshape({1, 1, 2, 2});
  auto mask = at::ones({1, 1}, at::kDouble);

  RouterShiftConfig paper;
  paper.floor = 0.8;
  auto rs = router_shift(p_old, p_new, mask, paper);
  check_close(val(rs.gamma[0][0]), 0.75212062);
  check_close(val(rs.g[0][0]), 0.8);
  check_metric(rs.metrics, "router_shift/delta_mean", 0.28485857);
  check_metric(rs.metrics, "router_shift/delta_p90", 0.28485857);
  check_metric(rs.metrics, "router_shift/gamma_mean", 0.75212062);
  check_metric(rs.metrics, "router_shift/gamma_min", 0.75212062);
  check_metric(rs.metrics, "router_shift/gamma_max", 0.75212062);
  check_metric(rs.metrics, "router_shift/floor_frac", 1);
  check_metric(rs.metrics, "router_shift/mask_frac", 0);
  CHECK_FALSE(rs.g.requires_grad());
  // Default floor 0.5 leaves gamma as is.
  check_close(val(router_shift(p_old, p_new, mask).g[0][0]), 0.75212062);
  // --rs-mask 0.8 drops the token.
  RouterShiftConfig masked = paper;
  masked.mask_below = 0.8;
  auto rm = router_shift(p_old, p_new, mask, masked);
  CHECK_FALSE(rm.keep[0][0].item<bool>());
  check_metric(rm.metrics, "router_shift/mask_frac", 1);

  RouterShiftConfig me;
  me.form = RsForm::mean_exp;
  me.floor = 0;
  // Default layer aggregation: geomean (the paper aggregates layers multiplicatively).
  check_close(val(router_shift(p_old, p_new, mask, me).gamma[0][0]), 0.76485293);
  // Per layer: [0.65, 0.9] (each layer alone is the mean over its K).
  check_close(val(router_shift(p_old.narrow(2, 0, 1), p_new.narrow(2, 0, 1), mask, me).gamma[0][0]), 0.65);
  check_close(val(router_shift(p_old.narrow(2, 1, 1), p_new.narrow(2, 1, 1), mask, me).gamma[0][0]), 0.9);
  me.layer_agg = RsLayerAgg::mean;
  check_close(val(router_shift(p_old, p_new, mask, me).gamma[0][0]), 0.775);
  me.layer_agg = RsLayerAgg::product;
  check_close(val(router_shift(p_old, p_new, mask, me).gamma[0][0]), 0.585);
  me.layer_agg = RsLayerAgg::geomean;
  check_close(val(router_shift(p_old, p_new, mask, me).gamma[0][0]), 0.76485293);
}

TEST_CASE("algo: worked example 7, replay gating", "[algo]") {
  auto logits = at::tensor({2.0, 1.0, 0.5, -1.0}, at::kDouble).reshape({1, 4});
  auto idx = at::tensor({1, 2}, at::kLong).reshape({1, 2});
  check_close(replay_gating(logits, idx, true), vec({0.62245933, 0.37754067}).reshape({1, 2}));
  check_close(replay_gating(logits, idx, false), vec({0.22420782, 0.13598892}).reshape({1, 2}));
  // Gradients reach the router logits, including the unselected ones through the full softmax.
  auto x = logits.clone().requires_grad_(true);
  auto gsum = grad_of(replay_gating(x, idx, false)[0][0], x);
  CHECK(val(gsum[0][0]) != 0);
  fd_check([&](const at::Tensor& l) { return (replay_gating(l, idx, true) * vec({1.0, -2.0})).sum(); }, logits);
  fd_check([&](const at::Tensor& l) { return (replay_gating(l, idx, false) * vec({1.0, -2.0})).sum(); }, logits);
  // Bad routing files are errors.
  CHECK_THROWS_AS(replay_gating(logits, at::tensor({1, 1}, at::kLong).reshape({1, 2}), true), moe::Error);
  CHECK_THROWS_AS(replay_gating(logits, at::tensor({0, 4}, at::kLong).reshape({1, 2}), true), moe::Error);
  CHECK_THROWS_AS(replay_gating(logits, at::tensor({-1, 0}, at::kLong).reshape({1, 2}), true), moe::Error);
  // Leading dims and fp32 work: [2, 3, E] logits, [2, 3, K] indices.
  auto batch = logits.to(at::kFloat).expand({2, 3, 4}).contiguous();
  auto bidx = idx.expand({2, 3, 2}).contiguous();
  auto w = replay_gating(batch, bidx, true);
  CHECK(w.scalar_type() == at::kFloat);
  CHECK(std::abs(w[1][2][0].item<float>() - 0.62245933f) < 1e-6);
}

// ---------------------------------------------------------------- finite differences

TEST_CASE("algo: gradients match finite differences for every algorithm", "[algo]") {
  for (unsigned seed : {1u, 2u}) {
    RandomBatch rb(seed);
    auto run = [&](LossConfig c, bool token_adv = false) {
      INFO("algo " << to_string(c.algo) << ", seed " << seed);
      fd_check(
          [&](const at::Tensor& x) {
            auto in = rb.inputs(x);
            if (token_adv) in.advantages = rb.adv_tok;
            if (c.kl_coef != 0) in.logp_ref = rb.logp_ref;
            return compute_policy_loss(c, in).loss;
          },
          rb.logp);
    };
    for (Algo a : {Algo::grpo, Algo::dapo, Algo::drgrpo, Algo::gspo, Algo::gmpo, Algo::rspo}) run(config(a));
    auto c = config(Algo::gspo);  // wide clip so the GSPO gradient is mostly unclipped
    c.eps_low = c.eps_high = 0.5;
    run(c);
    for (Agg agg : {Agg::seq_mean_token_mean, Agg::seq_mean_token_sum, Agg::seq_mean_token_sum_norm}) {
      c = config(Algo::grpo);
      c.loss_agg = agg;
      run(c);
    }
    // Per-token advantages.
    run(config(Algo::grpo), true);
    run(config(Algo::gmpo), true);
    // RSPO with the router shift from probabilities, TIS token.
    c = config(Algo::rspo);
    c.is.level = IsLevel::token;
    run(c);
    c.rs.form = RsForm::mean_exp;
    c.rs.layer_agg = RsLayerAgg::geomean;
    c.is.level = IsLevel::seq;
    run(c);
    // Router shift as a plug-in with TIS / MIS.
    c = config(Algo::grpo);
    c.router_shift = true;
    c.is.level = IsLevel::seq;
    run(c);
    // (GSPO with --tis token or with the router shift after the clip is not checked here: its token form
    // weights each token's gradient by its own factor, which is not the gradient of its own value when the
    // factor varies within a row; worked example 5 and the GSPO + TIS token test pin those gradients.)
    c = config(Algo::gspo);
    c.eps_low = c.eps_high = 0.5;
    c.router_shift = true;
    c.rs.apply = RsApply::pre_clip;
    c.is.level = IsLevel::seq;
    run(c);
    c = config(Algo::dapo);
    c.router_shift = true;
    c.rs.mask_below = 0.7;
    c.is.mis = std::make_pair(0.6, 1.6);
    run(c);
    // KL to the reference.
    c = config(Algo::grpo);
    c.kl_coef = 0.3;
    run(c);
  }
}

// ---------------------------------------------------------------- on-policy sanity

TEST_CASE("algo: on-policy (logp == logp_old) reduces to the plain policy gradient", "[algo]") {
  RandomBatch rb(3);
  auto x = rb.logp_old.clone().requires_grad_(true);
  auto in = rb.inputs(x);
  in.logp_roll = at::Tensor();
  auto valid = rb.mask > 0;
  auto A = rb.adv.unsqueeze(1).expand_as(rb.mask);
  auto L = rb.mask.sum(1);  // [5, 3, 4]

  SECTION("grpo: ratio exactly 1, loss = -token-mean A, no clipping") {
    auto tl = ppo_clip_loss(x.detach() - rb.logp_old, rb.adv, rb.mask, 0.2, 0.2, 3);
    CHECK(at::equal(tl.loss, at::where(valid, -A, at::zeros_like(A))));
    auto out = compute_policy_loss(config(Algo::grpo), in);
    check_close(val(out.loss), val(-(A * rb.mask).sum() / rb.mask.sum()), 1e-12);
    check_metric(out.metrics, "pg_clipfrac", 0, 0);
    check_metric(out.metrics, "pg_clipfrac_lower", 0, 0);
    check_metric(out.metrics, "ppo_kl", 0, 0);
    check_close(grad_of(out.loss, x), -A * rb.mask / rb.mask.sum(), 1e-12);
  }
  SECTION("gspo: s = 1, loss = -mean_i A_i, gradient -A_i / (B L_i)") {
    check_close(gspo_seq_ratio(x.detach() - rb.logp_old, rb.mask), at::ones({3}, at::kDouble), 0);
    auto out = compute_policy_loss(config(Algo::gspo), in);
    // (1e-8: the L_i + 1e-8 of seq-mean-token-mean)
    check_close(val(out.loss), val(-rb.adv.mean()), 1e-8);
    check_close(grad_of(out.loss, x), -A * rb.mask / (3 * L.unsqueeze(1)), 1e-8);
  }
  SECTION("gmpo and rspo with unchanged routing: S = 1, loss = -mean_i Abar_i") {
    auto out = compute_policy_loss(config(Algo::gmpo), in);
    check_close(val(out.loss), val(-rb.adv.mean()), 1e-7);
    check_close(grad_of(out.loss, x), -A * rb.mask / (3 * L.unsqueeze(1)), 1e-7);
    in.router_p_new = rb.p_old;  // routing probabilities unchanged: gamma = 1, g = 1
    auto rs = compute_policy_loss(config(Algo::rspo), in);
    check_close(val(rs.loss), val(out.loss), 0);
    check_close(grad_of(rs.loss, x), grad_of(out.loss, x), 0);
    check_metric(rs.metrics, "router_shift/gamma_mean", 1, 0);
    check_metric(rs.metrics, "router_shift/delta_mean", 0, 0);
  }
}

// ---------------------------------------------------------------- edge cases

TEST_CASE("algo: an empty row changes nothing but GMPO's 1/B, and padding may hold NaN", "[algo]") {
  Example ex;
  // Insert an all-masked row full of NaN between the two example rows.
  auto nan_row = at::full({1, 4}, kNaN, at::kDouble);
  auto logp = at::cat({ex.logp.detach().narrow(0, 0, 1), nan_row, ex.logp.detach().narrow(0, 1, 1)});
  logp = at::where(at::cat({ex.mask.narrow(0, 0, 1), at::zeros({1, 4}, at::kDouble), ex.mask.narrow(0, 1, 1)}) > 0,
                   logp, at::full_like(logp, kNaN))
             .requires_grad_(true);
  LossInputs in;
  in.logp = logp;
  in.logp_old = at::cat({ex.logp_old.narrow(0, 0, 1), nan_row, ex.logp_old.narrow(0, 1, 1)});
  in.advantages = vec({0.70710578, 5.0, -0.70710578});
  in.mask = at::cat({ex.mask.narrow(0, 0, 1), at::zeros({1, 4}, at::kDouble), ex.mask.narrow(0, 1, 1)});
  in.logp_roll = at::cat({ex.logp_roll.narrow(0, 0, 1), nan_row, ex.logp_roll.narrow(0, 1, 1)});

  auto c = config(Algo::grpo);
  auto out = compute_policy_loss(c, in);
  check_close(val(out.loss), 0.036634535);
  auto g = grad_of(out.loss, logp);
  CHECK_FALSE(at::isnan(g).any().item<bool>());
  check_close(g.narrow(0, 1, 1), at::zeros({1, 4}, at::kDouble), 0);
  check_close(g.narrow(0, 2, 1), mat({{0.082704178, 0, 0, 0}}));
  c.loss_agg = Agg::seq_mean_token_mean;
  check_close(val(compute_policy_loss(c, in).loss), 0.16813568);  // B' = 2
  c.loss_agg = Agg::seq_mean_token_sum;
  check_close(val(compute_policy_loss(c, in).loss), 0.12822087);
  check_close(val(compute_policy_loss(config(Algo::gspo), in).loss), 0.070998633);
  c = config(Algo::grpo);
  c.is.level = IsLevel::token;
  check_close(val(compute_policy_loss(c, in).loss), -0.16638326);
  // GMPO divides by all B rows (algorithms.md: plain mean over rows).
  check_close(val(compute_policy_loss(config(Algo::gmpo), in).loss), 0.036179244 * 2 / 3);
}

TEST_CASE("algo: an all-masked batch gives an exact, finite 0 loss and zero gradients", "[algo]") {
  Example ex;
  auto logp = at::full({2, 4}, kNaN, at::kDouble).requires_grad_(true);
  LossInputs in;
  in.logp = logp;
  in.logp_old = at::full({2, 4}, kNaN, at::kDouble);
  in.logp_roll = at::full({2, 4}, kNaN, at::kDouble);
  in.advantages = ex.adv;
  in.mask = at::zeros({2, 4}, at::kBool);
  in.rs_factors = at::zeros({2, 4}, at::kDouble);  // ignored where masked
  for (Algo a : {Algo::grpo, Algo::dapo, Algo::drgrpo, Algo::gspo, Algo::gmpo, Algo::rspo}) {
    for (IsLevel lvl : {IsLevel::off, IsLevel::token, IsLevel::seq}) {
      INFO(to_string(a) << " tis " << static_cast<int>(lvl));
      auto c = config(a);
      c.is.level = lvl;
      auto out = compute_policy_loss(c, in);
      CHECK(val(out.loss) == 0.0);
      auto g = grad_of(out.loss, logp);
      CHECK(at::equal(g, at::zeros_like(g)));
      for (const auto& [name, v] : out.metrics) {
        INFO(name);
        CHECK(std::isfinite(v));
      }
    }
  }
  for (Agg agg : {Agg::token_mean, Agg::seq_mean_token_mean, Agg::seq_mean_token_sum, Agg::seq_mean_token_sum_norm})
    CHECK(val(aggregate(at::ones({2, 4}, at::kDouble), in.mask, agg, 4)) == 0.0);
  auto rs = router_shift(at::full({2, 4, 1, 2}, 0.3), at::full({2, 4, 1, 2}, 0.1), in.mask);
  for (const auto& [name, v] : rs.metrics) CHECK(std::isfinite(v));
}

TEST_CASE("algo: an empty mini-batch (B = 0) gives 0", "[algo]") {
  LossInputs in;
  in.logp = at::zeros({0, 4}, at::kDouble).requires_grad_(true);
  in.logp_old = at::zeros({0, 4}, at::kDouble);
  in.advantages = at::zeros({0}, at::kDouble);
  in.mask = at::zeros({0, 4}, at::kDouble);
  in.rs_factors = at::zeros({0, 4}, at::kDouble);
  for (Algo a : {Algo::grpo, Algo::drgrpo, Algo::gspo, Algo::gmpo, Algo::rspo}) {
    INFO(to_string(a));
    CHECK(val(compute_policy_loss(config(a), in).loss) == 0.0);
  }
}

TEST_CASE("algo: zero advantages give zero loss and zero gradient", "[algo]") {
  Example ex;
  ex.adv = vec({0.0, 0.0});
  for (Algo a : {Algo::grpo, Algo::gspo, Algo::gmpo}) {
    INFO(to_string(a));
    auto out = compute_policy_loss(config(a), ex.inputs());
    CHECK(std::abs(val(out.loss)) <= 1e-15);
    auto g = grad_of(out.loss, ex.logp);
    CHECK(val(g.abs().max()) <= 1e-15);
  }
}

// ---------------------------------------------------------------- TIS / MIS / plug-ins

TEST_CASE("algo: MIS masks tokens or sequences, TIS seq and GMPO's geometric-mean weight", "[algo]") {
  Example ex;
  auto in = ex.inputs();
  in.logp_roll = ex.logp_roll;
  const double a = 0.70710578;
  // Per-token GRPO losses of example 1 and log rho = logp_old - logp_roll.
  const double l[2][3 + 1] = {{-1.2 * a, -a * std::exp(-0.1), -1.2 * a, -a * std::exp(-0.05)},
                              {a * std::exp(-0.2), 3 * a, 0.8 * a, 0}};
  const double lr[2][4] = {{0, 0.1, 1.0, -0.05}, {0.02, -0.3, 0, 0}};

  auto c = config(Algo::grpo);
  c.is.mis = std::make_pair(0.5, 2.0);  // token level: drops the token with rho = e
  auto out = compute_policy_loss(c, in);
  double want = 0;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4 - i; ++j)
      if (!(i == 0 && j == 2)) want += l[i][j] * std::exp(lr[i][j]);
  check_close(val(out.loss), want / 6);
  check_metric(out.metrics, "tis/clip_frac", 1.0 / 7);
  check_close(grad_of(out.loss, ex.logp)[0][2].item<double>(), 0);

  c.is.level = IsLevel::seq;  // row 1 (rho = e^1.05) out, row 2 (e^-0.28) in with w = e^-0.28
  out = compute_policy_loss(c, in);
  check_close(val(out.loss), (l[1][0] + l[1][1] + l[1][2]) * std::exp(-0.28) / 3);
  check_metric(out.metrics, "tis/clip_frac", 4.0 / 7);

  c.is.mis.reset();  // TIS seq: w = [min(e^1.05, 2), e^-0.28]
  out = compute_policy_loss(c, in);
  check_close(val(out.loss), (2 * (l[0][0] + l[0][1] + l[0][2] + l[0][3]) +
                              std::exp(-0.28) * (l[1][0] + l[1][1] + l[1][2])) / 7);

  auto g = config(Algo::gmpo);  // TIS token on GMPO: rows weighted by the geometric mean of w
  g.is.level = IsLevel::token;
  out = compute_policy_loss(g, in);
  double w1 = std::exp((0 + 0.1 + std::log(2.0) - 0.05) / 4), w2 = std::exp((0.02 - 0.3 + 0) / 3);
  check_close(val(out.loss), -0.5 * (w1 * a * 1.1190723 - w2 * a * 1.2214028));
}

TEST_CASE("algo: GSPO + TIS token weights the token-form gradient per token", "[algo]") {
  // The token form gives token t the gradient -A s_i w_t / (B' L_i): the detached per-token weight multiplies
  // the per-token loss, as for GRPO. (The sequence objective's gradient would use the row mean of w instead.)
  Example ex;
  auto in = ex.inputs();
  in.logp_roll = ex.logp_roll;
  auto c = config(Algo::gspo);
  c.is.level = IsLevel::token;
  auto out = compute_policy_loss(c, in);
  const double a = 0.70710578, s2 = 1.2012147;
  const double w1[4] = {1, 1.1051709, 2, 0.95122942}, w2[3] = {1.0202013, 0.74081822, 1};
  check_close(val(out.loss), 0.5 * (-a * 1.0004 * (w1[0] + w1[1] + w1[2] + w1[3]) / 4 +
                                    a * s2 * (w2[0] + w2[1] + w2[2]) / 3));
  const double g = 0.5 * a * s2 / 3;
  check_close(grad_of(out.loss, ex.logp), mat({{0, 0, 0, 0}, {g * w2[0], g * w2[1], g * w2[2], 0}}));
}

TEST_CASE("algo: router shift as a plug-in for grpo and gspo, and --rs-mask", "[algo]") {
  Example ex;
  auto g = mat({{1, 0.9, 0.8, 0.95}, {0.85, 1, 0.8, 1}});
  auto dt = ex.d() + at::log(g);
  auto in = ex.inputs();
  in.rs_factors = g;

  auto c = config(Algo::grpo);
  c.router_shift = true;
  auto out = compute_policy_loss(c, in);
  // After the clip (default): the clipped per-token loss times g; before: the clip of the shifted ratio.
  check_close(val(out.loss), val(aggregate(g * ppo_clip_loss(ex.d(), ex.adv, ex.mask, 0.2, 0.2, 3).loss, ex.mask,
                                           Agg::token_mean)));
  check_metric(out.metrics, "ppo_kl", -0.15714286);  // the unshifted policy change
  CHECK(std::abs(val(out.loss) - 0.036634535) > 1e-3);
  c.rs.apply = RsApply::pre_clip;
  check_close(val(compute_policy_loss(c, in).loss),
              val(aggregate(ppo_clip_loss(dt, ex.adv, ex.mask, 0.2, 0.2, 3).loss, ex.mask, Agg::token_mean)));

  c = config(Algo::gspo);
  c.router_shift = true;
  out = compute_policy_loss(c, in);
  auto s = gspo_seq_ratio(ex.d(), ex.mask);
  check_close(s, at::exp((ex.d() * ex.mask).sum(1) / vec({4, 3})));
  check_close(val(out.loss), val(aggregate(g * gspo_loss(ex.d(), ex.adv, ex.mask, 3e-4, 4e-4).loss, ex.mask,
                                           Agg::seq_mean_token_mean)));

  // --rs-mask from probabilities: the dropped token behaves as if masked.
  auto p_old = at::full({2, 4, 1, 2}, 0.4, at::kDouble);
  auto p_new = p_old.clone();
  p_new[0][1][0][0] = 0.05;  // token (0, 1): gamma = exp(-log(8) / 2) = 0.35355339
  LossInputs pin = ex.inputs();
  pin.router_p_old = p_old;
  pin.router_p_new = p_new;
  c = config(Algo::rspo);
  c.rs.mask_below = 0.6;
  out = compute_policy_loss(c, pin);
  check_metric(out.metrics, "router_shift/mask_frac", 1.0 / 7);
  check_metric(out.metrics, "router_shift/gamma_min", 0.35355339);
  check_metric(out.metrics, "router_shift/floor_frac", 1.0 / 7);
  LossInputs ref = ex.inputs();
  auto m2 = ex.mask.clone();
  m2[0][1] = 0;
  ref.mask = m2;
  ref.rs_factors = at::ones({2, 4}, at::kDouble);
  check_close(val(out.loss), val(compute_policy_loss(config(Algo::rspo), ref).loss), 1e-12);
}

// ---------------------------------------------------------------- routing metrics

TEST_CASE("algo: unshifted_frac and routing agreement compare expert sets per layer", "[algo]") {
  // B = 1, T = 3, L = 2, K = 2.
  auto a = at::tensor({0, 1, 2, 3, /**/ 4, 5, 6, 7, /**/ 0, 2, 1, 3}, at::kLong).reshape({1, 3, 2, 2});
  auto b = at::tensor({1, 0, 3, 2, /**/ 4, 6, 6, 7, /**/ 0, 3, 1, 2}, at::kLong).reshape({1, 3, 2, 2});
  auto mask = at::ones({1, 3}, at::kDouble);
  check_close(unshifted_frac(a, b, mask), 1.0 / 3);  // token 0 only (same sets, other order)
  auto m = routing_agreement(a, b, mask);
  check_metric(m, "routing/layer_mismatch", 3.0 / 6);
  check_metric(m, "routing/token_mismatch", 2.0 / 3);
  check_metric(m, "routing/layers_differing_mean", 1.0);
  auto m01 = at::tensor({1.0, 1.0, 0.0}, at::kDouble).reshape({1, 3});
  check_close(unshifted_frac(a, b, m01), 0.5);
  check_metric(routing_agreement(a, b, m01), "routing/layer_mismatch", 1.0 / 4);
  CHECK_THROWS_AS(routing_agreement(a, b.narrow(3, 0, 1), mask), moe::Error);

  Example ex;
  auto in = ex.inputs();
  auto idx = at::zeros({2, 4, 1, 2}, at::kLong);
  idx.select(3, 1).fill_(1);
  auto idx_new = idx.clone();
  idx_new[1][0][0][1] = 5;
  in.router_idx_old = idx;
  in.router_idx_new = idx_new;
  check_metric(compute_policy_loss(config(Algo::grpo), in).metrics, "router_shift/unshifted_frac", 6.0 / 7);
}

// ---------------------------------------------------------------- optional terms and SFT

TEST_CASE("algo: load-balancing loss is E * sum f_e P_e", "[algo]") {
  // Uniform: 4 tokens, each to its own expert, equal logits -> 1.
  auto logits = at::zeros({4, 4}, at::kDouble);
  auto idx = at::arange(4, at::kLong).reshape({4, 1});
  check_close(val(load_balancing_loss(logits, idx)), 1.0, 1e-12);
  // One token, P = [0.25, 0.75], routed to expert 1: 2 * 0.75.
  auto l1 = at::tensor({0.0, std::log(3.0)}, at::kDouble).reshape({1, 2});
  check_close(val(load_balancing_loss(l1, at::ones({1, 1}, at::kLong))), 1.5, 1e-12);
  // K = 2 normalisation: f counts assignments, so uniform top-2 is still 1.
  auto idx2 = at::tensor({0, 1, 2, 3, 1, 2, 3, 0}, at::kLong).reshape({4, 2});
  check_close(val(load_balancing_loss(logits, idx2)), 1.0, 1e-12);
  // Masked tokens do not count.
  auto mask = at::tensor({1.0, 0.0}, at::kDouble);
  auto two = at::cat({l1, at::zeros({1, 2}, at::kDouble)});
  check_close(val(load_balancing_loss(two, at::tensor({1, 0}, at::kLong).reshape({2, 1}), mask)), 1.5, 1e-12);
  RandomBatch rb(4);
  auto rl = rb.logp.reshape({5, 3});
  auto ri = at::tensor({0, 2, 1, 2, 0, 1, 2, 1, 0, 0, 1, 2, 1, 0, 2}, at::kLong).reshape({5, 3}).narrow(1, 0, 2);
  fd_check([&](const at::Tensor& x) { return load_balancing_loss(x, ri); }, rl);
}

TEST_CASE("algo: k3 KL, entropy, token log-probs and SFT loss", "[algo]") {
  auto lp = vec({-1.0, -0.2}).reshape({1, 2});
  auto ref = vec({-1.5, 30.0}).reshape({1, 2});
  check_close(kl_k3(lp, ref), vec({std::exp(-0.5) + 0.5 - 1, 10.0}).reshape({1, 2}));

  auto logits = at::zeros({1, 2, 3}, at::kDouble);
  logits[0][1][1] = std::log(3.0);  // p = [0.2, 0.6, 0.2]
  check_close(token_entropy(logits), vec({std::log(3.0), -(0.4 * std::log(0.2) + 0.6 * std::log(0.6))}).reshape({1, 2}));
  auto targets = at::tensor({0, 1}, at::kLong).reshape({1, 2});
  check_close(token_logprobs(logits, targets), vec({-std::log(3.0), std::log(0.6)}).reshape({1, 2}));
  check_close(val(sft_loss(logits, targets, at::ones({1, 2}))), (std::log(3.0) - std::log(0.6)) / 2);
  // Padding targets (-100) are masked and never gathered.
  auto pad_targets = at::tensor({0, -100}, at::kLong).reshape({1, 2});
  check_close(val(sft_loss(logits, pad_targets, vec({1.0, 0.0}).reshape({1, 2}))), std::log(3.0));
  CHECK(val(sft_loss(logits, pad_targets, at::zeros({1, 2}))) == 0.0);

  // Through compute_policy_loss: KL and entropy with the policy's aggregation, aux loss, metric names.
  Example ex;
  auto in = ex.inputs();
  in.logp_ref = ex.logp_old;
  auto big = at::zeros({2, 4, 3}, at::kDouble);
  big[1][2][0] = 1.0;
  in.logits = big.requires_grad_(true);
  in.aux_loss = at::full({}, 1.25, at::kDouble);
  auto c = config(Algo::grpo);
  c.kl_coef = 0.1;
  c.entropy_coef = 0.01;
  c.aux_coef = 0.001;
  auto out = compute_policy_loss(c, in);
  auto kl = aggregate(kl_k3(ex.logp.detach(), ex.logp_old), ex.mask, Agg::token_mean);
  auto ent = aggregate(token_entropy(big.detach()), ex.mask, Agg::token_mean);
  check_close(val(out.loss), 0.036634535 + 0.1 * val(kl) - 0.01 * val(ent) + 0.001 * 1.25);
  check_metric(out.metrics, "kl", val(kl));
  check_metric(out.metrics, "entropy", val(ent));
  check_metric(out.metrics, "aux_loss", 1.25);
  check_metric(out.metrics, "pg_loss", 0.036634535);
  CHECK(grad_of(out.loss, in.logits).abs().sum().item<double>() > 0);
  // A coefficient without its input is an error.
  auto bare = ex.inputs();
  CHECK_THROWS_AS(compute_policy_loss(c, bare), moe::Error);
}

// ---------------------------------------------------------------- configuration and dtypes

TEST_CASE("algo: presets, parsing and configuration errors", "[algo]") {
  auto c = with_defaults(config(Algo::dapo));
  CHECK(*c.eps_low == 0.2);
  CHECK(*c.eps_high == 0.28);
  CHECK(*c.loss_agg == Agg::token_mean);
  c = with_defaults(config(Algo::drgrpo));
  CHECK(*c.loss_agg == Agg::seq_mean_token_sum_norm);
  c = with_defaults(config(Algo::gspo));
  CHECK(*c.eps_low == 3e-4);
  CHECK(*c.eps_high == 4e-4);
  CHECK(effective_agg(c) == Agg::seq_mean_token_mean);
  c = with_defaults(config(Algo::rspo));
  CHECK(c.router_shift);
  CHECK(*c.eps_low == 0.4);
  auto bad = config(Algo::gspo);
  bad.loss_agg = Agg::token_mean;
  CHECK_THROWS_AS(with_defaults(bad), moe::UsageError);
  auto user = config(Algo::grpo);
  user.eps_high = 0.3;
  CHECK(*with_defaults(user).eps_high == 0.3);
  CHECK(parse_algo("rspo") == Algo::rspo);
  CHECK(parse_agg("seq-mean-token-sum-norm") == Agg::seq_mean_token_sum_norm);
  CHECK(std::string(to_string(Agg::seq_mean_token_mean)) == "seq-mean-token-mean");
  CHECK(parse_rs_form("mean-exp") == RsForm::mean_exp);
  CHECK(parse_rs_layer_agg("geomean") == RsLayerAgg::geomean);
  CHECK(parse_is_level("seq") == IsLevel::seq);
  CHECK_THROWS_AS(parse_algo("ppo2"), moe::UsageError);
  CHECK_THROWS_AS(parse_agg("mean"), moe::UsageError);
  Example ex;
  auto in = ex.inputs();
  auto tis = config(Algo::grpo);
  tis.is.level = IsLevel::token;
  CHECK_THROWS_AS(compute_policy_loss(tis, in), moe::Error);  // no logp_roll
  in.mask = at::ones({2, 3});
  CHECK_THROWS_AS(compute_policy_loss(config(Algo::grpo), in), moe::Error);
}

TEST_CASE("algo: fp32 inputs give fp32 losses matching the double examples", "[algo]") {
  Example ex;
  auto logp = ex.logp.detach().to(at::kFloat).requires_grad_(true);
  LossInputs in;
  in.logp = logp;
  in.logp_old = ex.logp_old.to(at::kFloat);
  in.advantages = ex.adv.to(at::kFloat);
  in.mask = ex.mask > 0;
  in.logp_roll = ex.logp_roll.to(at::kFloat);
  auto c = config(Algo::rspo);
  in.rs_factors = mat({{1, 0.9, 0.8, 0.95}, {0.85, 1, 0.8, 1}}).to(at::kFloat);
  auto out = compute_policy_loss(c, in);
  CHECK(out.loss.scalar_type() == at::kFloat);
  check_close(val(out.loss), 0.019924261, 1e-5);  // worked example 5, after the clip
  auto g = grad_of(out.loss, logp);
  CHECK(g.scalar_type() == at::kFloat);
  check_close(val(g[1][0]), 0.12657900, 1e-5);
  c = config(Algo::grpo);
  c.is.level = IsLevel::token;
  check_close(val(compute_policy_loss(c, in).loss), -0.16638326, 1e-5);
}
