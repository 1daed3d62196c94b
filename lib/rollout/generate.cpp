#include "moe/rollout/generate.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <memory>

#include "moe/io/error.h"
#include "moe/model/head.h"

namespace moe::rollout {
namespace {

at::TensorOptions long_on(const c10::Device& d) { return at::TensorOptions().dtype(at::kLong).device(d); }

c10::Device device_of(model::Qwen3Moe& m) { return m->embed_weight.device(); }

// Captured routing of one forward, on the CPU and contiguous: [B, T, L, k] expert ids and probabilities.
struct StepRouting {
  at::Tensor idx, prob;
  int64_t T = 0, LK = 0;
  StepRouting(const at::Tensor& indices, const at::Tensor& probs)
      : idx(indices.to(at::kCPU).contiguous()),
        prob(probs.to(at::kCPU, at::kFloat).contiguous()),
        T(idx.size(1)),
        LK(idx.size(2) * idx.size(3)) {}
  explicit StepRouting(const model::ForwardOutput& fw) : StepRouting(fw.routing_indices, fw.routing_probs) {}
  // Appends positions [first, first + n) of batch row `row` to `out` (raw copies: this runs every step).
  void append(SequenceRouting& out, int64_t row, int64_t first, int64_t n) const {
    if (n <= 0) return;
    const int64_t begin = (row * T + first) * LK, m = n * LK;
    const int64_t* ip = idx.data_ptr<int64_t>() + begin;
    const float* pp = prob.data_ptr<float>() + begin;
    out.experts.insert(out.experts.end(), ip, ip + m);  // ids < 65536: checked by the routing writer
    out.probs.insert(out.probs.end(), pp, pp + m);
    out.n_pos += n;
  }
};

// Routing of the decode steps, kept on the device until generation ends: one [B_s, 1, L, k] pair per step
// and the request of each of its rows.
struct DecodeRouting {
  std::vector<at::Tensor> idx, prob;
  std::vector<std::vector<int64_t>> rows;
  void add(const model::ForwardOutput& fw, const std::vector<int64_t>& active) {
    idx.push_back(fw.routing_indices);
    prob.push_back(fw.routing_probs);
    rows.push_back(active);
  }
  void flush(std::vector<Generation>& out) {
    for (size_t s = 0; s < idx.size(); ++s) {
      StepRouting r(idx[s], prob[s]);
      for (size_t b = 0; b < rows[s].size(); ++b) r.append(out[rows[s][b]].routing, static_cast<int64_t>(b), 0, 1);
    }
  }
};

}  // namespace

TransposedExperts::TransposedExperts(model::Qwen3Moe& m) : m_(m), on_(m->expert_kernel() == model::ExpertKernel::loop) {
  if (on_) m_->set_expert_kernel(model::ExpertKernel::transposed);
}

TransposedExperts::~TransposedExperts() {
  if (on_) m_->set_expert_kernel(model::ExpertKernel::loop);
}

std::vector<Generation> generate(model::Qwen3Moe& model, const std::vector<Request>& requests,
                                 const GenerateOptions& opt) {
  if (opt.max_new_tokens < 1) throw Error("max-new-tokens must be >= 1");
  std::vector<Generation> out(requests.size());
  if (requests.empty()) return out;
  torch::NoGradGuard no_grad;
  TransposedExperts transposed(model);  // the others of an expert group: Group::drain in run.cpp
  const c10::Device dev = device_of(model);
  const int64_t vocab = model->config().vocab_size;

  // Unique prompts (consecutive runs of equal prompts share a prefill).
  std::vector<size_t> first_of_run;  // request index starting each run
  std::vector<int64_t> run_of(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    if (requests[i].prompt.empty()) throw Error("empty prompt (request " + std::to_string(i) + ")");
    for (int64_t t : requests[i].prompt)
      if (t < 0 || t >= vocab) throw Error("prompt token " + std::to_string(t) + " outside the vocabulary");
    if (i == 0 || requests[i].prompt != requests[i - 1].prompt) first_of_run.push_back(i);
    run_of[i] = static_cast<int64_t>(first_of_run.size()) - 1;
  }
  const int64_t P = static_cast<int64_t>(first_of_run.size());
  int64_t tmax = 0;
  for (size_t r : first_of_run) tmax = std::max<int64_t>(tmax, requests[r].prompt.size());

  // Left-padded prompt batch.
  std::vector<int64_t> ids(P * tmax, 0), mask(P * tmax, 0);
  for (int64_t p = 0; p < P; ++p) {
    const auto& pr = requests[first_of_run[p]].prompt;
    int64_t off = tmax - static_cast<int64_t>(pr.size());
    for (size_t t = 0; t < pr.size(); ++t) {
      ids[p * tmax + off + t] = pr[t];
      mask[p * tmax + off + t] = 1;
    }
  }
  at::Tensor input = at::tensor(ids, long_on(at::kCPU)).view({P, tmax}).to(dev);
  at::Tensor amask = at::tensor(mask, long_on(at::kCPU)).view({P, tmax}).to(dev);

  model::ForwardOptions fo;
  fo.capture_routing = opt.capture_routing;
  fo.last_logits_only = true;
  model::KVCache cache;
  cache.reserve = tmax + opt.max_new_tokens;  // the whole generation fits: keys and values never move
  if (opt.before_forward) opt.before_forward();
  model::ForwardOutput fw = model->forward(input, amask, model::RoutingPlan::native(), fo, &cache);

  if (opt.capture_routing) {
    StepRouting r(fw);
    for (size_t i = 0; i < requests.size(); ++i) {
      int64_t n = requests[i].prompt.size();
      r.append(out[i].routing, run_of[i], tmax - n, n);
    }
  }

  // Expand prompt rows to request rows.
  at::Tensor rows = at::tensor(run_of, long_on(at::kCPU)).to(dev);
  cache.select_rows(rows);
  at::Tensor logits = fw.logits.select(1, 0).index_select(0, rows);  // [N, V]

  std::vector<int64_t> active(requests.size());  // batch row -> request index
  for (size_t i = 0; i < requests.size(); ++i) active[i] = static_cast<int64_t>(i);

  fo.check_ids = false;  // from here on the ids are sampled ones
  DecodeRouting decode_routing;
  for (int64_t step = 0; !active.empty(); ++step) {
    std::vector<double> u(active.size());
    for (size_t b = 0; b < active.size(); ++b) u[b] = stream_uniform(opt.seed, requests[active[b]].stream, step);
    Sampled s = sample_next(logits, opt.sampling, u, /*check_finite=*/false);
    // The step's one host round trip: tokens, log-probs and the finite flags together.
    at::Tensor host = at::stack({s.tokens.to(at::kDouble), s.logprobs.to(at::kDouble), s.finite.to(at::kDouble)}).to(at::kCPU);
    const double* tp = host.data_ptr<double>();
    const int64_t nb = static_cast<int64_t>(active.size());
    const double* lp = tp + nb;
    const double* fin = tp + 2 * nb;
    for (int64_t b = 0; b < nb; ++b)
      if (fin[b] == 0) throw Error("sampling: logits contain NaN or no finite value");

    std::vector<int64_t> keep_rows, next_active;
    for (size_t b = 0; b < active.size(); ++b) {
      Generation& g = out[active[b]];
      const int64_t tok = static_cast<int64_t>(tp[b]);
      g.tokens.push_back(tok);
      g.logprobs.push_back(static_cast<float>(lp[b]));
      if (is_eos(opt, tok)) {
        g.finish_reason = "eos";
      } else if (opt.stop && opt.stop(g.tokens)) {
        g.finish_reason = "stop";
      } else if (static_cast<int64_t>(g.tokens.size()) >= opt.max_new_tokens) {
        g.finish_reason = "length";
      } else {
        keep_rows.push_back(static_cast<int64_t>(b));
        next_active.push_back(active[b]);
      }
    }
    if (next_active.empty()) break;
    at::Tensor step_in = s.tokens;  // the sampled tokens stay on the device
    if (keep_rows.size() != active.size()) {
      at::Tensor keep = at::tensor(keep_rows, long_on(at::kCPU)).to(dev);
      cache.select_rows(keep);
      step_in = step_in.index_select(0, keep);
    }
    active.swap(next_active);

    const int64_t B = static_cast<int64_t>(active.size());
    step_in = step_in.view({B, 1});
    if (opt.before_forward) opt.before_forward();
    fw = model->forward(step_in, {}, model::RoutingPlan::native(), fo, &cache);
    logits = fw.logits.select(1, 0);
    if (opt.capture_routing) decode_routing.add(fw, active);
  }
  if (opt.capture_routing) decode_routing.flush(out);
  return out;
}

std::vector<Scored> score(model::Qwen3Moe& model, const std::vector<ScoreRequest>& requests, double temperature,
                          bool capture_routing, const std::function<void()>& before_forward) {
  std::vector<Scored> out(requests.size());
  if (requests.empty()) return out;
  if (!(temperature > 0)) throw Error("temperature must be > 0");
  torch::NoGradGuard no_grad;
  const c10::Device dev = device_of(model);
  const int64_t vocab = model->config().vocab_size;
  const int64_t B = static_cast<int64_t>(requests.size());
  int64_t tmax = 0;
  for (const auto& r : requests) {
    if (r.prompt.empty()) throw Error("empty prompt");
    tmax = std::max<int64_t>(tmax, r.prompt.size() + r.response.size());
  }
  std::vector<int64_t> ids(B * tmax, 0), mask(B * tmax, 0);
  for (int64_t b = 0; b < B; ++b) {
    int64_t t = 0;
    for (const auto* part : {&requests[b].prompt, &requests[b].response})
      for (int64_t id : *part) {
        if (id < 0 || id >= vocab) throw Error("token " + std::to_string(id) + " outside the vocabulary");
        ids[b * tmax + t] = id;
        mask[b * tmax + t] = 1;
        ++t;
      }
  }
  at::Tensor input = at::tensor(ids, long_on(at::kCPU)).view({B, tmax}).to(dev);
  at::Tensor amask = at::tensor(mask, long_on(at::kCPU)).view({B, tmax}).to(dev);
  model::ForwardOptions fo;
  fo.capture_routing = capture_routing;
  fo.hidden_only = true;
  if (before_forward) before_forward();
  model::ForwardOutput fw = model->forward(input, amask, model::RoutingPlan::native(), fo, nullptr);

  // log-prob of token t+1 from position t, under the tempered policy, over chunks of positions (memory
  // linear in the length, never [B, T, V] float32).
  at::Tensor next = input.narrow(1, 1, tmax - 1);
  at::Tensor tok_lp = model::head_logprobs(fw.hidden.narrow(1, 0, tmax - 1), model->lm_head_weight(), next, temperature, false)
                          .logp.to(at::kCPU)
                          .contiguous();
  std::unique_ptr<StepRouting> routing;
  if (capture_routing) routing = std::make_unique<StepRouting>(fw);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t p = requests[b].prompt.size(), r = requests[b].response.size();
    auto acc = tok_lp[b];
    const float* lp = acc.data_ptr<float>();
    out[b].logprobs.assign(lp + (p - 1), lp + (p - 1) + r);
    if (routing) routing->append(out[b].routing, b, 0, p + r - 1);
  }
  return out;
}

}  // namespace moe::rollout
