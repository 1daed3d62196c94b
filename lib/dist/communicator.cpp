// Debian's libtorch is built with Gloo, but its headers only declare ProcessGroupGloo under USE_C10D_GLOO.
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#include "moe/dist/communicator.h"

#include <ATen/ATen.h>
#include <c10/util/Logging.h>
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
#include <functional>

#include "moe/cli/app.h"
#include "moe/io/error.h"
#include "moe/model/config.h"

namespace moe::dist {

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
  c10::intrusive_ptr<Group> ep, replicas;  // expert parallel: the expert group and the replica group (or null)
  // A process group of `size` ranks (this one `rank` among them) over the store under `prefix`.
  std::function<c10::intrusive_ptr<Group>(const std::string& prefix, int rank, int size)> make;
};

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// The message of an error from c10d or Gloo: libtorch's c10::Error carries a C++ backtrace after it, which
// means nothing to a user; keep the message's first line.
std::string reason(const std::exception& e) {
  const auto* ce = dynamic_cast<const c10::Error*>(&e);
  std::string s = ce ? ce->what_without_backtrace() : e.what();
  const auto nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  return s;
}
}  // namespace

DistConfig dist_from_env(std::optional<int> rank, std::optional<int> world, const std::string& addr, std::optional<int> port) {
  DistConfig d;
  auto env_int = [](const char* k, int fallback) {
    const char* v = std::getenv(k);
    if (!v || !*v) return fallback;
    char* end = nullptr;
    long x = std::strtol(v, &end, 10);
    if (*end) throw UsageError(std::string("environment ") + k + "='" + v + "' is not an integer");
    return static_cast<int>(x);
  };
  d.rank = rank ? *rank : env_int("RANK", 0);
  d.world_size = world ? *world : env_int("WORLD_SIZE", 1);
  if (!addr.empty()) d.master_addr = addr;
  else if (const char* a = std::getenv("MASTER_ADDR"); a && *a) d.master_addr = a;
  d.master_port = port ? *port : env_int("MASTER_PORT", 29500);
  d.local_rank = env_int("LOCAL_RANK", d.rank);
  if (d.world_size < 1) throw UsageError("world size must be >= 1");
  if (d.rank < 0 || d.rank >= d.world_size)
    throw UsageError("rank " + std::to_string(d.rank) + " outside [0, " + std::to_string(d.world_size) + ")");
  return d;
}

DistConfig dist_config(const cli::DistOptions& o) {
  DistConfig d = dist_from_env(o.rank, o.world, o.master_addr, o.port);
  d.init_file = o.init_file;
  d.timeout_s = o.timeout_s;
  d.backend = o.backend;
  d.expert_parallel = o.expert_parallel;
  return d;
}

std::unique_ptr<Communicator> open_group(const DistConfig& cfg, c10::Device& device, model::ExpertShard& shard) {
  // Each rank on its own GPU: a bare "cuda" means cuda:LOCAL_RANK (torchrun's variable).
  if (device.is_cuda() && !device.has_index()) device = model::parse_device("cuda:" + std::to_string(cfg.local_rank));
  shard = model::ExpertShard{};
  if (cfg.expert_parallel < 1 || cfg.world_size % cfg.expert_parallel != 0)
    throw UsageError("--expert-parallel " + std::to_string(cfg.expert_parallel) + " does not divide the world size " +
                     std::to_string(cfg.world_size));
  if (cfg.world_size == 1) return nullptr;
  // c10d and Gloo log through glog to stderr (warnings on every failed bind attempt, an "E" line before
  // the exception that says the same): what went wrong reaches the user as this program's one-line error.
  // TORCH_CPP_LOG_LEVEL (INFO, WARNING, ERROR, FATAL) turns them back on, as it does for torch.
  if (!std::getenv("TORCH_CPP_LOG_LEVEL")) setenv("TORCH_CPP_LOG_LEVEL", "FATAL", 0);
  c10::initLogging();
  const double t0 = now();
  auto comm = std::make_unique<Communicator>(cfg, device);
  cli::debug("rank " + std::to_string(cfg.rank) + " of " + std::to_string(cfg.world_size) + ": process group formed in " +
             std::to_string(now() - t0) + " s");
  if (cfg.expert_parallel > 1) {
    comm->split_expert_parallel(cfg.expert_parallel);
    shard.rank = comm->ep_rank();
    shard.size = comm->ep_size();
  }
  return comm;
}

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
    if (cfg.backend != "gloo" && cfg.backend != "nccl")
      throw UsageError("unknown --dist-backend '" + cfg.backend + "' (expected gloo or nccl)");
    impl_->make = [this, cfg, timeout](const std::string& prefix, int rank, int size) -> c10::intrusive_ptr<Group> {
    auto store = c10::make_intrusive<c10d::PrefixStore>(prefix, impl_->store);
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
      return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, opts);
    }
