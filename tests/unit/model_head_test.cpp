// The chunked output head (model/head.h) against the plain computation it replaces:
// log_softmax(linear(h, W).float() / T) gathered at the targets, its entropy, and their gradients by autograd.
#include <ATen/ATen.h>

#include <catch2/catch.hpp>

#include "moe/io/error.h"
#include "moe/model/head.h"

using moe::model::head_logprobs;

namespace {

struct Plain {
  at::Tensor logp, entropy;
};

Plain plain(const at::Tensor& h, const at::Tensor& w, const at::Tensor& y, double T) {
  at::Tensor lp = at::log_softmax(at::linear(h, w).to(at::kFloat) / T, -1);
  return {lp.gather(-1, y.unsqueeze(-1)).squeeze(-1), -(lp.exp() * lp).sum(-1)};
}

double max_rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).abs().max() / (b.to(at::kDouble).abs().max() + 1e-12)).item<double>();
}

}  // namespace

TEST_CASE("chunked head: log-probs and entropies equal the full log_softmax, any chunk size", "[model][head]") {
  at::manual_seed(3);
  const int64_t B = 3, T = 7, H = 16, V = 101;
  at::Tensor h = at::randn({B, T, H}), w = at::randn({V, H}) * 0.5, y = at::randint(V, {B, T});
  for (double temp : {1.0, 0.7}) {
    Plain ref = plain(h, w, y, temp);
    for (int64_t chunk : {1, 4, 5, 21, 1000, 0}) {
      auto r = head_logprobs(h, w, y, temp, true, chunk);
      REQUIRE(r.logp.sizes() == y.sizes());
      CHECK(max_rel(r.logp, ref.logp) < 1e-6);
      CHECK(max_rel(r.entropy, ref.entropy) < 1e-6);
    }
  }
  CHECK_FALSE(head_logprobs(h, w, y, 1.0, false).entropy.defined());
}

TEST_CASE("chunked head: gradients in hidden and weight equal autograd's through the full logits", "[model][head]") {
  at::manual_seed(4);
  const int64_t B = 2, T = 9, H = 12, V = 67;
  at::Tensor h0 = at::randn({B, T, H}), w0 = at::randn({V, H}) * 0.3, y = at::randint(V, {B, T});
  at::Tensor a = at::randn({B, T}), c = at::randn({B, T});
  // chunk 4: every chunk's logits recomputed by the backward; 1000: all rows in one chunk, whose log p the
  // forward keeps (the backward runs no product of its own).
  for (int64_t chunk : {4, 1000})
  for (bool with_entropy : {false, true}) {
    INFO("chunk " << chunk << ", entropy " << with_entropy);
    const double temp = 0.8;
    at::Tensor h1 = h0.clone().requires_grad_(), w1 = w0.clone().requires_grad_();
    Plain ref = plain(h1, w1, y, temp);
    at::Tensor l1 = (a * ref.logp).sum() + (with_entropy ? (c * ref.entropy).sum() : at::zeros({}));
    l1.backward();
    at::Tensor h2 = h0.clone().requires_grad_(), w2 = w0.clone().requires_grad_();
    auto r = head_logprobs(h2, w2, y, temp, true, chunk);  // the entropy output exists; it takes part iff with_entropy
    at::Tensor l2 = (a * r.logp).sum() + (with_entropy ? (c * r.entropy).sum() : at::zeros({}));
    l2.backward();
    CHECK(std::abs(l1.item<double>() - l2.item<double>()) < 1e-4);
    CHECK(max_rel(h2.grad(), h1.grad()) < 1e-5);
    CHECK(max_rel(w2.grad(), w1.grad()) < 1e-5);
  }
}

TEST_CASE("chunked head: bf16 weights give the bf16 logits' log-probs and gradients of their dtype", "[model][head]") {
  at::manual_seed(5);
  const int64_t N = 10, H = 32, V = 300;
  at::Tensor h0 = at::randn({N, H}).to(at::kBFloat16), w0 = (at::randn({V, H}) * 0.2).to(at::kBFloat16);
  at::Tensor y = at::randint(V, {N});
  at::Tensor h1 = h0.clone().requires_grad_(), w1 = w0.clone().requires_grad_();
  Plain ref = plain(h1, w1, y, 1.0);
  ref.logp.sum().backward();
  at::Tensor h2 = h0.clone().requires_grad_(), w2 = w0.clone().requires_grad_();
  auto r = head_logprobs(h2, w2, y, 1.0, false, 3);
  r.logp.sum().backward();
  CHECK(r.logp.scalar_type() == at::kFloat);
  CHECK(max_rel(r.logp, ref.logp) < 1e-6);  // same bf16 matmul, same fp32 softmax
  REQUIRE(h2.grad().scalar_type() == at::kBFloat16);
  REQUIRE(w2.grad().scalar_type() == at::kBFloat16);
  // autograd's reference runs the backward matmuls in bf16; ours accumulates the weight gradient in fp32
  CHECK(max_rel(h2.grad(), h1.grad()) < 2e-2);
  CHECK(max_rel(w2.grad(), w1.grad()) < 2e-2);
}

TEST_CASE("chunked head: mismatched shapes and a bad temperature are errors", "[model][head]") {
  at::Tensor h = at::randn({2, 3, 4}), w = at::randn({10, 4});
  CHECK_THROWS_AS(head_logprobs(h, w, at::zeros({2, 4}, at::kLong), 1.0, false), moe::Error);
  CHECK_THROWS_AS(head_logprobs(h, at::randn({10, 5}), at::zeros({2, 3}, at::kLong), 1.0, false), moe::Error);
  CHECK_THROWS_AS(head_logprobs(h, w, at::zeros({2, 3}, at::kLong), 0.0, false), moe::Error);
}
