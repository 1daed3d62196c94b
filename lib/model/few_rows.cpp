#include "moe/model/few_rows.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <vector>

#include "model/few_rows_kernel.h"

namespace moe::model {

static_assert(kLinearRowsKernelRows == kernel::kFewRows, "few_rows.h and the kernel disagree on its rows");

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Every tensor defined, on the CPU, float32, and this CPU has the row kernels.
bool rows_kernel_takes(std::initializer_list<const at::Tensor*> ts) {
  if (kernel::few_rows_isa() == kernel::Isa::none) return false;
  for (const at::Tensor* t : ts)
    if (!t->defined() || !t->device().is_cpu() || t->scalar_type() != at::kFloat) return false;
  return true;
}

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

// ---- products by the row kernel's register blocks (kernel::matmul), without the BLAS's repacking ----
}  // namespace

PackedWeight pack_weight(const at::Tensor& w) {
  if (!rows_kernel_takes({&w}) || w.dim() != 2) return {};
  const int64_t out = w.size(0), in = w.size(1);
  const at::Tensor wc = w.detach().contiguous();
  PackedWeight p{at::empty({(out + kernel::kPanel - 1) / kernel::kPanel, in, kernel::kPanel}, wc.options()), out, in};
  kernel::pack_panels(wc.data_ptr<float>(), out, in, p.panels.data_ptr<float>());
  return p;
}

namespace {

// y [m, D] (rows y.stride(0) apart, dense within) = a [m, n] X, a dense: groups of 4 rows over the threads
// (each element is summed alike whatever the split). X as kernel::matmul reads it (ldx, step).
void matmul_into(const at::Tensor& a, const float* X, int64_t D, int64_t ldx, int64_t step, const at::Tensor& y) {
  const int64_t m = a.size(0), n = a.size(1), ldy = y.stride(0);
  const float* ap = a.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, (m + 3) / 4, std::max<int64_t>(1, 65536 / std::max<int64_t>(4 * n * D, 1)), [&](int64_t g0, int64_t g1) {
    const int64_t r0 = 4 * g0, r1 = std::min(m, 4 * g1);
    kernel::matmul(ap + r0 * n, n, r1 - r0, X, n, D, ldx, step, yp + r0 * ldy, ldy);
  });
}

// x2 [m, in] W^T into y [m, out] (rows dense) from W's panels.
void xwt_packed_into(const at::Tensor& x2, const PackedWeight& w, const at::Tensor& y) {
  matmul_into(x2, w.panels.data_ptr<float>(), w.out, kernel::kPanel, kernel::kPanel * w.in, y);
}
at::Tensor xwt_packed(const at::Tensor& x2, const PackedWeight& w) {
  at::Tensor y = at::empty({x2.size(0), w.out}, x2.options());
  xwt_packed_into(x2, w, y);
  return y;
}

// Weights whose products the kernel runs in training as well: at most 64 Ki floats with rows of at most 512
// (every layer of the tiny preset; none of the small preset's), where OpenBLAS spent about a third of its time
// zeroing and repacking operands (perf of an SFT step). Larger ones stay with the BLAS; either way a weight's
// forward, its no-grad forward and its backward always take the same path.
bool small_weight(const at::Tensor& w) {
  return rows_kernel_takes({&w}) && w.dim() == 2 && w.is_contiguous() && w.size(1) <= 512 && w.numel() <= 65536;
}

// y = g [m, O] W [O, H] (x's gradient; y's rows dense): the kernel on W as it lies for a small W, else the
// BLAS.
void gw_into(const at::Tensor& g, const at::Tensor& w, at::Tensor y) {
  if (!small_weight(w)) {
    at::mm_out(y, g, w);
    return;
  }
  matmul_into(g.contiguous(), w.data_ptr<float>(), w.size(1), w.size(1), kernel::kPanel, y);
}
at::Tensor gw_mm(const at::Tensor& g, const at::Tensor& w) {
  at::Tensor y = at::empty({g.size(0), w.size(1)}, g.options());
  gw_into(g, w, y);
  return y;
}

// g^T x (W's gradient, W [O, H]; g [m, O], x [m, H]): for a small W the kernel on g transposed (each element
// one chain of fused multiply-adds over the m rows in order), else the BLAS.
at::Tensor gtx_mm(const at::Tensor& g, const at::Tensor& x, const at::Tensor& w) {
  if (!small_weight(w)) return g.t().mm(x);
  const at::Tensor gc = g.contiguous(), xc = x.contiguous();
  const int64_t m = gc.size(0), O = gc.size(1), H = xc.size(1);
  at::Tensor gt = at::empty({O, m}, gc.options()), y = at::empty({O, H}, gc.options());
  kernel::transpose(gc.data_ptr<float>(), m, O, gt.data_ptr<float>());
  matmul_into(gt, xc.data_ptr<float>(), H, H, kernel::kPanel, y);
  return y;
}

// y = gg wg + gu wu (SwiGLU's gradient in x; y's rows dense): for small weights both by the kernel, then
// added; else the BLAS's product and addmm_.
void gx_two_into(const at::Tensor& gg, const at::Tensor& wg, const at::Tensor& gu, const at::Tensor& wu, at::Tensor y) {
  if (!small_weight(wg) || !small_weight(wu)) {
    at::mm_out(y, gg, wg);
    y.addmm_(gu, wu);
    return;
  }
  gw_into(gg, wg, y);
  y.add_(gw_mm(gu, wu));
}

