#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <limits>
#include <regex>
#include <set>
#include <sstream>
#include <sys/stat.h>
#include <type_traits>
#include <unistd.h>

#include "moe/dist/communicator.h"
#include "moe/algo/router.h"
#include "moe/algo/terms.h"
#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/io/jsonl.h"
#include "moe/model/checkpoint_files.h"
#include "moe/model/checkpoint_shards.h"
#include "moe/model/config.h"
#include "moe/model/head.h"
#include "moe/model/safetensors.h"
#include "moe/train/adamw.h"
#include "moe/train/step.h"

namespace moe::train {

RouterControl parse_router_control(const std::string& n) {
  if (n == "free") return RouterControl::free;
  if (n == "freeze") return RouterControl::freeze;
  if (n == "replay-old" || n == "r2") return RouterControl::replay_old;
  if (n == "replay-rollout" || n == "r3") return RouterControl::replay_rollout;
  if (n == "copy-old-logits") return RouterControl::copy_old_logits;
  throw UsageError("unknown --router '" + n + "' (expected free, freeze, replay-old, replay-rollout or copy-old-logits)");
}

const char* to_string(RouterControl r) {
  switch (r) {
    case RouterControl::free: return "free";
    case RouterControl::freeze: return "freeze";
    case RouterControl::replay_old: return "replay-old";
    case RouterControl::replay_rollout: return "replay-rollout";
    case RouterControl::copy_old_logits: return "copy-old-logits";
  }
  return "?";
}

double scheduled_lr(const OptimConfig& o, int64_t global_step) {
  if (o.warmup <= 0) return o.lr;
  return o.lr * std::min(1.0, static_cast<double>(global_step + 1) / static_cast<double>(o.warmup));
}

namespace {

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

// Right-padded batch of sequences forwarded as their first n-1 tokens.
struct Batch {
  at::Tensor input, amask, target, resp;  // [B, T] int64, int64, int64, float32
  std::vector<int64_t> P, R;
  int64_t T = 0;
};

Batch make_batch(const std::vector<const Sequence*>& seqs, const c10::Device& dev) {
  Batch b;
  const int64_t B = static_cast<int64_t>(seqs.size());
  for (const Sequence* s : seqs) {
    b.P.push_back(static_cast<int64_t>(s->prompt.size()));
    b.R.push_back(static_cast<int64_t>(s->response.size()));
    b.T = std::max<int64_t>(b.T, b.P.back() + b.R.back() - 1);
  }
  std::vector<int64_t> ids(B * b.T, 0), mask(B * b.T, 0), tgt(B * b.T, 0);
  std::vector<float> resp(B * b.T, 0.f);
  for (int64_t i = 0; i < B; ++i) {
    std::vector<int64_t> all(seqs[i]->prompt);
    all.insert(all.end(), seqs[i]->response.begin(), seqs[i]->response.end());
    const int64_t n = static_cast<int64_t>(all.size());
    for (int64_t p = 0; p + 1 < n; ++p) {
      ids[i * b.T + p] = all[p];
      mask[i * b.T + p] = 1;
      tgt[i * b.T + p] = all[p + 1];
      if (p >= b.P[i] - 1) resp[i * b.T + p] = 1.f;
    }
  }
  auto lo = at::TensorOptions().dtype(at::kLong);
  b.input = at::tensor(ids, lo).view({B, b.T}).to(dev);
  b.amask = at::tensor(mask, lo).view({B, b.T}).to(dev);
  b.target = at::tensor(tgt, lo).view({B, b.T}).to(dev);
  b.resp = at::tensor(resp, at::TensorOptions().dtype(at::kFloat)).view({B, b.T}).to(dev);
  return b;
}

// Per-sequence [n_i - 1, ...] tensors -> [B, T, ...], rows padded with `fill`.
at::Tensor pad_full(const std::vector<at::Tensor>& parts, int64_t T, double fill, const c10::Device& dev) {
  std::vector<at::Tensor> rows;
  for (const auto& p : parts) {
    std::vector<int64_t> shape = p.sizes().vec();
    shape[0] = T - p.size(0);
    rows.push_back(shape[0] > 0 ? at::cat({p, at::full(shape, fill, p.options())}) : p);
  }
  return at::stack(rows).to(dev);
}

// Per-sequence [R_i, ...] tensors placed at the response-producing positions P_i-1 .. P_i+R_i-2 of [B, T, ...].
at::Tensor scatter_resp(const std::vector<at::Tensor>& parts, const Batch& b, double fill, const c10::Device& dev) {
  std::vector<at::Tensor> rows;
  for (size_t i = 0; i < parts.size(); ++i) {
    const at::Tensor& p = parts[i];
    std::vector<int64_t> shape = p.sizes().vec();
    std::vector<at::Tensor> pieces;
    shape[0] = b.P[i] - 1;
    if (shape[0] > 0) pieces.push_back(at::full(shape, fill, p.options()));
    pieces.push_back(p);
    shape[0] = b.T - (b.P[i] - 1) - p.size(0);
    if (shape[0] > 0) pieces.push_back(at::full(shape, fill, p.options()));
    rows.push_back(at::cat(pieces));
  }
  return at::stack(rows).to(dev);
}

// Native top-K expert ids from router logits [..., E] (the model's order: top-k of the fp32 softmax).
at::Tensor native_topk(const at::Tensor& router_logits, int64_t K) {
  return std::get<1>(at::softmax(router_logits.to(at::kFloat), -1).topk(K, -1));
}

c10::Device device_of(model::Qwen3Moe& m) { return m->embed_weight.device(); }

// How a data-parallel update combines a metric over ranks so that it equals the single-process value.
enum class DpReduce {
  sum,          // each rank already holds its term of the global value (pg_loss, kl, loss)
  tokens,       // a mean over the response tokens: weighted by each rank's response tokens
  eff_tokens,   // a mean over the tokens that train (--rs-mask / --mis drops removed)
  kept_tokens,  // a mean over the tokens TIS/MIS keep
  min, max,     // exact extremes
  approx,       // not decomposable (a quantile; the per-rank aux loss): response-token-weighted mean of the
                // ranks' values, named approximate in moe-train-step(1)
};

// Every metric an update can log, with its rule. Every rank walks this table in the same order, so the
// collectives match even when a rank has no sequences (its policy metrics are absent: weight 0).
const std::vector<std::pair<const char*, DpReduce>>& dp_metric_table() {
  static const std::vector<std::pair<const char*, DpReduce>> table = {
      {"loss", DpReduce::sum}, {"pg_loss", DpReduce::sum}, {"kl", DpReduce::sum},
      {"ppo_kl", DpReduce::eff_tokens}, {"pg_clipfrac", DpReduce::eff_tokens},
      {"pg_clipfrac_lower", DpReduce::eff_tokens},
      {"entropy", DpReduce::tokens}, {"sft_loss", DpReduce::tokens},
      {"mismatch/kl", DpReduce::tokens}, {"mismatch/k3_kl", DpReduce::tokens},
      {"mismatch/extreme_frac", DpReduce::tokens}, {"mismatch/chi2_token", DpReduce::tokens},
      {"tis/w_mean", DpReduce::kept_tokens}, {"tis/w_max", DpReduce::max}, {"tis/clip_frac", DpReduce::tokens},
      {"router_shift/gamma_mean", DpReduce::tokens}, {"router_shift/gamma_min", DpReduce::min},
      {"router_shift/gamma_max", DpReduce::max}, {"router_shift/floor_frac", DpReduce::tokens},
      {"router_shift/delta_mean", DpReduce::tokens}, {"router_shift/delta_p90", DpReduce::approx},
      {"router_shift/mask_frac", DpReduce::tokens}, {"router_shift/unshifted_frac", DpReduce::tokens},
      {"routing/layer_mismatch", DpReduce::tokens}, {"routing/token_mismatch", DpReduce::tokens},
      {"routing/layers_differing_mean", DpReduce::tokens}, {"aux_loss", DpReduce::approx},
  };
  return table;
}

// Combines `m` over the ranks in place; `weight_of(kind)` is this rank's denominator of a mean kind. A key no
// rank has stays absent. A key outside the table is an error (it would otherwise be rank 0's value alone).
template <typename WeightOf>
void reduce_metrics(algo::Metrics& m, Communicator& comm, WeightOf weight_of) {
  const auto& table = dp_metric_table();
  for (const auto& kv : m) {
    bool known = false;
    for (const auto& e : table) known |= kv.first == e.first;
    if (!known) throw Error("data parallel: no reduction rule for metric '" + kv.first + "'");
  }
  const size_t n = table.size();
  std::vector<double> buf(3 * n, 0.0);  // [sum of value * weight | sum of weights | ranks that have the key]
  for (size_t i = 0; i < n; ++i) {
    auto it = m.find(table[i].first);
    if (it == m.end()) continue;
    const DpReduce how = table[i].second;
    const double w = how == DpReduce::sum ? 1.0 : weight_of(how);
    if (how != DpReduce::min && how != DpReduce::max) buf[i] = it->second * w;
    buf[n + i] = w;
    buf[2 * n + i] = 1;
  }
  std::vector<at::Tensor> t{at::tensor(buf, at::kDouble).to(comm.device())};
  comm.all_reduce_sum(t);
  at::Tensor r = t[0].to(at::kDouble).contiguous();
  const double* p = r.data_ptr<double>();
  // Minima and maxima: one max-reduce of every present extreme metric (minima negated).
  std::vector<size_t> ext;
  std::vector<double> best;
  for (size_t i = 0; i < n; ++i) {
    const DpReduce how = table[i].second;
    if ((how != DpReduce::min && how != DpReduce::max) || p[2 * n + i] == 0) continue;  // presence: the same on every rank
    auto it = m.find(table[i].first);
    ext.push_back(i);
    best.push_back(it != m.end() ? (how == DpReduce::max ? 1.0 : -1.0) * it->second : -std::numeric_limits<double>::infinity());
  }
  best = comm.max(std::move(best));
  for (size_t j = 0; j < ext.size(); ++j)
    m[table[ext[j]].first] = (table[ext[j]].second == DpReduce::max ? 1.0 : -1.0) * best[j];
  for (size_t i = 0; i < n; ++i) {
    const char* k = table[i].first;
    const DpReduce how = table[i].second;
    const bool present = p[2 * n + i] > 0;  // the same on every rank
    if (how == DpReduce::min || how == DpReduce::max) continue;
    if (!present) {
      m.erase(k);
    } else if (how == DpReduce::sum) {
      m[k] = p[i];
    } else {
      m[k] = p[n + i] > 0 ? p[i] / p[n + i] : 0.0;
    }
  }
}

// The optimizer's key of a parameter's state.
AdamWKey impl_key(const at::Tensor& p) { return adamw_key(p); }

// Token log-probs [B, T] (and entropies) of the tempered policy at the targets, from the hidden states of a
// hidden_only forward, over chunks of positions (never a [B, T, V] float32 tensor).
model::HeadOutput head(model::Qwen3Moe& m, const model::ForwardOutput& fw, const at::Tensor& target, double T,
                       bool want_entropy) {
  return model::head_logprobs(fw.hidden, m->lm_head_weight(), target, T, want_entropy);
}

// Expert tensors: model.layers.L.mlp.experts.E.<...> (names of the weights and of their Adam moments).
const std::regex& expert_name_re() {
  static const std::regex re(R"(^(model\.layers\.\d+\.mlp\.experts\.)(\d+)(\..*)$)");
  return re;
}
bool is_expert_name(const std::string& n) { return std::regex_match(n, expert_name_re()); }

// A one-token batch for a forward that only takes part in the expert group's collectives.
Batch idle_batch(const c10::Device& dev) {
  Sequence s;
  s.prompt = {0};
  s.response = {0};
  return make_batch({&s}, dev);
}

// Expert parallel: every rank of the expert group sends `local` (its expert tensors, undefined = absent; the
// same shapes and order on every rank, as `shapes`) to the group's rank 0, which gets them all back renamed
// to their global expert ids (source s's expert j is s * per + j, as its owner names it). Elsewhere: empty.
std::vector<std::pair<std::string, at::Tensor>> gather_experts(Communicator& comm, int64_t per,
                                                               const std::vector<std::pair<std::string, at::Tensor>>& local,
                                                               const std::vector<std::vector<int64_t>>& shapes) {
  const int S = comm.ep_size(), me = comm.ep_rank();
  std::vector<at::Tensor> parts;
  std::vector<float> has;
  int64_t n = 0;
  for (size_t i = 0; i < local.size(); ++i) {
    int64_t k = 1;
    for (int64_t d : shapes[i]) k *= d;
    n += k;
    has.push_back(local[i].second.defined() ? 1.f : 0.f);
    parts.push_back(local[i].second.defined() ? local[i].second.detach().to(at::kCPU, at::kFloat).reshape({-1})
                                              : at::zeros({k}, at::kFloat));
  }
  parts.push_back(at::tensor(has, at::kFloat));
  at::Tensor buf = at::cat(parts).to(comm.device());
  const int64_t len = buf.numel();
  (void)n;
  // Rows of one element: the all-to-all's per-rank spare row stays one element.
  std::vector<int64_t> send(S, 0), recv(S, 0);
  send[0] = len;
  if (me == 0) std::fill(recv.begin(), recv.end(), len);
  at::Tensor all = comm.all_to_all(buf.view({len, 1}), send, recv).to(at::kCPU).view({-1});
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (me != 0) return out;
  for (int s = 0; s < S; ++s) {
    at::Tensor row = all.narrow(0, s * len, len);
    int64_t off = 0;
    at::Tensor flags = row.narrow(0, len - static_cast<int64_t>(local.size()), static_cast<int64_t>(local.size()));
    for (size_t i = 0; i < local.size(); ++i) {
      int64_t k = 1;
      for (int64_t d : shapes[i]) k *= d;
      at::Tensor t = row.narrow(0, off, k).view(shapes[i]).clone();
      off += k;
      if (flags[static_cast<int64_t>(i)].item<float>() == 0.f) continue;
      std::smatch mm;
      const std::string& name = local[i].first;
      if (!std::regex_match(name, mm, expert_name_re())) throw Error("gather_experts: not an expert tensor: " + name);
      const int64_t j = std::stoll(mm[2]) % per;
      out.emplace_back(std::string(mm[1]) + std::to_string(s * per + j) + std::string(mm[3]), t);
    }
  }
  return out;
}

// MOEKIT_TRAIN_FAULT=RANK:save (tests/cli/expert_parallel.bats): that rank fails with an error after writing
// its model shards; RANK:save-exit: it dies there instead.
void save_fault_hook(int rank) {
  const char* f = std::getenv("MOEKIT_TRAIN_FAULT");
  if (!f) return;
  int r = -1;
  char what[16] = {0};
  if (std::sscanf(f, "%d:%15s", &r, what) != 2 || r != rank) return;
  if (std::strcmp(what, "save") == 0) throw Error("MOEKIT_TRAIN_FAULT: rank " + std::to_string(rank) + " fails while writing its shards");
  if (std::strcmp(what, "save-exit") == 0) {
    std::fprintf(stderr, "moe-train-step: MOEKIT_TRAIN_FAULT: rank %d exits while writing its shards\n", rank);
    std::fflush(stderr);
    ::_exit(3);
  }
}

// Every rank gets rank 0's bytes (one all-gather; every rank calls it).
std::string from_rank0(Communicator& comm, const std::string& mine) {
  const int64_t width = static_cast<int64_t>(comm.max(static_cast<double>(mine.size()))) + 8;
  at::Tensor buf = at::zeros({width}, at::TensorOptions().dtype(at::kByte));
  uint8_t* p = buf.data_ptr<uint8_t>();
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(static_cast<uint64_t>(mine.size()) >> (8 * i));
  std::copy(mine.begin(), mine.end(), p + 8);
  at::Tensor all = comm.all_gather(buf).to(at::kCPU).contiguous();
  const uint8_t* row = all.data_ptr<uint8_t>();  // rank 0's row
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(row[i]) << (8 * i);
  if (n + 8 > static_cast<uint64_t>(width)) throw Error("expert parallel: rank 0 sent a bad length");
  return std::string(reinterpret_cast<const char*>(row + 8), n);
}

// Expert parallel save, called by every rank of the world. Rank 0 makes the staging dir beside `dir` and
// tells every rank its path (a shared filesystem: all ranks on one machine, or dir on a network filesystem
// all of them mount at the same path). Each rank writes `weights` and `adam` (its own tensors; none on the
// ranks that do not write) as HF-named shards model-0000i-of-0000n.safetensors and
// optimizer-0000i-of-0000n.safetensors, numbered in rank order (n: every rank's shard count, learnt by one
// all-reduce), fsynced. One all-reduce of a failure flag follows: if any rank failed, rank 0 removes the
// staging dir and every rank throws (the old checkpoint untouched). Else rank 0 gets every rank's
// tensor -> shard map, writes the two indexes, config.json, `files` and the carried-over files, syncs the dir,
// runs before_swap and swaps the dir in.
void save_sharded(Communicator& comm, const std::string& dir_in, const model::ModelConfig& mc, model::NamedTensors weights,
                  model::NamedTensors adam, const std::map<std::string, std::string>& opt_meta,
                  const std::vector<std::pair<std::string, std::string>>& files, const std::function<void()>& before_swap,
                  int64_t max_shard_bytes) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const int rank = comm.rank(), world = comm.world_size();
  std::string staged;
  std::exception_ptr err;
  if (rank == 0) {
    try {
      staged = model::make_staging_dir(dir);
    } catch (...) {
      err = std::current_exception();
    }
  }
  try {
    staged = from_rank0(comm, staged);
  } catch (...) {
    if (rank == 0) model::remove_staging_dir(staged);
    throw;
  }
  if (staged.empty()) {
    if (err) std::rethrow_exception(err);
    throw Error("expert parallel: rank 0 could not create the checkpoint's staging dir (see its error); nothing written");
  }
  try {
    const int64_t w_bytes = model::data_bytes(weights), o_bytes = model::data_bytes(adam);
    std::vector<model::NamedTensors> w_shards = model::plan_shards(std::move(weights), max_shard_bytes);
    std::vector<model::NamedTensors> o_shards = model::plan_shards(std::move(adam), max_shard_bytes);
    std::vector<double> counts(2 * world, 0.0);
    counts[rank] = static_cast<double>(w_shards.size());
    counts[world + rank] = static_cast<double>(o_shards.size());
    counts = comm.max(counts);
    int w_first = 1, w_total = 0, o_first = 1, o_total = 0;
    for (int r = 0; r < world; ++r) {
      if (r < rank) w_first += static_cast<int>(counts[r]), o_first += static_cast<int>(counts[world + r]);
      w_total += static_cast<int>(counts[r]);
      o_total += static_cast<int>(counts[world + r]);
    }
    nlohmann::json part;  // this rank's tensor -> shard maps, sent to rank 0
    std::vector<double> failed(world, 0.0);
    try {
      part["model"] = model::write_shards(staged, "model", w_shards, w_first, w_total, {{"format", "pt"}});
      save_fault_hook(rank);
      part["optimizer"] = model::write_shards(staged, "optimizer", o_shards, o_first, o_total, opt_meta);
      part["model_bytes"] = w_bytes;
      part["optimizer_bytes"] = o_bytes;
      w_shards.clear();
      o_shards.clear();
      if (rank == 0) model::write_companions(staged, dir, model::config_to_json(mc).dump(2) + "\n", files);
    } catch (...) {
      err = std::current_exception();
      failed[rank] = 1;
    }
    // Every rank's files are complete (and fsynced) once it reaches this collective; a failure anywhere
    // aborts the swap everywhere.
    failed = comm.max(failed);
    for (int r = 0; r < world; ++r) {
      if (failed[r] == 0) continue;
      if (err) std::rethrow_exception(err);
      throw Error("expert parallel: rank " + std::to_string(r) + " failed to write its part of the checkpoint; " + dir +
                  " is left as it was");
    }
    std::vector<std::string> parts = dist::gather_bytes(comm, part.dump());
    if (rank != 0) return;
    std::map<std::string, std::string> w_map, o_map;
    int64_t w_total_bytes = 0, o_total_bytes = 0;
    for (const std::string& b : parts) {
      const nlohmann::json j = nlohmann::json::parse(b);
      for (const auto& [n, f] : j["model"].items())
        if (!w_map.emplace(n, f.get<std::string>()).second) throw Error("expert parallel: two ranks wrote tensor " + n);
      for (const auto& [n, f] : j["optimizer"].items())
        if (!o_map.emplace(n, f.get<std::string>()).second) throw Error("expert parallel: two ranks wrote tensor " + n);
      w_total_bytes += j["model_bytes"].get<int64_t>();
      o_total_bytes += j["optimizer_bytes"].get<int64_t>();
    }
    model::write_shard_index(staged, "model", w_total_bytes, w_map);
    model::write_shard_index(staged, "optimizer", o_total_bytes, o_map);
    io::sync_dir(staged);
    if (before_swap) before_swap();
    io::replace_dir(staged, dir);
  } catch (...) {
    if (rank == 0) model::remove_staging_dir(staged);
    throw;
  }
}

}  // namespace

