// lib/train: router modes, on-policy sanity, NaN abort, optimizer state round trip, stream joins.
#include <ATen/ATen.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <random>
#include <string>

#include "moe/algo/router.h"
#include "moe/format/rollout.h"
#include "moe/format/routing.h"
#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/model/config.h"
#include "moe/model/qwen3_moe.h"
#include "moe/model/safetensors.h"
#include "moe/tokenizer/char_tokenizer.h"
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

using testing::all_of;
using testing::max_len;
using testing::one_update;
using testing::tiny_model;
using testing::tokens_of;

// Sequences of random printable tokens (responses of 2-6 tokens) with alternating advantages.
std::vector<Sequence> make_seqs(int n, uint64_t seed = 3) { return testing::random_seqs(n, seed, 2, 5); }

std::vector<at::Tensor> clone_all(const std::vector<at::Tensor>& v) {
  std::vector<at::Tensor> r;
  for (auto& t : v) r.push_back(t.detach().clone());
  return r;
}

std::string temp_dir() { return moe::testing::make_scratch_dir("moe-train-test"); }

// The same sequences' rollout routing: for every position the native experts shifted by one (never native).
void add_foreign_routing(model::Qwen3Moe& m, std::vector<Sequence>& seqs) {
  at::NoGradGuard ng;
  const int64_t E = m->config().num_experts;
  for (auto& s : seqs) {
    std::vector<int64_t> all(s.prompt);
    all.insert(all.end(), s.response.begin(), s.response.end());
    at::Tensor in = at::tensor(std::vector<int64_t>(all.begin(), all.end() - 1), at::kLong).unsqueeze(0);
    model::ForwardOptions fo;
    fo.capture_routing = true;
    auto fw = m->forward(in, {}, model::RoutingPlan::native(), fo);
    s.rollout_routing = ((fw.routing_indices[0] + 1) % E).contiguous();
  }
}


bool any_nonzero_grad(const std::vector<at::Tensor>& ps) {
  for (auto& p : ps)
    if (p.grad().defined() && p.grad().abs().sum().item<double>() > 0) return true;
  return false;
}

}  // namespace

TEST_CASE("freeze leaves router weights bit-identical and updates the rest", "[train]") {
  auto m = tiny_model();
  auto seqs = make_seqs(6);
  auto routers0 = clone_all(m->router_parameters());
  auto embed0 = m->embed_weight.detach().clone();
  TrainConfig tc;
  tc.router = RouterControl::freeze;
  tc.optim.lr = 1e-2;
  Trainer t(m, tc);
  for (auto& [n, p] : t.trained()) CHECK(n.find("mlp.gate.weight") == std::string::npos);
  one_update(t, seqs);
  one_update(t, seqs);
  auto routers1 = m->router_parameters();
  for (size_t i = 0; i < routers0.size(); ++i) CHECK(at::equal(routers0[i], routers1[i]));
  CHECK_FALSE(any_nonzero_grad(routers1));
  CHECK_FALSE(at::equal(embed0, m->embed_weight.detach()));
}

TEST_CASE("free mode trains the router", "[train]") {
  auto m = tiny_model();
  auto seqs = make_seqs(6);
  auto routers0 = clone_all(m->router_parameters());
  TrainConfig tc;
  tc.optim.lr = 1e-2;
  Trainer t(m, tc);
  one_update(t, seqs);
  CHECK(any_nonzero_grad(m->router_parameters()));
  CHECK_FALSE(at::equal(routers0[0], m->router_parameters()[0].detach()));
}