#ifdef USE_C10D_NCCL
    if (!device_.is_cuda()) throw UsageError("--dist-backend nccl needs --device cuda (NCCL reduces device tensors)");
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, opts);
#else
    throw UsageError("--dist-backend nccl needs a CUDA build of libtorch with NCCL");
#endif
    };
    impl_->pg = impl_->make("moekit", cfg.rank, cfg.world_size);
  } catch (const UsageError&) {
    throw;
  } catch (const std::exception& e) {
    throw Error("data parallel: rank " + std::to_string(cfg.rank) + " of " + std::to_string(cfg.world_size) +
                ": cannot form the process group (" + (cfg.init_file.empty() ? cfg.master_addr + ":" + std::to_string(cfg.master_port) : cfg.init_file) +
                "): " + reason(e));
  }
}

Communicator::~Communicator() = default;

void Communicator::split_expert_parallel(int n) {
  if (n < 1 || world_ % n != 0)
    throw UsageError("--expert-parallel " + std::to_string(n) + " does not divide the world size " + std::to_string(world_));
  ep_size_ = n;
  if (n == 1) return;
  const int group = rank_ / n, pos = rank_ % n;
  try {
    impl_->ep = impl_->make("moekit-ep" + std::to_string(group), pos, n);
    if (world_ / n > 1) impl_->replicas = impl_->make("moekit-rep" + std::to_string(pos), group, world_ / n);
  } catch (const std::exception& e) {
    throw Error("expert parallel: rank " + std::to_string(rank_) + ": cannot form the expert groups: " + reason(e));
  }
}

namespace {
class GroupExchange : public model::ExpertParallel {
 public:
  GroupExchange(Communicator* c) : c_(c) {}
  int rank() const override { return c_->ep_rank(); }
  int size() const override { return c_->ep_size(); }
  at::Tensor all_to_all(const at::Tensor& x, const std::vector<int64_t>& send, const std::vector<int64_t>& recv) override {
    return c_->all_to_all(x, send, recv);
  }

 private:
  Communicator* c_;
};
}  // namespace

std::shared_ptr<model::ExpertParallel> Communicator::expert_parallel() { return std::make_shared<GroupExchange>(this); }

at::Tensor Communicator::all_to_all(const at::Tensor& x, const std::vector<int64_t>& send, const std::vector<int64_t>& recv) {
  int64_t n_out = 0;
  for (int64_t r : recv) n_out += r;
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape[0] = n_out;
  if (ep_size_ == 1) return x.clone();
  // Gloo's all-to-all has no bf16/f16: those rows travel as float32 (exactly) and come back in their dtype.
  const bool widen = device_.is_cpu() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf);
  if (widen) return all_to_all(x.to(at::kFloat), send, recv).to(x.scalar_type());
  // Gloo's transport does not take empty buffers: every exchange carries at least one spare row per rank,
  // which the caller never sees.
  std::vector<int64_t> send1(send), recv1(recv);
  for (auto& v : send1) v += 1;
  for (auto& v : recv1) v += 1;
  at::Tensor in = at::empty({0}, x.options().device(device_));
  {
    std::vector<int64_t> pad_shape = out_shape;
    pad_shape[0] = 1;
    std::vector<at::Tensor> parts;
    int64_t off = 0;
    for (size_t r = 0; r < send.size(); ++r) {
      parts.push_back(x.narrow(0, off, send[r]).to(device_));
      parts.push_back(at::zeros(pad_shape, x.options().device(device_)));
      off += send[r];
    }
    in = at::cat(parts, 0).contiguous();
  }
  std::vector<int64_t> buf_shape = out_shape;
  buf_shape[0] = n_out + static_cast<int64_t>(recv.size());
  at::Tensor out = at::empty(buf_shape, in.options());
  try {
    impl_->ep->alltoall_base(out, in, recv1, send1)->wait();
  } catch (const std::exception& e) {
    throw Error("expert parallel: rank " + std::to_string(rank_) + ": all-to-all failed (a peer died?): " + reason(e));
  }
  std::vector<at::Tensor> parts;
  int64_t off = 0;
  for (size_t r = 0; r < recv.size(); ++r) {
    parts.push_back(out.narrow(0, off, recv[r]));
    off += recv[r] + 1;
  }
  return at::cat(parts, 0).to(x.device());
}

