// AdamW steps fused into one pass per tensor, on the state of a torch::optim::AdamW, and the gradients'
// global norm for clipping.
#pragma once
#include <torch/optim/adamw.h>

#include <vector>

namespace moe::train {

// The key of a parameter's state in torch::optim::AdamW::state(): its TensorImpl address, printed
// (libtorch 1.x) or as void* (libtorch 2.x).
using AdamWKey = std::decay_t<decltype(std::declval<torch::optim::AdamW&>().state())>::key_type;
AdamWKey adamw_key(const at::Tensor& p);

// What opt.step() does (decoupled weight decay, moments, bias corrections; amsgrad not supported), with the
// same state, in the same float operations and roundings as ATen's vectorised CPU kernels, but in one pass
// over each parameter: torch's step runs eight tensor operations per parameter (mul_, mul_, add_, mul_,
// addcmul_, sqrt, div, add_, addcdiv_), each a pass over memory and a dispatch. Float32 CPU tensors, dense,
// take the fused pass (AVX2 when the CPU has it; elementwise, so threads do not change a bit); any other
// parameter the tensor operations torch's step runs.
void adamw_step(torch::optim::AdamW& opt);

// The global L2 norm of the gradients gs (clip_grad_norm_'s total), a 0-d float32 tensor on dev; 0 for none.
// CPU float32 dense gradients: sums of squares in double (each square exact) over fixed chunks of 65536
// elements added in order, so the same bits for any thread count; one pass over each tensor, where at::norm
// set up a reduction per tensor (a tiny-preset step's clip + AdamW: 3-4 ms -> 2-3 ms). Any other gradient
// (another device or dtype): at::norm per tensor, then the norm of the norms, as clip_grad_norm_.
at::Tensor grad_global_norm(const std::vector<at::Tensor>& gs, const at::Device& dev);

}  // namespace moe::train
