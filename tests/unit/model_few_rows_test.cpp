// linear_rows (model/few_rows.h), the decode-time linear layer, against at::linear and its autograd.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "moe/model/few_rows.h"

using moe::model::linear_rows;

namespace {
// The instruction sets this CPU runs linear_rows with (always "none": at::linear and at::mv).
std::vector<std::string> isas() {
  const std::string best = moe::model::linear_rows_isa();
  std::vector<std::string> r{"none"};
  if (best == "avx2" || best == "avx512") r.push_back("avx2");
  if (best == "avx512") r.push_back("avx512");
  return r;
}

// Runs the rest of the scope with ISA, back to the CPU's best at its end.
struct WithIsa {
  std::string best = moe::model::linear_rows_isa();
  explicit WithIsa(const std::string& isa) { REQUIRE(moe::model::set_linear_rows_isa(isa)); }
  ~WithIsa() { moe::model::set_linear_rows_isa(best); }
};

double max_rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).abs().max() / (b.to(at::kDouble).abs().max() + 1e-12)).item<double>();
}

// The largest difference of two float32 results of x W^T (+ b), each element's against its own scale
// |x| |W|^T (+ |b|), the bound of a dot product's rounding in any order: the error measure for products that
// may cancel (one output near zero is a few ulp of its terms off whatever order its BLAS sums in).
double max_dot_err(const at::Tensor& got, const at::Tensor& want, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {}) {
  at::Tensor xd = x.to(at::kDouble).abs(), wd = w.to(at::kDouble).abs();
  at::Tensor scale = b.defined() ? at::linear(xd, wd, b.to(at::kDouble).abs()) : at::linear(xd, wd);
  return ((got.to(at::kDouble) - want.to(at::kDouble)).abs() / (scale + 1e-30)).max().item<double>();
}
}  // namespace

TEST_CASE("linear_rows equals at::linear for 1-6 rows, any shape (tails of H and O), with a bias", "[model][few_rows]") {
  at::manual_seed(5);
  CHECK_FALSE(moe::model::set_linear_rows_isa("sse9"));
  for (const std::string& isa : isas()) {
  WithIsa with(isa);
  INFO("isa " << isa);
  for (int64_t H : {1, 7, 8, 16, 64, 100, 1024}) {
    for (int64_t O : {1, 3, 9, 256, 517}) {
      at::Tensor w = at::randn({O, H});
      at::Tensor b = at::randn({O});
      for (int64_t n = 1; n <= 6; ++n) {
        at::Tensor x = at::randn({n, 1, H});  // decode's [B, 1, H]
        at::Tensor want = at::linear(x, w);
        at::Tensor got = linear_rows(x, w);
        INFO("H " << H << " O " << O << " rows " << n);
        REQUIRE(got.sizes() == want.sizes());
        CHECK(max_dot_err(got, want, x, w) < 1e-5);
        CHECK(max_dot_err(linear_rows(x, w, b), at::linear(x, w, b), x, w, b) < 1e-5);
      }
    }
  }
  }
  // Another dtype and a strided weight take the matrix product.
  at::Tensor w = at::randn({12, 16}, at::kDouble);
  at::Tensor x = at::randn({2, 16}, at::kDouble);
  CHECK(max_rel(linear_rows(x, w), at::linear(x, w)) < 1e-12);
  at::Tensor wt = at::randn({16, 12}).t();
  CHECK(max_rel(linear_rows(x.to(at::kFloat), wt), at::linear(x.to(at::kFloat), wt)) < 1e-5);
}

TEST_CASE("linear_rows: a row's result depends neither on the rows beside it nor on the threads", "[model][few_rows]") {
  if (isas().size() == 1) {
    WARN("no AVX2/FMA on this CPU: linear_rows is at::linear here, nothing to check");
    return;
  }
  at::manual_seed(6);
  for (const std::string& isa : isas()) {
  if (isa == "none") continue;
  WithIsa with(isa);
  INFO("isa " << isa);
  at::Tensor w = at::randn({1000, 777});
  at::Tensor x = at::randn({4, 777});
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  at::Tensor four = linear_rows(x, w);
  at::set_num_threads(2);
  at::Tensor four2 = linear_rows(x, w);
  at::set_num_threads(threads);
  CHECK(at::equal(four, four2));
  for (int64_t r = 0; r < 4; ++r) {
    CHECK(at::equal(linear_rows(x.narrow(0, r, 1), w), four.narrow(0, r, 1)));
    CHECK(at::equal(linear_rows(x.narrow(0, 0, r + 1), w), four.narrow(0, 0, r + 1)));
  }
  }
}