TEST_CASE("replay-rollout replays exactly the given indices and gradients reach the router", "[train]") {
  auto m = tiny_model();
  auto seqs = make_seqs(4);
  add_foreign_routing(m, seqs);
  TrainConfig tc;
  tc.router = RouterControl::replay_rollout;
  tc.loss.algo = algo::Algo::rspo;  // router shift: probabilities at the (replayed) old indices
  Trainer t(m, tc);
  std::vector<OldPass> old;
  t.old_pass(seqs, old);
  for (size_t i = 0; i < seqs.size(); ++i) {
    // The old pass used exactly the rollout's experts at every position ...
    CHECK(at::equal(old[i].idx, seqs[i].rollout_routing));
    // ... and its log-probs are those of a forward replaying them, not of the native forward.
    std::vector<int64_t> all(seqs[i].prompt);
    all.insert(all.end(), seqs[i].response.begin(), seqs[i].response.end());
    at::Tensor in = at::tensor(std::vector<int64_t>(all.begin(), all.end() - 1), at::kLong).unsqueeze(0);
    at::Tensor tgt = at::tensor(std::vector<int64_t>(all.begin() + 1, all.end()), at::kLong).unsqueeze(0);
    at::NoGradGuard ng;
    auto rep = m->forward(in, {}, model::RoutingPlan::replay(seqs[i].rollout_routing.unsqueeze(0)));
    auto nat = m->forward(in);
    const int64_t P = seqs[i].prompt.size(), R = seqs[i].response.size();
    at::Tensor lr = at::log_softmax(rep.logits.to(at::kFloat), -1).gather(2, tgt.unsqueeze(-1)).squeeze(-1)[0].narrow(0, P - 1, R);
    at::Tensor ln = at::log_softmax(nat.logits.to(at::kFloat), -1).gather(2, tgt.unsqueeze(-1)).squeeze(-1)[0].narrow(0, P - 1, R);
    CHECK(at::allclose(old[i].logp_old, lr, 0, 1e-6));
    CHECK_FALSE(at::allclose(old[i].logp_old, ln, 0, 1e-6));
  }
  // On-policy first update: the current forward replays the same experts, so the ratio is exactly 1.
  auto met = t.update(seqs, old, all_of(seqs), seqs.size(), tokens_of(seqs), max_len(seqs));
  CHECK(met.at("ppo_kl") == Approx(0).margin(1e-7));
  CHECK(met.at("router_shift/gamma_min") == Approx(1).margin(1e-6));
  CHECK(any_nonzero_grad(m->router_parameters()));
}

TEST_CASE("replay-old replays the old pass native experts and the router gets gradients", "[train]") {
  auto m = tiny_model();
  auto seqs = make_seqs(4);
  TrainConfig tc;
  tc.router = RouterControl::replay_old;
  Trainer t(m, tc);
  auto met = one_update(t, seqs);
  CHECK(met.at("ppo_kl") == Approx(0).margin(1e-7));
  CHECK(any_nonzero_grad(m->router_parameters()));
}

TEST_CASE("copy-old-logits gives zero router gradient and leaves the router unchanged", "[train]") {
  auto m = tiny_model();
  auto seqs = make_seqs(6);
  auto routers0 = clone_all(m->router_parameters());
  TrainConfig tc;
  tc.router = RouterControl::copy_old_logits;
  tc.loss.router_shift = true;
  tc.optim.lr = 1e-2;
  Trainer t(m, tc);
  std::vector<OldPass> old;
  t.old_pass(seqs, old);
  for (auto& o : old) CHECK(o.logits.dim() == 3);
  t.update(seqs, old, all_of(seqs), seqs.size(), tokens_of(seqs), max_len(seqs));
  CHECK_FALSE(any_nonzero_grad(m->router_parameters()));
  auto routers1 = m->router_parameters();
  for (size_t i = 0; i < routers0.size(); ++i) CHECK(at::equal(routers0[i], routers1[i]));
}

