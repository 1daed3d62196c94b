// A linear layer's product for any number of rows, fastest for the few rows of a decode step.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace moe::model {

// y = x W^T (+ bias), x [..., H], w [O, H]: at::linear's result and gradients (to float rounding). On the
// CPU in float32, with at most 4 rows (decode at batch 1-4, an expert given 1-4 tokens), it reads W once as
// it lies, where a matrix product first repacks all of it: 1.0-3.7x as fast at the `small` preset's shapes
// (`bench_decode few-rows 1`). With more rows and a small W (at most 64 Ki floats, rows of at most 512: the
// tiny preset's layers), its three products (forward, x's and W's gradients) run on the row kernel's register
// blocks, as linear_packed's, with no repacking by the BLAS per call; larger weights take at::linear.
// Differentiable (its own backward: two matrix products), so a no-grad pass and a training forward compute
// alike. A row's result does not depend on the other rows.
at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias = {});
constexpr int64_t kLinearRowsKernelRows = 4;  // the most rows its kernel takes

// Grouped-query attention by (b, g) blocks, without matrix products: o [B, G, R, D] = softmax(scale q k^T,
// where allowed) v, for qg [B, G, R, D] (R = rep * T rows: query head g * rep + i at position t is row
// i * T + t), k and v [B, G, S, D], allowed [B, 1, T, S] bool. Libtorch 1.13's CPU bmm runs one matrix
// product per block, each through the dispatcher (select, select, mm), and its backward twice more: with
// blocks of a few dozen rows (decode; training on short sequences) that dispatch was most of the attention's
// time. Here each block is one task: its scores by the few-rows kernel, a float32 softmax, then the weighted
// sum of v rows (s ascending). Differentiable, with its own backward by blocks (it saves the probabilities,
// as the matrix products did); with and without gradients the forward computes alike, bit for bit. A block's
// result depends neither on the other blocks nor on the threads. Returns an undefined tensor when it does not
// apply: not the CPU or float32, more than 512 keys (the matrix products then win), or no few-rows kernel on
// this CPU; the caller then takes the matrix products.
at::Tensor attention_blocks(const at::Tensor& qg, const at::Tensor& k, const at::Tensor& v, const at::Tensor& allowed, int64_t T,
                            double scale);

// Element-wise layers in one pass each, on the CPU in float32 with the few-rows kernels (AVX2); each
// differentiable with its own backward, the same forward with and without gradients, a row's result
// independent of the other rows and of the threads (weight gradients sum the rows in order, on one thread).
// Each returns an undefined tensor when it does not apply (another device or dtype, no kernel on this CPU):
// the caller then takes its tensor operations. Results equal those operations' to float rounding (sums of
// squares in another order; the exponential within 2 ulp).
// RMSNorm, float32 throughout: w * (x * rsqrt(mean(x^2, -1) + eps)), x [..., H], w [H].
at::Tensor rms_norm_rows(const at::Tensor& x, const at::Tensor& w, double eps);
// The residual add and the next RMSNorm in one pass: {x, y} with x = h + a and y = RMSNorm(x) as
// rms_norm_rows, h and a of one shape [..., H]. Backward, x's gradient and RMSNorm's sum in the same pass
// (the sum the autograd engine forms for a tensor used twice, bit for bit); h and a get that one tensor. Empty
// when it does not apply.
std::vector<at::Tensor> add_rms_norm_rows(const at::Tensor& h, const at::Tensor& a, const at::Tensor& w, double eps);
// Attention's q/k norm then rotary embedding: x [B, T, N, D] (N heads), w [D], cos and sin [B, T, D] ->
// [B, N, T, D] contiguous: RMSNorm(x) * cos + rotate_half(RMSNorm(x)) * sin, heads before positions.
at::Tensor norm_rope_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& cos, const at::Tensor& sin, double eps);
// SwiGLU: down(silu(gate(x)) * up(x)) = linear_rows(silu(x wg^T) * (x wu^T), wd), x [..., H], wg and wu
// [I, H], wd [O, I]: one autograd node with its own backward (six matrix products), silu(g) * u and its
// gradient in one pass each.
at::Tensor swiglu_rows(const at::Tensor& x, const at::Tensor& wg, const at::Tensor& wu, const at::Tensor& wd);
// A weight packed for generation's products: W [out, in] as panels of W^T, 24 outputs each
// ([ceil(out / 24), in, 24], zeros past out), which the row kernel reads in order with no repacking per call.
struct PackedWeight {
  at::Tensor panels;
  int64_t out = 0, in = 0;
  bool defined() const { return panels.defined(); }
};
// Undefined unless w is a 2-D CPU float32 tensor and this CPU has the row kernel. A copy: it does not follow
// later changes to w.
PackedWeight pack_weight(const at::Tensor& w);
// x W^T (+ b) without gradients, x [..., in], bias [out] or undefined: the row kernel's register blocks (4
// rows by 24 outputs, each output one chain of fused multiply-adds over `in` in order), so a row's result
// depends neither on the rows beside it nor on the threads. CPU float32 with more than kLinearRowsKernelRows
// rows (up to that, linear_rows' kernel reads W as it lies), else undefined: the caller takes linear_rows.
// `bench_decode products` compares it with OpenBLAS.
at::Tensor linear_packed(const at::Tensor& x, const PackedWeight& w, const at::Tensor& bias = {});
// SwiGLU without gradients, its three products as linear_packed's: g and u [I, H], d [O, I] packed. CPU
// float32 with more than kLinearRowsKernelRows rows, else undefined: the caller takes swiglu_rows.
at::Tensor swiglu_packed(const at::Tensor& x, const PackedWeight& g, const PackedWeight& u, const PackedWeight& d);

// A MoE layer's experts in one node: ys [M, O] for xs [M, H] whose rows come in blocks, rows[k] rows (>= 1)
// through the SwiGLU MLP of w[3k] (gate), w[3k + 1] (up) [I, H] and w[3k + 2] (down) [O, I] (contiguous), as
// swiglu_rows computes each block; one buffer for all blocks where swiglu_rows per block made one node and
// one tensor each (then concatenated, and backward their gradients concatenated again). Differentiable in
// xs and the weights; the same forward with and without gradients. Undefined when it does not apply (not
// CPU float32, no few-rows kernel, shapes that do not fit): the caller takes swiglu_rows per block.
at::Tensor swiglu_blocks(const at::Tensor& xs, const std::vector<int64_t>& rows, const std::vector<at::Tensor>& w);

// A MoE layer's combine: out [N, H] = 0, then out[token[i]] += weight[i] * ys[i] for i in order (token [M]
// int64 rows of out, weight [M] or [M, 1], ys [M, H]): mul and index_add_ in one pass, differentiable in
// weight and ys.
at::Tensor scatter_weighted_rows(int64_t N, const at::Tensor& token, const at::Tensor& weight, const at::Tensor& ys);

// dst = src for 4-D CPU float32 tensors of one shape, any strides (a KV cache's slots), by plain loops;
// false (nothing done) for other tensors. (TensorIterator's copy_ into the transposed key cache ran one
// element per inner loop.)
bool copy_4d(const at::Tensor& dst, const at::Tensor& src);

// The instruction set of linear_rows' few-rows kernel: "avx512", "avx2" (with FMA) or "none" (no kernel:
// at::linear, at::mv for one row). By default the best the CPU has; set_linear_rows_isa picks a lesser one
// for tests and benchmarks (not while other threads run linear_rows) and returns false for one the CPU lacks.
std::string linear_rows_isa();
bool set_linear_rows_isa(const std::string& isa);

}  // namespace moe::model