TEST_CASE("linear_rows: gradients in x and w equal at::linear's under autograd", "[model][few_rows]") {
  at::manual_seed(7);
  for (const std::string& isa : isas()) {
  WithIsa with(isa);
  INFO("isa " << isa);
  for (int64_t n : {1, 3, 4, 5}) {
    at::Tensor w0 = at::randn({40, 24}), x0 = at::randn({n, 24}), g = at::randn({n, 40});
    at::Tensor w1 = w0.clone().requires_grad_(), x1 = x0.clone().requires_grad_();
    at::Tensor w2 = w0.clone().requires_grad_(), x2 = x0.clone().requires_grad_();
    (at::linear(x1, w1) * g).sum().backward();
    at::Tensor y = linear_rows(x2, w2);
    REQUIRE(y.requires_grad());
    (y * g).sum().backward();
    INFO("rows " << n);
    CHECK(max_rel(x2.grad(), x1.grad()) < 1e-5);
    CHECK(max_rel(w2.grad(), w1.grad()) < 1e-5);
    // Only the weight trains (an expert's input detached): no gradient asked of x.
    at::Tensor w3 = w0.clone().requires_grad_();
    (linear_rows(x0, w3) * g).sum().backward();
    CHECK(max_rel(w3.grad(), w1.grad()) < 1e-5);
  }
}
}

namespace {
// The matrix-product attention attention_blocks replaces (AttentionImpl's path without SDPA).
at::Tensor attention_ref(const at::Tensor& qg, const at::Tensor& k, const at::Tensor& v, const at::Tensor& allowed, int64_t T,
                         double scale) {
  const int64_t B = qg.size(0), G = qg.size(1), R = qg.size(2), S = k.size(2);
  at::Tensor scores = at::matmul(qg, k.transpose(2, 3)).mul_(scale);
  scores.view({B, G, R / T, T, S}).masked_fill_(allowed.logical_not().unsqueeze(2), -std::numeric_limits<double>::infinity());
  return at::matmul(at::softmax(scores, -1, at::kFloat), v);
}
}  // namespace

TEST_CASE("attention_blocks equals the matrix-product attention on a KV cache's views", "[model][few_rows]") {
  if (isas().size() == 1) {
    WARN("no AVX2/FMA on this CPU: attention_blocks does not apply, nothing to check");
    return;
  }
  at::manual_seed(8);
  at::NoGradGuard ng;
  for (const std::string& isa : isas()) {
    if (isa == "none") continue;
    WithIsa with(isa);
    for (int64_t D : {7, 24, 64}) {
      for (int64_t rep : {1, 2, 4, 8}) {
        // 43 keys: 8 x 8 tiles and edges; 70: long rows. Several positions (T > 1): dense k takes the rows in
        // groups of up to 4 (7 = 4 + 3), the transposed cache one row at a time: the same bits.
        for (auto [T, S] : {std::pair<int64_t, int64_t>{1, 11}, {2, 11}, {1, 43}, {7, 11}, {5, 43}, {1, 70}, {6, 70}}) {
          const int64_t B = 3, G = 2, cap = S + 5;
          at::Tensor qg = at::randn({B, G, rep * T, D});
          at::Tensor ck = at::randn({B, G, cap, D}), cv = at::randn({B, G, cap, D});
          at::Tensor k = ck.narrow(2, 0, S), v = cv.narrow(2, 0, S);  // as the cache: rows dense, blocks strided
          // The CPU cache's keys lie transposed ([B, G, D, cap] seen as [B, G, cap, D]): same values, same bits.
          at::Tensor kt = ck.transpose(2, 3).contiguous().transpose(2, 3).narrow(2, 0, S);
          REQUIRE(kt.stride(2) == 1);
          at::Tensor allowed = at::rand({B, 1, T, S}).gt(0.3);
          allowed.select(3, S - 1).fill_(true);  // every row sees at least its own position
          const double scale = 1.0 / std::sqrt(static_cast<double>(D));
          at::Tensor got = moe::model::attention_blocks(qg, k, v, allowed, T, scale);
          INFO("isa " << isa << " D " << D << " rep " << rep << " T " << T);
          REQUIRE(got.defined());
          CHECK(max_rel(got, attention_ref(qg, k, v, allowed, T, scale)) < 1e-5);
          CHECK(at::equal(moe::model::attention_blocks(qg, kt, v, allowed, T, scale), got));
          // A (b, g) block's result does not depend on the other blocks.
          at::Tensor one = moe::model::attention_blocks(qg.narrow(0, 1, 1), k.narrow(0, 1, 1), v.narrow(0, 1, 1),
                                                      allowed.narrow(0, 1, 1), T, scale);
          CHECK(at::equal(one, got.narrow(0, 1, 1)));
        }
      }
    }
  }
  // A row with no allowed key is NaN (as softmax), and the rows grouped with it are as computed alone.
  for (const std::string& isa : isas()) {
    if (isa == "none") continue;
    WithIsa with(isa);
    const int64_t B = 1, G = 1, T = 4, S = 70, D = 24;
    at::Tensor qg = at::randn({B, G, T, D}), k = at::randn({B, G, S, D}), v = at::randn({B, G, S, D});
    at::Tensor allowed = at::rand({B, 1, T, S}).gt(0.3);
    allowed.select(3, S - 1).fill_(true);
    allowed.select(2, 2).fill_(false);  // position 2 sees nothing
    at::Tensor got = moe::model::attention_blocks(qg, k, v, allowed, T, 0.2);
    at::Tensor kt = k.transpose(2, 3).contiguous().transpose(2, 3);  // one row at a time
    at::Tensor alone = moe::model::attention_blocks(qg, kt, v, allowed, T, 0.2);
    INFO("isa " << isa);
    CHECK(got.select(2, 2).isnan().all().item<bool>());
    for (int64_t t : {0, 1, 3}) CHECK(at::equal(got.select(2, t), alone.select(2, t)));
    CHECK(max_rel(got.select(2, 3), attention_ref(qg, k, v, allowed, T, 0.2).select(2, 3)) < 1e-5);
  }
  // More than 512 keys or another dtype: not applicable (the caller takes the matrix products).
  {
    at::Tensor q = at::randn({1, 1, 2, 8}), k = at::randn({1, 1, 513, 8}), a = at::ones({1, 1, 2, 513}, at::kBool);
    CHECK_FALSE(moe::model::attention_blocks(q, k, k, a, 2, 1.0).defined());
  }
  at::Tensor q = at::randn({1, 1, 2, 8}), k = at::randn({1, 1, 3, 8}), a = at::ones({1, 1, 1, 3}, at::kBool);
  CHECK_FALSE(moe::model::attention_blocks(q.to(at::kDouble), k.to(at::kDouble), k.to(at::kDouble), a, 1, 1.0).defined());
}

