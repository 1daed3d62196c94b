// AdamW's update of one float32 tensor in one pass (trainer.cpp's fused step), and the sum of squares of a
// gradient for its global norm. Includes no libtorch header.
#pragma once
#include <cstdint>

namespace moe::train::kernel {

// The scalars of one tensor's update, as torch::optim::AdamW::step's tensor operations convert them to float.
struct AdamWScalars {
  float decay;        // 1 - lr * weight_decay (p.mul_); 1 when there is no weight decay
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float sqrt_bc2;     // sqrt(1 - beta2^step)
  float eps;
  float neg_step;     // -lr / (1 - beta1^step)
};

// For i in [b, e): p[i] *= decay; m[i] = fma(g, 1 - beta1, m beta1); v[i] = fma((1 - beta2) g, g, v beta2);
// p[i] += neg_step m[i] / (sqrt(v[i]) / sqrt_bc2 + eps) (product first): the order and roundings of torch's
// AdamW step as ATen's vectorised CPU kernels compute it (mul_; add_ with alpha and addcmul_ each one fused
// multiply-add; sqrt, div, add_, addcdiv_), equal bit for bit on Debian's libtorch 1.13 (tested). No other
// contraction (the file is built with -ffp-contract=off). Elementwise: the result does not depend on how
// [0, n) is split.
void adamw_update(float* p, float* m, float* v, const float* g, int64_t b, int64_t e, const AdamWScalars& s);

// The sum of x[i]^2 for i in [0, n), in double: each square is exact in double, lane l of 8 sums the
// elements i = l mod 8 in i order, then the lanes add in order 0..7 (the same bits with and without AVX2).
double sum_squares(const float* x, int64_t n);

}  // namespace moe::train::kernel
