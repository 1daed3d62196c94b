#include "moe/train/adamw.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <type_traits>

#include "moe/io/error.h"
#include "train/adamw_kernel.h"

namespace moe::train {

namespace {
template <class Key>
Key state_key(const at::Tensor& p) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream os;  // as c10::guts::to_string, which libtorch 1.x's optimizers use
    os << static_cast<const void*>(p.unsafeGetTensorImpl());
    return os.str();
  } else {
    return p.unsafeGetTensorImpl();
  }
}
}  // namespace

AdamWKey adamw_key(const at::Tensor& p) { return state_key<AdamWKey>(p); }

void adamw_step(torch::optim::AdamW& opt) {
  at::NoGradGuard ng;
  auto& state = opt.state();
  for (auto& group : opt.param_groups()) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
    if (o.amsgrad()) throw Error("adamw_step: amsgrad is not supported");
    const double lr = o.lr(), wd = o.weight_decay(), eps = o.eps();
    const double beta1 = std::get<0>(o.betas()), beta2 = std::get<1>(o.betas());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const at::Tensor& grad = p.grad();
      const AdamWKey key = adamw_key(p);
      auto it = state.find(key);
      if (it == state.end()) {
        auto ps = std::make_unique<torch::optim::AdamWParamState>();
        ps->step(0);
        ps->exp_avg(at::zeros_like(p, at::MemoryFormat::Preserve));
        ps->exp_avg_sq(at::zeros_like(p, at::MemoryFormat::Preserve));
        it = state.emplace(key, std::move(ps)).first;
      }
      auto& s = static_cast<torch::optim::AdamWParamState&>(*it->second);
      s.step(s.step() + 1);
      const double bc1 = 1 - std::pow(beta1, static_cast<double>(s.step()));
      const double bc2 = 1 - std::pow(beta2, static_cast<double>(s.step()));
      const double step_size = lr / bc1;
      at::Tensor& m = s.exp_avg();
      at::Tensor& v = s.exp_avg_sq();
      const bool fused = p.device().is_cpu() && p.scalar_type() == at::kFloat && grad.scalar_type() == at::kFloat &&
                         m.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat && p.is_contiguous() &&
                         grad.is_contiguous() && m.is_contiguous() && v.is_contiguous() && !grad.is_sparse() &&
                         grad.numel() == p.numel() && m.numel() == p.numel() && v.numel() == p.numel();
      if (!fused) {  // torch::optim::AdamW::step's operations
        if (wd != 0) p.mul_(1 - lr * wd);
        m.mul_(beta1).add_(grad, 1 - beta1);
        v.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
        at::Tensor denom = (v.sqrt() / std::sqrt(bc2)).add_(eps);
        p.addcdiv_(m, denom, -step_size);
        continue;
      }
      kernel::AdamWScalars k;
      k.decay = wd != 0 ? static_cast<float>(1 - lr * wd) : 1.f;
      k.beta1 = static_cast<float>(beta1);
      k.one_minus_beta1 = static_cast<float>(1 - beta1);
      k.beta2 = static_cast<float>(beta2);
      k.one_minus_beta2 = static_cast<float>(1 - beta2);
      k.sqrt_bc2 = static_cast<float>(std::sqrt(bc2));
      k.eps = static_cast<float>(eps);
      k.neg_step = static_cast<float>(-step_size);
      float* pp = p.data_ptr<float>();
      float* mp = m.data_ptr<float>();
      float* vp = v.data_ptr<float>();
      const float* gp = grad.data_ptr<float>();
      at::parallel_for(0, p.numel(), 1 << 15, [&](int64_t b, int64_t e) { kernel::adamw_update(pp, mp, vp, gp, b, e, k); });
    }
  }
}

at::Tensor grad_global_norm(const std::vector<at::Tensor>& gs, const at::Device& dev) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(dev);
  if (gs.empty()) return at::zeros({}, f32);
  bool host = true;
  for (const at::Tensor& g : gs) host = host && g.device().is_cpu() && g.scalar_type() == at::kFloat && g.is_contiguous();
  if (!host) {
    std::vector<at::Tensor> norms;
    for (const at::Tensor& g : gs) norms.push_back(g.norm(2).to(at::kFloat));
    return at::stack(norms).norm(2);
  }
  constexpr int64_t kChunk = int64_t{1} << 16;
  struct Chunk {
    const float* p;
    int64_t n;
  };
  std::vector<Chunk> chunks;
  for (const at::Tensor& g : gs) {
    const float* p = g.data_ptr<float>();
    for (int64_t b = 0; b < g.numel(); b += kChunk) chunks.push_back({p + b, std::min(kChunk, g.numel() - b)});
  }
  std::vector<double> part(chunks.size());
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) part[i] = kernel::sum_squares(chunks[i].p, chunks[i].n);
  });
  double sq = 0;
  for (double v : part) sq += v;
  return at::scalar_tensor(static_cast<float>(std::sqrt(sq)), f32);
}

}  // namespace moe::train