TEST_CASE("attention_blocks trains as the matrix-product attention: outputs and gradients", "[model][few_rows]") {
  if (isas().size() == 1) {
    WARN("no AVX2/FMA on this CPU: attention_blocks does not apply, nothing to check");
    return;
  }
  at::manual_seed(9);
  for (int64_t D : {7, 24}) {
    for (int64_t rep : {1, 2}) {
      // A training batch: T positions of B sequences, causal, the first `pad` positions of sequence 1 masked
      // as left padding (each still sees itself, as the model's mask). q, k and v as the model makes them:
      // transposed views of [B, T, heads, D].
      const int64_t B = 2, G = 2, T = 13;
      at::Tensor q0 = at::randn({B, T, G * rep, D}), k0 = at::randn({B, T, G, D}), v0 = at::randn({B, T, G, D});
      at::Tensor go = at::randn({B, G, rep * T, D});
      at::Tensor i = at::arange(T);
      at::Tensor allowed = i.unsqueeze(1).ge(i.unsqueeze(0)).unsqueeze(0).repeat({B, 1, 1});
      allowed.select(0, 1).narrow(1, 0, 4).fill_(false);
      allowed = (allowed | at::eye(T, at::kBool).unsqueeze(0)).unsqueeze(1);  // [B, 1, T, T]
      const double scale = 1.0 / std::sqrt(static_cast<double>(D));
      auto run = [&](bool ours, std::vector<at::Tensor>& grads) {
        at::Tensor q = q0.clone().requires_grad_(), k = k0.clone().requires_grad_(), v = v0.clone().requires_grad_();
        at::Tensor qg = q.transpose(1, 2).reshape({B, G, rep * T, D});
        at::Tensor kt = k.transpose(1, 2), vt = v.transpose(1, 2);
        at::Tensor o = ours ? moe::model::attention_blocks(qg, kt, vt, allowed, T, scale) : attention_ref(qg, kt, vt, allowed, T, scale);
        REQUIRE(o.defined());
        REQUIRE(o.requires_grad());
        (o * go).sum().backward();
        grads = {q.grad(), k.grad(), v.grad()};
        return o.detach();
      };
      std::vector<at::Tensor> g_ours, g_ref;
      at::Tensor o_ours = run(true, g_ours), o_ref = run(false, g_ref);
      INFO("D " << D << " rep " << rep);
      CHECK(max_rel(o_ours, o_ref) < 1e-5);
      CHECK(max_rel(g_ours[0], g_ref[0]) < 1e-5);
      CHECK(max_rel(g_ours[1], g_ref[1]) < 1e-5);
      CHECK(max_rel(g_ours[2], g_ref[2]) < 1e-5);
      // The no-grad forward (an old-policy pass) equals the training forward bit for bit.
      at::NoGradGuard ng;
      at::Tensor o_nograd = moe::model::attention_blocks(q0.transpose(1, 2).reshape({B, G, rep * T, D}), k0.transpose(1, 2),
                                                         v0.transpose(1, 2), allowed, T, scale);
      CHECK(at::equal(o_nograd, o_ours));
    }
  }
}

namespace {
// The tensor operations each row kernel replaces (transformers' modules, float32).
at::Tensor rms_norm_ref(const at::Tensor& x, const at::Tensor& w, double eps) {
  return w * (x * at::rsqrt(x.pow(2).mean(-1, true) + eps));
}
at::Tensor rotate_half_ref(const at::Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return at::cat({-x.slice(-1, h), x.slice(-1, 0, h)}, -1);
}
at::Tensor norm_rope_ref(const at::Tensor& x, const at::Tensor& w, const at::Tensor& cos, const at::Tensor& sin, double eps) {
  at::Tensor a = rms_norm_ref(x, w, eps).transpose(1, 2);  // [B, N, T, D]
  at::Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1);
  return a * c + rotate_half_ref(a) * s;
}

