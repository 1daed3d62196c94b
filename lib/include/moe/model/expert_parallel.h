// Expert parallelism (moe-train-step --expert-parallel N): the model's view of its expert-parallel group.
// N consecutive ranks form a group; rank r of the group owns experts [r * E / N, (r + 1) * E / N) of every MoE
// layer and materialises only those. A MoE layer routes its tokens locally (the router is replicated), sends
// each routed row to its expert's owner by all-to-all, runs its own experts on what it received, and sends the
// results back (lib/model/expert_parallel.cpp). The transport is the caller's (lib/dist/communicator.cpp: c10d).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace moe::model {

class ExpertParallel {
 public:
  virtual ~ExpertParallel() = default;
  virtual int rank() const = 0;  // position in the expert-parallel group
  virtual int size() const = 0;  // ranks in the group
  // All-to-all over the group: rows [sum(send)] of x, send[r] consecutive rows to rank r; returns
  // [sum(recv), ...] rows, recv[r] of them from rank r, in rank order. Every rank of the group calls it
  // with matching counts (recv of one = send of its peers). No autograd (all_to_all_rows adds it).
  virtual at::Tensor all_to_all(const at::Tensor& x, const std::vector<int64_t>& send, const std::vector<int64_t>& recv) = 0;
  // Set while a forward runs only to take part in the group's collectives (a rank without sequences in a
  // mini-batch): its MoE layers send no rows, but still serve the rows their experts receive.
  bool idle = false;
  // Set (on every rank of the group alike) while forwards produce records, not gradients (the old pass,
  // moe-rollout, --score): an expert then runs on each source rank's rows apart, so that a row's result
  // depends only on its own rank's batch and equals, bit for bit, one process's forwarding that batch (a
  // matmul's rounding can depend on its row count). Unset (training): one call per expert over every
  // source's rows, whose weight gradient is then one sum over all of them, as in one process.
  bool exact_rows = false;
};

// all_to_all with autograd: the backward pass sends the gradients back the reverse way (recv <-> send).
at::Tensor all_to_all_rows(const std::shared_ptr<ExpertParallel>& ep, const at::Tensor& x, const std::vector<int64_t>& send,
                           const std::vector<int64_t>& recv);

}  // namespace moe::model
