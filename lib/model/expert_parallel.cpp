// Expert parallelism inside a MoE layer: the token exchange (all_to_all_rows, with its backward) and
// SparseMoeImpl::dispatch_ep. See moe/model/expert_parallel.h.
#include "moe/model/expert_parallel.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <memory>
#include <numeric>
#include <type_traits>
#include <utility>

#include "model/autograd_node.h"
#include "moe/io/error.h"
#include "moe/model/few_rows.h"
#include "moe/model/qwen3_moe.h"

namespace moe::model {
namespace {

// Backward of an all-to-all: the gradient rows go back to where their rows came from. Every rank of the
// group runs it at the same point of its backward pass (the layers' exchanges form one chain).
struct AllToAllBackward : public torch::autograd::Node {
  std::shared_ptr<ExpertParallel> ep;
  std::vector<int64_t> send, recv;  // of the forward
  std::vector<int64_t> in_shape;    // rows of the forward's input: [sum(send), ...]
  c10::TensorOptions in_opts;

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    at::Tensor g = grads[0];
    // Peers wait for this exchange whether or not a gradient reached it: send zeros then.
    if (!g.defined()) {
      std::vector<int64_t> shape = in_shape;
      shape[0] = std::accumulate(recv.begin(), recv.end(), int64_t{0});
      g = at::zeros(shape, in_opts);
    }
    return {ep->all_to_all(g.contiguous(), recv, send)};
  }
  void release_variables() override {}
};


}  // namespace

at::Tensor all_to_all_rows(const std::shared_ptr<ExpertParallel>& ep, const at::Tensor& x, const std::vector<int64_t>& send,
                           const std::vector<int64_t>& recv) {
  at::Tensor out;
  {
    at::NoGradGuard ng;
    out = ep->all_to_all(x.detach().contiguous(), send, recv);
  }
  // Under grad mode always a node, whether or not x needs a gradient: every rank of the group must run the
  // backward exchange, and whether x needs one can differ between ranks (e.g. no rows received).
  if (!at::GradMode::is_enabled()) return out;
  auto node = make_node<AllToAllBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(x));
  node->ep = ep;
  node->send = send;
  node->recv = recv;
  node->in_shape = x.sizes().vec();
  node->in_opts = x.options();
  torch::autograd::create_gradient_edge(out, node);
  return out;
}

