#include "model/checkpoint.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <memory>
#include <type_traits>
#include <utility>

#include "model/autograd_node.h"

namespace moe::model {

namespace {

struct CheckpointBackward : public torch::autograd::Node {
  CheckpointFn fn;
  std::vector<at::Tensor> inputs;
  std::vector<size_t> differentiable;  // which outputs of fn feed this node's inputs, in order

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    std::vector<at::Tensor> xs;
    for (const auto& x : inputs) xs.push_back(x.defined() ? x.detach().requires_grad_(x.requires_grad()) : x);
    std::vector<at::Tensor> outs;
    {
      at::AutoGradMode on(true);
      outs = fn(xs);
    }
    torch::autograd::variable_list o, g;
    for (size_t j = 0; j < differentiable.size(); ++j) {
      const at::Tensor& out = outs[differentiable[j]];
      if (grads[j].defined() && out.defined() && out.requires_grad()) {
        o.push_back(out);
        g.push_back(grads[j]);
      }
    }
    if (!o.empty()) torch::autograd::backward(o, g);
    torch::autograd::variable_list r;
    for (auto& x : xs) r.push_back(x.defined() && x.requires_grad() ? x.grad() : at::Tensor());
    return r;
  }

  void release_variables() override {
    inputs.clear();
    fn = nullptr;
  }
};

}  // namespace

std::vector<at::Tensor> checkpoint(CheckpointFn fn, const std::vector<at::Tensor>& inputs, size_t n_differentiable) {
  std::vector<at::Tensor> outs;
  {
    at::NoGradGuard ng;
    outs = fn(inputs);
  }
  if (!at::GradMode::is_enabled()) return outs;
  auto node = make_node<CheckpointBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  for (size_t i = 0; i < outs.size() && i < n_differentiable; ++i) {
    at::Tensor& out = outs[i];
    if (!out.defined() || !at::isFloatingType(out.scalar_type())) continue;
    if (out.is_view()) {
      at::NoGradGuard ng;
      out = out.clone();  // a history can only be given to a tensor that owns its data
    }
    torch::autograd::create_gradient_edge(out, node);
    node->differentiable.push_back(i);
  }
  node->fn = std::move(fn);
  node->inputs = inputs;
  return outs;
}

}  // namespace moe::model