// x2 [m, H] dense (m > kFewRows) W^T for a small W, differentiable: the three products by the kernel.
struct SmallLinear : public torch::autograd::Function<SmallLinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x2, const at::Tensor& w) {
    ctx->save_for_backward({x2, w});
    return xwt_packed(x2, pack_weight(w));  // packed for the call
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x2 = saved[0], &w = saved[1];
    at::Tensor gx, gw;
    if (ctx->needs_input_grad(0)) gx = gw_mm(grads[0], w);
    if (ctx->needs_input_grad(1)) gw = gtx_mm(grads[0], x2, w);
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
  if (rows > kernel::kFewRows && small_weight(w) && rows_kernel_takes({&x}) && x.size(-1) == w.size(1)) {
    at::Tensor x2 = x.reshape({rows, H}).contiguous();
    const bool grad = at::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad());
    return shaped(grad ? SmallLinear::apply(x2, w) : xwt_packed(x2, pack_weight(w)));
  }
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

namespace {

// Keys per block above which the matrix products win (a long context): the blocks' loops read k and v once
// per 4 query rows, where a matrix product tiles them.
constexpr int64_t kMaxKeys = 512;

float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Rows of a block go through the kernels in groups of up to 4 positions of one head (rows h T + t0 ..
// h T + t0 + m - 1): kernel::combine_row_block shares each load of the other operand between them, and
// positions side by side have nearly the same prefix of keys.
constexpr int64_t kGroup = 4;
int64_t group_rows(int64_t r0, int64_t T) { return std::min(kGroup, T - r0 % T); }  // rows r0 .. of one head

// Keys [0, n) hold every allowed one of a row (causal rows need only a prefix).
int64_t allowed_prefix(const bool* al, int64_t S) {
  int64_t n = S;
  while (n > 0 && !al[n - 1]) --n;
  return n;
}

// One (b, g) block's forward. q [R, D], kt [D, S] (k transposed: rows ldkt apart), v [S, D] (rows dense),
// allowed [T, S] of this b (query row r is position r % T). p [R, S] gets the probabilities, o [R, D] the
// output. Row r's scores are q[r] combined with k^T's rows (vector lanes over keys: no horizontal sums), its
// output p[r] combined with v's rows. grouped: rows in groups (kGroup); else one at a time, which reads k^T
// and v row by row (a KV cache's keys lie far apart: kernel::combine_rows streams a long row once).
void block_forward(const float* q, const float* kt, int64_t ldkt, const float* v, const bool* allowed, int64_t R, int64_t T,
                   int64_t S, int64_t D, float scale, float* p, float* o, bool grouped) {
  for (int64_t r0 = 0; r0 < R;) {
    const int64_t m = grouped ? group_rows(r0, T) : 1;
    int64_t n[kGroup] = {}, nmax = 0;
    for (int64_t i = 0; i < m; ++i) nmax = std::max(nmax, n[i] = allowed_prefix(allowed + ((r0 + i) % T) * S, S));
    if (m > 1 && nmax > 0) kernel::combine_row_block(q + r0 * D, D, m, kt, D, nmax, ldkt, p + r0 * S, S);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t r = r0 + i;
      float* pr = p + r * S;
      const bool* al = allowed + (r % T) * S;
      std::fill(pr + n[i], pr + S, 0.f);
      if (n[i] == 0) continue;
      if (m == 1) kernel::combine_rows(q + r * D, kt, D, n[i], ldkt, pr);
      kernel::softmax_row(pr, al, scale, n[i], pr);
    }
    if (m > 1)
      kernel::combine_row_block(p + r0 * S, S, m, v, nmax, D, D, o + r0 * D, D);
    else if (n[0] > 0)
      kernel::combine_rows(p + r0 * S, v, n[0], D, D, o + r0 * D);
    for (int64_t i = 0; i < m; ++i)  // no allowed key: NaN, as softmax
      if (n[i] == 0) std::fill(o + (r0 + i) * D, o + (r0 + i + 1) * D, std::numeric_limits<float>::quiet_NaN());
    r0 += m;
  }
}

// One block's backward, from the saved probabilities p and output o and the output's gradient go [R, D]:
//   ds = p * (go v^T - rowsum(go * o)) * scale;  dq = ds k;  dk = ds^T q;  dv = p^T go.
// Scratch: ds [R, S], vt [D, S], ct [S, R]. dq, dk and dv are written whole. Rows in groups as the forward's;
// dk and dv 4 keys at a time.
void block_backward(const float* q, const float* k, const float* v, const float* p, const float* o, const float* go, int64_t R,
                    int64_t T, int64_t S, int64_t D, float scale, float* ds, float* vt, float* ct, float* dq, float* dk, float* dv) {
  kernel::transpose(v, S, D, vt);
  for (int64_t r0 = 0; r0 < R;) {
    const int64_t m = group_rows(r0, T);
    int64_t n[kGroup] = {}, nmax = 0;
    for (int64_t i = 0; i < m; ++i) {  // keys past the last with a weight have none: their ds is 0
      const float* pr = p + (r0 + i) * S;
      n[i] = S;
      while (n[i] > 0 && pr[n[i] - 1] == 0.f) --n[i];
      nmax = std::max(nmax, n[i]);
    }
    if (nmax > 0) kernel::combine_row_block(go + r0 * D, D, m, vt, D, nmax, S, ds + r0 * S, S);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t r = r0 + i;
      const float delta = dot(go + r * D, o + r * D, D);
      const float* pr = p + r * S;
      float* dsr = ds + r * S;
      kernel::softmax_row_backward(pr, delta, scale, n[i], dsr);
      std::fill(dsr + n[i], dsr + S, 0.f);
    }
    kernel::combine_row_block(ds + r0 * S, S, m, k, nmax, D, D, dq + r0 * D, D);
    r0 += m;
  }
  kernel::transpose(ds, R, S, ct);
  for (int64_t j = 0; j < S; j += kGroup) kernel::combine_row_block(ct + j * R, R, std::min(kGroup, S - j), q, R, D, D, dk + j * D, D);
  kernel::transpose(p, R, S, ct);
  for (int64_t j = 0; j < S; j += kGroup) kernel::combine_row_block(ct + j * R, R, std::min(kGroup, S - j), go, R, D, D, dv + j * D, D);
}