struct Trainer::Impl {
  std::unique_ptr<torch::optim::AdamW> opt;
  std::map<std::string, at::Tensor> carried;  // optimizer tensors of parameters not trained in this step
  // Mixed precision (compute_dtype != float32): float32 master of every model weight (named_weights order),
  // and of each trained parameter (trained_ order, aliasing `master`); empty in float32 training.
  std::vector<at::Tensor> master, trained_master;
  std::shared_ptr<model::ExpertParallel> ep;  // expert parallel: the model's expert group (else null)
  std::vector<char> expert;                   // trained_[i] is an expert tensor
  // The tensor the optimizer updates for trained_[i]: the master, or the parameter itself.
  at::Tensor& opt_param(std::vector<std::pair<std::string, at::Tensor>>& trained, size_t i) {
    return trained_master.empty() ? trained[i].second : trained_master[i];
  }
};

Trainer::Trainer(model::Qwen3Moe model, TrainConfig cfg, Communicator* comm)
    : impl_(std::make_unique<Impl>()), model_(std::move(model)), cfg_(std::move(cfg)), comm_(comm) {
  if (!cfg_.sft) cfg_.loss = algo::with_defaults(cfg_.loss);
  if (!(cfg_.temperature > 0)) throw Error("temperature must be > 0");
  std::set<const void*> router;
  if (cfg_.router == RouterControl::freeze || cfg_.router == RouterControl::copy_old_logits)
    for (auto& w : model_->router_parameters()) router.insert(w.unsafeGetTensorImpl());
  std::vector<at::Tensor> params;
  const bool mixed = cfg_.compute_dtype != at::kFloat;
  for (auto& [name, p] : model::named_weights(model_)) {
    if (mixed) {
      if (p.scalar_type() != at::kFloat) throw Error("mixed-precision training needs the model loaded in float32");
      // The float32 storage stays as the master; the parameter moves to a copy in the compute dtype.
      at::Tensor m = p.detach();
      impl_->master.push_back(m);
      at::NoGradGuard ng;
      p.set_data(m.to(cfg_.compute_dtype));
    }
    if (router.count(p.unsafeGetTensorImpl())) continue;
    trained_.emplace_back(name, p);
    params.push_back(mixed ? impl_->master.back() : p);
    if (mixed) impl_->trained_master.push_back(impl_->master.back());
  }
  for (const auto& t : trained_) impl_->expert.push_back(is_expert_name(t.first) ? 1 : 0);
  if (comm_ && comm_->ep_size() > 1) {
    if (model_->expert_shard().size != comm_->ep_size()) throw Error("expert parallel: the model was loaded with another expert shard");
    impl_->ep = comm_->expert_parallel();
    model_->set_expert_parallel(impl_->ep);
  }
  torch::optim::AdamWOptions o(cfg_.optim.lr);
  o.betas(std::make_tuple(cfg_.optim.beta1, cfg_.optim.beta2)).eps(cfg_.optim.eps).weight_decay(cfg_.optim.weight_decay);
  impl_->opt = std::make_unique<torch::optim::AdamW>(params, o);
}

