// Activation checkpointing (private to lib/model): runs a function without keeping its intermediate tensors
// for the backward pass, and runs it again, with gradients on, when the backward pass reaches it
// (torch.utils.checkpoint's reentrant form). Used per decoder layer (ForwardOptions::checkpoint_layers).
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

namespace moe::model {

using CheckpointFn = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>&)>;

// outputs = fn(inputs), computed without autograd history. With grad mode on, the first `n_differentiable`
// outputs (those defined and floating-point) get one backward node that recomputes fn on detached copies of the inputs and back-propagates through
// the recomputation: gradients flow to `inputs` through that node, and to every parameter fn uses (its
// .grad accumulates during the outer backward). fn must give the same result when run again (no dropout,
// deterministic routing) and must capture by value what it needs: it runs after the caller has returned.
// The other outputs are returned as computed (e.g. detached routing captures).
std::vector<at::Tensor> checkpoint(CheckpointFn fn, const std::vector<at::Tensor>& inputs, size_t n_differentiable);

}  // namespace moe::model
