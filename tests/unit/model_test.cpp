#include <ATen/ATen.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/model/config.h"
#include "moe/model/qwen3_moe.h"
#include "moe/model/safetensors.h"
#include "scratch.h"

using namespace moe::model;
using nlohmann::json;

namespace {
std::string scratch_dir() { return moe::testing::make_scratch_dir("moekit-model"); }

json tiny_json() {
  return json{{"model_type", "qwen3_moe"}, {"vocab_size", 50}, {"hidden_size", 32}, {"intermediate_size", 24},
              {"moe_intermediate_size", 16}, {"num_hidden_layers", 3}, {"num_attention_heads", 4},
              {"num_key_value_heads", 2}, {"head_dim", 8}, {"num_experts", 6}, {"num_experts_per_tok", 2},
              {"decoder_sparse_step", 1}, {"mlp_only_layers", {1}}, {"norm_topk_prob", true},
              {"rope_theta", 10000.0}, {"initializer_range", 0.2}, {"pad_token_id", 0}, {"some_unknown_key", "x"}};
}

Qwen3Moe tiny_model(uint64_t seed = 1, json j = tiny_json()) {
  Qwen3Moe m(parse_config(j));
  init_weights(m, seed);
  m->eval();
  return m;
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a.to(at::kFloat) - b.to(at::kFloat)).abs().max().item<double>(); }

// Rows of ids [B, T] with `lens` real tokens each, left- or right-padded with 0.
std::pair<at::Tensor, at::Tensor> padded_batch(const std::vector<std::vector<int64_t>>& seqs, bool left) {
  int64_t T = 0;
  for (auto& s : seqs) T = std::max<int64_t>(T, s.size());
  at::Tensor ids = at::zeros({(int64_t)seqs.size(), T}, at::kLong), mask = at::zeros({(int64_t)seqs.size(), T}, at::kLong);
  for (size_t b = 0; b < seqs.size(); ++b) {
    int64_t n = seqs[b].size(), off = left ? T - n : 0;
    for (int64_t i = 0; i < n; ++i) {
      ids[b][off + i] = seqs[b][i];
      mask[b][off + i] = 1;
    }
  }
  return {ids, mask};
}

std::vector<int64_t> random_seq(int64_t n, int64_t vocab, int64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  at::Tensor t = at::randint(1, vocab, {n}, g, at::kLong);
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
}
}  // namespace

// ---------------------------------------------------------------- config
TEST_CASE("config parses HF keys and rejects bad ones", "[model]") {
  ModelConfig c = parse_config(tiny_json());
  CHECK(c.num_experts == 6);
  CHECK(c.moe_layer_ids() == std::vector<int>{0, 2});
  CHECK(c.head_dim == 8);

  json j = tiny_json();
  j.erase("vocab_size");
  CHECK_THROWS_WITH(parse_config(j, "cfg.json"), Catch::Contains("cfg.json") && Catch::Contains("missing key 'vocab_size'"));
  j = tiny_json();
  j["hidden_size"] = "32";
  CHECK_THROWS_WITH(parse_config(j), Catch::Contains("'hidden_size' must be an integer"));
  j = tiny_json();
  j["model_type"] = "llama";
  CHECK_THROWS_WITH(parse_config(j), Catch::Contains("not supported"));
  j = tiny_json();
  j["num_key_value_heads"] = 3;
  CHECK_THROWS_WITH(parse_config(j), Catch::Contains("num_key_value_heads"));
  j = tiny_json();
  j["num_experts_per_tok"] = 7;
  CHECK_THROWS_WITH(parse_config(j), Catch::Contains("exceeds num_experts"));
  j = tiny_json();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4}};
  CHECK_THROWS_WITH(parse_config(j), Catch::Contains("rope_scaling"));
  j = tiny_json();
  j["mlp_only_layers"] = {5};
  CHECK_THROWS_WITH(parse_config(j), Catch::Contains("mlp_only_layers"));
  j = tiny_json();
  j.erase("num_experts");
  CHECK_THROWS_WITH(parse_config(j), Catch::Contains("num_experts"));

  // transformers 5 spellings
  j = tiny_json();
  j.erase("num_experts");
  j.erase("rope_theta");
  j["num_local_experts"] = 6;
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 5000.0}};
  ModelConfig c5 = parse_config(j);
  CHECK(c5.num_experts == 6);
  CHECK(c5.rope_theta == 5000.0);
  // decoder_sparse_step 2: layers 1, 3 are MoE
  j = tiny_json();
  j["num_hidden_layers"] = 4;
  j["mlp_only_layers"] = json::array();
  j["decoder_sparse_step"] = 2;
  CHECK(parse_config(j).moe_layer_ids() == std::vector<int>{1, 3});
  // round trip through config_to_json
  ModelConfig back = parse_config(config_to_json(c));
  CHECK(config_digest(back) == config_digest(c));
}

TEST_CASE("config digest is stable and tracks the architecture", "[model]") {
  ModelConfig a = parse_config(tiny_json());
  json j = tiny_json();
  j["pad_token_id"] = 3;
  j["initializer_range"] = 0.5;
  CHECK(config_digest(parse_config(j)) == config_digest(a));
  CHECK(config_digest(a).rfind("xxh64:", 0) == 0);
  CHECK(config_digest(a).size() == 6 + 16);
  j = tiny_json();
  j["num_experts_per_tok"] = 3;
  CHECK(config_digest(parse_config(j)) != config_digest(a));
  j = tiny_json();
  j["norm_topk_prob"] = false;
  CHECK(config_digest(parse_config(j)) != config_digest(a));
  CHECK(preset_config("tiny", 98).num_experts == 8);
  CHECK_THROWS_AS(preset_config("huge", 98), moe::UsageError);
}