TEST_CASE("on-policy sanity: K = 1, E = 1 gives ratio 1 and the on-policy loss forms", "[train]") {
  auto seqs = make_seqs(5);
  double num = 0, den = 0, rows = 0;
  for (auto& s : seqs) {
    num += s.advantage * s.response.size();
    den += s.response.size();
    rows += s.advantage;
  }
  for (auto a : {algo::Algo::grpo, algo::Algo::gspo, algo::Algo::gmpo, algo::Algo::rspo}) {
    INFO("algo " << algo::to_string(a));
    model::ModelConfig c = model::preset_config("tiny", 98);
    c.num_experts = 1;
    c.num_experts_per_tok = 1;
    model::Qwen3Moe m(c);
    model::init_weights(m, 1);
    REQUIRE(m->config().num_experts == 1);
    REQUIRE(m->config().num_experts_per_tok == 1);
    TrainConfig tc;
    tc.loss.algo = a;
    Trainer t(m, tc);
    std::vector<OldPass> old;
    t.old_pass(seqs, old);
    REQUIRE(old[0].idx.size(2) == 1);  // [positions, L, K = 1], every index expert 0
    CHECK(old[0].idx.max().item<int64_t>() == 0);
    auto met = t.update(seqs, old, all_of(seqs), seqs.size(), tokens_of(seqs), max_len(seqs));
    CHECK(met.at("ppo_kl") == 0.0);
    CHECK(met.at("pg_clipfrac") == 0.0);
    // grpo token-mean: -sum A / tokens; gspo seq-mean-token-mean and gmpo: -(1/B) sum_i A_i.
    const double want = a == algo::Algo::grpo ? -num / den : -rows / seqs.size();
    CHECK(met.at("pg_loss") == Approx(want).epsilon(1e-5));
    if (a == algo::Algo::rspo) {
      // One expert: its router probability is exactly 1 before and after, so gamma is exactly 1.
      CHECK(met.at("router_shift/gamma_min") == 1.0);
      CHECK(met.at("router_shift/unshifted_frac") == 1.0);
    }
    CHECK(met.at("step") == 1.0);
    CHECK(met.at("grad_norm") > 0);
  }
}

TEST_CASE("replay-old: the update forward uses the old pass's indices (forged ones too), not free routing", "[train]") {
  auto m = tiny_model();
  auto seqs = make_seqs(4);
  const int64_t E = m->config().num_experts;
  TrainConfig tc;
  tc.router = RouterControl::replay_old;
  Trainer t(m, tc);
  std::vector<OldPass> old;
  t.old_pass(seqs, old);
  // Forge the recorded old routing: every expert shifted by one (never the native choice, still distinct).
  double want_num = 0, tokens = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    old[i].idx = ((old[i].idx + 1) % E).contiguous();
    std::vector<int64_t> all(seqs[i].prompt);
    all.insert(all.end(), seqs[i].response.begin(), seqs[i].response.end());
    at::Tensor in = at::tensor(std::vector<int64_t>(all.begin(), all.end() - 1), at::kLong).unsqueeze(0);
    at::Tensor tgt = at::tensor(std::vector<int64_t>(all.begin() + 1, all.end()), at::kLong).unsqueeze(0);
    at::NoGradGuard ng;
    auto rep = m->forward(in, {}, model::RoutingPlan::replay(old[i].idx.unsqueeze(0)));
    const int64_t P = seqs[i].prompt.size(), R = seqs[i].response.size();
    at::Tensor lr = at::log_softmax(rep.logits.to(at::kFloat), -1).gather(2, tgt.unsqueeze(-1)).squeeze(-1)[0].narrow(0, P - 1, R);
    want_num += (old[i].logp_old - lr).sum().item<double>();  // ppo_kl = mean(-(logp - logp_old))
    tokens += R;
  }
  const double want = want_num / tokens;
  REQUIRE(std::abs(want) > 1e-4);  // the forged routing changes the log-probs: free routing would give 0
  auto met = t.update(seqs, old, all_of(seqs), seqs.size(), tokens_of(seqs), max_len(seqs));
  CHECK(met.at("ppo_kl") == Approx(want).margin(1e-6));
}

TEST_CASE("router_shift/unshifted_frac compares native with native under R3, not the rollout's indices", "[train]") {
  auto m = tiny_model();
  auto seqs = make_seqs(4);
  add_foreign_routing(m, seqs);  // the rollout's routing differs from native at every position
  TrainConfig tc;
  tc.router = RouterControl::replay_rollout;
  tc.loss.algo = algo::Algo::rspo;
  Trainer t(m, tc);
  auto met = one_update(t, seqs);
  // The first update runs the old weights: the current router's native top-K is the old pass's native top-K.
  CHECK(met.at("router_shift/unshifted_frac") == 1.0);
  CHECK(met.at("routing/token_mismatch") == 1.0);  // while the rollout's routing differs everywhere
}