Trainer::~Trainer() = default;

void Trainer::load_state(const std::string& dir) {
  const std::string st_path = dir + "/trainer_state.json";
  if (file_exists(st_path)) {
    state_ = io::read_json_file(st_path);
    if (!state_.is_object() || !state_.contains("global_step") || !state_["global_step"].is_number_integer())
      throw Error(st_path + ": no integer \"global_step\"");
    global_step_ = state_["global_step"].get<int64_t>();
  }
  // optimizer.safetensors, or the shards named by optimizer.safetensors.index.json (written under expert
  // parallel, one or more per rank).
  if (!model::Checkpoint::exists(dir, "optimizer")) return;
  const model::Checkpoint f(dir, "optimizer");
  const std::string& shown = f.source();  // the file errors name
  std::set<std::string> used;
  auto& st = impl_->opt->state();
  for (size_t i = 0; i < trained_.size(); ++i) {
    const std::string& name = trained_[i].first;
    const at::Tensor& p = impl_->opt_param(trained_, i);
    const std::string a = name + ".exp_avg", s = name + ".exp_avg_sq", k = name + ".step";
    if (!f.has(a) && !f.has(s)) continue;
    if (!f.has(a) || !f.has(s) || !f.has(k)) throw Error(shown + ": incomplete AdamW state of " + name);
    auto ps = std::make_unique<torch::optim::AdamWParamState>();
    at::Tensor ea = f.get(a, p.scalar_type()), es = f.get(s, p.scalar_type());
    if (ea.sizes() != p.sizes() || es.sizes() != p.sizes())
      throw Error(shown + ": AdamW state of " + name + " has another shape than the parameter");
    at::Tensor step = f.get(k);
    if (step.numel() != 1) throw Error(shown + ": " + k + " must hold one integer");
    ps->step(step.to(at::kLong).item<int64_t>());
    ps->exp_avg(ea.to(p.device()));
    ps->exp_avg_sq(es.to(p.device()));
    st[impl_key(p)] = std::move(ps);
    used.insert(a);
    used.insert(s);
    used.insert(k);
  }
  for (const auto& n : f.names())
    if (!used.count(n) && !(impl_->ep && is_expert_name(n)))  // another rank's experts: carried by their owner
      impl_->carried[n] = f.get(n);  // e.g. moments of a router frozen in this step
}