struct Shape {
  int64_t B, G, R, D, S, T;
};

// k's rows dense ([S, D] per block), or k a transposed view whose columns are dense (a CPU KV cache's keys:
// [D, S] per block, rows stride(3) apart).
bool dense_rows(const at::Tensor& t) { return t.stride(3) == 1 && t.stride(2) == t.size(3); }
bool dense_columns(const at::Tensor& t) { return t.stride(2) == 1 && t.stride(3) >= t.size(2); }

// Every block's forward, over the threads; p is [B, G, R, S] or, when null, one block's scratch per task.
// k's blocks are transposed into scratch unless they already lie transposed (dense_columns).
void forward_all(const Shape& z, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a, float scale,
                 float* pall, at::Tensor& o) {
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const bool* ap = a.data_ptr<bool>();
  float* op = o.data_ptr<float>();
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), vs0 = v.stride(0), vs1 = v.stride(1);
  const bool given_kt = dense_columns(k) && !dense_rows(k);
  const int64_t ldkt = given_kt ? k.stride(3) : z.S;
  at::parallel_for(0, z.B * z.G, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch((pall ? 0 : z.R * z.S) + (given_kt ? 0 : z.D * z.S));
    float* kt = scratch.data() + (pall ? 0 : z.R * z.S);
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / z.G, g = bg % z.G;
      float* p = pall ? pall + bg * z.R * z.S : scratch.data();
      const float* kb = kp + b * ks0 + g * ks1;
      if (!given_kt) kernel::transpose(kb, z.S, z.D, kt);
      block_forward(qp + bg * z.R * z.D, given_kt ? kb : kt, ldkt, vp + b * vs0 + g * vs1, ap + b * z.T * z.S, z.R, z.T, z.S,
                    z.D, scale, p, op + bg * z.R * z.D, !given_kt);
    }
  });
}

// The differentiable form: q, k, v contiguous [B, G, *, D]. Saves the probabilities [B, G, R, S] (the matrix
// products' path saved as much) and the output.
struct BlockAttention : public torch::autograd::Function<BlockAttention> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& allowed, int64_t T, double scale) {
    const Shape z{q.size(0), q.size(1), q.size(2), q.size(3), k.size(2), T};
    at::Tensor p = at::empty({z.B, z.G, z.R, z.S}, q.options());
    at::Tensor o = at::empty({z.B, z.G, z.R, z.D}, q.options());
    forward_all(z, q, k, v, allowed, static_cast<float>(scale), p.data_ptr<float>(), o);
    ctx->save_for_backward({q, k, v, p, o});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["T"] = T;
    return o;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &p = saved[3], &o = saved[4];
    const at::Tensor go = grads[0].contiguous();
    const float scale = static_cast<float>(ctx->saved_data["scale"].toDouble());
    const int64_t B = q.size(0), G = q.size(1), R = q.size(2), D = q.size(3), S = k.size(2);
    const int64_t T = ctx->saved_data["T"].toInt();
    at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
    const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
    const float *pp = p.data_ptr<float>(), *opp = o.data_ptr<float>(), *gp = go.data_ptr<float>();
    float *dqp = dq.data_ptr<float>(), *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();
    at::parallel_for(0, B * G, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(2 * R * S + D * S);
      float *ds = scratch.data(), *ct = ds + R * S, *vt = ct + R * S;
      for (int64_t bg = begin; bg < end; ++bg)
        block_backward(qp + bg * R * D, kp + bg * S * D, vp + bg * S * D, pp + bg * R * S, opp + bg * R * D, gp + bg * R * D, R, T,
                       S, D, scale, ds, vt, ct, dqp + bg * R * D, dkp + bg * S * D, dvp + bg * S * D);
    });
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// ---- element-wise rows: RMSNorm, RMSNorm + rotary embedding, SiLU(g) * u ----

// Rows per task: below a few thousand floats a thread's start-up costs more than it saves.
int64_t rows_grain(int64_t row) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(row, 1)); }