TEST_CASE("trainer metrics on crafted rollout log-probs, routing and old router probabilities, by hand", "[train]") {
  auto m = tiny_model();
  // Two sequences, responses of 3 and 2 tokens.
  std::vector<Sequence> seqs(2);
  seqs[0].id = 0;
  seqs[0].prompt = {5, 9, 14};
  seqs[0].response = {20, 33, 41};
  seqs[0].advantage = 1;
  seqs[1].id = 1;
  seqs[1].prompt = {7, 8};
  seqs[1].response = {50, 61};
  seqs[1].advantage = -1;
  TrainConfig tc;
  tc.loss.algo = algo::Algo::rspo;
  tc.loss.rs.floor = 0.5;
  Trainer t(m, tc);
  std::vector<OldPass> old;
  t.old_pass(seqs, old);
  // Rollout log-probs = old - delta: mismatch/kl = mean(logp_roll - logp_old) = -mean(delta),
  // k3 = mean(exp(delta) - delta - 1) with log rho = delta.
  const std::vector<std::vector<double>> delta = {{0.1, -0.2, 0.0}, {0.3, -0.05}};
  double kl = 0, k3 = 0;
  for (size_t i = 0; i < 2; ++i) {
    at::Tensor lo = old[i].logp_old.to(at::kDouble);
    seqs[i].logp_roll.clear();
    for (size_t j = 0; j < delta[i].size(); ++j) {
      seqs[i].logp_roll.push_back(static_cast<float>(lo[j].item<double>() - delta[i][j]));
      kl += -delta[i][j];
      k3 += std::exp(delta[i][j]) - delta[i][j] - 1;
    }
  }
  kl /= 5;
  k3 /= 5;
  // Rollout routing = the old pass's native routing, except at response token (0, 1): layer 0 and layer 2
  // differ, and at response token (1, 0): layer 1 differs. 3 MoE layers x 5 tokens = 15 pairs.
  const int64_t E = m->config().num_experts, L = m->config().num_moe_layers();
  REQUIRE(L == 3);
  for (size_t i = 0; i < 2; ++i) seqs[i].rollout_routing = old[i].idx.clone();
  auto bump = [&](Sequence& s, int64_t resp_t, int64_t layer) {
    at::Tensor row = s.rollout_routing[s.prompt.size() - 1 + resp_t][layer];
    row.copy_((row + 1) % E);  // shifted by one: never the same set (K = 2 of 8)
  };
  bump(seqs[0], 1, 0);
  bump(seqs[0], 1, 2);
  bump(seqs[1], 0, 1);
  // Old router probabilities forged per token: the current (on-policy) probability times exp(+-c) in every
  // layer and slot, so |dlog p| = c everywhere and gamma_t = exp(-c) exactly (paper form).
  const std::vector<std::vector<double>> c = {{0.0, 0.1, 0.9}, {0.2, 0.05}};
  std::vector<double> gammas;
  for (size_t i = 0; i < 2; ++i)
    for (size_t j = 0; j < c[i].size(); ++j) {
      const double sign = (j % 2) ? -1.0 : 1.0;
      old[i].prob[j].mul_(std::exp(sign * c[i][j]));
      gammas.push_back(std::exp(-c[i][j]));
    }
  auto met = t.update(seqs, old, all_of(seqs), 2, 5, 3);
  CHECK(met.at("mismatch/kl") == Approx(kl).margin(1e-6));  // float32 log-probs
  CHECK(met.at("mismatch/k3_kl") == Approx(k3).margin(1e-6));
  CHECK(met.at("routing/layer_mismatch") == Approx(3.0 / 15).margin(1e-12));
  CHECK(met.at("routing/token_mismatch") == Approx(2.0 / 5).margin(1e-12));
  CHECK(met.at("routing/layers_differing_mean") == Approx(3.0 / 5).margin(1e-12));
  double gmean = 0, dmean = 0;
  for (double g : gammas) {
    gmean += g / 5;
    dmean += -std::log(g) / 5;
  }
  // float32 router probabilities: |dlog p| is exact to ~1e-7.
  CHECK(met.at("router_shift/gamma_mean") == Approx(gmean).margin(1e-6));
  CHECK(met.at("router_shift/gamma_min") == Approx(std::exp(-0.9)).margin(1e-6));
  CHECK(met.at("router_shift/gamma_max") == Approx(1.0).margin(1e-6));
  CHECK(met.at("router_shift/delta_mean") == Approx(dmean).margin(1e-6));
  CHECK(met.at("router_shift/floor_frac") == Approx(1.0 / 5).margin(1e-12));  // exp(-0.9) = 0.41 < 0.5
  // delta_p90 of {0, 0.1, 0.9, 0.2, 0.05}: sorted 0, 0.05, 0.1, 0.2, 0.9; position 0.9 * 4 = 3.6.
  CHECK(met.at("router_shift/delta_p90") == Approx(0.2 + 0.6 * 0.7).margin(1e-6));
  CHECK(met.at("router_shift/unshifted_frac") == 1.0);  // on-policy: native sets unchanged
}

