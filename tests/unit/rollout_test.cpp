#include <ATen/ATen.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <map>

#include "moe/io/error.h"
#include "moe/rollout/sampling.h"

using moe::rollout::SamplingParams;
using moe::rollout::sample_next;
using moe::rollout::stream_uniform;

TEST_CASE("stream_uniform is deterministic, below 1 and roughly uniform", "[rollout]") {
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
  // untruncated: vocabulary order, token 0 (0.2), token 1 (0.5), token 2 (0.3)
  CHECK(pick(0.0) == 0);
  CHECK(pick(0.19) == 0);
  CHECK(pick(0.21) == 1);
  CHECK(pick(0.69) == 1);
  CHECK(pick(0.71) == 2);
  CHECK(pick(0.999999) == 2);
  // truncated: sorted order, token 1 (0.5), token 2 (0.3), token 0 (0.2)
  p.top_k = 2;  // mass 0.8 left: u * 0.8
  CHECK(pick(0.6) == 1);
  CHECK(pick(0.7) == 2);
  CHECK(pick(0.999999) == 2);
  p.top_k = 0;
  // Values away from the edges: at top_p = 0.5 the kept set hangs on whether cumsum - probs rounds to
  // 0.5 or 0.49999997, which differs between libtorch versions.
  p.top_p = 0.45;  // only the first token (mass before token 2 is 0.5 >= 0.45)
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

TEST_CASE("untruncated sampling inverts the CDF in vocabulary order, by the CPU loop and by tensor operations", "[rollout]") {
  // Reference: float64 running sum of the float32 probabilities, first entry above u * total.
  auto reference = [](const at::Tensor& row, double u) {
    at::Tensor pr = at::log_softmax(row.to(at::kFloat), -1).exp();
    std::vector<float> q(pr.data_ptr<float>(), pr.data_ptr<float>() + pr.numel());
    double total = 0, c = 0;
    for (float x : q) total += x;
    int64_t last = 0;
    for (size_t i = 0; i < q.size(); ++i) {
      if (q[i] > 0) last = static_cast<int64_t>(i);
      c += q[i];
      if (c > u * total) return static_cast<int64_t>(i);
    }
    return last;
  };
  at::manual_seed(8);
  at::Tensor logits = at::randn({5, 1000}) * 2;
  logits[2].narrow(0, 900, 100).fill_(-INFINITY);  // the tail has no mass: u -> 1 picks token 899
  SamplingParams p;
  p.temperature = 0.9;
  std::vector<double> u = {0.0, 0.3, 1.0 - 0x1.0p-53, 0.77, 0.5};
  auto s = sample_next(logits, p, u);
  for (int b = 0; b < 5; ++b) {
    INFO("row " << b);
    CHECK(s.tokens[b].item<int64_t>() == reference(logits[b] / 0.9, u[b]));
  }
  CHECK(s.tokens[2].item<int64_t>() == 899);
  // the tensor-operation rule (every device but the CPU) picks the same tokens
  at::Tensor logp = at::log_softmax(logits / 0.9, -1);
  CHECK(at::equal(moe::rollout::detail::sample_untruncated(logp, u, /*tensor_ops=*/true), s.tokens));
  // a batch of one row per call gives the same tokens (rows are independent of the threads and batch)
  for (int b = 0; b < 5; ++b)
    CHECK(sample_next(logits.narrow(0, b, 1), p, {u[b]}).tokens.item<int64_t>() == s.tokens[b].item<int64_t>());
}

TEST_CASE("top-k sampling without a sort of the vocabulary picks what a full stable sort picks", "[rollout]") {
  // Reference: sort the whole vocabulary (stable, descending), keep the first k, invert the CDF.
  auto reference = [](const at::Tensor& row, int64_t k, double top_p, double u) {
    at::Tensor lp = at::log_softmax(row.to(at::kFloat), -1);
    auto sorted = at::sort(lp, true, -1, true);
    std::vector<double> p;
    for (int64_t i = 0; i < k; ++i) p.push_back(std::exp(std::get<0>(sorted)[i].item<float>()));
    double before = 0, total = 0;
    std::vector<double> kept;
    for (double q : p) {
      if (before >= top_p) break;
      kept.push_back(q);
      before += q;
    }
    for (double q : kept) total += q;
    double c = 0;
    for (size_t i = 0; i < kept.size(); ++i) {
      c += kept[i];
      if (c > u * total) return std::get<1>(sorted)[i].item<int64_t>();
    }
    return std::get<1>(sorted)[kept.size() - 1].item<int64_t>();
  };
  at::manual_seed(4);
  at::Tensor logits = at::randn({6, 300});
  logits[1].narrow(0, 10, 20).fill_(2.5);  // ties across the top-k boundary keep vocabulary order
  SamplingParams p;
  for (int64_t k : {1, 7, 40}) {
    for (double top_p : {1.0, 0.5}) {
      p.top_k = k;
      p.top_p = top_p;
      std::vector<double> u;
      for (int b = 0; b < 6; ++b) u.push_back(stream_uniform(3, b, k));
      auto s = sample_next(logits, p, u);
      for (int b = 0; b < 6; ++b) {
        INFO("k " << k << " top_p " << top_p << " row " << b);
        CHECK(s.tokens[b].item<int64_t>() == reference(logits[b], k, top_p, u[b]));
      }
    }
  }
  // without check_finite a NaN row is reported, not thrown
  at::Tensor bad = logits.narrow(0, 0, 2).clone();
  bad[1].fill_(NAN);
  auto s = sample_next(bad, p, {0.1, 0.2}, false);
  CHECK(s.finite[0].item<bool>());
  CHECK_FALSE(s.finite[1].item<bool>());
}

TEST_CASE("greedy picks the argmax, and bad parameters are errors", "[rollout]") {
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

// ---- generation engine ----
#include <torch/csrc/autograd/grad_mode.h>

#include "moe/model/config.h"
#include "moe/model/qwen3_moe.h"
#include "moe/rollout/generate.h"

namespace {
moe::model::Qwen3Moe tiny_model(uint64_t seed = 3) {
  auto cfg = moe::model::preset_config("tiny", 101);
  moe::model::Qwen3Moe m(cfg);
  moe::model::init_weights(m, seed);
  // Larger weights than the 0.02 init so that routing and sampling are far from uniform.
  torch::NoGradGuard g;
  for (auto& p : m->parameters()) p.mul_(10.0);
  m->eval();
  return m;
}

std::vector<int64_t> full_greedy(moe::model::Qwen3Moe& m, std::vector<int64_t> seq, int64_t n) {
  torch::NoGradGuard g;
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    at::Tensor in = at::tensor(seq, at::kLong).unsqueeze(0);
    auto fw = m->forward(in);
    int64_t t = fw.logits[0][seq.size() - 1].argmax().item<int64_t>();
    out.push_back(t);
    seq.push_back(t);
  }
  return out;
}
}  // namespace

TEST_CASE("cached greedy generation equals greedy by full recompute", "[rollout]") {
  auto m = tiny_model();
  moe::rollout::GenerateOptions opt;
  opt.sampling.greedy = true;
  opt.max_new_tokens = 12;
  std::vector<int64_t> prompt = {5, 17, 33, 8, 60};
  auto gen = moe::rollout::generate(m, {{0, prompt}}, opt);
  REQUIRE(gen.size() == 1);
  CHECK(gen[0].finish_reason == "length");
  CHECK(gen[0].tokens == full_greedy(m, prompt, 12));
  // generate ran its experts on transposed copies (model::ExpertKernel::transposed) and gave the loop back.
  CHECK(m->expert_kernel() == moe::model::ExpertKernel::loop);
  // 40 sequences (an expert then gets more rows than linear_rows' kernel takes): as greedy by recompute.
  std::vector<moe::rollout::Request> reqs;
  for (int i = 0; i < 40; ++i) reqs.push_back({static_cast<uint64_t>(i), {5 + i, 17, 33 + i % 7}});
  opt.max_new_tokens = 4;
  auto many = moe::rollout::generate(m, reqs, opt);
  for (int i = 0; i < 40; i += 13) CHECK(many[i].tokens == full_greedy(m, reqs[i].prompt, 4));
}

TEST_CASE("a sequence's generation does not depend on its batch-mates", "[rollout]") {
  auto m = tiny_model();
  moe::rollout::GenerateOptions opt;
  opt.max_new_tokens = 10;
  opt.seed = 11;
  opt.capture_routing = true;
  opt.sampling.temperature = 0.8;
  std::vector<int64_t> a = {4, 9, 22}, b = {70, 71, 72, 73, 74, 75, 76, 77}, c = {30};
  auto alone = moe::rollout::generate(m, {{42, a}}, opt);
  auto batch = moe::rollout::generate(m, {{7, b}, {42, a}, {8, c}, {9, c}}, opt);
  CHECK(alone[0].tokens == batch[1].tokens);
  REQUIRE(alone[0].logprobs.size() == batch[1].logprobs.size());
  for (size_t i = 0; i < alone[0].logprobs.size(); ++i)
    CHECK(alone[0].logprobs[i] == Approx(batch[1].logprobs[i]).margin(1e-4));
  CHECK(alone[0].routing.experts == batch[1].routing.experts);
  // Routing covers every forwarded position: prompt + response - 1.
  for (size_t i = 0; i < batch.size(); ++i) {
    int64_t p = i == 0 ? b.size() : i == 1 ? a.size() : 1;
    CHECK(batch[i].routing.n_pos == p + static_cast<int64_t>(batch[i].tokens.size()) - 1);
    CHECK(batch[i].routing.experts.size() == size_t(batch[i].routing.n_pos * 3 * 2));
  }
  // Different streams of the same prompt share a prefill but sample differently.
  CHECK(batch[2].tokens != batch[3].tokens);
}

TEST_CASE("teacher-forced scoring reproduces the sampler's log-probs and routing", "[rollout]") {
  auto m = tiny_model();
  moe::rollout::GenerateOptions opt;
  opt.max_new_tokens = 9;
  opt.seed = 5;
  opt.capture_routing = true;
  opt.sampling.temperature = 0.7;
  opt.sampling.top_k = 5;  // truncation must not leak into the recorded log-probs
  std::vector<moe::rollout::Request> reqs = {{1, {3, 4, 5, 6}}, {2, {10, 11}}, {3, {10, 11}}};
  auto gen = moe::rollout::generate(m, reqs, opt);
  std::vector<moe::rollout::ScoreRequest> sreqs;
  for (size_t i = 0; i < reqs.size(); ++i) sreqs.push_back({reqs[i].prompt, gen[i].tokens});
  auto sc = moe::rollout::score(m, sreqs, 0.7, true);
  for (size_t i = 0; i < reqs.size(); ++i) {
    REQUIRE(sc[i].logprobs.size() == gen[i].logprobs.size());
    for (size_t t = 0; t < gen[i].logprobs.size(); ++t) CHECK(sc[i].logprobs[t] == Approx(gen[i].logprobs[t]).margin(1e-4));
    CHECK(sc[i].routing.n_pos == gen[i].routing.n_pos);
    CHECK(sc[i].routing.experts == gen[i].routing.experts);
    // Decode runs its linear layers on 3 rows (model::linear_rows' kernel), scoring on whole sequences (a
    // matrix product): float32 sums in other orders. Measured largest routing-prob difference: 8.8e-5 with
    // matrix products on both sides, 1.1e-4 with the kernel (AVX-512); log-probs 7e-6 and 3.9e-5.
    for (size_t j = 0; j < gen[i].routing.probs.size(); ++j)
      REQUIRE(sc[i].routing.probs[j] == Approx(gen[i].routing.probs[j]).margin(3e-4));
  }
}

TEST_CASE("generation stops at eos and rejects bad requests", "[rollout]") {
  auto m = tiny_model();
  moe::rollout::GenerateOptions opt;
  opt.sampling.greedy = true;
  opt.max_new_tokens = 6;
  std::vector<int64_t> prompt = {12, 13, 14};
  auto free_run = full_greedy(m, prompt, 6);
  opt.eos_id = free_run[2];  // pretend the third greedy token is eos
  auto gen = moe::rollout::generate(m, {{0, prompt}}, opt);
  size_t first = std::find(free_run.begin(), free_run.end(), opt.eos_id) - free_run.begin();
  CHECK(gen[0].finish_reason == "eos");
  CHECK(gen[0].tokens.size() == first + 1);
  CHECK_THROWS_AS(moe::rollout::generate(m, {{0, {}}}, opt), moe::Error);
  CHECK_THROWS_AS(moe::rollout::generate(m, {{0, {500}}}, opt), moe::Error);
  opt.max_new_tokens = 0;
  CHECK_THROWS_AS(moe::rollout::generate(m, {{0, prompt}}, opt), moe::Error);
}
