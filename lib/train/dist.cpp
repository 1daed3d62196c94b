// Debian's libtorch is built with Gloo, but its headers only declare ProcessGroupGloo under USE_C10D_GLOO.
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#include "dist.h"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/version.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>

#include "moe/io/error.h"

namespace moe::train {

// Since torch 2.0 ProcessGroupGloo/NCCL derive from c10d::Backend (ProcessGroup became a dispatcher over
// backends); both expose the collectives used here with the same signatures.
#if TORCH_VERSION_MAJOR >= 2
using Group = c10d::Backend;
#else
using Group = c10d::ProcessGroup;
#endif

struct Communicator::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<Group> pg;
};

Communicator::Communicator(const DistConfig& cfg, const c10::Device& device)
    : impl_(std::make_unique<Impl>()), rank_(cfg.rank), world_(cfg.world_size), device_(device) {
  if (cfg.world_size < 1 || cfg.rank < 0 || cfg.rank >= cfg.world_size)
    throw UsageError("data parallel: rank " + std::to_string(cfg.rank) + " outside world size " + std::to_string(cfg.world_size));
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(cfg.timeout_s * 1000));
  try {
    if (!cfg.init_file.empty()) {
      impl_->store = c10::make_intrusive<c10d::FileStore>(cfg.init_file, cfg.world_size);
    } else {
      c10d::TCPStoreOptions o;
      o.port = static_cast<uint16_t>(cfg.master_port);
      o.isServer = cfg.rank == 0;
      o.numWorkers = cfg.world_size;
      o.waitWorkers = true;
      o.timeout = timeout;
      impl_->store = c10::make_intrusive<c10d::TCPStore>(cfg.master_addr, o);
    }
    impl_->store->setTimeout(timeout);
    auto store = c10::make_intrusive<c10d::PrefixStore>("moekit", impl_->store);
    if (cfg.backend == "gloo") {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      const bool local = cfg.master_addr == "127.0.0.1" || cfg.master_addr == "localhost";
      if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"))
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      else if (local || !cfg.init_file.empty())
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      else
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      opts->threads = 1;
      impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, cfg.rank, cfg.world_size, opts);
    } else if (cfg.backend == "nccl") {
#ifdef USE_C10D_NCCL
      if (!device.is_cuda()) throw UsageError("--dist-backend nccl needs --device cuda (NCCL reduces device tensors)");
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      impl_->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, cfg.rank, cfg.world_size, opts);
#else
      throw UsageError("--dist-backend nccl needs a CUDA build of libtorch with NCCL");
#endif
    } else {
      throw UsageError("unknown --dist-backend '" + cfg.backend + "' (expected gloo or nccl)");
    }
  } catch (const UsageError&) {
    throw;
  } catch (const std::exception& e) {
    throw Error("data parallel: rank " + std::to_string(cfg.rank) + " of " + std::to_string(cfg.world_size) +
                ": cannot form the process group (" + (cfg.init_file.empty() ? cfg.master_addr + ":" + std::to_string(cfg.master_port) : cfg.init_file) +
                "): " + e.what());
  }
}

Communicator::~Communicator() = default;

void Communicator::all_reduce_sum(std::vector<at::Tensor>& tensors) {
  if (world_ == 1 || tensors.empty()) return;
  try {
    // One flat buffer: one collective, and the same summation order on every rank.
    std::vector<at::Tensor> flat_parts;
    for (auto& t : tensors) flat_parts.push_back(t.reshape({-1}).to(device_, at::kFloat));
    std::vector<at::Tensor> buf{at::cat(flat_parts)};
    impl_->pg->allreduce(buf)->wait();
    int64_t off = 0;
    for (auto& t : tensors) {
      const int64_t n = t.numel();
      t.copy_(buf[0].narrow(0, off, n).view(t.sizes()));
      off += n;
    }
  } catch (const std::exception& e) {
    throw Error("data parallel: rank " + std::to_string(rank_) + ": all-reduce failed (a peer died?): " + e.what());
  }
}

at::TensorOptions Communicator::options() const { return at::TensorOptions().dtype(at::kFloat).device(device_); }

double Communicator::sum(double v) {
  if (world_ == 1) return v;
  // A device tensor: NCCL rejects CPU tensors. fp64 so that token counts stay exact.
  std::vector<at::Tensor> t{at::full({1}, v, options().dtype(at::kDouble))};
  try {
    impl_->pg->allreduce(t)->wait();
  } catch (const std::exception& e) {
    throw Error("data parallel: rank " + std::to_string(rank_) + ": all-reduce failed (a peer died?): " + e.what());
  }
  return t[0].item<double>();
}

double Communicator::max(double v) {
  if (world_ == 1) return v;
  std::vector<at::Tensor> t{at::full({1}, v, options().dtype(at::kDouble))};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  try {
    impl_->pg->allreduce(t, o)->wait();
  } catch (const std::exception& e) {
    throw Error("data parallel: rank " + std::to_string(rank_) + ": all-reduce failed (a peer died?): " + e.what());
  }
  return t[0].item<double>();
}

void Communicator::barrier() {
  if (world_ == 1) return;
  try {
    impl_->pg->barrier()->wait();
  } catch (const std::exception& e) {
    throw Error("data parallel: rank " + std::to_string(rank_) + ": barrier failed (a peer died?): " + e.what());
  }
}

}  // namespace moe::train
