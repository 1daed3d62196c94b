// moe::train::adamw_step against torch::optim::AdamW::step, on the same parameters, gradients and state.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <catch2/catch.hpp>
#include <torch/optim/adamw.h>
#include <torch/version.h>

#include <vector>

#include "moe/train/adamw.h"

namespace {

std::vector<at::Tensor> params_like(const std::vector<at::Tensor>& src) {
  std::vector<at::Tensor> out;
  for (const auto& t : src) out.push_back(t.clone().requires_grad_());
  return out;
}

double max_rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).abs().max() / (b.to(at::kDouble).abs().max() + 1e-30)).item<double>();
}

}  // namespace

TEST_CASE("adamw_step updates as torch's AdamW step: weights, moments and step counts", "[train][adamw]") {
  at::manual_seed(11);
  // Sizes with and without a tail of 8, a 2-D weight, and a double tensor (torch's operations, not fused).
  std::vector<at::Tensor> init = {at::randn({37}), at::randn({1000}), at::randn({13, 7}), at::randn({5}, at::kDouble)};
  for (double wd : {0.0, 0.1}) {
    auto a = params_like(init), b = params_like(init);
    torch::optim::AdamWOptions o(3e-3);
    o.betas(std::make_tuple(0.9, 0.95)).eps(1e-8).weight_decay(wd);
    torch::optim::AdamW ta(a, o), tb(b, o);
    for (int step = 0; step < 4; ++step) {
      for (size_t i = 0; i < init.size(); ++i) {
        at::Tensor g = at::randn_like(init[i]) * (step + 1);
        if (step == 2 && i == 1) g.narrow(0, 0, 10).zero_();  // zero gradients: moments decay, weights move on
        a[i].mutable_grad() = g.clone();
        b[i].mutable_grad() = g.clone();
      }
      ta.step();
      moe::train::adamw_step(tb);
    }
    for (size_t i = 0; i < init.size(); ++i) {
      INFO("weight decay " << wd << ", tensor " << i);
      const double dw = max_rel(b[i].detach(), a[i].detach());
      auto& sa = static_cast<torch::optim::AdamWParamState&>(*ta.state().at(moe::train::adamw_key(a[i])));
      auto& sb = static_cast<torch::optim::AdamWParamState&>(*tb.state().at(moe::train::adamw_key(b[i])));
      const double dm = max_rel(sb.exp_avg(), sa.exp_avg()), dv = max_rel(sb.exp_avg_sq(), sa.exp_avg_sq());
      INFO("max rel diff: weights " << dw << ", exp_avg " << dm << ", exp_avg_sq " << dv);
      CHECK(sb.step() == sa.step());
      CHECK(sb.step() == 4);
      // The same float operations in the same order and roundings: equal bit for bit on Debian's libtorch
      // 1.13 (whose vectorised kernels fuse add_'s and addcmul_'s multiply-add); within a rounding elsewhere.
#if TORCH_VERSION_MAJOR == 1
      CHECK(dw == 0);
      CHECK(dm == 0);
      CHECK(dv == 0);
#else
      CHECK(dw < 1e-6);
      CHECK(dm < 1e-6);
      CHECK(dv < 1e-6);
#endif
      CHECK_FALSE(at::equal(b[i].detach(), init[i]));  // it moved
    }
  }
}

TEST_CASE("adamw_step: a parameter without a gradient is left alone, state created on first use", "[train][adamw]") {
  at::Tensor p = at::randn({9}).requires_grad_(), q = at::randn({9}).requires_grad_();
  const at::Tensor p0 = p.detach().clone(), q0 = q.detach().clone();
  torch::optim::AdamW opt(std::vector<at::Tensor>{p, q}, torch::optim::AdamWOptions(1e-2));
  p.mutable_grad() = at::ones({9});
  moe::train::adamw_step(opt);
  CHECK(opt.state().count(moe::train::adamw_key(p)) == 1);
  CHECK(opt.state().count(moe::train::adamw_key(q)) == 0);
  CHECK(at::equal(q.detach(), q0));
  // First step, gradient 1 (torch's defaults: betas 0.9, 0.999, eps 1e-8, weight decay 1e-2): m = 0.1,
  // v = 0.001, m_hat / (sqrt(v_hat) + eps) = 1 / (1 + 1e-8), so p = p0 (1 - lr 1e-2) - lr.
  CHECK(at::allclose(p.detach(), p0 * (1 - 1e-2 * 1e-2) - 1e-2, 1e-6, 1e-7));
}

TEST_CASE("adamw_step: the fused pass gives the same bits on 1 and 2 threads", "[train][adamw]") {
  at::manual_seed(12);
  at::Tensor init = at::randn({100003}), g = at::randn({100003});
  std::vector<at::Tensor> out;
  const int before = at::get_num_threads();
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    at::Tensor p = init.clone().requires_grad_();
    torch::optim::AdamW opt(std::vector<at::Tensor>{p}, torch::optim::AdamWOptions(1e-3).weight_decay(0.01));
    for (int s = 0; s < 3; ++s) {
      p.mutable_grad() = g * (s + 1);
      moe::train::adamw_step(opt);
    }
    out.push_back(p.detach());
  }
  at::set_num_threads(before);
  CHECK(at::equal(out[0], out[1]));
}

TEST_CASE("grad_global_norm is clip_grad_norm_'s total norm, the same bits on 1 and 2 threads", "[train][adamw]") {
  at::manual_seed(12);
  const at::Device cpu(at::kCPU);
  // Sizes around the vector width and the 65536-element chunks, one large tensor split over several chunks.
  std::vector<at::Tensor> gs = {at::randn({1}), at::randn({7}), at::randn({8}), at::randn({13, 9}), at::randn({65536 + 3}) * 1e-3,
                                at::randn({300000})};
  std::vector<at::Tensor> norms;
  for (const auto& g : gs) norms.push_back(g.to(at::kDouble).norm(2));
  const double want = at::stack(norms).norm(2).item<double>();
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const at::Tensor one = moe::train::grad_global_norm(gs, cpu);
  at::set_num_threads(2);
  const at::Tensor two = moe::train::grad_global_norm(gs, cpu);
  at::set_num_threads(threads);
  CHECK(one.scalar_type() == at::kFloat);
  CHECK(one.dim() == 0);
  CHECK(one.item<double>() == Approx(want).epsilon(1e-7));
  CHECK(at::equal(one, two));
  // No gradients: 0. Another dtype (or device): torch's norms.
  CHECK(moe::train::grad_global_norm({}, cpu).item<double>() == 0.0);
  std::vector<at::Tensor> ds;
  for (const auto& g : gs) ds.push_back(g.to(at::kDouble));
  CHECK(moe::train::grad_global_norm(ds, cpu).item<double>() == Approx(want).epsilon(1e-7));
  // A non-contiguous gradient takes torch's path too.
  at::Tensor t = at::randn({40, 30}).t();
  CHECK(moe::train::grad_global_norm({t}, cpu).item<double>() == Approx(t.to(at::kDouble).norm(2).item<double>()).epsilon(1e-6));
}