// slot_expert [N*k]: the expert of each (row, slot), E for padding. Rows go to their experts' owners sorted by
// expert (so by owner), are run there per expert and come back in the same order; the combination is the
// single-process dispatch_loop's (index_add_ in ascending expert order per row).
at::Tensor SparseMoeImpl::dispatch_ep(const at::Tensor& x, const at::Tensor& slot_expert_in, const at::Tensor& gating,
                                      bool transposed) {
  const int64_t E = num_experts, K = top_k, S = ep->size(), El = static_cast<int64_t>(experts.size());
  if (El * S != E) throw Error("expert parallel: " + std::to_string(El) + " experts per rank x " + std::to_string(S) + " ranks != " + std::to_string(E));
  at::Tensor slot_expert = ep->idle ? at::full_like(slot_expert_in, E) : slot_expert_in;
  at::Tensor order = std::get<1>(at::sort(slot_expert, /*stable=*/true, 0, false));
  at::Tensor counts = at::bincount(slot_expert, {}, E + 1);
  const int64_t n_run = slot_expert.size(0) - counts[E].item<int64_t>();
  // Counts first: rank r receives, from every source s, how many rows s sends to each of r's experts.
  at::Tensor cnt_send = counts.narrow(0, 0, E).to(at::kCPU, at::kLong).contiguous();
  std::vector<int64_t> per_rank(S, El);
  at::Tensor cnt_recv = ep->all_to_all(cnt_send.to(x.device()), per_rank, per_rank).to(at::kCPU, at::kLong).contiguous();
  const int64_t* cs = cnt_send.data_ptr<int64_t>();
  const int64_t* cr = cnt_recv.data_ptr<int64_t>();  // [S, El]
  std::vector<int64_t> send(S, 0), recv(S, 0);
  for (int64_t r = 0; r < S; ++r)
    for (int64_t j = 0; j < El; ++j) {
      send[r] += cs[r * El + j];
      recv[r] += cr[r * El + j];
    }
  order = order.narrow(0, 0, n_run);
  at::Tensor token = at::div(order, K, "floor");
  at::Tensor xs = x.index_select(0, token);
  at::Tensor xr = all_to_all_rows(ep, xs, send, recv);  // by source rank, then by expert within it
  // Regroup the received rows by local expert (sources in rank order within an expert).
  const int64_t n_recv = xr.size(0);
  std::vector<int64_t> src_start(S, 0);
  for (int64_t s = 1; s < S; ++s) src_start[s] = src_start[s - 1] + recv[s - 1];
  std::vector<int64_t> perm;
  perm.reserve(n_recv);
  std::vector<std::vector<int64_t>> segments(El);  // rows of each local expert, one segment per source
  {
    std::vector<int64_t> off = src_start;
    std::vector<std::vector<std::pair<int64_t, int64_t>>> ranges(El);  // (start, n) per expert
    for (int64_t s = 0; s < S; ++s)
      for (int64_t j = 0; j < El; ++j) {
        const int64_t n = cr[s * El + j];
        ranges[j].emplace_back(off[s], n);
        off[s] += n;
        if (n > 0) segments[j].push_back(n);
      }
    for (int64_t j = 0; j < El; ++j)
      for (auto [st, n] : ranges[j])
        for (int64_t i = 0; i < n; ++i) perm.push_back(st + i);
  }
  at::Tensor yr;
  if (n_recv > 0) {
    at::Tensor p = at::tensor(perm, at::TensorOptions().dtype(at::kLong)).to(x.device());
    at::Tensor xe = xr.index_select(0, p);
    // ExpertParallel::exact_rows: per source, or one call per expert.
    const bool split = ep->exact_rows;
    std::vector<at::Tensor> parts;
    int64_t off = 0;
    for (int64_t j = 0; j < El; ++j) {
      if (split) {
        for (int64_t n : segments[j]) {
          parts.push_back(run_expert(j, xe.narrow(0, off, n), transposed));
          off += n;
        }
        continue;
      }
      int64_t n = 0;
      for (int64_t m : segments[j]) n += m;
      if (n == 0) continue;
      parts.push_back(run_expert(j, xe.narrow(0, off, n), transposed));
      off += n;
    }
    at::Tensor ye = parts.size() == 1 ? parts[0] : at::cat(parts, 0);
    yr = at::zeros_like(ye).index_copy(0, p, ye);  // back to the received order
  } else {
    // Nothing to run here; an empty tensor with the experts' graph is not needed (no rows to send back).
    yr = at::zeros({0, x.size(1)}, x.options());
    if (xr.requires_grad()) yr = yr + xr.sum() * 0;  // keeps the first exchange's backward in the graph
  }
  at::Tensor ys = all_to_all_rows(ep, yr, recv, send);  // this rank's rows, in xs order
  at::Tensor out = at::zeros_like(x);
  if (n_run == 0) {
    if (ys.requires_grad()) out = out + ys.sum() * 0;  // keeps the backward exchange in every rank's graph
    return out;
  }
  at::Tensor weight = gating.reshape({-1}).index_select(0, order).unsqueeze(1);
  // The combine of dispatch_loop (the same one-pass kernel on the CPU in float32), so that expert parallel
  // equals one process bit for bit.
  if (at::Tensor y = scatter_weighted_rows(x.size(0), token, weight, ys); y.defined()) return y;
  return out.index_add_(0, token, ys * weight);
}

}  // namespace moe::model