void silu_mul_into(const at::Tensor& g, const at::Tensor& u, at::Tensor& h) {
  const float *gp = g.data_ptr<float>(), *up = u.data_ptr<float>();
  float* hp = h.data_ptr<float>();
  at::parallel_for(0, g.numel(), 4096, [&](int64_t b, int64_t e) { kernel::silu_mul(gp + b, up + b, e - b, hp + b); });
}

void silu_mul_backward_into(const at::Tensor& g, const at::Tensor& u, const at::Tensor& gh, at::Tensor& gg, at::Tensor& gu) {
  const float *gp = g.data_ptr<float>(), *up = u.data_ptr<float>(), *hp = gh.data_ptr<float>();
  float *ggp = gg.data_ptr<float>(), *gup = gu.data_ptr<float>();
  at::parallel_for(0, g.numel(), 4096,
                   [&](int64_t b, int64_t e) { kernel::silu_mul_backward(gp + b, up + b, hp + b, e - b, ggp + b, gup + b); });
}

// x2 [n, H] dense, w [H]: y [n, H], inv [n].
struct RmsNormRows : public torch::autograd::Function<RmsNormRows> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x2, const at::Tensor& w, double eps) {
    const int64_t n = x2.size(0), H = x2.size(1);
    at::Tensor y = at::empty_like(x2), inv = at::empty({n}, x2.options());
    const float *xp = x2.data_ptr<float>(), *wp = w.data_ptr<float>();
    float *yp = y.data_ptr<float>(), *ip = inv.data_ptr<float>();
    at::parallel_for(0, n, rows_grain(H), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) ip[r] = kernel::rms_norm_row(xp + r * H, wp, H, static_cast<float>(eps), yp + r * H);
    });
    ctx->save_for_backward({x2, w, inv});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x2 = saved[0], &w = saved[1], &inv = saved[2];
    const at::Tensor g = grads[0].contiguous();
    const int64_t n = x2.size(0), H = x2.size(1);
    const float *xp = x2.data_ptr<float>(), *wp = w.data_ptr<float>(), *ip = inv.data_ptr<float>(), *gp = g.data_ptr<float>();
    at::Tensor gx, gw;
    if (ctx->needs_input_grad(0)) {
      gx = at::empty_like(x2);
      float* gxp = gx.data_ptr<float>();
      at::parallel_for(0, n, rows_grain(H), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) kernel::rms_norm_row_backward(xp + r * H, wp, ip[r], gp + r * H, H, gxp + r * H);
      });
    }
    if (ctx->needs_input_grad(1)) {  // rows in order, one thread: the same sum whatever the threads
      gw = at::zeros_like(w);
      float* gwp = gw.data_ptr<float>();
      for (int64_t r = 0; r < n; ++r) kernel::add_scaled_product(gp + r * H, xp + r * H, ip[r], H, gwp);
    }
    return {gx, gw, at::Tensor()};
  }
};

// h2 and a2 [n, H] dense, w [H]: x = h2 + a2 and y = RMSNorm(x), each [n, H], inv [n]. The backward takes
// x's own gradient (the residual stream's) with y's: gx + RMSNorm's backward, the sum the autograd engine
// would form, once for both inputs.
struct AddRmsNormRows : public torch::autograd::Function<AddRmsNormRows> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& h2, const at::Tensor& a2, const at::Tensor& w, double eps) {
    const int64_t n = h2.size(0), H = h2.size(1);
    at::Tensor x = at::empty_like(h2), y = at::empty_like(h2), inv = at::empty({n}, h2.options());
    const float *hp = h2.data_ptr<float>(), *ap = a2.data_ptr<float>(), *wp = w.data_ptr<float>();
    float *xp = x.data_ptr<float>(), *yp = y.data_ptr<float>(), *ip = inv.data_ptr<float>();
    at::parallel_for(0, n, rows_grain(H), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        float* xr = xp + r * H;
        for (int64_t i = 0; i < H; ++i) xr[i] = hp[r * H + i] + ap[r * H + i];
        ip[r] = kernel::rms_norm_row(xr, wp, H, static_cast<float>(eps), yp + r * H);
      }
    });
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, w, inv});
    return {x, y};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &inv = saved[2];
    const at::Tensor gx = grads[0].defined() ? grads[0].contiguous() : at::Tensor();
    if (!grads[1].defined()) return {gx, gx, at::Tensor(), at::Tensor()};
    const at::Tensor gy = grads[1].contiguous();
    const int64_t n = x.size(0), H = x.size(1);
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *ip = inv.data_ptr<float>(), *gp = gy.data_ptr<float>();
    const float* gxp = gx.defined() ? gx.data_ptr<float>() : nullptr;
    at::Tensor g;
    if (ctx->needs_input_grad(0) || ctx->needs_input_grad(1)) {
      g = at::empty_like(x);
      float* op = g.data_ptr<float>();
      at::parallel_for(0, n, rows_grain(H), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          float* o = op + r * H;
          kernel::rms_norm_row_backward(xp + r * H, wp, ip[r], gp + r * H, H, o);
          if (gxp)
            for (int64_t i = 0; i < H; ++i) o[i] += gxp[r * H + i];
        }
      });
    }
    at::Tensor gw;
    if (ctx->needs_input_grad(2)) {  // rows in order, one thread
      gw = at::zeros_like(w);
      float* gwp = gw.data_ptr<float>();
      for (int64_t r = 0; r < n; ++r) kernel::add_scaled_product(gp + r * H, xp + r * H, ip[r], H, gwp);
    }
    return {g, g, gw, at::Tensor()};
  }
};