// Output and gradients (for a random output gradient) of f against ref on copies of the same inputs; inputs
// [0, grads) get gradients. The no-grad forward must equal the training forward bit for bit.
void check_rows_op(const std::function<at::Tensor(const std::vector<at::Tensor>&)>& f,
                   const std::function<at::Tensor(const std::vector<at::Tensor>&)>& ref, const std::vector<at::Tensor>& in,
                   size_t grads) {
  auto run = [&](const std::function<at::Tensor(const std::vector<at::Tensor>&)>& g, std::vector<at::Tensor>& gr, at::Tensor& go) {
    std::vector<at::Tensor> x;
    for (size_t i = 0; i < in.size(); ++i) x.push_back(i < grads ? in[i].clone().requires_grad_() : in[i]);
    at::Tensor y = g(x);
    REQUIRE(y.defined());
    if (!go.defined()) go = at::randn(y.sizes());
    (y * go).sum().backward();
    for (size_t i = 0; i < grads; ++i) gr.push_back(x[i].grad());
    return y.detach();
  };
  std::vector<at::Tensor> g_ours, g_ref;
  at::Tensor go;
  at::Tensor y_ours = run(f, g_ours, go), y_ref = run(ref, g_ref, go);
  CHECK(y_ours.sizes() == y_ref.sizes());
  CHECK(max_rel(y_ours, y_ref) < 1e-6);
  for (size_t i = 0; i < grads; ++i) {
    INFO("gradient of input " << i);
    CHECK(max_rel(g_ours[i], g_ref[i]) < 1e-5);
  }
  at::NoGradGuard ng;
  CHECK(at::equal(f(in), y_ours));
}
}  // namespace

TEST_CASE("rms_norm_rows and norm_rope_rows equal their tensor operations, with gradients", "[model][few_rows]") {
  if (isas().size() == 1) {
    WARN("no AVX2/FMA on this CPU: the row kernels do not apply, nothing to check");
    return;
  }
  at::manual_seed(10);
  for (int64_t H : {5, 24, 96, 131}) {  // tails of 8, whole vectors, both
    INFO("row length " << H);
    at::Tensor x = at::randn({3, 7, H}) * 3, w = at::randn({H});
    check_rows_op([](const std::vector<at::Tensor>& a) { return moe::model::rms_norm_rows(a[0], a[1], 1e-6); },
                  [](const std::vector<at::Tensor>& a) { return rms_norm_ref(a[0], a[1], 1e-6); }, {x, w}, 2);
  }
  for (int64_t D : {8, 24, 34}) {
    INFO("head dim " << D);
    const int64_t B = 2, T = 5, N = 3;
    at::Tensor x = at::randn({B, T, N, D}), w = at::randn({D});
    at::Tensor ang = at::randn({B, T, D / 2}) * 4;
    at::Tensor emb = at::cat({ang, ang}, -1);
    check_rows_op(
        [](const std::vector<at::Tensor>& a) { return moe::model::norm_rope_rows(a[0], a[1], a[2], a[3], 1e-6); },
        [](const std::vector<at::Tensor>& a) { return norm_rope_ref(a[0], a[1], a[2], a[3], 1e-6); },
        {x, w, emb.cos(), emb.sin()}, 2);
  }
  // Another dtype: not applicable (the caller takes the tensor operations).
  at::Tensor xd = at::randn({2, 4}, at::kDouble);
  CHECK_FALSE(moe::model::rms_norm_rows(xd, at::ones({4}, at::kDouble), 1e-6).defined());
  CHECK_FALSE(moe::model::norm_rope_rows(at::randn({1, 2, 1, 3}), at::ones({3}), at::ones({1, 2, 3}), at::ones({1, 2, 3}), 1e-6).defined());
}