void Trainer::save(const std::string& dir, const std::vector<std::pair<std::string, std::string>>& extra_files,
                   const nlohmann::json& state_extra, const std::function<void()>& before_swap,
                   int64_t max_shard_bytes) {
  const bool ep = impl_->ep != nullptr;
  if (comm_ && comm_->rank() != 0 && !ep) return;
  auto& st = impl_->opt->state();
  // AdamW state of the trained parameters `which` selects, plus (with `carried`) the state this step did not
  // train (e.g. a frozen router's).
  auto adam_tensors = [&](const std::function<bool(size_t)>& which, bool carried) {
    model::NamedTensors tensors;
    std::set<std::string> names;
    for (size_t i = 0; i < trained_.size(); ++i) {
      if (!which(i)) continue;
      const std::string& name = trained_[i].first;
      auto it = st.find(impl_key(impl_->opt_param(trained_, i)));
      if (it == st.end()) continue;
      auto& ps = static_cast<torch::optim::AdamWParamState&>(*it->second);
      tensors.emplace_back(name + ".exp_avg", ps.exp_avg());
      tensors.emplace_back(name + ".exp_avg_sq", ps.exp_avg_sq());
      tensors.emplace_back(name + ".step", at::full({1}, ps.step(), at::kLong));
      names.insert(name + ".exp_avg");
      names.insert(name + ".exp_avg_sq");
      names.insert(name + ".step");
    }
    if (carried)
      for (auto& [n, t] : impl_->carried)
        if (!names.count(n)) tensors.emplace_back(n, t);
    return tensors;
  };
  nlohmann::json state = state_;
  state["format"] = "moekit-trainer-state";
  state["version"] = 1;
  state["global_step"] = global_step_;
  state["optimizer"] = {{"name", "adamw"},
                        {"lr", cfg_.optim.lr},
                        {"betas", {cfg_.optim.beta1, cfg_.optim.beta2}},
                        {"eps", cfg_.optim.eps},
                        {"weight_decay", cfg_.optim.weight_decay},
                        {"warmup", cfg_.optim.warmup}};
  for (auto& [k, v] : state_extra.items()) state[k] = v;
  state_ = state;
  auto files = extra_files;
  files.emplace_back("trainer_state.json", state.dump(2) + "\n");
  const std::map<std::string, std::string> opt_meta = {{"format", "pt"}, {"optimizer", "adamw"}, {"producer", "moe-train-step"}};
  if (ep) {
    // Expert parallel: the first expert group (DP replica 0) writes, each rank its own experts (weights as
    // float32 masters under mixed precision, and their Adam moments), rank 0 also the replicated tensors;
    // the other replicas hold the same copies and only take part in the collectives.
    const int rank = comm_->rank();
    const bool writer = rank < comm_->ep_size();
    auto weights = model::named_weights(model_);
    model::NamedTensors mine;
    for (size_t i = 0; i < weights.size() && writer; ++i)
      if (rank == 0 || is_expert_name(weights[i].first))
        mine.emplace_back(weights[i].first, impl_->master.empty() ? weights[i].second : impl_->master[i]);
    model::ModelConfig mc = model_->config();
    mc.torch_dtype = model::torch_dtype_name(impl_->master.empty() ? model_->embed_weight.scalar_type() : at::kFloat);
    save_sharded(*comm_, dir, mc, std::move(mine),
                 adam_tensors([&](size_t i) { return writer && (impl_->expert[i] || rank == 0); }, rank == 0), opt_meta,
                 files, before_swap, max_shard_bytes);
    return;
  }
  model::NamedTensors tensors = adam_tensors([](size_t) { return true; }, true);
  // Mixed precision: the checkpoint holds the float32 masters; the compute copies come back afterwards.
  std::vector<at::Tensor> compute;
  auto weights = model::named_weights(model_);
  auto swap_in = [&](bool masters) {
    at::NoGradGuard ng;
    for (size_t i = 0; i < impl_->master.size(); ++i) {
      if (masters) compute.push_back(weights[i].second.detach());
      weights[i].second.set_data(masters ? impl_->master[i] : compute[i]);
    }
  };
  swap_in(true);
  try {
    model::save_model(
        model_, dir, files,
        [&](const std::string& staged) {
          model::write_safetensors(staged + "/optimizer.safetensors", tensors, opt_meta, /*staged=*/true);
          if (before_swap) before_swap();
        },
        max_shard_bytes);
  } catch (...) {
    swap_in(false);
    throw;
  }
  swap_in(false);
}