TEST_CASE("the model's replay gating is algo::replay_gating: norm_topk_prob true and false", "[train]") {
  for (bool norm : {true, false}) {
    INFO("norm_topk_prob " << norm);
    model::ModelConfig c = model::preset_config("tiny", 98);
    c.norm_topk_prob = norm;
    model::SparseMoe moe(c);
    at::NoGradGuard ng0;
    for (auto& p : moe->parameters()) p.normal_(0, 0.2);
    const int64_t N = 6, E = c.num_experts;
    at::Tensor x = at::randn({N, c.hidden_size}, at::TensorOptions().dtype(at::kDouble));
    moe->to(at::kDouble);
    // Replayed experts that are never the native top-2: the two of lowest probability.
    at::Tensor logits = at::linear(x, moe->gate->weight);
    at::Tensor idx = std::get<1>(logits.topk(2, -1, /*largest=*/false));
    auto out = moe->forward(x, model::RouterMode::replay, idx, {}, {}, {}, false, true);
    CHECK(at::equal(out.indices, idx));
    // By hand: softmax over all E gathered at the replayed experts, renormalised over them iff norm.
    at::Tensor p = at::softmax(logits, -1).gather(1, idx);
    at::Tensor w = norm ? p / p.sum(-1, true) : p;
    at::Tensor want = at::zeros_like(x);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < 2; ++k) {
        const int64_t e = idx[n][k].item<int64_t>();
        want[n] += w[n][k] * moe->experts[e]->forward(x[n].unsqueeze(0))[0];
      }
    CHECK(at::allclose(out.hidden, want, 1e-12, 1e-12));
    CHECK(at::allclose(algo::replay_gating(logits, idx, norm), w, 1e-15, 1e-15));
    (void)E;
  }
}

TEST_CASE("scheduled_lr warms up linearly, then stays constant", "[train]") {
  train::OptimConfig o;
  o.lr = 1e-3;
  CHECK(train::scheduled_lr(o, 0) == 1e-3);
  o.warmup = 4;
  CHECK(train::scheduled_lr(o, 0) == Approx(2.5e-4));
  CHECK(train::scheduled_lr(o, 3) == Approx(1e-3));
  CHECK(train::scheduled_lr(o, 100) == Approx(1e-3));
}

TEST_CASE("optimizer state round trip: moments and step persist across steps", "[train]") {
  const std::string dir = temp_dir();
  auto seqs = make_seqs(4);
  {
    auto m = tiny_model();
    Trainer t(m, TrainConfig{});
    one_update(t, seqs);
    one_update(t, seqs);
    t.save(dir + "/a", {});
  }
  model::SafetensorsFile fa(dir + "/a/optimizer.safetensors");
  CHECK(fa.has("model.embed_tokens.weight.exp_avg"));
  CHECK(fa.get("model.embed_tokens.weight.step").item<int64_t>() == 2);
  {
    auto m = model::load_model(dir + "/a", c10::Device(c10::kCPU));
    Trainer t(m, TrainConfig{});
    t.load_state(dir + "/a");
    CHECK(t.global_step() == 2);
    t.save(dir + "/b", {});
  }
  model::SafetensorsFile fb(dir + "/b/optimizer.safetensors");
  REQUIRE(fa.names() == fb.names());
  for (auto& n : fa.names()) CHECK(at::equal(fa.get(n), fb.get(n)));
  // A third step continues the moments: equal to three steps in one process.
  auto m3 = model::load_model(dir + "/a", c10::Device(c10::kCPU));
  Trainer t3(m3, TrainConfig{});
  t3.load_state(dir + "/a");
  one_update(t3, seqs);
  auto mref = tiny_model();
  Trainer tref(mref, TrainConfig{});
  for (int i = 0; i < 3; ++i) one_update(tref, seqs);
  CHECK(at::allclose(m3->embed_weight, mref->embed_weight, 0, 1e-6));
  CHECK(t3.global_step() == 3);
  std::system(("rm -rf " + dir).c_str());
}

