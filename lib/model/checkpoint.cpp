#include "model/checkpoint.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <c10/util/intrusive_ptr.h>

#include <memory>
#include <type_traits>
#include <utility>

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

// Autograd nodes are held by std::shared_ptr in libtorch 1.x and by c10::intrusive_ptr in newer versions:
// make one the way this libtorch's edges hold them.
using NodePtr = decltype(std::declval<torch::autograd::Edge>().function);
template <class Ptr>
struct MakeNode;
template <class T>
struct MakeNode<std::shared_ptr<T>> {
  template <class N>
  static std::shared_ptr<N> make() { return std::make_shared<N>(); }
};
template <class T>
struct MakeNode<c10::intrusive_ptr<T>> {
  template <class N>
  static c10::intrusive_ptr<N> make() { return c10::make_intrusive<N>(); }
};

}  // namespace

std::vector<at::Tensor> checkpoint(CheckpointFn fn, const std::vector<at::Tensor>& inputs, size_t n_differentiable) {
  std::vector<at::Tensor> outs;
  {
    at::NoGradGuard ng;
    outs = fn(inputs);
  }
  if (!at::GradMode::is_enabled()) return outs;
  auto node = MakeNode<NodePtr>::make<CheckpointBackward>();
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