// x [B, T, N, D] dense, w [D], cos and sin [B, T, D] dense: y [B, N, T, D] (the heads' layout attention
// takes), inv [B, T, N].
struct NormRopeRows : public torch::autograd::Function<NormRopeRows> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& cos,
                            const at::Tensor& sin, double eps) {
    const int64_t B = x.size(0), T = x.size(1), N = x.size(2), D = x.size(3);
    at::Tensor y = at::empty({B, N, T, D}, x.options()), inv = at::empty({B, T, N}, x.options());
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
    float *yp = y.data_ptr<float>(), *ip = inv.data_ptr<float>();
    at::parallel_for(0, B * T, rows_grain(N * D), [&](int64_t b0, int64_t e0) {
      std::vector<float> a(D);
      for (int64_t bt = b0; bt < e0; ++bt) {
        const int64_t b = bt / T, t = bt % T;
        for (int64_t h = 0; h < N; ++h) {
          const int64_t r = bt * N + h;
          ip[r] = kernel::rms_norm_row(xp + r * D, wp, D, static_cast<float>(eps), a.data());
          kernel::rope_row(a.data(), cp + bt * D, sp + bt * D, D, yp + ((b * N + h) * T + t) * D);
        }
      }
    });
    ctx->save_for_backward({x, w, cos, sin, inv});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &cos = saved[2], &sin = saved[3], &inv = saved[4];
    const at::Tensor g = grads[0].contiguous();
    const int64_t B = x.size(0), T = x.size(1), N = x.size(2), D = x.size(3);
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
    const float *ip = inv.data_ptr<float>(), *gp = g.data_ptr<float>();
    // The rotary embedding's transpose first (ga, in x's layout), then RMSNorm's backward.
    at::Tensor ga = at::empty_like(x), gx = at::empty_like(x);
    float *gap = ga.data_ptr<float>(), *gxp = gx.data_ptr<float>();
    at::parallel_for(0, B * T, rows_grain(N * D), [&](int64_t b0, int64_t e0) {
      for (int64_t bt = b0; bt < e0; ++bt) {
        const int64_t b = bt / T, t = bt % T;
        for (int64_t h = 0; h < N; ++h) {
          const int64_t r = bt * N + h;
          kernel::rope_row_backward(gp + ((b * N + h) * T + t) * D, cp + bt * D, sp + bt * D, D, gap + r * D);
          kernel::rms_norm_row_backward(xp + r * D, wp, ip[r], gap + r * D, D, gxp + r * D);
        }
      }
    });
    at::Tensor gw;
    if (ctx->needs_input_grad(1)) {
      gw = at::zeros_like(w);
      float* gwp = gw.data_ptr<float>();
      for (int64_t r = 0; r < B * T * N; ++r) kernel::add_scaled_product(gap + r * D, xp + r * D, ip[r], D, gwp);
    }
    return {gx, gw, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// An expert's SwiGLU MLP as one autograd node: x2 [n, H] dense, wg and wu [I, H], wd [O, I]. The products
// are linear_rows' (so a no-grad pass computes alike); the backward is six matrix products and one pass
// for silu's gradient, where the tensor operations made three linear nodes, their transposes, silu and mul.
struct SwiGlu : public torch::autograd::Function<SwiGlu> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x2, const at::Tensor& wg, const at::Tensor& wu,
                            const at::Tensor& wd) {
    at::Tensor g = linear_rows(x2, wg), u = linear_rows(x2, wu);
    at::Tensor h = at::empty_like(g);
    silu_mul_into(g, u, h);
    ctx->save_for_backward({x2, wg, wu, wd, g, u, h});
    return linear_rows(h, wd);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x2 = saved[0], &wg = saved[1], &wu = saved[2], &wd = saved[3], &g = saved[4], &u = saved[5], &h = saved[6];
    const at::Tensor gy = grads[0].contiguous();
    at::Tensor gwd = ctx->needs_input_grad(3) ? gtx_mm(gy, h, wd) : at::Tensor();
    at::Tensor gh = gw_mm(gy, wd);
    at::Tensor gg = at::empty_like(g), gu = at::empty_like(u);
    silu_mul_backward_into(g, u, gh, gg, gu);
    at::Tensor gx;
    if (ctx->needs_input_grad(0)) {
      gx = at::empty_like(x2);
      gx_two_into(gg, wg, gu, wu, gx);
    }
    at::Tensor gwg = ctx->needs_input_grad(1) ? gtx_mm(gg, x2, wg) : at::Tensor();
    at::Tensor gwu = ctx->needs_input_grad(2) ? gtx_mm(gu, x2, wu) : at::Tensor();
    return {gx, gwg, gwu, gwd};
  }
};

