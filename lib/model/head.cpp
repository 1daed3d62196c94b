#include "moe/model/head.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <string>

#include "moe/io/error.h"

namespace moe::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One chunk's tempered logits in float32: linear in the model dtype, then cast (as the full-logits path).
at::Tensor chunk_logits(const at::Tensor& h, const at::Tensor& w, double temperature) {
  at::Tensor z = at::linear(h, w).to(at::kFloat);
  return temperature == 1.0 ? z : z.div_(temperature);
}

// Differentiable in hidden [N, H] and weight [V, H]; outputs logp [N] and entropy [N] (empty when not asked).
// The backward recomputes each chunk's logits: d logp/dz = onehot - p, d H/dz = -p (log p + H); but with
// keep_logp (a pass that will run backward, all rows in one chunk: a small vocabulary or few rows) the
// forward keeps its log p, at most one chunk's memory, and the backward runs no second product (recomputing
// would give the same bits).
struct ChunkedHead : public torch::autograd::Function<ChunkedHead> {
  static variable_list forward(AutogradContext* ctx, at::Tensor hidden, at::Tensor weight, at::Tensor targets,
                               double temperature, bool want_entropy, int64_t chunk, bool keep_logp) {
    const int64_t N = hidden.size(0);
    at::Tensor logp = at::empty({N}, hidden.options().dtype(at::kFloat));
    at::Tensor ent = want_entropy ? at::empty({N}, logp.options()) : at::empty({0}, logp.options());
    for (int64_t s = 0; s < N; s += chunk) {
      const int64_t n = std::min(chunk, N - s);
      at::Tensor z = chunk_logits(hidden.narrow(0, s, n), weight, temperature);  // [n, V]
      at::Tensor lse = at::logsumexp(z, -1);                                     // [n]
      logp.narrow(0, s, n).copy_(z.gather(1, targets.narrow(0, s, n).unsqueeze(1)).squeeze(1) - lse);
      if (want_entropy || keep_logp) z.sub_(lse.unsqueeze(1));  // log p
      if (want_entropy) ent.narrow(0, s, n).copy_(-(z.exp() * z).sum(-1));
      if (keep_logp) ctx->saved_data["logp"] = z;
    }
    ctx->save_for_backward({hidden, weight, targets});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["chunk"] = chunk;
    ctx->set_materialize_grads(false);  // an output outside the loss (the entropy metric) costs nothing
    return {logp, ent};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &hidden = saved[0], &weight = saved[1], &targets = saved[2];
    const double temperature = ctx->saved_data["temperature"].toDouble();
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const at::Tensor& g_logp = grads[0];
    const at::Tensor g_ent = grads.size() > 1 && grads[1].defined() && grads[1].numel() > 0 ? grads[1] : at::Tensor();
    const int64_t N = hidden.size(0);
    at::Tensor grad_h, grad_w;
    if (!g_logp.defined() && !g_ent.defined()) return {grad_h, grad_w, {}, {}, {}, {}, {}};
    const bool need_h = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1);
    if (need_h) grad_h = at::empty_like(hidden);
    if (need_w) grad_w = at::zeros(weight.sizes(), weight.options().dtype(at::kFloat));
    for (int64_t s = 0; s < N; s += chunk) {
      const int64_t n = std::min(chunk, N - s);
      at::Tensor h = hidden.narrow(0, s, n);
      at::Tensor z;
      if (ctx->saved_data.count("logp")) {  // one chunk: the forward's
        z = ctx->saved_data["logp"].toTensor();
      } else {
        z = chunk_logits(h, weight, temperature);
        z.sub_(at::logsumexp(z, -1, true));  // log p
      }
      at::Tensor p = z.exp();
      at::Tensor gz = at::zeros_like(p);  // dL/dz, z = logits / T
      if (g_logp.defined()) {
        at::Tensor g = g_logp.narrow(0, s, n).to(at::kFloat).unsqueeze(1);
        gz.sub_(p * g);
        gz.scatter_add_(1, targets.narrow(0, s, n).unsqueeze(1), g);
      }
      if (g_ent.defined()) {
        at::Tensor H = -(p * z).sum(-1, true);
        gz.sub_(p * (z + H) * g_ent.narrow(0, s, n).to(at::kFloat).unsqueeze(1));
      }
      if (temperature != 1.0) gz.div_(temperature);
      if (need_h) grad_h.narrow(0, s, n).copy_(gz.to(hidden.scalar_type()).mm(weight));
      if (need_w) grad_w.addmm_(gz.t(), h.to(at::kFloat));
    }
    if (need_w) grad_w = grad_w.to(weight.scalar_type());
    return {grad_h, grad_w, {}, {}, {}, {}, {}};
  }
};

}  // namespace

int64_t head_chunk_rows(int64_t vocab) { return std::max<int64_t>(1, (int64_t{1} << 24) / std::max<int64_t>(1, vocab)); }

HeadOutput head_logprobs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                         double temperature, bool want_entropy, int64_t chunk_rows) {
  if (!hidden.defined() || !weight.defined() || !targets.defined() || weight.dim() != 2 || hidden.dim() < 1 ||
      hidden.size(-1) != weight.size(1) || hidden.sizes().slice(0, hidden.dim() - 1) != targets.sizes())
    throw Error("head_logprobs: hidden [..., H], weight [V, H] and targets [...] disagree");
  if (!(temperature > 0)) throw Error("head_logprobs: temperature must be > 0");
  const int64_t chunk = chunk_rows > 0 ? chunk_rows : head_chunk_rows(weight.size(0));
  const int64_t H = hidden.size(-1);
  at::Tensor t = targets.reshape({-1}).to(hidden.device(), at::kLong);
  const bool keep_logp = t.size(0) <= chunk && at::GradMode::is_enabled() && (hidden.requires_grad() || weight.requires_grad());
  auto out = ChunkedHead::apply(hidden.reshape({-1, H}), weight, t, temperature, want_entropy, chunk, keep_logp);
  HeadOutput r;
  r.logp = out[0].view(targets.sizes());
  if (want_entropy) r.entropy = out[1].view(targets.sizes());
  return r;
}

}  // namespace moe::model
