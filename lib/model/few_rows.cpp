#include "moe/model/few_rows.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

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
  if (!takes_kernel(x, w, rows)) {
    // One row elsewhere (another device or dtype, a CPU without AVX2): a matrix-vector product also reads the
    // weight once.
    if (rows == 1 && x.dim() >= 1 && w.dim() == 2) {
      at::Tensor y = at::mv(w, x.reshape({-1}));
      if (bias.defined()) y = y + bias;
      std::vector<int64_t> sz = x.sizes().vec();
      sz.back() = w.size(0);
      return y.view(sz);
    }
    return at::linear(x, w, bias);
  }
  at::Tensor x2 = x.reshape({rows, H}).contiguous();
  const bool grad = at::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad());
  at::Tensor y = grad ? FewRowsLinear::apply(x2, w) : few_rows_forward(x2, w);
  if (bias.defined()) y = y + bias;
  std::vector<int64_t> sz = x.sizes().vec();
  sz.back() = w.size(0);
  return y.view(sz);
}

}  // namespace moe::model