// A MoE layer's experts as one autograd node: xs [M, H] dense in blocks of rows[k] rows, block k through
// the SwiGLU of w[3k], w[3k + 1], w[3k + 2] (gate and up [I, H], down [O, I]) into its rows of one ys [M, O].
// Each block's products are SwiGlu's (linear_rows': its kernel up to kFewRows rows, else x W^T as at::linear
// runs it), written into the blocks of one buffer; the gate activations in one pass over all blocks. Where a
// node per expert made E nodes, their outputs concatenated (and, backward, the split's gradients
// concatenated), this writes every block in place.
struct SwiGluBlocks : public torch::autograd::Function<SwiGluBlocks> {
  // y [n, O] = x W^T into y (a block of a dense buffer), as linear_rows computes it (its rules: takes_kernel,
  // small_weight).
  static void linear_into(const at::Tensor& x, const at::Tensor& w, at::Tensor y) {
    if (takes_kernel(x, w, x.size(0))) y.copy_(few_rows_forward(x, w));
    else if (small_weight(w)) xwt_packed_into(x, pack_weight(w), y);
    else at::mm_out(y, x, w.t());
  }
  // rows_t: the block sizes, int64 on the CPU.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& xs, const at::Tensor& rows_t, at::TensorList w) {
    const std::vector<int64_t> rows(rows_t.data_ptr<int64_t>(), rows_t.data_ptr<int64_t>() + rows_t.numel());
    const int64_t M = xs.size(0), I = w[0].size(0), O = w[2].size(0);
    at::Tensor g = at::empty({M, I}, xs.options()), u = at::empty({M, I}, xs.options()), h = at::empty({M, I}, xs.options());
    at::Tensor ys = at::empty({M, O}, xs.options());
    at::NoGradGuard ng;
    for (size_t k = 0, r0 = 0; k < rows.size(); r0 += rows[k], ++k) {
      const at::Tensor x = xs.narrow(0, r0, rows[k]);
      linear_into(x, w[3 * k], g.narrow(0, r0, rows[k]));
      linear_into(x, w[3 * k + 1], u.narrow(0, r0, rows[k]));
    }
    silu_mul_into(g, u, h);
    for (size_t k = 0, r0 = 0; k < rows.size(); r0 += rows[k], ++k)
      linear_into(h.narrow(0, r0, rows[k]), w[3 * k + 2], ys.narrow(0, r0, rows[k]));
    std::vector<at::Tensor> keep{xs, g, u, h};
    keep.insert(keep.end(), w.begin(), w.end());
    ctx->save_for_backward(keep);
    ctx->saved_data["rows"] = rows;
    return ys;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &xs = saved[0], &g = saved[1], &u = saved[2], &h = saved[3];
    const std::vector<int64_t> rows = ctx->saved_data["rows"].toIntVector();
    const at::Tensor gy = grads[0].contiguous();
    at::Tensor gh = at::empty_like(h), gg = at::empty_like(g), gu = at::empty_like(u);
    for (size_t k = 0, r0 = 0; k < rows.size(); r0 += rows[k], ++k) gw_into(gy.narrow(0, r0, rows[k]), saved[4 + 3 * k + 2], gh.narrow(0, r0, rows[k]));
    silu_mul_backward_into(g, u, gh, gg, gu);
    variable_list out(2 + 3 * rows.size());  // xs, rows_t (none), the weights
    if (ctx->needs_input_grad(0)) out[0] = at::empty_like(xs);
    for (size_t k = 0, r0 = 0; k < rows.size(); r0 += rows[k], ++k) {
      const int64_t n = rows[k];
      const at::Tensor x = xs.narrow(0, r0, n), ggk = gg.narrow(0, r0, n), guk = gu.narrow(0, r0, n);
      const at::Tensor &wg = saved[4 + 3 * k], &wu = saved[5 + 3 * k];
      if (out[0].defined()) gx_two_into(ggk, wg, guk, wu, out[0].narrow(0, r0, n));
      if (ctx->needs_input_grad(2 + 3 * k)) out[2 + 3 * k] = gtx_mm(ggk, x, wg);
      if (ctx->needs_input_grad(3 + 3 * k)) out[3 + 3 * k] = gtx_mm(guk, x, wu);
      if (ctx->needs_input_grad(4 + 3 * k)) out[4 + 3 * k] = gtx_mm(gy.narrow(0, r0, n), h.narrow(0, r0, n), saved[4 + 3 * k + 2]);
    }
    return out;
  }
};

