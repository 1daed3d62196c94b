// Data-parallel group over torch's c10d (ProcessGroupGloo on CPU; ProcessGroupNCCL in CUDA builds).
// Private to lib/train. c10d headers stay in dist.cpp.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/TensorOptions.h>

#include <memory>
#include <vector>

#include "moe/train/step.h"

namespace moe::train {

class Communicator {
 public:
  // Rendezvous (TCPStore hosted by rank 0, or FileStore) and process-group creation.
  // Throws moe::Error when the group cannot be formed within the timeout.
  // Collectives run on tensors of `device` (cuda:LOCAL_RANK with NCCL, the CPU with Gloo).
  Communicator(const DistConfig& cfg, const c10::Device& device);
  ~Communicator();
  int rank() const { return rank_; }
  int world_size() const { return world_; }
  const c10::Device& device() const { return device_; }
  // float32 on the communicator's device: for scalars and metrics that take part in collectives.
  at::TensorOptions options() const;
  // In-place sum over ranks (one coalesced collective per call, on the communicator's device; tensors of
  // another device are copied there and back). Throws moe::Error when a peer is gone.
  void all_reduce_sum(std::vector<at::Tensor>& tensors);
  double sum(double v);
  double max(double v);
  void barrier();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0, world_ = 1;
  c10::Device device_;
};

}  // namespace moe::train