TEST_CASE("add_rms_norm_rows is the residual add then rms_norm_rows, bit for bit, with gradients", "[model][few_rows]") {
  if (isas().size() == 1) {
    WARN("no AVX2/FMA on this CPU: the row kernels do not apply, nothing to check");
    return;
  }
  at::manual_seed(13);
  for (int64_t H : {5, 96, 131}) {
    // Which outputs the loss reads: both (x's gradient is the residual's plus RMSNorm's), y only (x's
    // gradient undefined, as after the last layer), x only (y's undefined).
    for (int used : {3, 2, 1}) {
      INFO("row length " << H << ", outputs used " << used);
      at::Tensor h = at::randn({2, 9, H}) * 2, a = at::randn({2, 9, H}), w = at::randn({H});
      at::Tensor gx = at::randn({2, 9, H}), gy = at::randn({2, 9, H});
      auto run = [&](bool fused) {
        at::Tensor hh = h.clone().requires_grad_(), aa = a.clone().requires_grad_(), ww = w.clone().requires_grad_();
        at::Tensor x, y;
        if (fused) {
          std::vector<at::Tensor> r = moe::model::add_rms_norm_rows(hh, aa, ww, 1e-6);
          REQUIRE(r.size() == 2);
          x = r[0];
          y = r[1];
        } else {
          x = hh + aa;
          y = moe::model::rms_norm_rows(x, ww, 1e-6);
        }
        at::Tensor loss = at::zeros({});
        if (used & 1) loss = loss + (x * gx).sum();
        if (used & 2) loss = loss + (y * gy).sum();
        loss.backward();
        return std::vector<at::Tensor>{x.detach(), y.detach(), hh.grad(), aa.grad(), ww.grad()};
      };
      std::vector<at::Tensor> ours = run(true), ref = run(false);
      for (size_t i = 0; i < ours.size(); ++i) {
        INFO("result " << i << " (x, y, dh, da, dw)");
        REQUIRE(ours[i].defined() == ref[i].defined());
        if (ref[i].defined()) CHECK(at::equal(ours[i], ref[i]));
      }
      CHECK(at::equal(ours[2], ours[3]));  // h and a get one gradient
      if (!(used & 2)) CHECK_FALSE(ours[4].defined());
      at::NoGradGuard ng;
      std::vector<at::Tensor> r = moe::model::add_rms_norm_rows(h, a, w, 1e-6);
      CHECK(at::equal(r[0], ours[0]));
      CHECK(at::equal(r[1], ours[1]));
    }
  }
  CHECK(moe::model::add_rms_norm_rows(at::randn({2, 4}, at::kDouble), at::randn({2, 4}, at::kDouble), at::ones({4}, at::kDouble), 1e-6).empty());
  CHECK(moe::model::add_rms_norm_rows(at::randn({2, 4}), at::randn({4, 2}), at::ones({4}), 1e-6).empty());  // shapes differ
}

TEST_CASE("the row kernels' results do not depend on the threads", "[model][few_rows]") {
  if (isas().size() == 1) {
    WARN("no AVX2/FMA on this CPU: the row kernels do not apply, nothing to check");
    return;
  }
  // The kernels' own passes only: matrix products (swiglu_rows over more than kLinearRowsKernelRows rows, the
  // backward's) are the BLAS's, whose sums may follow its threads (OpenBLAS's Zen sgemm does).
  at::manual_seed(11);
  const int threads = at::get_num_threads();
  at::Tensor x = at::randn({64, 36, 96}), a = at::randn({64, 36, 96}), w = at::randn({96}), w2 = at::randn({96});
  at::Tensor go = at::randn({64, 36, 96});
  at::Tensor wg = at::randn({40, 96}) * 0.6, wu = at::randn({40, 96}) * 0.1, wd = at::randn({96, 40}) * 0.1;
  auto run = [&](int n) {
    at::set_num_threads(n);
    at::Tensor xx = x.clone().requires_grad_(), ww = w.clone().requires_grad_(), ww2 = w2.clone().requires_grad_();
    at::Tensor y = moe::model::rms_norm_rows(xx, ww, 1e-6);
    std::vector<at::Tensor> r = moe::model::add_rms_norm_rows(y, a, ww2, 1e-6);
    REQUIRE(r.size() == 2);
    (r[0] * go + r[1] * go.flip(0)).sum().backward();
    at::NoGradGuard ng;
    at::Tensor h = moe::model::swiglu_rows(y.reshape({-1, 96}).narrow(0, 0, moe::model::kLinearRowsKernelRows), wg, wu, wd);
    return std::vector<at::Tensor>{r[0].detach(), r[1].detach(), h, xx.grad(), ww.grad(), ww2.grad()};
  };
  auto one = run(1), two = run(2);
  at::set_num_threads(threads);
  for (size_t i = 0; i < one.size(); ++i) {
    INFO("result " << i << " (x + a, its norm, swiglu, dx, dw, dw2)");
    CHECK(at::equal(one[i], two[i]));
  }
}

TEST_CASE("copy_4d copies between any strides as copy_ does, CPU float32 only", "[model][few_rows]") {
  at::manual_seed(12);
  at::Tensor src = at::randn({3, 2, 5, 7}).transpose(1, 2).contiguous().transpose(1, 2);  // a transposed view
  for (bool transposed : {false, true}) {
    at::Tensor cache = transposed ? at::zeros({3, 2, 7, 9}).transpose(2, 3) : at::zeros({3, 2, 9, 7});
    at::Tensor dst = cache.narrow(2, 3, 5);
    REQUIRE(moe::model::copy_4d(dst, src));
    CHECK(at::equal(dst, src));
    CHECK(cache.narrow(2, 0, 3).abs().sum().item<float>() == 0);  // slots outside the narrow untouched
    CHECK(cache.narrow(2, 8, 1).abs().sum().item<float>() == 0);
  }
  CHECK_FALSE(moe::model::copy_4d(at::zeros({1, 1, 2, 2}, at::kDouble), at::zeros({1, 1, 2, 2}, at::kDouble)));
  CHECK_FALSE(moe::model::copy_4d(at::zeros({1, 1, 2, 2}), at::zeros({1, 1, 2, 3})));
}