namespace {
// A rollout stream file (and optionally a routing stream) for run_train_step.
void write_streams(const std::string& path, const std::vector<Sequence>& seqs, bool advantages,
                   const model::ModelConfig& mc, const std::string& routing_path = "", int drop_routing_id = -1,
                   int num_layers_override = 0) {
  {
    io::Output out(path);
    format::Header h;
    h.producer = {{"program", "train_test"}};
    h.meta = {{"vocab_size", mc.vocab_size}, {"temperature", 1.0}, {"model_digest", model::config_digest(mc)}};
    format::RolloutWriter w(out, h);
    for (auto& s : seqs) {
      format::RolloutRecord r;
      r.id = s.id;
      r.group = s.id / 2;
      r.prompt_tokens.assign(s.prompt.begin(), s.prompt.end());
      r.response_tokens.assign(s.response.begin(), s.response.end());
      r.finish_reason = "length";
      if (advantages) r.advantage = s.advantage;
      w.write(r);
    }
    w.finish();
    out.close();
  }
  if (routing_path.empty()) return;
  io::Output out(routing_path);
  format::RoutingMeta meta;
  meta.layer_ids = mc.moe_layer_ids();
  meta.num_layers = meta.layer_ids.size();
  if (num_layers_override) {
    meta.num_layers = num_layers_override;
    meta.layer_ids.resize(num_layers_override);
    for (int i = 0; i < num_layers_override; ++i) meta.layer_ids[i] = i;
  }
  meta.num_experts = mc.num_experts;
  meta.top_k = mc.num_experts_per_tok;
  meta.prob_dtype = "none";
  meta.model_digest = model::config_digest(mc);
  format::Header h;
  format::RoutingWriter w(out, h, meta);
  for (auto& s : seqs) {
    if (static_cast<int>(s.id) == drop_routing_id) continue;
    format::RoutingRecord r;
    r.id = s.id;
    r.n_pos = s.prompt.size() + s.response.size() - 1;
    for (int64_t p = 0; p < r.n_pos; ++p)
      for (int l = 0; l < meta.num_layers; ++l)
        for (int k = 0; k < meta.top_k; ++k) r.experts.push_back(static_cast<uint16_t>((p + l + k) % meta.num_experts));
    w.write(r);
  }
  w.finish();
  out.close();
}

train::StepConfig step_config(const std::string& dir, const std::string& input) {
  train::StepConfig c;
  c.model_dir = dir;
  c.input = input;
  return c;
}
}  // namespace

TEST_CASE("a NaN loss aborts the step and leaves the checkpoint untouched", "[train]") {
  const std::string dir = temp_dir();
  auto m = tiny_model();
  auto seqs = make_seqs(4);
  {
    at::NoGradGuard ng;
    m->embed_weight[seqs[0].prompt[0]].fill_(std::nan(""));
  }
  model::save_model(m, dir + "/m", {{"tokenizer.json", tokenizer::CharTokenizer::default_vocab().to_json()}});
  write_streams(dir + "/r.zst", seqs, true, m->config());
  const std::string before = io::read_file(dir + "/m/model.safetensors");
  try {
    train::run_train_step(step_config(dir + "/m", dir + "/r.zst"));
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("non-finite") != std::string::npos);
  }
  CHECK(io::read_file(dir + "/m/model.safetensors") == before);
  CHECK(::access((dir + "/m/optimizer.safetensors").c_str(), F_OK) != 0);
  std::system(("rm -rf " + dir).c_str());
}

