#include <ATen/ATen.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <map>

#include "moe/io/error.h"
#include "moe/rollout/sampling.h"

using moe::rollout::SamplingParams;
using moe::rollout::sample_next;
using moe::rollout::stream_uniform;

TEST_CASE("stream_uniform is deterministic, in [0,1) and roughly uniform", "[rollout]") {
  CHECK(stream_uniform(7, 3, 11) == stream_uniform(7, 3, 11));
  CHECK(stream_uniform(7, 3, 11) != stream_uniform(7, 4, 11));
  CHECK(stream_uniform(7, 3, 11) != stream_uniform(8, 3, 11));
  double sum = 0;
  int below = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    double u = stream_uniform(1, 2, i);
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    sum += u;
    below += u < 0.25;
  }
  CHECK(sum / n == Approx(0.5).margin(0.01));
  CHECK(below / double(n) == Approx(0.25).margin(0.01));
}

TEST_CASE("log-probs are under the untruncated tempered softmax", "[rollout]") {
  at::Tensor logits = at::tensor({2.0f, 1.0f, 0.5f, -1.0f}).unsqueeze(0);
  SamplingParams p;
  p.temperature = 0.5;
  p.top_k = 1;  // truncation must not change the recorded log-prob
  auto s = sample_next(logits, p, {0.3});
  CHECK(s.tokens.item<int64_t>() == 0);
  double expected = at::log_softmax(logits.to(at::kDouble) / 0.5, -1)[0][0].item<double>();
  CHECK(s.logprobs.item<float>() == Approx(expected).epsilon(1e-6));
}

TEST_CASE("inverse-CDF sampling follows the distribution and honours top-k and top-p", "[rollout]") {
  // probs 0.5, 0.3, 0.2 (as logits of their logs)
  at::Tensor logits = at::log(at::tensor({0.2, 0.5, 0.3})).to(at::kFloat).unsqueeze(0);
  SamplingParams p;
  auto pick = [&](double u) { return sample_next(logits, p, {u}).tokens.item<int64_t>(); };
  // sorted order: token 1 (0.5), token 2 (0.3), token 0 (0.2)
  CHECK(pick(0.0) == 1);
  CHECK(pick(0.49) == 1);
  CHECK(pick(0.51) == 2);
  CHECK(pick(0.79) == 2);
  CHECK(pick(0.81) == 0);
  CHECK(pick(0.999999) == 0);
  p.top_k = 2;  // mass 0.8 left: u * 0.8
  CHECK(pick(0.6) == 1);
  CHECK(pick(0.7) == 2);
  CHECK(pick(0.999999) == 2);
  p.top_k = 0;
  p.top_p = 0.5;  // only the first token (mass before token 2 is 0.5 >= 0.5)
  CHECK(pick(0.999999) == 1);
  p.top_p = 0.6;  // tokens 1 and 2
  CHECK(pick(0.999999) == 2);

  // Frequencies over many streams match the probabilities.
  p = SamplingParams{};
  std::map<int64_t, int> counts;
  const int n = 6000;
  for (int i = 0; i < n; ++i) counts[pick(stream_uniform(5, i, 0))]++;
  CHECK(counts[1] / double(n) == Approx(0.5).margin(0.03));
  CHECK(counts[2] / double(n) == Approx(0.3).margin(0.03));
  CHECK(counts[0] / double(n) == Approx(0.2).margin(0.03));
}

TEST_CASE("a row's sample does not depend on its batch-mates", "[rollout]") {
  at::Tensor a = at::randn({1, 50}, at::TensorOptions().dtype(at::kFloat));
  at::Tensor b = at::randn({3, 50}, at::TensorOptions().dtype(at::kFloat));
  SamplingParams p;
  p.top_p = 0.9;
  p.temperature = 0.7;
  double u = stream_uniform(9, 42, 3);
  auto alone = sample_next(a, p, {u});
  auto batched = sample_next(at::cat({b.narrow(0, 0, 2), a, b.narrow(0, 2, 1)}), p, {0.1, 0.2, u, 0.9});
  CHECK(alone.tokens.item<int64_t>() == batched.tokens[2].item<int64_t>());
  CHECK(alone.logprobs.item<float>() == batched.logprobs[2].item<float>());
}

TEST_CASE("greedy picks the argmax; bad parameters are errors", "[rollout]") {
  at::Tensor logits = at::tensor({0.1f, 3.0f, 3.0f, -2.0f}).unsqueeze(0);
  SamplingParams p;
  p.greedy = true;
  CHECK(sample_next(logits, p, {}).tokens.item<int64_t>() == 1);
  p.greedy = false;
  p.temperature = 0;
  CHECK_THROWS_AS(sample_next(logits, p, {0.5}), moe::Error);
  p.temperature = 1;
  p.top_p = 0;
  CHECK_THROWS_AS(sample_next(logits, p, {0.5}), moe::Error);
  p.top_p = 1;
  at::Tensor nan = at::full({1, 4}, NAN);
  CHECK_THROWS_AS(sample_next(nan, p, {0.5}), moe::Error);
}