TEST_CASE("scatter_weighted_rows equals mul then index_add_, with gradients", "[model][few_rows]") {
  if (isas().size() == 1) {
    WARN("no AVX2/FMA on this CPU: the row kernels do not apply, nothing to check");
    return;
  }
  at::manual_seed(13);
  for (int64_t H : {5, 96, 300}) {  // 300: more than one column block of the threads
    INFO("row length " << H);
    const int64_t N = 9, M = 17;
    at::Tensor token = at::randint(0, N, {M}, at::kLong);  // repeats: rows with several terms, some with none
    at::Tensor w = at::rand({M, 1}), ys = at::randn({M, H});
    check_rows_op(
        [&](const std::vector<at::Tensor>& a) { return moe::model::scatter_weighted_rows(N, token, a[1], a[0]); },
        [&](const std::vector<at::Tensor>& a) { return at::zeros({N, H}).index_add_(0, token, a[0] * a[1]); }, {ys, w}, 2);
  }
  CHECK_FALSE(moe::model::scatter_weighted_rows(2, at::zeros({2}, at::kInt), at::ones({2}), at::ones({2, 3})).defined());
}

TEST_CASE("swiglu_rows equals down(silu(gate(x)) * up(x)), with gradients in x and the three weights", "[model][few_rows]") {
  if (isas().size() == 1) {
    WARN("no AVX2/FMA on this CPU: the row kernels do not apply, nothing to check");
    return;
  }
  at::manual_seed(14);
  // 1-4 rows: the few-rows products. Inner sizes with tails of 8, whole vectors and both for silu * up's pass;
  // gate values far from 0 of both signs (standard deviation 6): silu's two branches (e / (1 + e) below 0)
  // and its saturation.
  for (auto [n, I] : std::vector<std::pair<int64_t, int64_t>>{{1, 13}, {3, 5}, {50, 13}, {7, 24}, {50, 131}}) {
    INFO("rows " << n << ", inner size " << I);
    const int64_t H = 20, O = 20;
    at::Tensor x = at::randn({n, H}), wg = at::randn({I, H}) * (6 / std::sqrt(20.0)), wu = at::randn({I, H}) * 0.3,
               wd = at::randn({O, I}) * 0.3;
    check_rows_op([](const std::vector<at::Tensor>& a) { return moe::model::swiglu_rows(a[0], a[1], a[2], a[3]); },
                  [](const std::vector<at::Tensor>& a) {
                    return at::linear(at::silu(at::linear(a[0], a[1])) * at::linear(a[0], a[2]), a[3]);
                  },
                  {x, wg, wu, wd}, 4);
  }
  CHECK_FALSE(moe::model::swiglu_rows(at::randn({2, 3}), at::randn({4, 5}), at::randn({4, 3}), at::randn({3, 4})).defined());
}

TEST_CASE("linear_packed sums each output in order, one fused multiply-add per term, for more than 4 rows", "[model][few_rows]") {
  if (isas().size() == 1) {
    WARN("no AVX2/FMA on this CPU: the row kernels do not apply, nothing to check");
    return;
  }
  at::manual_seed(16);
  at::NoGradGuard ng;
  // Panels of 24 outputs, 4 rows at a time: outputs with every kind of last panel (1, 13: partial vectors;
  // 24: one whole panel; 40: 24 + 2 whole vectors; 50: 24 + 24 + 2), row counts with every remainder of 4.
  for (int64_t H : {1, 20, 33}) {
    for (int64_t O : {1, 13, 24, 40, 50}) {
      at::Tensor w = at::randn({O, H}), b = at::randn({O});
      const moe::model::PackedWeight p = moe::model::pack_weight(w);
      REQUIRE(p.defined());
      CHECK(p.panels.sizes() == at::IntArrayRef({(O + 23) / 24, H, 24}));
      for (int64_t n : {5, 6, 7, 8, 37}) {
        INFO("H " << H << " O " << O << ", rows " << n);
        at::Tensor x = at::randn({n, H});
        // The kernel's contract, computed here by std::fma: y[r][o] = fma(x[r][H-1], w[o][H-1], ... fma(x[r][0],
        // w[o][0], 0)), then + b[o] in float.
        at::Tensor want = at::empty({n, O}), want_b = at::empty({n, O});
        const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>();
        for (int64_t r = 0; r < n; ++r)
          for (int64_t o = 0; o < O; ++o) {
            float acc = 0.f;
            for (int64_t j = 0; j < H; ++j) acc = std::fma(xp[r * H + j], wp[o * H + j], acc);
            want[r][o] = acc;
            want_b[r][o] = acc + bp[o];
          }
        at::Tensor got = moe::model::linear_packed(x, p);
        REQUIRE(got.defined());
        CHECK(at::equal(got, want));
        CHECK(at::equal(moe::model::linear_packed(x, p, b), want_b));
        // Leading dimensions: [1, n, H] -> [1, n, O].
        CHECK(at::equal(moe::model::linear_packed(x.unsqueeze(0), p), want.unsqueeze(0)));
        CHECK(max_dot_err(got, at::linear(x, w), x, w) < 1e-5);
      }
    }
  }
  // Up to 4 rows (linear_rows' kernel), other dtypes, a bias or input of the wrong size, an unpacked weight:
  // undefined.
  at::Tensor w = at::randn({13, 20});
  const moe::model::PackedWeight p = moe::model::pack_weight(w);
  CHECK_FALSE(moe::model::linear_packed(at::randn({4, 20}), p).defined());
  CHECK_FALSE(moe::model::linear_packed(at::randn({2, 2, 20}), p).defined());
  CHECK_FALSE(moe::model::linear_packed(at::randn({9, 20}, at::kDouble), p).defined());
  CHECK_FALSE(moe::model::linear_packed(at::randn({9, 21}), p).defined());
  CHECK_FALSE(moe::model::linear_packed(at::randn({9, 20}), p, at::randn({12})).defined());
  CHECK_FALSE(moe::model::linear_packed(at::randn({9, 20}), moe::model::PackedWeight()).defined());
  CHECK_FALSE(moe::model::pack_weight(w.to(at::kDouble)).defined());
  CHECK_FALSE(moe::model::pack_weight(at::randn({13})).defined());
}