namespace {
// Row j's old-pass values from a forward of batch b, on the host: log-probs [B, T] under the tempered policy,
// and (RL) the experts that forward used [B, T, L, K], their full-softmax probabilities, the router's native
// top-K, and its logits (copy-old-logits, or R3 with record_routing; else undefined).
void take_old(OldPass& o, const TrainConfig& cfg, const Batch& b, size_t j, const at::Tensor& logp, const at::Tensor& ridx,
              const at::Tensor& rprob, const at::Tensor& native, const at::Tensor& rlog) {
  const int64_t P = b.P[j], R = b.R[j], n1 = P + R - 1;
  o.logp_old = logp[j].narrow(0, P - 1, R).clone();
  if (cfg.sft) return;
  o.idx = ridx[j].narrow(0, 0, n1).clone();
  o.prob = rprob[j].narrow(0, P - 1, R).clone();
  o.native_idx = native[j].narrow(0, P - 1, R).clone();
  if (cfg.router == RouterControl::copy_old_logits) o.logits = rlog[j].narrow(0, 0, n1).clone();
  if (cfg.record_routing) {
    if (cfg.router == RouterControl::replay_rollout) {
      o.routing_idx = native[j].narrow(0, 0, n1).clone();
      o.routing_prob = at::softmax(rlog[j].narrow(0, 0, n1), -1).gather(-1, o.routing_idx);
    } else {
      o.routing_idx = o.idx;
      o.routing_prob = rprob[j].narrow(0, 0, n1).clone();
    }
  }
}
}  // namespace

void Trainer::old_pass(const std::vector<Sequence>& seqs, std::vector<OldPass>& old, model::Qwen3Moe* ref,
                       const std::vector<char>& first_update) {
  at::NoGradGuard ng;
  if (!first_update.empty() && first_update.size() != seqs.size())
    throw Error("old pass: " + std::to_string(first_update.size()) + " first-update flags for " + std::to_string(seqs.size()) + " sequences");
  // Expert parallel: the old pass's outputs are records (logp_old, --routing-out): exact rows, on every rank
  // of the group at once (ExpertParallel::exact_rows), until it returns or throws.
  struct ExactRows {
    model::ExpertParallel* ep;
    explicit ExactRows(model::ExpertParallel* e) : ep(e) { if (ep) ep->exact_rows = true; }
    ~ExactRows() { if (ep) ep->exact_rows = false; }
  } exact_rows(impl_->ep.get());
  old.assign(seqs.size(), OldPass{});
  fresh_ = true;
  const c10::Device dev = device_of(model_);
  const int64_t K = model_->config().num_experts_per_tok;
  const int64_t chunk = std::max<int64_t>(1, cfg_.micro_batch);
  const bool r3 = cfg_.router == RouterControl::replay_rollout;
  const bool defer = !first_update.empty() && !cfg_.sft && !ref && !impl_->ep && !cfg_.loss.router_shift && !cfg_.record_routing &&
                     (cfg_.router == RouterControl::free || cfg_.router == RouterControl::freeze || r3);
  std::vector<size_t> todo;  // the sequences this pass runs
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (defer && first_update[i]) old[i].deferred = true;
    else todo.push_back(i);
  }
  if (impl_->ep) {
    // Expert parallel: every rank of a group runs as many forwards as the busiest one (the MoE layers'
    // exchanges pair up); the extra ones are idle (no rows of their own). A reference model (sharded as the
    // policy) exchanges over the same group, after the policy in every chunk, idle ones included.
    if (ref) (*ref)->set_expert_parallel(impl_->ep);
    const double mine = static_cast<double>((todo.size() + chunk - 1) / chunk);
    const int64_t extra = static_cast<int64_t>(comm_->max(mine) - mine);
    Batch b = idle_batch(dev);
    model::ForwardOptions fo;
    fo.hidden_only = true;
    for (int64_t i = 0; i < extra; ++i) {
      impl_->ep->idle = true;
      try {
        model_->forward(b.input, b.amask, model::RoutingPlan::native(), fo);
        if (ref) (*ref)->forward(b.input.to(device_of(*ref)), b.amask.to(device_of(*ref)), model::RoutingPlan::native(), fo);
      } catch (...) {
        impl_->ep->idle = false;
        throw;
      }
      impl_->ep->idle = false;
    }
  }
  for (size_t first = 0; first < todo.size(); first += chunk) {
    const size_t last = std::min(todo.size(), first + static_cast<size_t>(chunk));
    std::vector<const Sequence*> part;
    for (size_t i = first; i < last; ++i) part.push_back(&seqs[todo[i]]);
    Batch b = make_batch(part, dev);
    model::RoutingPlan plan = model::RoutingPlan::native();
    if (r3) {
      std::vector<at::Tensor> idx;
      for (const Sequence* s : part) {
        if (!s->rollout_routing.defined())
          throw Error("--router replay-rollout: no rollout routing for record " + std::to_string(s->id));
        idx.push_back(s->rollout_routing);
      }
      plan = model::RoutingPlan::replay(pad_full(idx, b.T, 0, dev));
    }
    model::ForwardOptions fo;
    fo.capture_routing = !cfg_.sft;
    fo.return_router_logits = !cfg_.sft && (r3 || cfg_.router == RouterControl::copy_old_logits || cfg_.record_routing);
    fo.hidden_only = true;
    model::ForwardOutput fw = model_->forward(b.input, b.amask, plan, fo);
    const double T = cfg_.sft ? 1.0 : cfg_.temperature;
    at::Tensor logp = head(model_, fw, b.target, T, false).logp.to(at::kCPU);
    at::Tensor ridx, rprob, rlog, native;
    if (!cfg_.sft) {
      ridx = fw.routing_indices.to(at::kCPU);
      rprob = fw.routing_probs.to(at::kCPU, at::kFloat);
      if (fo.return_router_logits) rlog = fw.router_logits.to(at::kCPU, at::kFloat);
      native = r3 ? native_topk(rlog, K) : ridx;
    }
    at::Tensor lref;
    if (ref) {
      model::ForwardOptions ro;
      ro.hidden_only = true;
      model::ForwardOutput rf = (*ref)->forward(b.input.to(device_of(*ref)), b.amask.to(device_of(*ref)), model::RoutingPlan::native(), ro);
      lref = head(*ref, rf, b.target.to(device_of(*ref)), T, false).logp.to(at::kCPU);
    }
    for (size_t j = 0; j < part.size(); ++j) {
      OldPass& o = old[todo[first + j]];
      take_old(o, cfg_, b, j, logp, ridx, rprob, native, rlog);
      if (ref) o.logp_ref = lref[j].narrow(0, b.P[j] - 1, b.R[j]).clone();
    }
  }
}