TEST_CASE("the routing-regime presets: top1 and fine share tiny's attention and active FFN width", "[model]") {
  const ModelConfig tiny = preset_config("tiny", 98), top1 = preset_config("top1", 98), fine = preset_config("fine", 98);
  CHECK(top1.num_experts == 8);
  CHECK(top1.num_experts_per_tok == 1);
  CHECK_FALSE(top1.norm_topk_prob);  // renormalising one weight would make it 1 and starve the router of gradient
  CHECK(fine.num_experts == 32);
  CHECK(fine.num_experts_per_tok == 4);
  CHECK(fine.norm_topk_prob);
  for (const ModelConfig* c : {&top1, &fine}) {
    CHECK(c->hidden_size == tiny.hidden_size);
    CHECK(c->num_hidden_layers == tiny.num_hidden_layers);
    CHECK(c->num_attention_heads == tiny.num_attention_heads);
    CHECK(c->num_key_value_heads == tiny.num_key_value_heads);
    CHECK(c->vocab_size == 98);
    // active FFN units per token equal tiny's (2 x 96); total expert units equal between top1 and fine
    CHECK(c->num_experts_per_tok * c->moe_intermediate_size == tiny.num_experts_per_tok * tiny.moe_intermediate_size);
    CHECK(c->num_experts * c->moe_intermediate_size == 1536);
  }
  CHECK(config_digest(top1) != config_digest(fine));
}

// ---------------------------------------------------------------- safetensors
TEST_CASE("safetensors round trip in f32 and bf16", "[model]") {
  std::string dir = scratch_dir();
  at::Tensor a = at::randn({3, 5}), b = at::randn({7}).to(at::kBFloat16), c = at::arange(6, at::kLong).view({2, 3});
  at::Tensor nc = at::randn({4, 6}).t();  // non-contiguous
  at::Tensor hf = at::randn({2, 2}).to(at::kHalf);
  write_safetensors(dir + "/x.safetensors", {{"b", b}, {"a", a}, {"c", c}, {"nc", nc}, {"h", hf}});
  SafetensorsFile f(dir + "/x.safetensors");
  CHECK(f.names() == std::vector<std::string>{"a", "b", "c", "h", "nc"});
  CHECK(f.entry("h").dtype == "F16");
  CHECK(at::equal(f.get("h", at::kFloat), hf.to(at::kFloat)));
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.entry("b").dtype == "BF16");
  CHECK(at::equal(f.get("a"), a));
  CHECK(at::equal(f.get("b"), b));
  CHECK(at::equal(f.get("c"), c));
  CHECK(at::equal(f.get("nc"), nc));
  CHECK(at::equal(f.get("b", at::kFloat), b.to(at::kFloat)));      // bf16 -> f32 exact
  CHECK(at::equal(f.get("a", at::kBFloat16), a.to(at::kBFloat16)));
  CHECK_THROWS_WITH(f.get("zz"), Catch::Contains("no tensor 'zz'"));
  // header length is a multiple of 8
  std::string bytes = moe::io::read_file(dir + "/x.safetensors");
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  CHECK(n % 8 == 0);
  CHECK_THROWS_WITH(write_safetensors(dir + "/y.safetensors", {{"a", a}, {"a", a}}), Catch::Contains("duplicate"));
}

TEST_CASE("safetensors rejects broken files", "[model]") {
  std::string dir = scratch_dir();
  write_safetensors(dir + "/ok.safetensors", {{"w", at::randn({16, 16})}});
  std::string good = moe::io::read_file(dir + "/ok.safetensors");
  auto try_bytes = [&](const std::string& bytes) {
    moe::io::write_file_atomic(dir + "/bad.safetensors", bytes);
    SafetensorsFile f(dir + "/bad.safetensors");
  };
  CHECK_THROWS_WITH(try_bytes(good.substr(0, good.size() - 4)), Catch::Contains("truncated") && Catch::Contains("'w'"));
  CHECK_THROWS_WITH(try_bytes(good.substr(0, 5)), Catch::Contains("truncated"));
  std::string big = good;
  big[0] = '\xff';
  big[1] = '\xff';
  CHECK_THROWS_WITH(try_bytes(big), Catch::Contains("truncated"));
  std::string hdr = "{\"w\": {\"dtype\": \"F32\", \"shape\": [2,2], \"data_offsets\": [0, 8]}}";
  std::string len(8, '\0');
  len[0] = static_cast<char>(hdr.size());
  CHECK_THROWS_WITH(try_bytes(len + hdr + std::string(8, '\0')), Catch::Contains("needs 16"));
  std::string junk = "{not json";
  std::string len2(8, '\0');
  len2[0] = static_cast<char>(junk.size());
  CHECK_THROWS_WITH(try_bytes(len2 + junk), Catch::Contains("bad header JSON"));
  std::string hdr3 = "{\"w\": {\"dtype\": \"Q4\", \"shape\": [1], \"data_offsets\": [0, 1]}}";
  std::string len3(8, '\0');
  len3[0] = static_cast<char>(hdr3.size());
  CHECK_THROWS_WITH(try_bytes(len3 + hdr3 + "x"), Catch::Contains("unknown dtype"));
  CHECK_THROWS_AS(SafetensorsFile(dir + "/missing.safetensors"), moe::Error);
  // Cut short after it was opened (another process rewriting it): an error naming the file, not SIGBUS.
  write_safetensors(dir + "/cut.safetensors", {{"w", at::randn({64, 64})}});
  SafetensorsFile cut(dir + "/cut.safetensors");
  REQUIRE(::truncate((dir + "/cut.safetensors").c_str(), 4096) == 0);
  CHECK_THROWS_WITH(cut.get("w"), Catch::Contains("cut.safetensors") && Catch::Contains("truncated since it was opened"));
}