// out [N, H] = 0, then out[token[i]] += weight[i] * ys[i] for i in order: token [M] int64 (each < N),
// weight [M], ys [M, H] dense.
struct ScatterWeighted : public torch::autograd::Function<ScatterWeighted> {
  static at::Tensor forward(AutogradContext* ctx, int64_t N, const at::Tensor& token, const at::Tensor& weight, const at::Tensor& ys) {
    const int64_t M = ys.size(0), H = ys.size(1);
    at::Tensor out = at::zeros({N, H}, ys.options());
    const int64_t* tp = token.data_ptr<int64_t>();
    const float *wp = weight.data_ptr<float>(), *yp = ys.data_ptr<float>();
    float* op = out.data_ptr<float>();
    // Columns over the threads (rows of out get several terms: one thread adds all of a column's, in order).
    at::parallel_for(0, H, 256, [&](int64_t h0, int64_t h1) {
      for (int64_t i = 0; i < M; ++i) kernel::axpy(wp[i], yp + i * H + h0, h1 - h0, op + tp[i] * H + h0);
    });
    ctx->save_for_backward({token, weight, ys});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &token = saved[0], &weight = saved[1], &ys = saved[2];
    const at::Tensor g = grads[0].contiguous();
    const int64_t M = ys.size(0), H = ys.size(1);
    at::Tensor gy = at::empty_like(ys), gw = at::empty_like(weight);
    const int64_t* tp = token.data_ptr<int64_t>();
    const float *wp = weight.data_ptr<float>(), *yp = ys.data_ptr<float>(), *gp = g.data_ptr<float>();
    float *gyp = gy.data_ptr<float>(), *gwp = gw.data_ptr<float>();
    at::parallel_for(0, M, rows_grain(H), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) gwp[i] = kernel::scale_row_dot(gp + tp[i] * H, yp + i * H, wp[i], H, gyp + i * H);
    });
    return {at::Tensor(), at::Tensor(), gw, gy};
  }
};

}  // namespace

at::Tensor scatter_weighted_rows(int64_t N, const at::Tensor& token, const at::Tensor& weight, const at::Tensor& ys) {
  if (!rows_kernel_takes({&weight, &ys}) || ys.dim() != 2 || token.dim() != 1 || token.scalar_type() != at::kLong ||
      !token.device().is_cpu() || token.size(0) != ys.size(0) || weight.numel() != ys.size(0))
    return {};
  return ScatterWeighted::apply(N, token.contiguous(), weight.reshape({-1}).contiguous(), ys.contiguous());
}

at::Tensor swiglu_rows(const at::Tensor& x, const at::Tensor& wg, const at::Tensor& wu, const at::Tensor& wd) {
  if (!rows_kernel_takes({&x, &wg, &wu, &wd}) || x.dim() < 1 || x.numel() == 0) return {};
  for (const at::Tensor* w : {&wg, &wu, &wd})
    if (w->dim() != 2 || !w->is_contiguous()) return {};
  const int64_t H = x.size(-1), I = wg.size(0);
  if (wg.size(1) != H || wu.size(0) != I || wu.size(1) != H || wd.size(1) != I) return {};
  std::vector<int64_t> sz = x.sizes().vec();
  sz.back() = wd.size(0);
  return SwiGlu::apply(x.reshape({-1, H}).contiguous(), wg, wu, wd).view(sz);
}

at::Tensor swiglu_blocks(const at::Tensor& xs, const std::vector<int64_t>& rows, const std::vector<at::Tensor>& w) {
  if (rows.empty() || w.size() != 3 * rows.size() || xs.dim() != 2 || !rows_kernel_takes({&xs})) return {};
  const int64_t H = xs.size(1), I = w[0].size(0), O = w[2].size(0);
  int64_t M = 0;
  for (size_t k = 0; k < rows.size(); ++k) {
    if (rows[k] < 1) return {};
    M += rows[k];
    const at::Tensor &wg = w[3 * k], &wu = w[3 * k + 1], &wd = w[3 * k + 2];
    if (!rows_kernel_takes({&wg, &wu, &wd})) return {};
    for (const at::Tensor* t : {&wg, &wu, &wd})
      if (t->dim() != 2 || !t->is_contiguous()) return {};
    if (wg.size(0) != I || wg.size(1) != H || wu.size(0) != I || wu.size(1) != H || wd.size(0) != O || wd.size(1) != I) return {};
  }
  if (M != xs.size(0)) return {};
  return SwiGluBlocks::apply(xs.contiguous(), at::tensor(rows, at::kLong), at::TensorList(w));
}

namespace {
// w was packed by pack_weight and x's rows are its inputs, more of them than linear_rows' kernel takes.
bool packed_takes(const at::Tensor& x, const PackedWeight& w) {
  return w.defined() && rows_kernel_takes({&x}) && x.dim() >= 1 && x.size(-1) == w.in && w.in > 0 &&
         x.numel() / w.in > kLinearRowsKernelRows;
}
}  // namespace

at::Tensor linear_packed(const at::Tensor& x, const PackedWeight& w, const at::Tensor& bias) {
  if (!packed_takes(x, w)) return {};
  if (bias.defined() && (!rows_kernel_takes({&bias}) || bias.dim() != 1 || bias.size(0) != w.out)) return {};
  at::NoGradGuard ng;
  std::vector<int64_t> sz = x.sizes().vec();
  sz.back() = w.out;
  at::Tensor y = xwt_packed(x.reshape({-1, w.in}).contiguous(), w);
  if (bias.defined()) y.add_(bias);
  return y.view(sz);
}

at::Tensor swiglu_packed(const at::Tensor& x, const PackedWeight& g, const PackedWeight& u, const PackedWeight& d) {
  if (!packed_takes(x, g) || x.dim() != 2 || !u.defined() || u.in != g.in || u.out != g.out || !d.defined() || d.in != g.out) return {};
  at::NoGradGuard ng;
  const at::Tensor x2 = x.contiguous();
  at::Tensor gx = xwt_packed(x2, g), ux = xwt_packed(x2, u);
  at::Tensor h = at::empty_like(gx);
  silu_mul_into(gx, ux, h);
  return xwt_packed(h, d);
}