TEST_CASE("linear_rows on a small weight: the row kernel's sums forward and backward, the BLAS's on a larger one", "[model][few_rows]") {
  if (isas().size() == 1) {
    WARN("no AVX2/FMA on this CPU: the row kernels do not apply, nothing to check");
    return;
  }
  at::manual_seed(17);
  // Each output one chain of fused multiply-adds in order: y = x W^T over H, x's gradient g W over O, W's
  // gradient g^T x over the rows.
  auto chain = [](const at::Tensor& a, const at::Tensor& b) {  // a [m, n] b [n, D], in n order, by std::fma
    const int64_t m = a.size(0), n = a.size(1), D = b.size(1);
    at::Tensor y = at::empty({m, D});
    const at::Tensor ac = a.contiguous(), bc = b.contiguous();
    const float *ap = ac.data_ptr<float>(), *bp = bc.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    for (int64_t r = 0; r < m; ++r)
      for (int64_t d = 0; d < D; ++d) {
        float acc = 0.f;
        for (int64_t j = 0; j < n; ++j) acc = std::fma(ap[r * n + j], bp[j * D + d], acc);
        yp[r * D + d] = acc;
      }
    return y;
  };
  const int64_t H = 40, O = 30, n = 37;
  at::Tensor w = at::randn({O, H}).requires_grad_(), x = at::randn({n, H}).requires_grad_(), g = at::randn({n, O});
  at::Tensor y = linear_rows(x, w);
  y.backward(g);
  CHECK(at::equal(y.detach(), chain(x.detach(), w.detach().t())));
  CHECK(at::equal(x.grad(), chain(g, w.detach())));
  CHECK(at::equal(w.grad(), chain(g.t(), x.detach())));
  {
    at::NoGradGuard ng;  // the no-grad pass computes alike
    CHECK(at::equal(linear_rows(x, w), y.detach()));
  }
  // Rows of more than 512 floats: at::linear's products.
  at::Tensor wl = at::randn({O, 600}), xl = at::randn({n, 600});
  CHECK(at::equal(linear_rows(xl, wl), at::linear(xl, wl)));
}

