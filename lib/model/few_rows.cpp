#include "moe/model/few_rows.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "model/few_rows_kernel.h"

namespace moe::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// x2 [n, H] dense float32 with 1 <= n <= kFewRows, w [O, H] dense float32 -> [n, O]. Outputs split over the
// threads: each output is one task's, summed in the kernel's fixed order.
at::Tensor few_rows_forward(const at::Tensor& x2, const at::Tensor& w) {
  const int64_t n = x2.size(0), H = x2.size(1), O = w.size(0);
  at::Tensor y = at::empty({n, O}, x2.options());
  const float* xp = x2.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // At least 256 KiB of weight per task: below that a thread's start-up costs more than it saves.
  const int64_t grain = std::max<int64_t>(8, (int64_t{1} << 16) / std::max<int64_t>(H, 1));
  at::parallel_for(0, O, grain, [&](int64_t b, int64_t e) { kernel::few_rows(xp, wp, yp, n, H, O, b, e); });
  return y;
}

struct FewRowsLinear : public torch::autograd::Function<FewRowsLinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x2, const at::Tensor& w) {
    ctx->save_for_backward({x2, w});
    return few_rows_forward(x2, w);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x2 = saved[0], &w = saved[1];
    const at::Tensor& g = grads[0];  // [n, O]
    at::Tensor gx, gw;
    if (ctx->needs_input_grad(0)) gx = g.mm(w);
    if (ctx->needs_input_grad(1)) gw = g.t().mm(x2);
    return {gx, gw};
  }
};

bool takes_kernel(const at::Tensor& x, const at::Tensor& w, int64_t rows) {
  return rows >= 1 && rows <= kernel::kFewRows && x.device().is_cpu() && w.device().is_cpu() &&
         x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat && w.dim() == 2 && w.is_contiguous() &&
         x.size(-1) == w.size(1) && kernel::few_rows_isa() != kernel::Isa::none;
}

}  // namespace

std::string linear_rows_isa() {
  switch (kernel::few_rows_isa()) {
    case kernel::Isa::avx512: return "avx512";
    case kernel::Isa::avx2: return "avx2";
    default: return "none";
  }
}

bool set_linear_rows_isa(const std::string& isa) {
  if (isa == "avx512") return kernel::set_few_rows_isa(kernel::Isa::avx512);
  if (isa == "avx2") return kernel::set_few_rows_isa(kernel::Isa::avx2);
  if (isa == "none") return kernel::set_few_rows_isa(kernel::Isa::none);
  return false;
}

at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  const int64_t H = x.dim() >= 1 ? x.size(-1) : 0;
  const int64_t rows = H > 0 ? x.numel() / H : 0;
  // y [rows, O] (or [O]) -> x's shape with O in place of H, plus the bias.
  auto shaped = [&](at::Tensor y) {
    if (bias.defined()) y = y + bias;
    std::vector<int64_t> sz = x.sizes().vec();
    sz.back() = w.size(0);
    return y.view(sz);
  };
  if (!takes_kernel(x, w, rows)) {
    // One row elsewhere (another device or dtype, a CPU without AVX2): a matrix-vector product also reads the
    // weight once.
    if (rows == 1 && x.dim() >= 1 && w.dim() == 2) return shaped(at::mv(w, x.reshape({-1})));
    return at::linear(x, w, bias);
  }
  at::Tensor x2 = x.reshape({rows, H}).contiguous();
  const bool grad = at::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad());
  return shaped(grad ? FewRowsLinear::apply(x2, w) : few_rows_forward(x2, w));
}

at::Tensor attention_rows(const at::Tensor& qg, const at::Tensor& k, const at::Tensor& v, const at::Tensor& allowed, int64_t T,
                          double scale) {
  if (qg.dim() != 4 || k.dim() != 4 || v.dim() != 4 || allowed.dim() != 4) return {};
  const int64_t B = qg.size(0), G = qg.size(1), R = qg.size(2), D = qg.size(3), S = k.size(2);
  const bool grad = at::GradMode::is_enabled() && (qg.requires_grad() || k.requires_grad() || v.requires_grad());
  if (grad || R > 16 || T < 1 || R % T != 0 || kernel::few_rows_isa() == kernel::Isa::none) return {};
  for (const at::Tensor* t : {&qg, &k, &v})
    if (!t->device().is_cpu() || t->scalar_type() != at::kFloat) return {};
  for (const at::Tensor* t : {&k, &v})
    if (t->size(0) != B || t->size(1) != G || t->size(2) != S || t->size(3) != D || t->stride(3) != 1 || t->stride(2) != D) return {};
  if (allowed.size(0) != B || allowed.size(1) != 1 || allowed.size(2) != T || allowed.size(3) != S ||
      allowed.scalar_type() != at::kBool || !allowed.device().is_cpu())
    return {};
  at::Tensor q = qg.contiguous();
  at::Tensor a = allowed.contiguous();
  at::Tensor o = at::empty({B, G, R, D}, q.options());
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const bool* ap = a.data_ptr<bool>();
  float* op = o.data_ptr<float>();
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), vs0 = v.stride(0), vs1 = v.stride(1);
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, B * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(R * S);
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / G, g = bg % G;
      const float* qb = qp + bg * R * D;
      const float* kb = kp + b * ks0 + g * ks1;
      const float* vb = vp + b * vs0 + g * vs1;
      for (int64_t r0 = 0; r0 < R; r0 += kernel::kFewRows)
        kernel::few_rows(qb + r0 * D, kb, p.data() + r0 * S, std::min(kernel::kFewRows, R - r0), D, S, 0, S);
      float* ob = op + bg * R * D;
      for (int64_t r = 0; r < R; ++r) {
        float* pr = p.data() + r * S;
        const bool* al = ap + (b * T + r % T) * S;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < S; ++j) {
          pr[j] = al[j] ? pr[j] * sc : -std::numeric_limits<float>::infinity();
          mx = std::max(mx, pr[j]);
        }
        float sum = 0.f;
        for (int64_t j = 0; j < S; ++j) {
          pr[j] = std::exp(pr[j] - mx);  // exp(-inf) = 0; a row without an allowed key gives NaN, as softmax
          sum += pr[j];
        }
        float* orow = ob + r * D;
        std::fill(orow, orow + D, 0.f);
        for (int64_t j = 0; j < S; ++j) {
          const float w = pr[j] / sum;
          const float* vr = vb + j * D;
          for (int64_t d = 0; d < D; ++d) orow[d] += w * vr[d];
        }
      }
    }
  });
  return o;
}

}  // namespace moe::model