void Communicator::all_reduce_sum(std::vector<at::Tensor>& tensors, Scope scope) {
  Group* pg = scope == Scope::world ? impl_->pg.get() : scope == Scope::expert_group ? impl_->ep.get() : impl_->replicas.get();
  if (world_ == 1 || tensors.empty() || !pg) return;
  try {
    // One flat buffer: one collective, and the same summation order on every rank.
    std::vector<at::Tensor> flat_parts;
    for (auto& t : tensors) flat_parts.push_back(t.reshape({-1}).to(device_, at::kFloat));
    std::vector<at::Tensor> buf{at::cat(flat_parts)};
    pg->allreduce(buf)->wait();
    int64_t off = 0;
    for (auto& t : tensors) {
      const int64_t n = t.numel();
      t.copy_(buf[0].narrow(0, off, n).view(t.sizes()));
      off += n;
    }
  } catch (const std::exception& e) {
    throw Error("data parallel: rank " + std::to_string(rank_) + ": all-reduce failed (a peer died?): " + reason(e));
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
    throw Error("data parallel: rank " + std::to_string(rank_) + ": all-reduce failed (a peer died?): " + reason(e));
  }
  return t[0].item<double>();
}

double Communicator::max(double v) { return max(std::vector<double>{v})[0]; }

std::vector<double> Communicator::max(std::vector<double> v) {
  if (world_ == 1 || v.empty()) return v;
  std::vector<at::Tensor> t{at::tensor(v, at::kDouble).to(device_)};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  try {
    impl_->pg->allreduce(t, o)->wait();
  } catch (const std::exception& e) {
    throw Error("data parallel: rank " + std::to_string(rank_) + ": all-reduce failed (a peer died?): " + reason(e));
  }
  at::Tensor r = t[0].to(at::kCPU).contiguous();
  return std::vector<double>(r.data_ptr<double>(), r.data_ptr<double>() + r.numel());
}

bool Communicator::any_in_expert_group(bool mine) {
  if (ep_size_ == 1) return mine;
  std::vector<at::Tensor> t{at::full({1}, mine ? 1.0 : 0.0, options())};
  try {
    impl_->ep->allreduce(t)->wait();
  } catch (const std::exception& e) {
    throw Error("expert parallel: rank " + std::to_string(rank_) + ": all-reduce failed (a peer died?): " + reason(e));
  }
  return t[0].item<double>() > 0;
}

at::Tensor Communicator::all_gather(const at::Tensor& x) {
  if (world_ == 1) return x.unsqueeze(0).clone();
  std::vector<at::Tensor> in{x.to(device_).contiguous()};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < world_; ++r) out[0].push_back(at::empty_like(in[0]));
  try {
    impl_->pg->allgather(out, in)->wait();
  } catch (const std::exception& e) {
    throw Error("data parallel: rank " + std::to_string(rank_) + ": all-gather failed (a peer died?): " + reason(e));
  }
  return at::stack(out[0]).to(x.device());
}

std::vector<std::string> gather_bytes(Communicator& comm, const std::string& mine) {
  // Padded to the longest one, each prefixed with its length (8 bytes, little-endian), gathered as bytes.
  const int64_t len = static_cast<int64_t>(mine.size());
  const int64_t width = static_cast<int64_t>(comm.max(static_cast<double>(len))) + 8;
  at::Tensor buf = at::zeros({width}, at::TensorOptions().dtype(at::kByte));
  uint8_t* p = buf.data_ptr<uint8_t>();
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(static_cast<uint64_t>(len) >> (8 * i));
  std::copy(mine.begin(), mine.end(), p + 8);
  at::Tensor all = comm.all_gather(buf).to(at::kCPU).contiguous();
  std::vector<std::string> out;
  if (comm.rank() != 0) return out;
  const uint8_t* a = all.data_ptr<uint8_t>();
  for (int r = 0; r < comm.world_size(); ++r) {
    const uint8_t* row = a + r * width;
    uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(row[i]) << (8 * i);
    if (n + 8 > static_cast<uint64_t>(width)) throw Error("data parallel: gather: rank " + std::to_string(r) + " sent a bad length");
    out.emplace_back(reinterpret_cast<const char*>(row + 8), n);
  }
  return out;
}

void Communicator::barrier() {
  if (world_ == 1) return;
  try {
    impl_->pg->barrier()->wait();
  } catch (const std::exception& e) {
    throw Error("data parallel: rank " + std::to_string(rank_) + ": barrier failed (a peer died?): " + reason(e));
  }
}

}  // namespace moe::dist