TEST_CASE("run_train_step: input errors name the problem", "[train]") {
  const std::string dir = temp_dir();
  auto m = tiny_model();
  auto seqs = make_seqs(4);
  model::save_model(m, dir + "/m", {{"tokenizer.json", tokenizer::CharTokenizer::default_vocab().to_json()}});
  const auto& mc = m->config();
  auto expect_error = [&](train::StepConfig c, const std::string& what) {
    try {
      train::run_train_step(c);
      FAIL("expected an error containing " << what);
    } catch (const Error& e) {
      CHECK_THAT(e.what(), Catch::Contains(what));
    }
  };
  write_streams(dir + "/noadv.zst", seqs, false, mc);
  expect_error(step_config(dir + "/m", dir + "/noadv.zst"), "has no advantage");

  write_streams(dir + "/r.zst", seqs, true, mc, dir + "/missing.zst", 2);
  auto c = step_config(dir + "/m", dir + "/r.zst");
  c.routing = dir + "/missing.zst";
  expect_error(c, "no routing record for rollout id 2");

  write_streams(dir + "/r.zst", seqs, true, mc, dir + "/shape.zst", -1, 1);
  c.routing = dir + "/shape.zst";
  expect_error(c, "does not match the model");

  // replay-rollout without a routing stream is a usage error.
  auto u = step_config(dir + "/m", dir + "/r.zst");
  u.train.router = RouterControl::replay_rollout;
  CHECK_THROWS_AS(train::run_train_step(u), UsageError);

  // A good routing stream: replay-rollout runs and writes optimizer state and trainer_state.json.
  write_streams(dir + "/r.zst", seqs, true, mc, dir + "/good.zst");
  u.routing = dir + "/good.zst";
  u.output_dir = dir + "/out";
  auto met = train::run_train_step(u);
  CHECK(met.at("updates") == 2);
  CHECK(met.count("routing/layer_mismatch") == 1);
  CHECK(::access((dir + "/out/optimizer.safetensors").c_str(), F_OK) == 0);
  CHECK(::access((dir + "/out/tokenizer.json").c_str(), F_OK) == 0);
  auto st = nlohmann::json::parse(io::read_file(dir + "/out/trainer_state.json"));
  CHECK(st["global_step"] == 2);
  std::system(("rm -rf " + dir).c_str());
}

TEST_CASE("sft: JSONL prompt+solution trains on solution + eos", "[train]") {
  const std::string dir = temp_dir();
  auto m = tiny_model();
  model::save_model(m, dir + "/m", {{"tokenizer.json", tokenizer::CharTokenizer::default_vocab().to_json()}});
  io::write_file_atomic(dir + "/d.jsonl", "{\"prompt\":\"1 2 3=6|\",\"solution\":\"(1+2)+3\"}\n{\"prompt\":\"2 2 2=8|\",\"solution\":\"(2*2)*2\"}\n");
  auto c = step_config(dir + "/m", dir + "/d.jsonl");
  c.train.sft = true;
  c.train.optim.lr = 1e-2;
  c.sft_steps = 20;
  c.sft_batch_size = 2;
  auto met = train::run_train_step(c);
  CHECK(met.at("updates") == 20);
  CHECK(met.at("loss") < 4.0);
  auto st = nlohmann::json::parse(io::read_file(dir + "/m/trainer_state.json"));
  CHECK(st["global_step"] == 20);
  CHECK(st["algo"] == "sft");
  std::system(("rm -rf " + dir).c_str());
}