algo::Metrics Trainer::update(const std::vector<Sequence>& seqs, std::vector<OldPass>& old, const std::vector<size_t>& local,
                              int64_t global_rows, int64_t global_tokens, int64_t global_max_len) {
  bool deferred = false;
  for (size_t i : local) deferred = deferred || old[i].deferred;
  // Only the first update after the old pass runs the weights that pass would have.
  if (deferred && !fresh_)
    throw Error("update: the old pass of a sequence was left to the first update after it, and this is a later one");
  fresh_ = false;
  const c10::Device dev = device_of(model_);
  const int64_t K = model_->config().num_experts_per_tok;
  const bool dp = comm_ && comm_->world_size() > 1;
  const double T = cfg_.sft ? 1.0 : cfg_.temperature;
  for (auto& kv : model_->named_parameters(true)) kv.value().mutable_grad().reset();
  auto clock = [] { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); };
  const double t0 = clock();

  algo::Metrics metrics;
  at::Tensor loss, idle_loss;
  at::Tensor sft_stats;  // SFT: [loss, entropy summed over response tokens], on the device until the sync
  double local_tokens = 0;
  double eff_tokens = 0;   // RL under data parallel: tokens that train (--rs-mask and --mis drops removed)
  double kept_tokens = 0;  // ... of them, those TIS/MIS keep (tis/w_mean's denominator)
  if (!local.empty()) {
    std::vector<const Sequence*> part;
    for (size_t i : local) part.push_back(&seqs[i]);
    Batch b = make_batch(part, dev);
    for (int64_t r : b.R) local_tokens += static_cast<double>(r);  // response tokens, counted on the host
    if (cfg_.sft) {
      model::ForwardOptions fo;
      fo.hidden_only = true;
      fo.checkpoint_layers = cfg_.checkpoint_activations;
      model::ForwardOutput fw = model_->forward(b.input, b.amask, model::RoutingPlan::native(), fo);
      model::HeadOutput hl = head(model_, fw, b.target, 1.0, true);
      loss = algo::aggregate(-hl.logp, b.resp > 0, algo::Agg::token_mean);  // = algo::sft_loss
      // Read on the host with the loss and the gradient norm after backward (the step's one sync).
      sft_stats = at::stack({loss.detach().to(at::kDouble).reshape({}), (hl.entropy.detach() * b.resp).sum().to(at::kDouble)});
      // token-mean over the global mini-batch: this rank's share of the tokens.
      if (dp) loss = loss * (local_tokens / std::max<double>(1, global_tokens));
    } else {
      std::vector<at::Tensor> old_idx, v;
      const bool shift = cfg_.loss.router_shift;
      model::RoutingPlan plan;
      switch (cfg_.router) {
        case RouterControl::free: plan = model::RoutingPlan::native(); break;
        case RouterControl::freeze: plan = model::RoutingPlan::frozen(); break;
        case RouterControl::replay_old:
          for (size_t i : local) v.push_back(old[i].idx);
          plan = model::RoutingPlan::replay(pad_full(v, b.T, 0, dev));
          break;
        case RouterControl::replay_rollout:
          for (size_t i : local) {
            if (!seqs[i].rollout_routing.defined())
              throw Error("--router replay-rollout: no rollout routing for record " + std::to_string(seqs[i].id));
            v.push_back(seqs[i].rollout_routing);
          }
          plan = model::RoutingPlan::replay(pad_full(v, b.T, 0, dev));
          break;
        case RouterControl::copy_old_logits:
          for (size_t i : local) v.push_back(old[i].logits);
          plan = model::RoutingPlan::use_logits(pad_full(v, b.T, 0, dev));
          break;
      }
      const bool replayed = cfg_.router == RouterControl::replay_old || cfg_.router == RouterControl::replay_rollout ||
                            cfg_.router == RouterControl::copy_old_logits;
      model::ForwardOptions fo;
      at::Tensor idx_old_full;
      if (shift) {
        for (size_t i : local) old_idx.push_back(old[i].idx);
        idx_old_full = pad_full(old_idx, b.T, 0, dev);
        // Pad rows need K distinct in-range ids only to pass the shape checks; they are masked out.
        fo.probs_at = idx_old_full;
        fo.capture_routing = !replayed;
      }
      fo.return_router_logits = cfg_.loss.aux_coef != 0 || (shift && replayed);
      // Deferred old-pass values come from this forward: its routing, and under R3 the router's native top-K.
      if (deferred) {
        fo.capture_routing = true;
        fo.return_router_logits = fo.return_router_logits || cfg_.router == RouterControl::replay_rollout;
      }
      fo.hidden_only = true;
      fo.checkpoint_layers = cfg_.checkpoint_activations;
      model::ForwardOutput fw = model_->forward(b.input, b.amask, plan, fo);
      model::HeadOutput hl = head(model_, fw, b.target, T, true);
      at::Tensor logp = hl.logp;
      if (deferred) {
        at::Tensor lp = logp.detach().to(at::kCPU, at::kFloat), ridx = fw.routing_indices.to(at::kCPU);
        at::Tensor rprob = fw.routing_probs.to(at::kCPU, at::kFloat);
        at::Tensor rlog = fo.return_router_logits ? fw.router_logits.detach().to(at::kCPU, at::kFloat) : at::Tensor();
        at::Tensor native = cfg_.router == RouterControl::replay_rollout ? native_topk(rlog, K) : ridx;
        for (size_t j = 0; j < local.size(); ++j) {
          OldPass& o = old[local[j]];
          if (!o.deferred) continue;
          take_old(o, cfg_, b, j, lp, ridx, rprob, native, rlog);
          o.deferred = false;
        }
      }

      algo::LossInputs in;
      in.logp = logp;
      std::vector<at::Tensor> lo, lr, lref, po;
      std::vector<double> adv;
      bool all_roll = true, any_ref = true;
      for (size_t i : local) {
        lo.push_back(old[i].logp_old);
        adv.push_back(seqs[i].advantage);
        if (seqs[i].logp_roll.empty()) all_roll = false;
        else lr.push_back(at::tensor(seqs[i].logp_roll, at::TensorOptions().dtype(at::kFloat)));
        if (!old[i].logp_ref.defined()) any_ref = false;
        else lref.push_back(old[i].logp_ref);
        if (shift) po.push_back(old[i].prob);
      }
      in.logp_old = scatter_resp(lo, b, 0, dev);
      in.advantages = at::tensor(adv, at::TensorOptions().dtype(at::kFloat)).to(dev);
      in.mask = b.resp;
      if (all_roll) in.logp_roll = scatter_resp(lr, b, 0, dev);
      if (any_ref) in.logp_ref = scatter_resp(lref, b, 0, dev);
      in.entropy = hl.entropy;
      if (shift) {
        in.router_p_old = scatter_resp(po, b, 1, dev);
        in.router_p_new = fw.probs_at;
        // unshifted_frac: native top-K of the old pass against native top-K of the current router logits, in
        // every mode (under R3 old[i].idx is the rollout's routing: comparing against it would measure the
        // train-inference mismatch, not the router's policy drift).
        std::vector<at::Tensor> ni;
        for (size_t i : local) ni.push_back(old[i].native_idx);
        in.router_idx_old = scatter_resp(ni, b, 0, dev);
        in.router_idx_new = replayed ? native_topk(fw.router_logits.detach(), K) : fw.routing_indices;
      }
      if (cfg_.loss.aux_coef != 0) {
        // Switch loss of the native (un-replayed) scores, averaged over MoE layers, over every real token.
        at::Tensor rl = fw.router_logits;  // [B, T, L, E]
        at::Tensor nat = native_topk(rl.detach(), K);
        std::vector<at::Tensor> per_layer;
        for (int64_t l = 0; l < rl.size(2); ++l)
          per_layer.push_back(algo::load_balancing_loss(rl.select(2, l), nat.select(2, l), b.amask));
        in.aux_loss = per_layer.empty() ? at::zeros({}, at::kFloat) : at::stack(per_layer).mean();
      }
      // routing agreement of the rollout's routing with the old pass's native top-K, this mini-batch.
      {
        std::vector<at::Tensor> ri, ni;
        bool all = true;
        for (size_t i : local) {
          if (!seqs[i].rollout_routing.defined()) { all = false; break; }
          ri.push_back(seqs[i].rollout_routing.narrow(0, seqs[i].prompt.size() - 1, seqs[i].response.size()));
          ni.push_back(old[i].native_idx);
        }
        if (all) {
          algo::Metrics ra = algo::routing_agreement(scatter_resp(ri, b, 0, dev), scatter_resp(ni, b, 0, dev), b.resp);
          metrics.insert(ra.begin(), ra.end());
        }
      }

      if (!dp) {
        algo::LossOutputs lo_ = algo::compute_policy_loss(cfg_.loss, in);
        loss = lo_.loss;
        metrics.insert(lo_.metrics.begin(), lo_.metrics.end());
      } else {
        // Exact data parallel: every term is rescaled from this rank's denominator to the global one, so
        // that the sum of the ranks' gradients is the gradient of the single-process loss. Denominators of
        // token-mean and seq-mean aggregations count the tokens/rows that train (--rs-mask and --mis drops
        // removed), mirroring compute_policy_loss.
        algo::LossConfig c = cfg_.loss;
        const algo::Agg agg = algo::effective_agg(c);
        at::Tensor eff = b.resp > 0;
        if (c.router_shift && c.rs.mask_below > 0)
          eff = eff & algo::router_shift(in.router_p_old, in.router_p_new.detach(), in.mask, c.rs).keep;
        at::Tensor kept = at::zeros({}, eff.options().dtype(at::kLong));
        if (c.is.active() && in.logp_roll.defined()) {
          at::Tensor keep = algo::importance_weights(in.logp_old, in.logp_roll, in.mask, c.is).keep;
          eff = eff & keep;
          kept = ((b.resp > 0) & keep).sum();
        }
        // Local and global counts, reduced on the device and read back in one copy.
        at::Tensor local_den = at::stack({eff.sum(), eff.any(1).sum()}).to(at::kFloat);
        std::vector<at::Tensor> den{local_den.clone()};
        comm_->all_reduce_sum(den);
        at::Tensor counts = at::cat({local_den, den[0], kept.to(at::kFloat).view({1})}).to(at::kCPU, at::kDouble);
        const double* cnt = counts.data_ptr<double>();
        eff_tokens = cnt[0];
        const double eff_rows = cnt[1], g_tokens = cnt[2], g_rows = cnt[3];
        if (c.is.active() && in.logp_roll.defined()) kept_tokens = cnt[4];
        const double all_rows = static_cast<double>(local.size());
        // seq-mean-token-sum-norm: C is a constant (the same on every rank), so no reduction is needed.
        algo::LossConfig pc = c;
        pc.kl_coef = 0;
        pc.entropy_coef = 0;
        pc.aux_coef = 0;
        algo::LossOutputs lo_ = algo::compute_policy_loss(pc, in);
        metrics.insert(lo_.metrics.begin(), lo_.metrics.end());
        auto share = [](double l, double g) { return g > 0 ? l / g : 0.0; };
        double agg_scale = 1;
        if (agg == algo::Agg::token_mean) agg_scale = share(eff_tokens, g_tokens);
        else if (agg == algo::Agg::seq_mean_token_mean || agg == algo::Agg::seq_mean_token_sum) agg_scale = share(eff_rows, g_rows);
        const bool gmpo = c.algo == algo::Algo::gmpo || c.algo == algo::Algo::rspo;
        const double pg_scale = gmpo ? share(all_rows, static_cast<double>(global_rows)) : agg_scale;
        loss = lo_.loss * pg_scale;
        // pg_loss and kl become this rank's term of the single-process value: summed over ranks below.
        metrics["pg_loss"] *= pg_scale;
        if (metrics.count("kl")) metrics["kl"] *= agg_scale;
        if (c.kl_coef != 0)
          loss = loss + c.kl_coef * agg_scale * algo::aggregate(algo::kl_k3(logp, in.logp_ref), eff, agg, c.loss_scale);
        if (c.entropy_coef != 0)
          loss = loss - c.entropy_coef * agg_scale * algo::aggregate(hl.entropy, eff, agg, c.loss_scale);
        // The aux loss is per rank: each rank's Switch loss over its own tokens, averaged over ranks (f and P
        // are not all-reduced), so it equals the single-process one only when the ranks' routing statistics do.
        if (c.aux_coef != 0) loss = loss + c.aux_coef * in.aux_loss / static_cast<double>(comm_->world_size());
      }
    }
  } else {
    if (!dp) throw Error("update: empty mini-batch");
    // No sequences on this rank: contribute zero to the collectives the others make.
    if (impl_->ep) {
      // Expert parallel: the rank's experts still serve the group, so it runs an idle forward (and, below,
      // backward) in step with the others; its own gradient is zero.
      Batch b = idle_batch(dev);
      model::ForwardOptions fo;
      fo.hidden_only = true;
      fo.checkpoint_layers = cfg_.checkpoint_activations;
      impl_->ep->idle = true;
      try {
        idle_loss = model_->forward(b.input, b.amask, model::RoutingPlan::native(), fo).hidden.sum() * 0;
      } catch (...) {
        impl_->ep->idle = false;
        throw;
      }
      impl_->ep->idle = false;
    }
    if (!cfg_.sft) {
      std::vector<at::Tensor> den{at::zeros({2}, comm_->options())};
      comm_->all_reduce_sum(den);
    }
  }

  // The loss is checked after the backward pass, with the gradient norm, in one device-to-host copy; the
  // step is aborted before the optimizer touches a weight.
  const double t1 = clock();
  if (loss.defined() && loss.requires_grad()) loss.backward();
  if (idle_loss.defined()) {
    impl_->ep->idle = true;  // a recomputed layer (--checkpoint-activations) stays idle
    try {
      idle_loss.backward();
    } catch (...) {
      impl_->ep->idle = false;
      throw;
    }
    impl_->ep->idle = false;
  }

  std::vector<at::Tensor> params;
  for (size_t i = 0; i < trained_.size(); ++i) params.push_back(impl_->opt_param(trained_, i));
  if (!impl_->trained_master.empty()) {
    // Mixed precision: the compute dtype's gradients become the float32 masters' (summed over ranks there).
    for (size_t i = 0; i < trained_.size(); ++i) {
      at::Tensor& p = trained_[i].second;
      if (p.grad().defined()) params[i].mutable_grad() = p.grad().to(at::kFloat);
      else params[i].mutable_grad().reset();
      p.mutable_grad().reset();
    }
  }
  // Sum gradients of params[ix] over `scope`, and which parameters have one at all (an expert no rank routed
  // to stays without). `absent`: this rank's gradients do not count (an idle rank's zero shared gradients).
  auto reduce_grads = [&](const std::vector<size_t>& ix, Communicator::Scope scope, bool absent) {
    std::vector<at::Tensor> bufs;
    std::vector<float> has;
    for (size_t i : ix) has.push_back(!absent && params[i].grad().defined() ? 1.f : 0.f);
    bufs.push_back(at::tensor(has, at::kFloat).to(comm_->device()));  // on the gradients' device
    for (size_t i : ix) bufs.push_back(!absent && params[i].grad().defined() ? params[i].grad() : at::zeros_like(params[i]));
    comm_->all_reduce_sum(bufs, scope);
    at::Tensor any = bufs[0].to(at::kCPU);
    const float* any_grad = any.data_ptr<float>();
    for (size_t k = 0; k < ix.size(); ++k) {
      at::Tensor& p = params[ix[k]];
      if (any_grad[k] == 0.f) {
        p.mutable_grad().reset();
      } else {
        if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
        p.mutable_grad().copy_(bufs[k + 1]);
      }
    }
  };
  std::vector<size_t> shared_ix, expert_ix;
  for (size_t i = 0; i < params.size(); ++i) (impl_->ep && impl_->expert[i] ? expert_ix : shared_ix).push_back(i);
  if (dp) {
    // Expert parallel: shared parameters over the world; an expert's gradient (already holding every token of
    // its expert group, through the all-to-all's backward) over the ranks that own the same expert.
    reduce_grads(shared_ix, Communicator::Scope::world, idle_loss.defined());
    if (!expert_ix.empty() && comm_->replica_count() > 1) reduce_grads(expert_ix, Communicator::Scope::replicas, false);
  }
  const double t2 = clock();
  const char* dump = std::getenv("MOEKIT_TRAIN_GRAD_DUMP");
  std::vector<std::pair<std::string, at::Tensor>> dumped_experts;
  if (dump && *dump && impl_->ep && comm_->rank() < comm_->ep_size()) {
    // Expert parallel: rank 0 gathers every expert's gradient from its expert group (the variable must then
    // be set on every rank).
    std::vector<std::pair<std::string, at::Tensor>> l;
    std::vector<std::vector<int64_t>> sh;
    for (size_t i : expert_ix) {
      l.emplace_back(trained_[i].first, params[i].grad());
      sh.push_back(params[i].sizes().vec());
    }
    dumped_experts = gather_experts(*comm_, model_->config().num_experts / comm_->ep_size(), l, sh);
  }
  if (dump && *dump && (!comm_ || comm_->rank() == 0)) {
    // Test hook (tests/cli/train.bats): the all-reduced gradient of this update, before clipping, as
    // PREFIX.<optimizer step>.safetensors, so 1, 2 and 3 processes can be compared gradient to gradient.
    std::vector<std::pair<std::string, at::Tensor>> g;
    for (size_t i = 0; i < params.size(); ++i)  // the float32 masters' gradients under --dtype bf16
      if (params[i].grad().defined() && !(impl_->ep && impl_->expert[i]))
        g.emplace_back(trained_[i].first, params[i].grad().detach().to(at::kCPU, at::kFloat).contiguous());
    for (auto& e : dumped_experts) g.emplace_back(e.first, e.second.contiguous());
    model::write_safetensors(std::string(dump) + "." + std::to_string(global_step_ + 1) + ".safetensors", g,
                             {{"producer", "moe-train-step MOEKIT_TRAIN_GRAD_DUMP"}});
  }
  // Global L2 norm, clipped as torch.nn.utils.clip_grad_norm_ does.
  double norm = 0, local_loss = 0;
  {
    at::NoGradGuard ng;
    std::vector<at::Tensor> grads, expert_grads;
    for (size_t i : shared_ix)
      if (params[i].grad().defined()) grads.push_back(params[i].grad());
    for (size_t i : expert_ix)
      if (params[i].grad().defined()) expert_grads.push_back(params[i].grad());
    at::Tensor total = grad_global_norm(grads, dev);
    bool any_grad = !grads.empty();
    if (impl_->ep) {
      // The true global norm: shared parameters once (the same on every rank) plus the squares of every
      // expert, summed over the expert group (each expert once there).
      std::vector<at::Tensor> sq{grad_global_norm(expert_grads, dev).pow(2).reshape({1})};
      comm_->all_reduce_sum(sq, Communicator::Scope::expert_group);
      total = (total.pow(2) + sq[0].reshape({}).to(total.device())).sqrt();
      any_grad = true;  // clip this rank's shared gradients too, even without expert gradients
    }
    at::Tensor l = loss.defined() ? loss.detach().to(at::kDouble).reshape({}).to(dev) : at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(dev));
    std::vector<at::Tensor> parts{l.reshape({1}), total.to(at::kDouble).reshape({1})};
    if (sft_stats.defined()) parts.push_back(sft_stats.to(dev));
    at::Tensor host = at::cat(parts).to(at::kCPU).contiguous();  // the step's one sync
    const double* hv = host.data_ptr<double>();
    local_loss = hv[0];
    norm = hv[1];
    if (sft_stats.defined()) {
      metrics["sft_loss"] = hv[2];
      metrics["entropy"] = hv[3] / std::max(1.0, local_tokens);
    }
    if (!std::isfinite(local_loss))
      throw Error("non-finite loss (" + std::to_string(local_loss) + ") at optimizer step " + std::to_string(global_step_ + 1) +
                  ": step aborted, checkpoint left untouched");
    if (!std::isfinite(norm))
      throw Error("non-finite gradient norm at optimizer step " + std::to_string(global_step_ + 1) +
                  ": step aborted, checkpoint left untouched");
    if (any_grad) {
      if (cfg_.optim.grad_clip > 0) {
        at::Tensor coef = at::clamp(cfg_.optim.grad_clip / (total + 1e-6), c10::nullopt, 1.0);
        for (auto& p : params)
          if (p.grad().defined()) p.grad().mul_(coef);
      }
    }
  }
  const double lr = scheduled_lr(cfg_.optim, global_step_);
  for (auto& g : impl_->opt->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
  adamw_step(*impl_->opt);  // torch::optim::AdamW::step in one pass per tensor
  if (!impl_->trained_master.empty()) {
    at::NoGradGuard ng;
    for (size_t i = 0; i < trained_.size(); ++i) trained_[i].second.detach().copy_(impl_->trained_master[i]);
  }
  ++global_step_;
  const double t3 = clock();

  metrics["loss"] = local_loss;
  if (dp) {
    const double l_tokens = local_tokens;
    reduce_metrics(metrics, *comm_, [&](DpReduce how) {
      switch (how) {
        case DpReduce::eff_tokens: return eff_tokens;
        case DpReduce::kept_tokens: return kept_tokens;
        default: return l_tokens;
      }
    });
  }
  metrics["grad_norm"] = norm;
  metrics["time/forward"] = t1 - t0;    // forward + loss
  metrics["time/backward"] = t2 - t1;   // backward + gradient all-reduce
  metrics["time/optimizer"] = t3 - t2;  // clip + AdamW
  metrics["lr"] = lr;
  metrics["tokens"] = static_cast<double>(global_tokens);
  metrics["response_len_max"] = static_cast<double>(global_max_len);
  metrics["step"] = static_cast<double>(global_step_);
  return metrics;
}

}  // namespace moe::train
