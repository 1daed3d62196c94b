// Data-parallel group over torch's c10d (ProcessGroupGloo on CPU; ProcessGroupNCCL in CUDA builds).
// Private to lib/train. c10d headers stay in dist.cpp.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/TensorOptions.h>

#include <memory>
#include <vector>

#include "moe/model/expert_parallel.h"
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
  // Expert parallel (--expert-parallel n): the world as world / n groups of n consecutive ranks (an expert
  // group: its ranks own all experts between them) and n groups of the ranks at the same position of their
  // expert groups (replicas: they own the same experts). Forms both as c10d groups over the same store.
  // Throws moe::UsageError when n does not divide the world size.
  void split_expert_parallel(int n);
  int ep_size() const { return ep_size_; }
  int ep_rank() const { return rank_ % ep_size_; }
  int replica_count() const { return world_ / ep_size_; }
  enum class Scope { world, expert_group, replicas };
  // The expert group as the model sees it (all-to-all of token rows).
  std::shared_ptr<model::ExpertParallel> expert_parallel();
  // All-to-all of rows over the expert group (see model::ExpertParallel::all_to_all).
  at::Tensor all_to_all(const at::Tensor& x, const std::vector<int64_t>& send, const std::vector<int64_t>& recv);
  void all_reduce_sum(std::vector<at::Tensor>& tensors, Scope scope = Scope::world);
  double sum(double v);
  double max(double v);
  // Elementwise maximum over the ranks, in one collective.
  std::vector<double> max(std::vector<double> v);
  void barrier();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0, world_ = 1, ep_size_ = 1;
  c10::Device device_;
};

}  // namespace moe::train
