// lib/train memory and precision options: activation checkpointing (the same update, recomputed), bf16
// compute with float32 master weights and Adam states, the chunked output head inside a real step.
#include <ATen/ATen.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <random>
#include <string>

#include "moe/algo/loss.h"
#include "moe/algo/terms.h"
#include "moe/model/config.h"
#include "moe/model/qwen3_moe.h"
#include "moe/model/safetensors.h"
#include "moe/train/step.h"
#include "scratch.h"
#include "train_fixture.h"

using namespace moe;
using train::OldPass;
using train::RouterControl;
using train::Sequence;
using train::Trainer;
using train::TrainConfig;

namespace {

model::Qwen3Moe tiny(uint64_t seed = 1) { return testing::tiny_model(seed); }
std::vector<Sequence> seqs_of(int n, uint64_t seed = 5) { return testing::random_seqs(n, seed, 3, 6); }

struct Step {
  algo::Metrics metrics;
  std::vector<at::Tensor> weights;
};

Step one_step(TrainConfig tc, const std::vector<Sequence>& seqs) {
  auto m = tiny();
  Trainer t(m, tc);
  Step r;
  r.metrics = testing::one_update(t, seqs);
  for (auto& [n, p] : model::named_weights(m)) r.weights.push_back(p.detach().to(at::kFloat).clone());
  return r;
}

std::vector<at::Tensor> initial_weights() {
  auto m = tiny();
  std::vector<at::Tensor> w;
  for (auto& [n, p] : model::named_weights(m)) w.push_back(p.detach().clone());
  return w;
}

double max_diff(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, (a[i] - b[i]).abs().max().item<double>());
  return d;
}

}  // namespace

TEST_CASE("activation checkpointing gives the update of the plain backward pass", "[train][checkpoint]") {
  auto seqs = seqs_of(6);
  auto w0 = initial_weights();
  struct Case {
    const char* name;
    TrainConfig cfg;
  };
  std::vector<Case> cases;
  {
    TrainConfig c;  // RSPO: router shift (probs_at with gradient), replaying the old pass, plus the aux loss
    c.loss.algo = algo::parse_algo("rspo");
    c.router = RouterControl::replay_old;
    c.loss.aux_coef = 0.01;
    c.loss.entropy_coef = 0.01;
    cases.push_back({"rspo replay-old aux entropy", c});
  }
  {
    TrainConfig c;
    c.loss.algo = algo::parse_algo("grpo");
    cases.push_back({"grpo free", c});
  }
  {
    TrainConfig c;
    c.sft = true;
    c.optim.lr = 1e-3;
    cases.push_back({"sft", c});
  }
  for (auto& cs : cases) {
    INFO(cs.name);
    TrainConfig plain = cs.cfg, ckpt = cs.cfg;
    ckpt.checkpoint_activations = true;
    Step a = one_step(plain, seqs), b = one_step(ckpt, seqs);
    CHECK(max_diff(a.weights, w0) > 1e-5);  // the step moved the weights
    CHECK(max_diff(a.weights, b.weights) < 1e-6);
    CHECK(a.metrics["grad_norm"] == Approx(b.metrics["grad_norm"]).epsilon(1e-5));
    CHECK(a.metrics["loss"] == Approx(b.metrics["loss"]).epsilon(1e-6).margin(1e-9));
  }
}

TEST_CASE("checkpointed layers recompute in the backward pass: same gradients as autograd's graph", "[model][checkpoint]") {
  auto m1 = tiny(2), m2 = tiny(2);
  at::Tensor ids = at::randint(3, 90, {2, 9});
  at::Tensor mask = at::ones({2, 9}, at::kLong);
  mask[1][0] = 0;  // a left pad
  auto loss_of = [&](model::Qwen3Moe& m, bool ck) {
    model::ForwardOptions fo;
    fo.checkpoint_layers = ck;
    fo.return_router_logits = true;
    fo.capture_routing = true;
    auto fw = m->forward(ids, mask, model::RoutingPlan::native(), fo);
    CHECK_FALSE(fw.routing_indices.requires_grad());
    return fw.logits.to(at::kFloat).logsumexp(-1).sum() + 0.1 * fw.router_logits.pow(2).sum();
  };
  loss_of(m1, false).backward();
  loss_of(m2, true).backward();
  auto p1 = m1->named_parameters(true), p2 = m2->named_parameters(true);
  for (size_t i = 0; i < p1.size(); ++i) {
    INFO(p1[i].key());
    REQUIRE(p2[i].value().grad().defined() == p1[i].value().grad().defined());
    if (!p1[i].value().grad().defined()) continue;
    CHECK((p1[i].value().grad() - p2[i].value().grad()).abs().max().item<double>() <=
          1e-5 * (1 + p1[i].value().grad().abs().max().item<double>()));
  }
}

TEST_CASE("bf16 training keeps float32 master weights and Adam states, close to float32 training", "[train][bf16]") {
  auto seqs = seqs_of(8);
  TrainConfig f32;
  f32.loss.algo = algo::parse_algo("grpo");
  f32.optim.lr = 1e-3;
  TrainConfig bf = f32;
  bf.compute_dtype = at::kBFloat16;
  auto w0 = initial_weights();
  Step a = one_step(f32, seqs);

  auto m = tiny();
  Trainer t(m, bf);
  REQUIRE(m->embed_weight.scalar_type() == at::kBFloat16);  // the model computes in bf16
  auto met = testing::one_update(t, seqs);
  CHECK(std::isfinite(met["loss"]));
  const std::string dir = moe::testing::make_scratch_dir("moe-train-bf16") + "/m";
  t.save(dir, {});
  CHECK(m->embed_weight.scalar_type() == at::kBFloat16);  // compute copies back after the save
  model::SafetensorsFile w(dir + "/model.safetensors"), o(dir + "/optimizer.safetensors");
  auto names = model::named_weights(m);
  std::vector<at::Tensor> masters;
  for (size_t i = 0; i < names.size(); ++i) {
    const auto& [name, p] = names[i];
    INFO(name);
    REQUIRE(w.entry(name).dtype == "F32");
    at::Tensor master = w.get(name);
    masters.push_back(master);
    CHECK(at::equal(master.to(at::kBFloat16), p.detach()));  // the compute copy is the rounded master
    REQUIRE(o.entry(name + ".exp_avg").dtype == "F32");
    REQUIRE(o.entry(name + ".exp_avg_sq").dtype == "F32");
  }
  // Adam's first step moves every weight with a gradient by about lr, in the direction of its gradient's sign;
  // with bf16 activations and gradients the signs agree with float32 training wherever the gradient is not
  // near zero. Measured here: the mean |master - f32| over all weights against the mean step |f32 - w0|.
  double diff = 0, step = 0, n = 0;
  for (size_t i = 0; i < masters.size(); ++i) {
    diff += (masters[i] - a.weights[i]).abs().sum().item<double>();
    step += (a.weights[i] - w0[i]).abs().sum().item<double>();
    n += static_cast<double>(masters[i].numel());
  }
  INFO("mean |bf16 master - f32| " << diff / n << ", mean |f32 step| " << step / n);
  CHECK(diff / n < 0.25 * step / n);
}