bool copy_4d(const at::Tensor& dst, const at::Tensor& src) {
  if (dst.dim() != 4 || dst.sizes() != src.sizes() || !dst.device().is_cpu() || !src.device().is_cpu() ||
      dst.scalar_type() != at::kFloat || src.scalar_type() != at::kFloat)
    return false;
  const int64_t A = dst.size(0), B = dst.size(1), C = dst.size(2), D = dst.size(3);
  const int64_t* ds = dst.strides().data();
  const int64_t* ss = src.strides().data();
  float* dp = dst.data_ptr<float>();
  const float* sp = src.data_ptr<float>();
  at::parallel_for(0, A * B, std::max<int64_t>(1, 16384 / std::max<int64_t>(C * D, 1)), [&](int64_t b0, int64_t e0) {
    for (int64_t ab = b0; ab < e0; ++ab) {
      const int64_t a = ab / B, b = ab % B;
      float* d = dp + a * ds[0] + b * ds[1];
      const float* s = sp + a * ss[0] + b * ss[1];
      for (int64_t c = 0; c < C; ++c)
        for (int64_t e = 0; e < D; ++e) d[c * ds[2] + e * ds[3]] = s[c * ss[2] + e * ss[3]];
    }
  });
  return true;
}

at::Tensor rms_norm_rows(const at::Tensor& x, const at::Tensor& w, double eps) {
  if (!rows_kernel_takes({&x, &w}) || w.dim() != 1 || x.dim() < 1 || x.size(-1) != w.size(0) || x.numel() == 0) return {};
  const int64_t H = w.size(0);
  at::Tensor y = RmsNormRows::apply(x.reshape({-1, H}).contiguous(), w.contiguous(), eps);
  return y.view(x.sizes());
}

std::vector<at::Tensor> add_rms_norm_rows(const at::Tensor& h, const at::Tensor& a, const at::Tensor& w, double eps) {
  if (!rows_kernel_takes({&h, &a, &w}) || w.dim() != 1 || h.dim() < 1 || h.sizes() != a.sizes() || h.size(-1) != w.size(0) ||
      h.numel() == 0)
    return {};
  const int64_t H = w.size(0);
  variable_list r = AddRmsNormRows::apply(h.reshape({-1, H}).contiguous(), a.reshape({-1, H}).contiguous(), w.contiguous(), eps);
  return {r[0].view(h.sizes()), r[1].view(h.sizes())};
}

at::Tensor norm_rope_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& cos, const at::Tensor& sin, double eps) {
  if (!rows_kernel_takes({&x, &w, &cos, &sin}) || x.dim() != 4 || w.dim() != 1 || cos.dim() != 3 || sin.dim() != 3) return {};
  const int64_t B = x.size(0), T = x.size(1), D = x.size(3);
  if (D % 2 != 0 || w.size(0) != D || x.numel() == 0) return {};
  for (const at::Tensor* t : {&cos, &sin})
    if (t->size(0) != B || t->size(1) != T || t->size(2) != D) return {};
  return NormRopeRows::apply(x.contiguous(), w.contiguous(), cos.contiguous(), sin.contiguous(), eps);
}

at::Tensor attention_blocks(const at::Tensor& qg, const at::Tensor& k, const at::Tensor& v, const at::Tensor& allowed, int64_t T,
                            double scale) {
  if (qg.dim() != 4 || k.dim() != 4 || v.dim() != 4 || allowed.dim() != 4) return {};
  const int64_t B = qg.size(0), G = qg.size(1), R = qg.size(2), D = qg.size(3), S = k.size(2);
  if (T < 1 || R % T != 0 || S > kMaxKeys || kernel::few_rows_isa() == kernel::Isa::none) return {};
  for (const at::Tensor* t : {&qg, &k, &v})
    if (!t->device().is_cpu() || t->scalar_type() != at::kFloat) return {};
  for (const at::Tensor* t : {&k, &v})
    if (t->size(0) != B || t->size(1) != G || t->size(2) != S || t->size(3) != D) return {};
  if (allowed.size(0) != B || allowed.size(1) != 1 || allowed.size(2) != T || allowed.size(3) != S ||
      allowed.scalar_type() != at::kBool || !allowed.device().is_cpu())
    return {};
  const bool grad = at::GradMode::is_enabled() && (qg.requires_grad() || k.requires_grad() || v.requires_grad());
  at::Tensor a = allowed.contiguous();
  if (grad) return BlockAttention::apply(qg.contiguous(), k.contiguous(), v.contiguous(), a, T, scale);
  // Without gradients: the same forward, probabilities in per-task scratch; k and v as they lie when their
  // rows are dense (a KV cache's view), and k when its columns are (the CPU cache's transposed keys), so a
  // decode step copies nothing.
  at::Tensor q = qg.contiguous();
  at::Tensor kk = dense_rows(k) || dense_columns(k) ? k : k.contiguous(), vv = dense_rows(v) ? v : v.contiguous();
  at::Tensor o = at::empty({B, G, R, D}, q.options());
  forward_all(Shape{B, G, R, D, S, T}, q, kk, vv, a, static_cast<float>(scale), nullptr, o);
  return o;
}

}  // namespace moe::model