TEST_CASE("swiglu_packed equals swiglu_rows, for more than 4 rows, whatever the rows beside and the threads", "[model][few_rows]") {
  if (isas().size() == 1) {
    WARN("no AVX2/FMA on this CPU: the row kernels do not apply, nothing to check");
    return;
  }
  at::manual_seed(15);
  at::NoGradGuard ng;
  const int threads = at::get_num_threads();
  using moe::model::pack_weight;
  for (auto [H, I, O] : {std::array<int64_t, 3>{20, 13, 24}, std::array<int64_t, 3>{33, 50, 40}}) {
    at::Tensor wg = at::randn({I, H}) * 1.5, wu = at::randn({I, H}) * 0.3, wd = at::randn({O, I}) * 0.3;
    const moe::model::PackedWeight g = pack_weight(wg), u = pack_weight(wu), d = pack_weight(wd);
    for (int64_t n : {5, 6, 7, 8, 37, 300}) {
      INFO("H " << H << " I " << I << " O " << O << ", rows " << n);
      at::Tensor x = at::randn({n, H});
      at::Tensor got = moe::model::swiglu_packed(x, g, u, d);
      REQUIRE(got.defined());
      CHECK(got.sizes() == at::IntArrayRef({n, O}));
      CHECK(max_rel(got, moe::model::swiglu_rows(x, wg, wu, wd)) < 1e-6);
      // A row's bits depend neither on the rows beside it (the rows in two calls of more than 4 rows each: 18
      // and 19 of 37, 150 and 150 of 300, so the 4-row groups fall elsewhere) nor on the threads.
      if (const int64_t a = n / 2; a > moe::model::kLinearRowsKernelRows) {
        at::Tensor parts = at::cat({moe::model::swiglu_packed(x.narrow(0, 0, a), g, u, d), moe::model::swiglu_packed(x.narrow(0, a, n - a), g, u, d)});
        CHECK(at::equal(parts, got));
      }
      at::set_num_threads(threads == 1 ? 2 : 1);
      at::Tensor other = moe::model::swiglu_packed(x, g, u, d);
      at::set_num_threads(threads);
      CHECK(at::equal(other, got));
    }
  }
  const int64_t H = 20, I = 13, O = 24;
  const moe::model::PackedWeight g = pack_weight(at::randn({I, H})), u = pack_weight(at::randn({I, H})), d = pack_weight(at::randn({O, I}));
  // Up to 4 rows (linear_rows' kernel), other dtypes, shapes that do not chain: undefined.
  CHECK_FALSE(moe::model::swiglu_packed(at::randn({4, H}), g, u, d).defined());
  CHECK_FALSE(moe::model::swiglu_packed(at::randn({9, H}, at::kDouble), g, u, d).defined());
  CHECK_FALSE(moe::model::swiglu_packed(at::randn({9, H + 1}), g, u, d).defined());
  CHECK_FALSE(moe::model::swiglu_packed(at::randn({9, H}), g, pack_weight(at::randn({I + 1, H})), d).defined());
  CHECK_FALSE(moe::model::swiglu_packed(at::randn({9, H}), g, u, pack_weight(at::randn({O, I + 1}))).defined());
}

TEST_CASE("swiglu_blocks equals swiglu_rows per block, concatenated: outputs and gradients, bit for bit", "[model][few_rows]") {
  if (isas().size() == 1) {
    WARN("no AVX2/FMA on this CPU: the row kernels do not apply, nothing to check");
    return;
  }
  at::manual_seed(16);
  const int64_t H = 20, I = 13, O = 24;
  // Blocks of 1, 4 (linear_rows' kernel), 5 and 37 rows (matrix products); I = 13: a tail in every row of
  // the gate activations, which swiglu_blocks runs over all blocks at once.
  const std::vector<int64_t> rows{1, 37, 4, 5};
  std::vector<at::Tensor> w;
  for (size_t k = 0; k < rows.size(); ++k)
    for (at::Tensor t : {at::randn({I, H}) * 1.5, at::randn({I, H}) * 0.3, at::randn({O, I}) * 0.3}) w.push_back(t.requires_grad_());
  at::Tensor x = at::randn({47, H}).requires_grad_();
  at::Tensor gy = at::randn({47, O});
  at::Tensor got = moe::model::swiglu_blocks(x, rows, w);
  REQUIRE(got.defined());
  std::vector<at::Tensor> parts;
  for (size_t k = 0, r0 = 0; k < rows.size(); r0 += rows[k], ++k)
    parts.push_back(moe::model::swiglu_rows(x.narrow(0, r0, rows[k]), w[3 * k], w[3 * k + 1], w[3 * k + 2]));
  at::Tensor want = at::cat(parts, 0);
  CHECK(at::equal(got, want));
  std::vector<at::Tensor> inputs{x};
  inputs.insert(inputs.end(), w.begin(), w.end());
  auto grads_of = [&](const at::Tensor& y) {
    for (auto& t : inputs) t.mutable_grad().reset();
    y.backward(gy, /*retain_graph=*/true);
    std::vector<at::Tensor> g;
    for (auto& t : inputs) g.push_back(t.grad().clone());
    return g;
  };
  auto g1 = grads_of(got), g2 = grads_of(want);
  for (size_t i = 0; i < inputs.size(); ++i) {
    INFO("input " << i);
    CHECK(at::equal(g1[i], g2[i]));
  }
  {  // without gradients: the same forward
    at::NoGradGuard ng;
    CHECK(at::equal(moe::model::swiglu_blocks(x, rows, w), want));
  }
  // Row counts that do not add up to x's rows, a block of none, shapes that do not fit, other dtypes: undefined.
  CHECK_FALSE(moe::model::swiglu_blocks(x, {1, 37, 4, 4}, w).defined());
  CHECK_FALSE(moe::model::swiglu_blocks(x, {0, 38, 4, 5}, w).defined());
  CHECK_FALSE(moe::model::swiglu_blocks(x, {47}, w).defined());
  std::vector<at::Tensor> bad = w;
  bad[5] = at::randn({O, I + 1});
  CHECK_FALSE(moe::model::swiglu_blocks(x, rows, bad).defined());
  std::vector<at::Tensor> dbl;
  for (auto& t : w) dbl.push_back(t.detach().to(at::kDouble));
  CHECK_FALSE(moe::model::swiglu_blocks(x.detach().to(at::kDouble), rows, dbl).defined());
}
