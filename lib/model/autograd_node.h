// make_node<N>(): a new autograd node held the way this libtorch's edges hold nodes (std::shared_ptr in
// libtorch 1.x, c10::intrusive_ptr in 2.x), for the hand-written backward passes of lib/model.
#pragma once

#include <torch/csrc/autograd/function.h>

#include <c10/util/intrusive_ptr.h>

#include <memory>
#include <utility>

namespace moe::model {
namespace detail {
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
}  // namespace detail

template <class N>
auto make_node() {
  return detail::MakeNode<detail::NodePtr>::template make<N>();
}

}  // namespace moe::model