// ---------------------------------------------------------------- weights
TEST_CASE("fused transformers-5 experts load like per-expert names, and shape errors name both shapes", "[model]") {
  Qwen3Moe m = tiny_model(3);
  const ModelConfig& c = m->config();
  std::string dir = scratch_dir();
  moe::io::write_file_atomic(dir + "/config.json", config_to_json(c).dump());
  // fused spelling
  std::vector<std::pair<std::string, at::Tensor>> fused;
  for (auto& [name, t] : named_weights(m))
    if (name.find(".mlp.experts.") == std::string::npos) fused.emplace_back(name, t.to(at::kBFloat16).to(at::kFloat));
  for (int l : c.moe_layer_ids()) {
    auto& moe = m->layers[l]->moe;
    std::vector<at::Tensor> gu, dn;
    for (auto& e : moe->experts) {
      gu.push_back(at::cat({e->gate_proj->weight, e->up_proj->weight}, 0));
      dn.push_back(e->down_proj->weight);
    }
    std::string base = "model.layers." + std::to_string(l) + ".mlp.experts.";
    fused.emplace_back(base + "gate_up_proj", at::stack(gu).to(at::kBFloat16));
    fused.emplace_back(base + "down_proj", at::stack(dn).to(at::kBFloat16));
  }
  write_safetensors(dir + "/model.safetensors", fused);
  Qwen3Moe a = load_model(dir, at::kCPU);
  // per-expert spelling, same bf16 values, sharded in two files
  std::vector<std::pair<std::string, at::Tensor>> s1, s2;
  json wm;
  int i = 0;
  for (auto& [name, t] : named_weights(m)) {
    auto& shard = (i++ % 2) ? s1 : s2;
    shard.emplace_back(name, t.to(at::kBFloat16));
    wm[name] = (&shard == &s1) ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  std::string dir2 = scratch_dir();
  moe::io::write_file_atomic(dir2 + "/config.json", config_to_json(c).dump());
  write_safetensors(dir2 + "/model-00001-of-00002.safetensors", s1);
  write_safetensors(dir2 + "/model-00002-of-00002.safetensors", s2);
  moe::io::write_file_atomic(dir2 + "/model.safetensors.index.json", json{{"metadata", json::object()}, {"weight_map", wm}}.dump());
  Qwen3Moe b = load_model(dir2, at::kCPU);
  auto wa = named_weights(a), wb = named_weights(b);
  REQUIRE(wa.size() == wb.size());
  for (size_t k = 0; k < wa.size(); ++k) {
    INFO(wa[k].first);
    CHECK(at::equal(wa[k].second, wb[k].second));
  }
  CHECK(max_diff(wa[5].second, named_weights(m)[5].second) < 0.01);  // bf16 rounding only

  // shape mismatch: config says 6 experts, fused tensor has 5
  auto wrong = fused;
  for (auto& [name, t] : wrong)
    if (name == "model.layers.0.mlp.experts.gate_up_proj") t = t.slice(0, 0, 5);
  write_safetensors(dir + "/model.safetensors", wrong);
  CHECK_THROWS_WITH(load_model(dir, at::kCPU), Catch::Contains("model.layers.0.mlp.experts.gate_up_proj") &&
                                                   Catch::Contains("[5, 32, 32]") && Catch::Contains("[6, 32, 32]"));
  // missing tensor
  fused.erase(std::remove_if(fused.begin(), fused.end(), [](auto& p) { return p.first == "model.norm.weight"; }), fused.end());
  write_safetensors(dir + "/model.safetensors", fused);
  CHECK_THROWS_WITH(load_model(dir, at::kCPU), Catch::Contains("missing tensor 'model.norm.weight'"));
}

TEST_CASE("init is deterministic, and save_model and load_model round trip", "[model]") {
  Qwen3Moe a = tiny_model(7), b = tiny_model(7), c = tiny_model(8);
  auto wa = named_weights(a), wb = named_weights(b), wc = named_weights(c);
  for (size_t i = 0; i < wa.size(); ++i) CHECK(at::equal(wa[i].second, wb[i].second));
  CHECK_FALSE(at::equal(wa[0].second, wc[0].second));
  CHECK(wa[0].first == "model.embed_tokens.weight");
  CHECK(at::equal(wa[0].second[0], at::zeros({32})));  // pad row
  std::string dir = scratch_dir() + "/ckpt";
  save_model(a, dir, {{"tokenizer.json", "{\"type\": \"char\"}"}});
  save_model(a, dir);  // replace an existing dir: tokenizer.json carried over
  CHECK(moe::io::read_file(dir + "/tokenizer.json") == "{\"type\": \"char\"}");
  Qwen3Moe r = load_model(dir, at::kCPU);
  auto wr = named_weights(r);
  for (size_t i = 0; i < wa.size(); ++i) CHECK(at::equal(wa[i].second, wr[i].second));
  CHECK(moe::io::read_file(dir + "/model.safetensors") == moe::io::read_file(dir + "/model.safetensors"));
}

// ---------------------------------------------------------------- routing plans
TEST_CASE("replay gating follows algorithms.md worked example 7", "[model]") {
  json j = tiny_json();
  j["hidden_size"] = 4;
  j["num_experts"] = 4;
  ModelConfig c = parse_config(j);
  SparseMoe moe(c);
  at::NoGradGuard ng;
  for (auto& p : moe->parameters()) p.normal_(0, 0.5);
  moe->gate->weight.zero_();
  moe->gate->weight.select(1, 0).copy_(at::tensor({2.0, 1.0, 0.5, -1.0}));
  at::Tensor x = at::tensor({1.0f, 0.3f, -0.2f, 0.1f}).view({1, 4});  // router logits [2, 1, 0.5, -1]
  at::Tensor idx = at::tensor({1, 2}, at::kLong).view({1, 2});
  MoeLayerOutput r = moe->forward(x, RouterMode::replay, idx, {}, {}, idx, true, true);
  CHECK(at::equal(r.indices, idx));
  CHECK(r.probs[0][0].item<double>() == Approx(0.22420782).margin(1e-6));
  CHECK(r.probs[0][1].item<double>() == Approx(0.13598892).margin(1e-6));
  CHECK(at::allclose(r.probs_at, r.probs));
  at::Tensor want = 0.62245933 * moe->experts[1]->forward(x) + 0.37754067 * moe->experts[2]->forward(x);
  CHECK(max_diff(r.hidden, want) < 1e-6);
  // native would pick {0, 1}
  MoeLayerOutput n = moe->forward(x, RouterMode::native, {}, {}, {}, {}, false, true);
  CHECK(at::equal(std::get<0>(n.indices.sort(-1)), at::tensor({0, 1}, at::kLong).view({1, 2})));
}

TEST_CASE("replay gating gradient matches finite differences", "[model]") {
  json j = tiny_json();
  j["hidden_size"] = 4;
  j["num_experts"] = 4;
  SparseMoe moe(parse_config(j));
  moe->to(at::kDouble);
  {
    at::NoGradGuard ng;
    for (auto& p : moe->parameters()) p.normal_(0, 0.7);
  }
  at::Tensor x = at::randn({3, 4}, at::kDouble);
  at::Tensor idx = at::tensor({3, 1, 0, 2, 2, 3}, at::kLong).view({3, 2});
  auto loss = [&] { return moe->forward(x, RouterMode::replay, idx, {}, {}, idx, false, false).hidden.pow(2).sum(); };
  moe->zero_grad();
  loss().backward();
  at::Tensor g = moe->gate->weight.grad().clone();
  REQUIRE(g.abs().max().item<double>() > 0);
  at::NoGradGuard ng;
  const double h = 1e-6;
  for (int e = 0; e < 4; ++e)
    for (int k = 0; k < 4; k += 3) {
      double w0 = moe->gate->weight[e][k].item<double>();
      moe->gate->weight[e][k].fill_(w0 + h);
      double up = loss().item<double>();
      moe->gate->weight[e][k].fill_(w0 - h);
      double dn = loss().item<double>();
      moe->gate->weight[e][k].fill_(w0);
      CHECK(g[e][k].item<double>() == Approx((up - dn) / (2 * h)).margin(1e-6));
    }
}

TEST_CASE("replay uses exactly the given indices and gradients reach the router", "[model]") {
  Qwen3Moe m = tiny_model(2);
  auto [ids, mask] = padded_batch({random_seq(6, 50, 1), random_seq(4, 50, 2)}, true);
  ForwardOptions opt;
  opt.capture_routing = true;
  opt.return_router_logits = true;
  ForwardOutput nat = m->forward(ids, mask, RoutingPlan::native(), opt);
  REQUIRE(nat.routing_indices.sizes() == at::IntArrayRef({2, 6, 2, 2}));
  // native selection = top-k of the router logits
  at::Tensor top = std::get<1>(at::softmax(nat.router_logits, -1).topk(2, -1));
  CHECK(at::equal(top, nat.routing_indices));
  // replay a non-native choice: the two least likely experts
  at::Tensor worst = std::get<1>(nat.router_logits.topk(2, -1, /*largest=*/false));
  opt.probs_at = worst;
  ForwardOutput rep = m->forward(ids, mask, RoutingPlan::replay(worst), opt);
  at::Tensor valid = mask.view({2, 6, 1, 1}).expand({2, 6, 2, 2}).to(at::kBool);
  CHECK(at::equal(rep.routing_indices.masked_select(valid), worst.masked_select(valid)));
  CHECK(max_diff(rep.routing_probs, rep.probs_at) < 1e-7);
  CHECK(max_diff(rep.logits, nat.logits) > 1e-3);  // different experts, different output
  // replaying the native choice reproduces the native forward
  ForwardOutput same = m->forward(ids, mask, RoutingPlan::replay(nat.routing_indices));
  CHECK(max_diff(same.logits, nat.logits) < 1e-6);
  // gradients reach the router under replay
  m->zero_grad();
  m->forward(ids, mask, RoutingPlan::replay(worst)).logits.pow(2).mean().backward();
  for (auto& w : m->router_parameters()) {
    REQUIRE(w.grad().defined());
    CHECK(w.grad().abs().max().item<double>() > 0);
  }
}

TEST_CASE("copy-old-logits and frozen give no router gradient", "[model]") {
  Qwen3Moe m = tiny_model(4);
  auto [ids, mask] = padded_batch({random_seq(5, 50, 3), random_seq(3, 50, 4)}, false);
  ForwardOptions opt;
  opt.capture_routing = true;
  opt.return_router_logits = true;
  ForwardOutput nat = m->forward(ids, mask, RoutingPlan::native(), opt);
  at::Tensor old_logits = nat.router_logits.detach();
  ForwardOutput cp = m->forward(ids, mask, RoutingPlan::use_logits(old_logits), {true, false, {}, false});
  CHECK(at::equal(cp.routing_indices, nat.routing_indices));
  CHECK(max_diff(cp.logits, nat.logits) < 1e-6);
  // logits from elsewhere decide the experts
  at::Tensor flipped = -old_logits;
  ForwardOutput fl = m->forward(ids, mask, RoutingPlan::use_logits(flipped), {true, false, {}, false});
  CHECK(at::equal(fl.routing_indices, std::get<1>(flipped.topk(2, -1))));

  auto router_grad_max = [&](const RoutingPlan& plan) {
    m->zero_grad();
    m->forward(ids, mask, plan).logits.pow(2).mean().backward();
    double g = 0;
    for (auto& w : m->router_parameters())
      if (w.grad().defined()) g = std::max(g, w.grad().abs().max().item<double>());
    return g;
  };
  CHECK(router_grad_max(RoutingPlan::use_logits(flipped)) == 0);
  CHECK(router_grad_max(RoutingPlan::frozen()) == 0);
  CHECK(router_grad_max(RoutingPlan::native()) > 0);
  // frozen still trains the rest
  m->zero_grad();
  m->forward(ids, mask, RoutingPlan::frozen()).logits.pow(2).mean().backward();
  CHECK(m->layers[0]->self_attn->q_proj->weight.grad().abs().max().item<double>() > 0);
}

TEST_CASE("bad replay indices are clear errors", "[model]") {
  Qwen3Moe m = tiny_model(5);
  at::Tensor ids = at::tensor({3, 4, 5}, at::kLong).view({1, 3});
  at::Tensor idx = at::zeros({1, 3, 2, 2}, at::kLong);
  idx.select(3, 1).fill_(1);
  CHECK_NOTHROW(m->forward(ids, {}, RoutingPlan::replay(idx)));
  at::Tensor dup = idx.clone();
  dup[0][1][1][1] = 0;
  CHECK_THROWS_WITH(m->forward(ids, {}, RoutingPlan::replay(dup)), Catch::Contains("repeat") && Catch::Contains("position 1") &&
                                                                        Catch::Contains("model layer 2"));
  at::Tensor oor = idx.clone();
  oor[0][2][0][0] = 6;
  CHECK_THROWS_WITH(m->forward(ids, {}, RoutingPlan::replay(oor)), Catch::Contains("out of range") && Catch::Contains("position 2"));
  CHECK_THROWS_WITH(m->forward(ids, {}, RoutingPlan::replay(at::zeros({1, 3, 2}, at::kLong))), Catch::Contains("shape"));
  // pad positions are not checked (they route natively)
  at::Tensor mask = at::tensor({0, 1, 1}, at::kLong).view({1, 3});
  at::Tensor pad_bad = idx.clone();
  pad_bad[0][0].fill_(9);
  CHECK_NOTHROW(m->forward(ids, mask, RoutingPlan::replay(pad_bad)));
  CHECK_THROWS_AS(m->forward(ids, {}, RoutingPlan::replay(pad_bad)), moe::Error);
  CHECK_THROWS_WITH(m->forward(at::tensor({50}, at::kLong).view({1, 1})), Catch::Contains("outside the vocabulary"));
}

// ---------------------------------------------------------------- padding and KV cache
TEST_CASE("left- and right-padded batches match each sequence alone", "[model]") {
  Qwen3Moe m = tiny_model(6);
  std::vector<std::vector<int64_t>> seqs{random_seq(7, 50, 10), random_seq(3, 50, 11), random_seq(5, 50, 12)};
  ForwardOptions opt;
  opt.capture_routing = true;
  for (bool left : {true, false}) {
    auto [ids, mask] = padded_batch(seqs, left);
    ForwardOutput batch = m->forward(ids, mask, RoutingPlan::native(), opt);
    for (size_t b = 0; b < seqs.size(); ++b) {
      int64_t n = seqs[b].size(), off = left ? 7 - n : 0;
      ForwardOutput alone = m->forward(at::tensor(seqs[b], at::kLong).view({1, n}), {}, RoutingPlan::native(), opt);
      INFO("left " << left << " row " << b);
      CHECK(max_diff(batch.logits[b].slice(0, off, off + n), alone.logits[0]) < 1e-5);
      CHECK(at::equal(batch.routing_indices[b].slice(0, off, off + n), alone.routing_indices[0]));
    }
  }
}

TEST_CASE("KV-cached incremental decode equals the full forward", "[model]") {
  Qwen3Moe m = tiny_model(9);
  // prompts of different lengths, left-padded; then 4 decode steps for every row
  std::vector<std::vector<int64_t>> prompts{random_seq(6, 50, 20), random_seq(2, 50, 21), random_seq(4, 50, 22)};
  auto [pids, pmask] = padded_batch(prompts, true);
  at::Tensor cont = at::randint(1, 50, {3, 4}, at::kLong);
  at::Tensor ids = at::cat({pids, cont}, 1), mask = at::cat({pmask, at::ones({3, 4}, at::kLong)}, 1);
  ForwardOptions opt;
  opt.capture_routing = true;
  ForwardOutput full = m->forward(ids, mask, RoutingPlan::native(), opt);

  KVCache cache;
  at::NoGradGuard ng;
  ForwardOutput pre = m->forward(pids, pmask, RoutingPlan::native(), opt, &cache);
  std::vector<at::Tensor> logits{pre.logits}, routes{pre.routing_indices};
  for (int s = 0; s < 4; ++s) {
    ForwardOutput st = m->forward(cont.slice(1, s, s + 1), at::ones({3, 1}, at::kLong), RoutingPlan::native(), opt, &cache);
    logits.push_back(st.logits);
    routes.push_back(st.routing_indices);
  }
  CHECK(cache.length() == 10);
  at::Tensor inc = at::cat(logits, 1), inc_routes = at::cat(routes, 1);
  at::Tensor valid = mask.to(at::kBool);
  double d = (inc - full.logits).abs().amax(-1).masked_select(valid).max().item<double>();
  INFO("max abs diff " << d);
  CHECK(d <= 1e-5);
  CHECK(at::equal(inc_routes.masked_select(valid.view({3, 10, 1, 1})), full.routing_indices.masked_select(valid.view({3, 10, 1, 1}))));
  // a pad step (mask 0) for a finished row leaves the others unchanged
  KVCache c2;
  m->forward(pids, pmask, RoutingPlan::native(), {}, &c2);
  at::Tensor step_mask = at::tensor({1, 0, 1}, at::kLong).view({3, 1});
  ForwardOutput a = m->forward(cont.slice(1, 0, 1), step_mask, RoutingPlan::native(), {}, &c2);
  CHECK(max_diff(a.logits[0], inc[0].slice(0, 6, 7)) < 1e-5);
  CHECK(max_diff(a.logits[2], inc[2].slice(0, 6, 7)) < 1e-5);
  c2.select_rows(at::tensor({2}, at::kLong));
  ForwardOutput b = m->forward(cont.slice(1, 1, 2).slice(0, 2, 3), {}, RoutingPlan::native(), {}, &c2);
  CHECK(max_diff(b.logits[0], inc[2].slice(0, 7, 8)) < 1e-5);
}

TEST_CASE("the KV cache is preallocated and written in place", "[model]") {
  Qwen3Moe m = tiny_model(9);
  auto [pids, pmask] = padded_batch({random_seq(5, 50, 40), random_seq(3, 50, 41)}, true);
  at::Tensor cont = at::randint(1, 50, {2, 6}, at::kLong);
  ForwardOptions opt;
  opt.capture_routing = true;
  at::NoGradGuard ng;
  ForwardOutput full = m->forward(at::cat({pids, cont}, 1), at::cat({pmask, at::ones({2, 6}, at::kLong)}, 1), RoutingPlan::native(), opt);
  // reserve: one allocation for the whole run, the same storage every step
  KVCache c;
  c.reserve = 11;
  m->forward(pids, pmask, RoutingPlan::native(), opt, &c);
  CHECK(c.capacity() == 11);
  const void* k0 = c.k[0].data_ptr();
  const void* v2 = c.v[2].data_ptr();
  std::vector<at::Tensor> inc;
  for (int s = 0; s < 6; ++s) inc.push_back(m->forward(cont.slice(1, s, s + 1), {}, RoutingPlan::native(), opt, &c).logits);
  CHECK(c.length() == 11);
  CHECK(c.k[0].data_ptr() == k0);
  CHECK(c.v[2].data_ptr() == v2);
  CHECK(max_diff(at::cat(inc, 1), full.logits.slice(1, 5)) < 1e-5);
  // no reserve: the capacity doubles when full, results unchanged
  KVCache g;
  m->forward(pids, pmask, RoutingPlan::native(), opt, &g);
  CHECK(g.capacity() == 5);
  std::vector<at::Tensor> inc2;
  std::vector<int64_t> caps;
  for (int s = 0; s < 6; ++s) {
    inc2.push_back(m->forward(cont.slice(1, s, s + 1), {}, RoutingPlan::native(), opt, &g).logits);
    caps.push_back(g.capacity());
  }
  CHECK(caps == std::vector<int64_t>{10, 10, 10, 10, 10, 20});
  CHECK(at::equal(at::cat(inc2, 1), at::cat(inc, 1)));
  CHECK(at::equal(g.mask.narrow(1, 0, 11), c.mask));
  CHECK(g.mask.narrow(1, 11, 9).sum().item<int64_t>() == 0);
}

TEST_CASE("KV cache rows dropped in place and repeated by a gather, a cache of 2 MiB or more in one mapping", "[model]") {
  Qwen3Moe m = tiny_model(9);
  auto [pids, pmask] = padded_batch({random_seq(5, 50, 40), random_seq(3, 50, 41), random_seq(4, 50, 42)}, true);
  at::Tensor cont = at::randint(1, 50, {3, 3}, at::kLong);
  at::NoGradGuard ng;
  ForwardOutput full = m->forward(at::cat({pids, cont}, 1), at::cat({pmask, at::ones({3, 3}, at::kLong)}, 1), RoutingPlan::native(), {});
  // reserve 2048: 3 layers x (k, v) x 3 rows x 2 heads x 8 dims x 2048 x 4 bytes = 2.25 MiB, the mapped cache;
  // reserve 8: 9 KiB from at::empty. Both run the same steps.
  auto run = [&](int64_t reserve, bool mapped) {
    KVCache c;
    c.reserve = reserve;
    m->forward(pids, pmask, RoutingPlan::native(), {}, &c);
    if (mapped) CHECK(reinterpret_cast<uintptr_t>(c.k[0].data_ptr()) % (uintptr_t{2} << 20) == 0);
    std::vector<at::Tensor> out{m->forward(cont.slice(1, 0, 1), {}, RoutingPlan::native(), {}, &c).logits};
    const void* k0 = c.k[0].data_ptr();
    const void* v2 = c.v[2].data_ptr();
    c.select_rows(at::tensor({0, 2}, at::kLong));  // row 1 finished: the others move down in place
    CHECK(c.k[0].data_ptr() == k0);
    CHECK(c.v[2].data_ptr() == v2);
    CHECK(c.k[0].size(0) == 2);
    CHECK(c.mask.size(0) == 2);
    out.push_back(m->forward(cont.slice(1, 1, 2).index_select(0, at::tensor({0, 2}, at::kLong)), {}, RoutingPlan::native(), {}, &c).logits);
    c.select_rows(at::tensor({1, 1, 0}, at::kLong));  // repeated rows: a new cache
    CHECK(c.k[0].data_ptr() != k0);
    if (mapped) CHECK(reinterpret_cast<uintptr_t>(c.k[0].data_ptr()) % (uintptr_t{2} << 20) == 0);
    out.push_back(m->forward(cont.slice(1, 2, 3).index_select(0, at::tensor({2, 2, 0}, at::kLong)), {}, RoutingPlan::native(), {}, &c).logits);
    return out;
  };
  std::vector<at::Tensor> big = run(2048, true), small = run(8, false);
  for (size_t i = 0; i < big.size(); ++i) CHECK(at::equal(big[i], small[i]));
  // against the forward without a cache: rows (0, 1, 2) at step 0, (0, 2) at step 1, (2, 2, 0) at step 2
  CHECK(max_diff(big[0].squeeze(1), full.logits.select(1, 5)) < 1e-5);
  CHECK(max_diff(big[1].squeeze(1), full.logits.select(1, 6).index_select(0, at::tensor({0, 2}, at::kLong))) < 1e-5);
  CHECK(max_diff(big[2].squeeze(1), full.logits.select(1, 7).index_select(0, at::tensor({2, 2, 0}, at::kLong))) < 1e-5);
}

TEST_CASE("expert kernels agree: loop with and without gradients, padded, grouped", "[model]") {
  json j = tiny_json();
  j["num_experts"] = 5;
  j["num_experts_per_tok"] = 3;
  SparseMoe moe(parse_config(j));
  at::manual_seed(3);
  {
    at::NoGradGuard ng;
    for (auto& p : moe->parameters()) p.normal_(0, 0.5);
  }
  at::Tensor x = at::randn({9, 32});
  at::Tensor rows = at::tensor({1, 1, 0, 1, 1, 1, 0, 1, 1}, at::kLong).ne(0);
  // with gradients: the per-expert parameters
  MoeLayerOutput ref = moe->forward(x.clone().requires_grad_(true), RouterMode::native, {}, {}, {}, {}, false, true, rows);
  // a plain reference: each row's experts one by one
  at::Tensor want = at::zeros_like(x);
  {
    at::NoGradGuard ng;
    at::Tensor probs = at::softmax(at::linear(x, moe->gate->weight), -1);
    auto top = probs.topk(3, -1);
    at::Tensor w = std::get<0>(top) / std::get<0>(top).sum(-1, true);
    for (int64_t n = 0; n < 9; ++n) {
      if (!rows[n].item<bool>()) continue;
      for (int64_t k = 0; k < 3; ++k)
        want[n] += w[n][k] * moe->experts[std::get<1>(top)[n][k].item<int64_t>()]->forward(x[n].unsqueeze(0))[0];
    }
  }
  CHECK(max_diff(ref.hidden, want) < 1e-5);
  CHECK(ref.hidden[2].abs().max().item<double>() == 0.0);  // padding rows skip the experts
  at::NoGradGuard ng;
  for (ExpertKernel k : {ExpertKernel::loop, ExpertKernel::padded, ExpertKernel::grouped}) {
    moe->kernel = k;
    MoeLayerOutput r = moe->forward(x, RouterMode::native, {}, {}, {}, {}, false, true, rows);
    INFO("kernel " << static_cast<int>(k));
    CHECK(max_diff(r.hidden, ref.hidden) < 1e-5);
    CHECK(at::equal(r.indices, ref.indices));
    if (k == ExpertKernel::loop) CHECK(at::equal(r.hidden, ref.hidden));  // the old pass == the training forward
  }
  // The per-expert parameters now share the fused storage: an in-place update (an optimizer step) and a
  // move to another dtype both reach the no-grad kernels.
  moe->experts[4]->up_proj->weight.mul_(2.0);
  moe->experts[0]->down_proj->weight.add_(0.25);
  at::Tensor grad_path = moe->forward(x.clone().requires_grad_(true), RouterMode::native, {}, {}, {}, {}, false, false).hidden;
  // Relative to the largest output (~34 here, after the updates): float32 sums in another order.
  const double scale = grad_path.abs().max().item<double>();
  for (ExpertKernel k : {ExpertKernel::loop, ExpertKernel::padded}) {
    moe->kernel = k;
    CHECK(max_diff(moe->forward(x, RouterMode::native, {}, {}, {}, {}, false, false).hidden, grad_path) < 1e-6 * scale);
  }
  moe->to(at::kDouble);
  moe->experts[1]->gate_proj->weight.mul_(-1.0);
  at::Tensor xd = x.to(at::kDouble);
  at::Tensor g2 = moe->forward(xd.clone().requires_grad_(true), RouterMode::native, {}, {}, {}, {}, false, false).hidden;
  for (ExpertKernel k : {ExpertKernel::loop, ExpertKernel::padded}) {
    moe->kernel = k;
    at::Tensor h = moe->forward(xd, RouterMode::native, {}, {}, {}, {}, false, false).hidden;
    CHECK(h.scalar_type() == at::kDouble);
    CHECK(max_diff(h, g2) < 1e-12);
  }
}

TEST_CASE("the transposed expert kernel computes as the loop, on copies remade after set_expert_kernel", "[model]") {
  // 64 sequences of 8: every expert gets many more rows than linear_rows' kernel takes.
  Qwen3Moe m = tiny_model(12);
  at::Tensor ids = at::randint(1, 50, {64, 8}, at::kLong);
  at::NoGradGuard ng;
  REQUIRE(m->expert_kernel() == ExpertKernel::loop);
  at::Tensor loop = m->forward(ids).logits;
  m->set_expert_kernel(ExpertKernel::transposed);
  REQUIRE(m->expert_kernel() == ExpertKernel::transposed);
  at::Tensor tr = m->forward(ids).logits;
  const double scale = loop.abs().max().item<double>();
  CHECK(max_diff(tr, loop) < 1e-5 * scale);
  // Weights changed under the kernel: the copies are stale (the products still use them) until the kernel is
  // set again.
  for (int l : m->moe_layer_ids()) m->layers[l]->moe->experts[0]->up_proj->weight.mul_(-1.5);
  CHECK(at::equal(m->forward(ids).logits, tr));
  m->set_expert_kernel(ExpertKernel::loop);
  at::Tensor loop2 = m->forward(ids).logits;
  REQUIRE(max_diff(loop2, loop) > 1e-3 * scale);
  m->set_expert_kernel(ExpertKernel::transposed);
  CHECK(max_diff(m->forward(ids).logits, loop2) < 1e-5 * scale);
  // With gradients the kernel is always the loop (bit for bit).
  m->set_expert_kernel(ExpertKernel::loop);
  at::Tensor want = m->forward(ids).logits;
  m->set_expert_kernel(ExpertKernel::transposed);
  {
    at::AutoGradMode grad(true);
    CHECK(at::equal(m->forward(ids).logits.detach(), want));
  }
}

TEST_CASE("a Linear set packed runs linear_packed on a copy without gradients, linear_rows with them", "[model]") {
  if (moe::model::linear_rows_isa() == "none") {
    WARN("no AVX2/FMA on this CPU: no packed products, nothing to check");
    return;
  }
  at::manual_seed(21);
  moe::model::Linear l(600, 30, true);  // rows of more than 512: linear_rows takes the BLAS (see few_rows.h)
  {
    at::NoGradGuard ng;
    l->weight.normal_();
    l->bias.normal_();
  }
  at::Tensor x = at::randn({2, 7, 600});
  const at::Tensor plain = moe::model::linear_rows(x, l->weight, l->bias);
  l->set_packed(true);
  {
    at::NoGradGuard ng;
    const at::Tensor want = moe::model::linear_packed(x, moe::model::pack_weight(l->weight), l->bias);
    REQUIRE(want.defined());
    CHECK(at::equal(l(x), want));
    CHECK_FALSE(at::equal(want, plain));  // the kernels sum in other orders: the check above can tell them apart
    CHECK(at::equal(l(x.narrow(1, 0, 2)), moe::model::linear_rows(x.narrow(1, 0, 2), l->weight, l->bias)));  // 4 rows
    // The copy is not kept current; setting it again makes a new one.
    l->weight.mul_(2);
    CHECK(at::equal(l(x), want));
    l->set_packed(true);
    CHECK(at::equal(l(x), moe::model::linear_packed(x, moe::model::pack_weight(l->weight), l->bias)));
  }
  // With gradients: linear_rows, and they flow.
  at::Tensor y = l(x);
  CHECK(at::equal(y.detach(), moe::model::linear_rows(x, l->weight, l->bias).detach()));
  y.sum().backward();
  CHECK(l->weight.grad().defined());
  l->set_packed(false);
  at::NoGradGuard ng;
  CHECK(at::equal(l(x), moe::model::linear_rows(x, l->weight, l->bias)));
}

TEST_CASE("bf16 model runs and stays near fp32", "[model]") {
  Qwen3Moe m = tiny_model(11);
  auto [ids, mask] = padded_batch({random_seq(5, 50, 30)}, true);
  at::NoGradGuard ng;
  at::Tensor f = m->forward(ids, mask).logits;
  m->to(at::kBFloat16);
  at::Tensor h = m->forward(ids, mask).logits;
  CHECK(h.scalar_type() == at::kBFloat16);
  CHECK(max_diff(f, h) < 0.25 * f.abs().max().item<double>());
}

// ---------------------------------------------------------------- parity with transformers
TEST_CASE("parity with transformers on the committed fixture", "[model][parity]") {
  for (const char* which : {"untied", "tied"}) {
    std::string dir = std::string(MOEKIT_TEST_FIXTURES) + "/qwen3moe-tiny/" + which;
    INFO(dir);
    Qwen3Moe m = load_model(dir, at::kCPU, at::kFloat);
    CHECK(m->config().tie_word_embeddings == (std::string(which) == "tied"));
    SafetensorsFile ref(dir + "/reference.safetensors");
    at::Tensor ids = ref.get("input_ids"), mask = ref.get("attention_mask");
    ForwardOptions opt;
    opt.capture_routing = true;
    opt.return_router_logits = true;
    at::NoGradGuard ng;
    ForwardOutput out = m->forward(ids, mask, RoutingPlan::native(), opt);
    at::Tensor valid = mask.to(at::kBool);
    double d = (out.logits - ref.get("logits")).abs().amax(-1).masked_select(valid).max().item<double>();
    INFO("logits max abs diff " << d);
    CHECK(d <= 1e-4);
    at::Tensor v4 = valid.view({valid.size(0), valid.size(1), 1, 1});
    at::Tensor ours = std::get<0>(out.routing_indices.sort(-1)), theirs = std::get<0>(ref.get("router_topk").sort(-1));
    CHECK(at::equal(ours.masked_select(v4), theirs.masked_select(v4)));
    double dl = (out.router_logits - ref.get("router_logits")).abs().masked_select(v4).max().item<double>();
    CHECK(dl <= 1e-4);
    at::Tensor aux = load_balancing_loss(out.router_logits, mask, m->config().num_experts_per_tok);
    CHECK(aux.item<double>() == Approx(ref.get("aux_loss").item<double>()).epsilon(1e-5));
  }
}