TEST_CASE("the first update's old-pass values from its own forward: those of a full old pass", "[train]") {
  auto seqs = make_seqs(8, 11);
  const std::vector<size_t> mb0{0, 2, 4, 6}, mb1{1, 3, 5, 7};
  std::vector<char> first(seqs.size(), 0);
  for (size_t i : mb0) first[i] = 1;
  auto sub = [&](const std::vector<size_t>& mb) {
    std::vector<Sequence> s;
    for (size_t i : mb) s.push_back(seqs[i]);
    return s;
  };
  for (RouterControl rc : {RouterControl::free, RouterControl::freeze, RouterControl::replay_rollout}) {
    INFO("router " << train::to_string(rc));
    auto ma = tiny_model(), mb = tiny_model();
    if (rc == RouterControl::replay_rollout) add_foreign_routing(ma, seqs);
    TrainConfig tc;
    tc.router = rc;
    tc.optim.lr = 1e-2;
    Trainer full(ma, tc), part(mb, tc);
    std::vector<OldPass> oa, ob;
    full.old_pass(seqs, oa);
    part.old_pass(seqs, ob, nullptr, first);
    for (size_t i = 0; i < seqs.size(); ++i) {
      CHECK(ob[i].deferred == (first[i] != 0));
      CHECK(ob[i].logp_old.defined() == !first[i]);
    }
    auto fa = full.update(seqs, oa, mb0, 4, tokens_of(sub(mb0)), max_len(sub(mb0)));
    auto fb = part.update(seqs, ob, mb0, 4, tokens_of(sub(mb0)), max_len(sub(mb0)));
    for (size_t i : mb0) {
      const OldPass &a = oa[i], &b = ob[i];
      CHECK_FALSE(b.deferred);
      CHECK(a.logp_old.sizes() == b.logp_old.sizes());
      CHECK(at::allclose(a.logp_old, b.logp_old, 0, 1e-5));
      CHECK(at::equal(a.idx, b.idx));
      CHECK(at::allclose(a.prob, b.prob, 0, 1e-6));
      CHECK(at::equal(a.native_idx, b.native_idx));
    }
    CHECK(fb["loss"] == Approx(fa["loss"]).margin(1e-6));
    CHECK(fb["ppo_kl"] == 0.0);  // logp - logp_old: the same forward's values, so exactly 0
    // The second mini-batch, after the first update moved the weights (Adam's first step is about lr * the
    // gradient's sign, so entries with a gradient near 0 may move apart: the losses agree, not every weight).
    auto sa = full.update(seqs, oa, mb1, 4, tokens_of(sub(mb1)), max_len(sub(mb1)));
    auto sb = part.update(seqs, ob, mb1, 4, tokens_of(sub(mb1)), max_len(sub(mb1)));
    CHECK(sb["loss"] == Approx(sa["loss"]).epsilon(1e-3));
    CHECK(sb["ppo_kl"] == Approx(sa["ppo_kl"]).epsilon(1e-2).margin(1e-7));
  }
}

TEST_CASE("old-pass values left to the first update: only that update may take them", "[train]") {
  auto seqs = make_seqs(4, 12);
  std::vector<char> first{1, 1, 0, 0};
  {
    auto m = tiny_model();
    Trainer t(m, TrainConfig{});
    std::vector<OldPass> old;
    t.old_pass(seqs, old, nullptr, first);
    t.update(seqs, old, {2, 3}, 2, tokens_of(seqs), max_len(seqs));  // the weights move
    CHECK_THROWS_WITH(t.update(seqs, old, {0, 1}, 2, tokens_of(seqs), max_len(seqs)), Catch::Contains("first update after it"));
    CHECK_THROWS_WITH(t.old_pass(seqs, old, nullptr, {1}), Catch::Contains("1 first-update flags for 4 sequences"));
  }
  // Where the first update's forward needs the old pass (RSPO's probabilities at the old experts, replaying
  // the old pass's experts), a reference model's log-probs are wanted or the routing is recorded, the old
  // pass computes everything.
  for (int mode = 0; mode < 4; ++mode) {
    INFO("mode " << mode);
    auto m = tiny_model(), ref = tiny_model(2);
    TrainConfig tc;
    if (mode == 0) tc.loss.algo = algo::Algo::rspo;
    if (mode == 1) tc.router = RouterControl::replay_old;
    if (mode == 3) tc.record_routing = true;
    Trainer t(m, tc);
    std::vector<OldPass> old;
    t.old_pass(seqs, old, mode == 2 ? &ref : nullptr, first);
    for (auto& o : old) {
      CHECK_FALSE(o.deferred);
      CHECK(o.logp_old.defined());
    }
  }
}
