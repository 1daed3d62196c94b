// Data-parallel and expert-parallel groups over torch's c10d (ProcessGroupGloo on CPU; ProcessGroupNCCL in
// CUDA builds), shared by moe-train-step and moe-rollout. c10d headers stay in communicator.cpp.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/TensorOptions.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moe/cli/app.h"
#include "moe/model/expert_parallel.h"
#include "moe/model/qwen3_moe.h"

namespace moe::dist {

// The process group: torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK) or flags.
struct DistConfig {
  int rank = 0, world_size = 1;
  int local_rank = 0;        // GPU of this rank on its host (LOCAL_RANK; default: rank): --device cuda means cuda:local_rank
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string init_file;     // FileStore rendezvous instead of TCP when set
  double timeout_s = 120;    // collective and rendezvous timeout
  std::string backend = "gloo";  // gloo | nccl (CUDA builds only)
  int expert_parallel = 1;   // --expert-parallel N: groups of N consecutive ranks own E / N experts each
};
// Fills rank/world/master from the environment for the fields that were not given (< 0 / empty).
// Throws moe::UsageError for a non-integer variable or a rank outside the world.
DistConfig dist_from_env(std::optional<int> rank, std::optional<int> world, const std::string& addr,
                         std::optional<int> port);
// The command line's options (cli::add_dist) completed from the environment.
DistConfig dist_config(const cli::DistOptions& o);

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
  // True when `mine` is true on any rank of the expert group (an all-reduce over it).
  bool any_in_expert_group(bool mine);
  // Every rank's tensor (the same shape and dtype on every rank) on every rank: [world, ...].
  at::Tensor all_gather(const at::Tensor& x);
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

// Every byte string of the world's ranks, in rank order, on rank 0 (empty elsewhere); one collective, so
// every rank calls it. Throws moe::Error when a peer is gone.
std::vector<std::string> gather_bytes(Communicator& comm, const std::string& mine);

// A tool's process group: none for one process (world size 1, when --expert-parallel must be 1). Otherwise
// forms the group, splits it for --expert-parallel (UsageError when N does not divide the world) and sets
// `shard` to the experts this rank materialises. `device`: a bare "cuda" becomes cuda:LOCAL_RANK.
std::unique_ptr<Communicator> open_group(const DistConfig& cfg, c10::Device& device, model::ExpertShard& shard);

}  // namespace moe::dist

namespace moe::train {
using dist::Communicator;
using dist::DistConfig;
using dist::dist_from_env;
}  // namespace moe::train
