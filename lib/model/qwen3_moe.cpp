#include "moe/model/qwen3_moe.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/version.h>
#include <torch/cuda.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <set>
#include <regex>
#include <tuple>
#include <utility>

#include "moe/algo/router.h"
#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/model/checkpoint_files.h"
#include "moe/model/checkpoint_shards.h"
#include "moe/model/safetensors.h"
#include "model/checkpoint.h"
#include "moe/model/few_rows.h"

// at::scaled_dot_product_attention (libtorch >= 2.1, with its scale argument) and at::_grouped_mm
// (>= 2.9); Debian's libtorch 1.13 has neither.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
#define MOE_HAVE_SDPA 1
#endif
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
#define MOE_HAVE_GROUPED_MM 1
#endif

namespace moe::model {
namespace {

std::string shape_str(at::IntArrayRef s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

at::Tensor rotate_half(const at::Tensor& x) {
  int64_t h = x.size(-1) / 2;
  return at::cat({-x.slice(-1, h), x.slice(-1, 0, h)}, -1);
}

void check_plan_tensor(const at::Tensor& t, const char* what, int64_t B, int64_t T, int64_t L, int64_t last) {
  if (!t.defined()) throw Error(std::string("routing plan: ") + what + " missing");
  std::vector<int64_t> want{B, T, L, last};
  if (t.sizes().vec() != want)
    throw Error(std::string("routing plan: ") + what + " has shape " + shape_str(t.sizes()) + ", expected " + shape_str(want));
}
}  // namespace

// ---- KVCache ----
namespace {
constexpr size_t kHugePage = size_t{2} << 20;

// A KV cache's tensors (shapes, one dtype), on the CPU carved from one mapping aligned to 2 MiB and advised
// as huge pages (where transparent huge pages are "madvise", Debian's default) when they fill at least one.
// A decode step writes each new key's dimensions far apart (the keys lie transposed) and reads every row's
// cache: with 4 KiB pages a batch-256 cache spans thousands of pages (perf: the cache write's share of a
// batch-256 step 7.6% -> 5.7% on huge pages). Else (other devices, smaller, no mapping) at::empty each.
std::vector<at::Tensor> empty_cache(const std::vector<std::vector<int64_t>>& shapes, const at::TensorOptions& o) {
  const size_t es = c10::elementSize(c10::typeMetaToScalarType(o.dtype()));
  std::vector<size_t> off;  // in elements, each tensor at a 64-byte boundary
  size_t total = 0;
  for (const auto& sh : shapes) {
    off.push_back(total / es);
    total += (static_cast<size_t>(c10::multiply_integers(sh)) * es + 63) / 64 * 64;
  }
  std::vector<at::Tensor> out;
  void* m = MAP_FAILED;
  const size_t len = (total + kHugePage - 1) / kHugePage * kHugePage, map = len + kHugePage;
  if (o.device().is_cpu() && total >= kHugePage) m = mmap(nullptr, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) {
    for (const auto& sh : shapes) out.push_back(at::empty(sh, o));
    return out;
  }
  char* p = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(m) + kHugePage - 1) / kHugePage * kHugePage);
  madvise(p, len, MADV_HUGEPAGE);  // advice: no error matters
  at::Tensor buf = at::from_blob(p, {static_cast<int64_t>(len / es)}, [m, map](void*) { munmap(m, map); }, o);
  for (size_t i = 0; i < shapes.size(); ++i)
    out.push_back(buf.narrow(0, static_cast<int64_t>(off[i]), c10::multiply_integers(shapes[i])).view(shapes[i]));
  return out;
}

// t's storage as it lies ([B, ...] contiguous: keys that lie transposed seen untransposed).
at::Tensor cache_storage(const at::Tensor& t) { return t.stride(3) != 1 ? t.transpose(2, 3) : t; }
at::Tensor cache_view(const at::Tensor& s, const at::Tensor& like) { return like.stride(3) != 1 ? s.transpose(2, 3) : s; }
}  // namespace

void KVCache::select_rows(const at::Tensor& rows) {
  // Keys may lie transposed (see forward); the selection keeps each tensor's layout. On the CPU, rows in
  // ascending order (finished sequences dropped) move down in place, so the cache keeps its pages; else
  // the rows are gathered into a new cache.
  const int64_t n = rows.numel();
  bool in_place = mask.defined() && mask.device().is_cpu();  // (never a device's rows read on the host)
  at::Tensor r = in_place ? rows.to(at::kCPU, at::kLong).contiguous() : at::Tensor();
  const int64_t* rp = in_place ? r.data_ptr<int64_t>() : nullptr;
  for (int64_t i = 0; i < n && in_place; ++i) in_place = rp[i] >= i && rp[i] < mask.size(0) && (i == 0 || rp[i] > rp[i - 1]);
  std::vector<at::Tensor*> all;
  for (auto& t : k) all.push_back(&t);
  for (auto& t : v) all.push_back(&t);
  for (at::Tensor* t : all) in_place = in_place && cache_storage(*t).is_contiguous();
  if (in_place) {
    for (at::Tensor* t : all) {
      at::Tensor s = cache_storage(*t);
      const int64_t row = s.stride(0) * static_cast<int64_t>(s.element_size());
      char* base = static_cast<char*>(s.data_ptr());
      for (int64_t i = 0; i < n; ++i)
        if (rp[i] != i) std::memcpy(base + i * row, base + rp[i] * row, row);  // rp[i] > i: disjoint rows
      *t = cache_view(s.narrow(0, 0, n), *t);
    }
  } else if (!all.empty()) {
    std::vector<std::vector<int64_t>> shapes;
    for (at::Tensor* t : all) {
      shapes.push_back(cache_storage(*t).sizes().vec());
      shapes.back()[0] = n;
    }
    std::vector<at::Tensor> d = empty_cache(shapes, all[0]->options());
    for (size_t i = 0; i < all.size(); ++i) {
      at::Tensor s = cache_storage(*all[i]);
      at::index_select_out(d[i], s, 0, rows.to(s.device()));
      *all[i] = cache_view(d[i], *all[i]);
    }
  }
  if (mask.defined()) mask = mask.index_select(0, rows.to(mask.device()));
}

bool grouped_mm_available() {
#ifdef MOE_HAVE_GROUPED_MM
  return true;
#else
  return false;
#endif
}

// ---- building blocks ----
RMSNormImpl::RMSNormImpl(int64_t dim, double eps_) : eps(eps_) { weight = register_parameter("weight", at::ones({dim})); }

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  if (at::Tensor y = rms_norm_rows(x, weight, eps); y.defined()) return y;  // the CPU, float32: one pass
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, true);
  xf = xf * at::rsqrt(var + eps);
  return weight * xf.to(x.scalar_type());
}

namespace {
// The largest weight (an expert's three together) generation keeps a packed copy of: larger ones stream from
// memory either way, and copies of them would double a large model's resident weights.
constexpr int64_t kPackedMaxBytes = int64_t{4} << 20;
}  // namespace

LinearImpl::LinearImpl(int64_t in, int64_t out, bool with_bias) {
  weight = register_parameter("weight", at::empty({out, in}));
  if (with_bias) bias = register_parameter("bias", at::zeros({out}));
}
at::Tensor LinearImpl::forward(const at::Tensor& x) {
  if (packed_ && !at::GradMode::is_enabled()) {
    if (!wp_.defined() && 4 * weight.numel() <= kPackedMaxBytes) wp_ = pack_weight(weight);
    if (at::Tensor y = linear_packed(x, wp_, bias); y.defined()) return y;
  }
  return linear_rows(x, weight, bias);
}

void LinearImpl::set_packed(bool on) {
  packed_ = on;
  wp_ = PackedWeight();
}

MlpImpl::MlpImpl(int64_t hidden, int64_t inner) {
  gate_proj = register_module("gate_proj", Linear(hidden, inner, false));
  up_proj = register_module("up_proj", Linear(hidden, inner, false));
  down_proj = register_module("down_proj", Linear(inner, hidden, false));
}
at::Tensor MlpImpl::forward(const at::Tensor& x) {
  // The CPU, float32: one node (swiglu_rows); else the modules.
  if (at::Tensor y = swiglu_rows(x, gate_proj->weight, up_proj->weight, down_proj->weight); y.defined()) return y;
  return down_proj(at::silu(gate_proj(x)) * up_proj(x));
}

SparseMoeImpl::SparseMoeImpl(const ModelConfig& c, ExpertShard shard)
    : num_experts(c.num_experts), top_k(c.num_experts_per_tok), norm_topk_prob(c.norm_topk_prob) {
  if (shard.size < 1 || shard.rank < 0 || shard.rank >= shard.size || c.num_experts % shard.size != 0)
    throw UsageError("expert parallel: " + std::to_string(c.num_experts) + " experts cannot be split over " +
                     std::to_string(shard.size) + " ranks (the size must divide the number of experts)");
  const int64_t per = c.num_experts / shard.size;
  first_expert = shard.rank * per;
  gate = register_module("gate", Linear(c.hidden_size, c.num_experts, false));
  auto list = register_module("experts", std::make_shared<torch::nn::Module>());
  for (int64_t e = first_expert; e < first_expert + per; ++e)
    experts.push_back(list->register_module(std::to_string(e), Mlp(c.hidden_size, c.moe_intermediate_size)));
}

void SparseMoeImpl::fuse_experts() {
  const int64_t E = static_cast<int64_t>(experts.size());
  // Still views of the fused tensors? (Pointer arithmetic only: this runs every forward.)
  bool ok = gate_up_w_.defined() && gate_up_w_.scalar_type() == experts[0]->gate_proj->weight.scalar_type();
  if (ok) {
    const int64_t I = down_w_.size(2), H = down_w_.size(1), es = gate_up_w_.element_size();
    const char* gu = static_cast<const char*>(gate_up_w_.data_ptr());
    const char* dn = static_cast<const char*>(down_w_.data_ptr());
    for (int64_t e = 0; ok && e < E; ++e) {
      const auto& x = experts[e];
      ok = x->gate_proj->weight.data_ptr() == gu + es * (e * 2 * I * H) &&
           x->up_proj->weight.data_ptr() == gu + es * (e * 2 * I * H + I * H) &&
           x->down_proj->weight.data_ptr() == dn + es * (e * H * I);
    }
  }
  if (ok) return;
  at::NoGradGuard ng;
  std::vector<at::Tensor> gu, dn;
  for (auto& x : experts) {
    gu.push_back(at::cat({x->gate_proj->weight, x->up_proj->weight}, 0));
    dn.push_back(x->down_proj->weight);
  }
  gate_up_w_ = at::stack(gu);
  down_w_ = at::stack(dn);
  // The parameters become views of the fused tensors (same TensorImpl, so optimizer state stays attached).
  const int64_t I = experts[0]->gate_proj->weight.size(0);
  for (int64_t e = 0; e < E; ++e) {
    experts[e]->gate_proj->weight.set_data(gate_up_w_[e].narrow(0, 0, I));
    experts[e]->up_proj->weight.set_data(gate_up_w_[e].narrow(0, I, I));
    experts[e]->down_proj->weight.set_data(down_w_[e]);
  }
}

at::Tensor SparseMoeImpl::run_expert(size_t e, const at::Tensor& xe, bool transposed) {
  // The copies only where they serve: CPU float32 weights, more rows than linear_rows' kernel takes, and an
  // expert of at most kPackedMaxBytes (a tiny-preset MoE layer ran 1.2-1.8x the loop at 16-256 tokens by
  // bench_decode experts).
  const Mlp& m = experts[e];
  const at::Tensor& wg = m->gate_proj->weight;
  const int64_t bytes = 4 * (wg.numel() + m->up_proj->weight.numel() + m->down_proj->weight.numel());
  if (transposed && xe.size(0) > kLinearRowsKernelRows && bytes <= kPackedMaxBytes && wg.device().is_cpu() &&
      wg.scalar_type() == at::kFloat) {
    if (wt_.size() != 3 * experts.size()) wt_.assign(3 * experts.size(), PackedWeight());
    PackedWeight* t = &wt_[3 * e];
    if (!t[0].defined()) {
      t[0] = pack_weight(m->gate_proj->weight);
      t[1] = pack_weight(m->up_proj->weight);
      t[2] = pack_weight(m->down_proj->weight);
    }
    if (at::Tensor y = swiglu_packed(xe, t[0], t[1], t[2]); y.defined()) return y;
  }
  return experts[e]->forward(xe);
}

// slot_expert [N*k]: the expert of each (row, slot), or E for a slot that runs no expert (padding).
at::Tensor SparseMoeImpl::dispatch_loop(const at::Tensor& x, const at::Tensor& slot_expert, const at::Tensor& gating,
                                        bool transposed) {
  const int64_t E = num_experts, K = top_k;
  // Sort the (row, slot) pairs by expert (stable: rows ascending within an expert); each expert runs on one
  // contiguous block of the gathered rows.
  at::Tensor order = std::get<1>(at::sort(slot_expert, /*stable=*/true, 0, false));
  at::Tensor counts = at::bincount(slot_expert, {}, E + 1).to(at::kCPU);
  const int64_t* cnt = counts.data_ptr<int64_t>();
  const int64_t n_run = slot_expert.size(0) - cnt[E];
  if (n_run == 0) return at::zeros_like(x);
  order = order.narrow(0, 0, n_run);
  at::Tensor token = at::div(order, K, "floor");
  at::Tensor xs = x.index_select(0, token);
  at::Tensor weight = gating.reshape({-1}).index_select(0, order).unsqueeze(1);
  at::Tensor ys;
  if (!transposed) {
    // The CPU in float32: every expert's block in one node and one buffer (swiglu_blocks).
    std::vector<int64_t> rows;
    std::vector<at::Tensor> w;
    for (int64_t e = 0; e < E; ++e)
      if (cnt[e] > 0) {
        rows.push_back(cnt[e]);
        for (const Linear* l : {&experts[e]->gate_proj, &experts[e]->up_proj, &experts[e]->down_proj}) w.push_back((*l)->weight);
      }
    ys = swiglu_blocks(xs, rows, w);
  }
  if (!ys.defined()) {
    // One split into every expert's block, not a narrow per expert: the backward of a narrow fills a zero
    // tensor the size of all of xs and adds its block in, so E narrows cost E times xs in the backward (the
    // largest part of a train step at 64 experts); a split's backward concatenates the blocks' gradients once.
    std::vector<at::Tensor> blocks = xs.split_with_sizes(at::IntArrayRef(cnt, E), 0);
    std::vector<at::Tensor> parts;
    for (int64_t e = 0; e < E; ++e)
      if (cnt[e] > 0) parts.push_back(run_expert(e, blocks[e], transposed));
    ys = parts.size() == 1 ? parts[0] : at::cat(parts, 0);
  }
  // Both add in index order: each row sums its experts in ascending expert order, as a loop would.
  if (at::Tensor y = scatter_weighted_rows(x.size(0), token, weight, ys); y.defined()) return y;  // CPU float32
  return at::zeros_like(x).index_add_(0, token, ys * weight);
}

// No host copy: every expert gets a block of C = N rows (an expert is chosen at most once per row), filled
// at each slot's rank among its expert's slots.
at::Tensor SparseMoeImpl::dispatch_padded(const at::Tensor& x, const at::Tensor& slot_expert, const at::Tensor& gating,
                                          bool grouped) {
  const int64_t E = num_experts, K = top_k, N = x.size(0), H = x.size(1), I = down_w_.size(2);
  auto lopt = slot_expert.options();
  at::Tensor order = std::get<1>(at::sort(slot_expert, /*stable=*/true, 0, false));
  at::Tensor sorted_e = slot_expert.index_select(0, order);
  at::Tensor counts = at::bincount(slot_expert, {}, E + 1);
  at::Tensor start = counts.cumsum(0) - counts;                                     // [E + 1]
  at::Tensor rank = at::arange(N * K, lopt) - start.index_select(0, sorted_e);       // within its expert
  at::Tensor real = sorted_e.lt(E);
  at::Tensor token = at::div(order, K, "floor");
  at::Tensor weight = gating.reshape({-1}).index_select(0, order).mul(real.to(gating.scalar_type())).unsqueeze(1);
  at::Tensor ys;
#ifdef MOE_HAVE_GROUPED_MM
  if (grouped) {
    // Rows sorted by expert, padding slots last (never read: the offsets stop before them).
    at::Tensor xs = x.index_select(0, token);
    at::Tensor offs = counts.narrow(0, 0, E).cumsum(0).to(at::kInt);
    at::Tensor gu = at::_grouped_mm(xs, gate_up_w_.transpose(1, 2), offs);  // [N*K, 2I]
    at::Tensor h = at::silu(gu.narrow(1, 0, I)) * gu.narrow(1, I, I);
    ys = at::_grouped_mm(h, down_w_.transpose(1, 2), offs);                  // [N*K, H]
    ys = ys * weight;  // rows past the offsets are garbage, weight 0 there
    ys = at::where(real.unsqueeze(1), ys, at::zeros({}, ys.options()));
    return at::zeros_like(x).index_add_(0, token, ys);
  }
#else
  (void)grouped;
#endif
  at::Tensor dest = at::where(real, sorted_e * N + rank, at::full({}, E * N, lopt));  // padding -> spare block
  at::Tensor xp = at::zeros({(E + 1) * N, H}, x.options());
  xp.index_copy_(0, dest, x.index_select(0, token));
  at::Tensor xe = xp.narrow(0, 0, E * N).view({E, N, H});
  at::Tensor gu = at::bmm(xe, gate_up_w_.transpose(1, 2));  // [E, N, 2I]
  at::Tensor h = at::silu(gu.narrow(2, 0, I)).mul_(gu.narrow(2, I, I));
  at::Tensor y = at::bmm(h, down_w_.transpose(1, 2)).view({E * N, H});
  ys = y.index_select(0, dest.clamp_max(E * N - 1)) * weight;  // padding slots: weight 0
  return at::zeros_like(x).index_add_(0, token, ys);
}

MoeLayerOutput SparseMoeImpl::forward(const at::Tensor& x, RouterMode mode, const at::Tensor& indices,
                                      const at::Tensor& given_logits, const at::Tensor& valid, const at::Tensor& probs_at,
                                      bool want_logits, bool want_capture, const at::Tensor& run_rows, bool differentiable) {
  const int64_t E = num_experts, K = top_k;
  at::Tensor w = mode == RouterMode::frozen ? gate->weight.detach() : gate->weight;
  at::Tensor logits = at::linear(x, w);                 // [N, E] model dtype
  // Router softmax in fp32 (float64 only for a float64 model, e.g. in gradient checks).
  const auto rt = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor probs = at::softmax(logits, -1, rt);
  at::Tensor sel, sel_probs;
  if (mode == RouterMode::logits) {
    at::Tensor gp = at::softmax(given_logits.detach(), -1, rt);
    auto top = gp.topk(K, -1);
    sel = std::get<1>(top);
    sel_probs = std::get<0>(top);
  } else if (mode == RouterMode::replay) {
    sel = indices;
    if (valid.defined()) {
      // Rows without a valid replay entry (padding) route natively.
      at::Tensor native = std::get<1>(probs.detach().topk(K, -1));
      sel = at::where(valid.unsqueeze(1), sel, native);
    }
    sel_probs = probs.gather(1, sel).detach();  // capture only
  } else {
    auto top = probs.topk(K, -1);
    sel = std::get<1>(top);
    sel_probs = std::get<0>(top);
  }
  // Replay gating is algo::replay_gating, the one implementation of algorithms.md's rule (indices are
  // checked once per forward above, so not again here).
  at::Tensor gating = mode == RouterMode::replay ? algo::replay_gating(logits, sel, norm_topk_prob, /*validate=*/false)
                      : norm_topk_prob           ? sel_probs / sel_probs.sum(-1, true)
                                                 : sel_probs;
  gating = gating.to(x.scalar_type());

  at::Tensor slot_expert = sel.reshape({-1});
  if (run_rows.defined())
    slot_expert = at::where(run_rows.unsqueeze(1).expand({x.size(0), K}).reshape({-1}), slot_expert,
                            at::full({}, E, slot_expert.options()));
  const bool grad = differentiable || (at::GradMode::is_enabled() && (x.requires_grad() || gate->weight.requires_grad()));
  at::Tensor out;
  if (static_cast<int64_t>(experts.size()) != E) {
    if (!ep) throw Error("expert parallel: a sharded MoE layer has no expert-parallel group");
    out = dispatch_ep(x, slot_expert, gating, !grad && kernel == ExpertKernel::transposed);
  } else if (grad) {
    out = dispatch_loop(x, slot_expert, gating);
  } else {
    // The loop runs the same operations as with gradients: an old-policy pass equals the training forward
    // bit for bit (the on-policy ratio is exactly 1). transposed: generation only (rollout::TransposedExperts).
    if (kernel == ExpertKernel::loop || kernel == ExpertKernel::transposed) {
      out = dispatch_loop(x, slot_expert, gating, kernel == ExpertKernel::transposed);
    } else {
      fuse_experts();
      out = dispatch_padded(x, slot_expert, gating, kernel == ExpertKernel::grouped);
    }
  }

  MoeLayerOutput r;
  r.hidden = out;
  if (want_capture) {
    r.indices = sel.detach();
    r.probs = sel_probs.detach().to(at::kFloat);
  }
  if (probs_at.defined()) r.probs_at = probs.gather(1, probs_at).to(at::kFloat);
  if (want_logits) r.router_logits = logits.to(at::kFloat);
  return r;
}

AttentionImpl::AttentionImpl(const ModelConfig& c)
    : heads(c.num_attention_heads), kv_heads(c.num_key_value_heads), head_dim(c.head_dim) {
  q_proj = register_module("q_proj", Linear(c.hidden_size, heads * head_dim, c.attention_bias));
  k_proj = register_module("k_proj", Linear(c.hidden_size, kv_heads * head_dim, c.attention_bias));
  v_proj = register_module("v_proj", Linear(c.hidden_size, kv_heads * head_dim, c.attention_bias));
  o_proj = register_module("o_proj", Linear(heads * head_dim, c.hidden_size, c.attention_bias));
  q_norm = register_module("q_norm", RMSNorm(head_dim, c.rms_norm_eps));
  k_norm = register_module("k_norm", RMSNorm(head_dim, c.rms_norm_eps));
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& allowed,
                                  const at::Tensor& cache_k, const at::Tensor& cache_v, int64_t past) {
  const int64_t B = x.size(0), T = x.size(1);
  at::Tensor qx = q_proj(x).view({B, T, heads, head_dim}), kx = k_proj(x).view({B, T, kv_heads, head_dim});
  // The CPU in float32: norm and rotary embedding in one pass per row, written in the heads' layout.
  at::Tensor q = norm_rope_rows(qx, q_norm->weight, cos, sin, q_norm->eps);
  at::Tensor k = norm_rope_rows(kx, k_norm->weight, cos, sin, k_norm->eps);
  at::Tensor v = v_proj(x).view({B, T, kv_heads, head_dim}).transpose(1, 2);
  if (!q.defined() || !k.defined()) {
    at::Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1);
    q = q_norm(qx).transpose(1, 2);
    k = k_norm(kx).transpose(1, 2);
    q = q * c + rotate_half(q) * s;
    k = k * c + rotate_half(k) * s;
  }
  if (cache_k.defined()) {
    // Written in place: the cache never moves (it was sized for the whole generation).
    // (On the CPU in float32 by plain loops: copy_ into the transposed keys' view took 18 ns per element at
    // decode, 6% of a batch-256 step.)
    if (!copy_4d(cache_k.narrow(2, past, T), k)) cache_k.narrow(2, past, T).copy_(k);
    if (!copy_4d(cache_v.narrow(2, past, T), v)) cache_v.narrow(2, past, T).copy_(v);
    k = cache_k.narrow(2, 0, past + T);
    v = cache_v.narrow(2, 0, past + T);
  }
  const int64_t S = k.size(2), rep = heads / kv_heads;
  // Grouped-query attention: query head h uses key/value head h / rep (transformers' repeat_kv), so the rep
  // query heads of a group become rep * T query rows against the group's keys; nothing is repeated.
  at::Tensor qg = q.reshape({B, kv_heads, rep * T, head_dim});
  at::Tensor o;
#ifdef MOE_HAVE_SDPA
  {
    at::Tensor m = allowed.unsqueeze(2).expand({B, 1, rep, T, S}).reshape({B, 1, rep * T, S});
    o = at::scaled_dot_product_attention(qg, k, v, m, 0.0, false, 1.0 / std::sqrt(static_cast<double>(head_dim)));
  }
#else
  o = attention_blocks(qg, k, v, allowed, T, 1.0 / std::sqrt(static_cast<double>(head_dim)));  // the CPU, float32
  if (!o.defined()) {
    at::Tensor scores = at::matmul(qg, k.transpose(2, 3)).mul_(1.0 / std::sqrt(static_cast<double>(head_dim)));
    scores.view({B, kv_heads, rep, T, S}).masked_fill_(allowed.logical_not().unsqueeze(2), -std::numeric_limits<double>::infinity());
    at::Tensor attn = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
    o = at::matmul(attn, v);  // [B, kvH, rep * T, D]
  }
#endif
  o = o.reshape({B, heads, T, head_dim}).transpose(1, 2).reshape({B, T, heads * head_dim});
  return o_proj(o);
}

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, int64_t layer, ExpertShard shard) {
  self_attn = register_module("self_attn", Attention(c));
  if (c.is_moe_layer(layer))
    moe = register_module("mlp", SparseMoe(c, shard));
  else
    dense = register_module("mlp", Mlp(c.hidden_size, c.intermediate_size));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

// ---- the model ----
Qwen3MoeImpl::Qwen3MoeImpl(const ModelConfig& c, ExpertShard shard) : cfg_(c), shard_(shard), moe_layers_(c.moe_layer_ids()) {
  model_ = register_module("model", std::make_shared<torch::nn::Module>());
  auto embed = model_->register_module("embed_tokens", std::make_shared<torch::nn::Module>());
  embed_weight = embed->register_parameter("weight", at::empty({c.vocab_size, c.hidden_size}));
  auto list = model_->register_module("layers", std::make_shared<torch::nn::Module>());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers.push_back(list->register_module(std::to_string(i), DecoderLayer(c, i, shard)));
  norm = model_->register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  if (!c.tie_word_embeddings) lm_head = register_module("lm_head", Linear(c.hidden_size, c.vocab_size, false));
  // inv_freq = 1 / theta^(2i / d) in fp32, as transformers' default rope init.
  at::Tensor ex = at::arange(0, c.head_dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(c.head_dim);
  inv_freq_ = 1.0 / at::pow(c.rope_theta, ex);
}

void Qwen3MoeImpl::set_expert_parallel(std::shared_ptr<ExpertParallel> ep) {
  if (ep && (ep->size() != shard_.size || ep->rank() != shard_.rank))
    throw Error("expert parallel: the group (rank " + std::to_string(ep->rank()) + " of " + std::to_string(ep->size()) +
                ") does not match the model's expert shard (" + std::to_string(shard_.rank) + " of " + std::to_string(shard_.size) + ")");
  for (auto& l : layers)
    if (l->moe) l->moe->ep = ep;
}

std::vector<at::Tensor> Qwen3MoeImpl::router_parameters() {
  std::vector<at::Tensor> r;
  for (auto& l : layers)
    if (l->moe) r.push_back(l->moe->gate->weight);
  return r;
}

void Qwen3MoeImpl::set_expert_kernel(ExpertKernel k) {
  if (k == ExpertKernel::grouped && !grouped_mm_available()) k = ExpertKernel::padded;
  const bool packed = k == ExpertKernel::transposed;
  for (auto& l : layers) {
    if (l->moe) {
      l->moe->kernel = k;
      if (!packed) l->moe->drop_transposed();
      l->moe->gate->set_packed(packed);
    }
    for (Linear* p : {&l->self_attn->q_proj, &l->self_attn->k_proj, &l->self_attn->v_proj, &l->self_attn->o_proj}) (*p)->set_packed(packed);
  }
  if (lm_head) lm_head->set_packed(packed);
}

ExpertKernel Qwen3MoeImpl::expert_kernel() const {
  for (const auto& l : layers)
    if (l->moe) return l->moe->kernel;
  return ExpertKernel::loop;
}

void Qwen3MoeImpl::choose_expert_kernel() {
  // at::_grouped_mm runs bf16 on CUDA; other accelerator cases pad (no host copy either way).
  if (embed_weight.device().is_cpu())
    set_expert_kernel(ExpertKernel::loop);
  else
    set_expert_kernel(embed_weight.device().is_cuda() && embed_weight.scalar_type() == at::kBFloat16 ? ExpertKernel::grouped
                                                                                                     : ExpertKernel::padded);
}

at::Tensor Qwen3MoeImpl::lm_head_weight() { return lm_head ? lm_head->weight : embed_weight; }

namespace {

// What one decoder layer needs besides its input: rotary tables, the attention mask, and the layer's slice of
// the routing plan (undefined tensors for a dense layer).
struct LayerArgs {
  at::Tensor cos, sin, allowed;
  int64_t N;
  at::Tensor indices, logits, valid, probs_at, run_rows;
  RouterMode mode;
  bool want_logits, want_capture;
  bool differentiable;  // SparseMoe::forward's kernel choice
};

struct LayerOutput {
  at::Tensor hidden, normed, indices, probs, probs_at, router_logits;
};

// {h + a, n(h + a)}: the residual add and the norm after it in one pass where the kernel applies.
std::pair<at::Tensor, at::Tensor> add_norm(const at::Tensor& h, const at::Tensor& a, RMSNormImpl& n) {
  if (std::vector<at::Tensor> r = add_rms_norm_rows(h, a, n.weight, n.eps); !r.empty()) return {r[0], r[1]};
  at::Tensor x = h + a;
  return {x, n.forward(x)};
}

// One decoder layer: attention (into the KV cache when cache_k is defined), then the MoE or dense MLP, each
// with its residual. The one body of the plain and the activation-checkpointed paths. hn is
// input_layernorm(h) when the caller has it (the layer before computed it with its residual add), else
// undefined; with next (the norm that follows: the next layer's input_layernorm or the final norm), the last
// residual add and that norm run as one, o.normed = next(o.hidden).
LayerOutput run_layer(DecoderLayer layer, const at::Tensor& h, const at::Tensor& hn, RMSNormImpl* next, const LayerArgs& a,
                      const at::Tensor& cache_k = {}, const at::Tensor& cache_v = {}, int64_t past = 0) {
  at::Tensor attn = layer->self_attn->forward(hn.defined() ? hn : layer->input_layernorm(h), a.cos, a.sin, a.allowed, cache_k, cache_v, past);
  auto [x, y] = add_norm(h, attn, *layer->post_attention_layernorm);
  at::Tensor mlp;
  LayerOutput o;
  if (!layer->moe) {
    mlp = layer->dense(y);
  } else {
    MoeLayerOutput r = layer->moe->forward(y.reshape({a.N, -1}), a.mode, a.indices, a.logits, a.valid, a.probs_at, a.want_logits,
                                           a.want_capture, a.run_rows, a.differentiable);
    mlp = r.hidden.view(x.sizes());
    o.indices = r.indices;
    o.probs = r.probs;
    o.probs_at = r.probs_at;
    o.router_logits = r.router_logits;
  }
  if (next) std::tie(o.hidden, o.normed) = add_norm(x, mlp, *next);
  else o.hidden = x + mlp;
  return o;
}

}  // namespace

ForwardOutput Qwen3MoeImpl::forward(const at::Tensor& input_ids, const at::Tensor& attention_mask, const RoutingPlan& plan,
                                    const ForwardOptions& opt, KVCache* cache) {
  if (input_ids.dim() != 2) throw Error("forward: input_ids must be [batch, time], got " + shape_str(input_ids.sizes()));
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  if (B == 0 || T == 0) throw Error("forward: empty input " + shape_str(input_ids.sizes()));
  const auto dev = embed_weight.device();
  const auto dtype = embed_weight.scalar_type();
  at::Tensor ids = input_ids.to(dev, at::kLong);
  if (opt.check_ids) {
    int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= cfg_.vocab_size)
      throw Error("forward: token id " + std::to_string(lo < 0 ? lo : hi) + " outside the vocabulary [0, " +
                  std::to_string(cfg_.vocab_size) + ")");
  }
  at::Tensor mask;
  if (attention_mask.defined()) {
    if (attention_mask.sizes() != input_ids.sizes())
      throw Error("forward: attention_mask " + shape_str(attention_mask.sizes()) + " does not match input_ids " + shape_str(input_ids.sizes()));
    mask = attention_mask.to(dev, at::kLong).ne(0).to(at::kLong);
  } else {
    mask = at::ones({B, T}, at::TensorOptions().dtype(at::kLong).device(dev));
  }
  const int64_t past = cache ? cache->length() : 0;
  if (cache && past > 0 && cache->mask.size(0) != B)
    throw Error("forward: cache holds " + std::to_string(cache->mask.size(0)) + " rows but the input has " + std::to_string(B));
  const int64_t S = past + T;
  at::Tensor full_mask;  // [B, S]
  if (cache) {
    if (S > cache->capacity() || static_cast<int64_t>(cache->k.size()) != static_cast<int64_t>(layers.size())) {
      // Allocate once for the whole generation when the caller said how long it gets; else double.
      const int64_t cap = std::max({S, cache->reserve, 2 * cache->capacity()});
      const auto& a = layers[0]->self_attn;
      auto fopt = at::TensorOptions().dtype(dtype).device(dev);
      at::Tensor nm = at::zeros({B, cap}, mask.options());
      if (past > 0) nm.narrow(1, 0, past).copy_(cache->mask.narrow(1, 0, past));
      cache->mask = nm;
      cache->k.resize(layers.size());
      cache->v.resize(layers.size());
      // On the CPU in float32 the keys lie transposed, [B, kvH, D, capacity] seen as [B, kvH, capacity, D]:
      // attention_blocks reads them as k^T's rows, so a decode step writes one column and transposes nothing.
      // (Not where attention is scaled_dot_product_attention: it reads keys as rows.)
#ifdef MOE_HAVE_SDPA
      const bool keys_transposed = false;
#else
      const bool keys_transposed = dev.is_cpu() && dtype == at::kFloat;
#endif
      std::vector<std::vector<int64_t>> shapes;
      for (size_t i = 0; i < layers.size(); ++i) {
        shapes.push_back(keys_transposed ? std::vector<int64_t>{B, a->kv_heads, a->head_dim, cap} : std::vector<int64_t>{B, a->kv_heads, cap, a->head_dim});
        shapes.push_back({B, a->kv_heads, cap, a->head_dim});
      }
      std::vector<at::Tensor> fresh = empty_cache(shapes, fopt);
      for (size_t i = 0; i < layers.size(); ++i) {
        at::Tensor nk = keys_transposed ? fresh[2 * i].transpose(2, 3) : fresh[2 * i], nv = fresh[2 * i + 1];
        if (past > 0) {
          nk.narrow(2, 0, past).copy_(cache->k[i].narrow(2, 0, past));
          nv.narrow(2, 0, past).copy_(cache->v[i].narrow(2, 0, past));
        }
        cache->k[i] = nk;
        cache->v[i] = nv;
      }
    }
    cache->mask.narrow(1, past, T).copy_(mask);
    full_mask = cache->mask.narrow(1, 0, S);
  } else {
    full_mask = mask;
  }

  // Positions count real tokens only, so padding never shifts a sequence.
  at::Tensor positions = (full_mask.cumsum(1) - 1).clamp_min(0).slice(1, past);  // [B, T]
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq_.to(dev);
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos().to(dtype), sin = emb.sin().to(dtype);

  // Query slot past+i sees key slot j iff j <= past+i and j is a real token; a pad query sees itself so
  // that no softmax row is empty.
  auto lopt = at::TensorOptions().dtype(at::kLong).device(dev);
  at::Tensor qi = (at::arange(T, lopt) + past).unsqueeze(1);
  at::Tensor kj = at::arange(S, lopt).unsqueeze(0);
  at::Tensor allowed = (kj.le(qi).unsqueeze(0) & full_mask.ne(0).unsqueeze(1)) | kj.eq(qi).unsqueeze(0);
  allowed = allowed.unsqueeze(1);  // [B, 1, T, S]

  // Routing plan checks (per MoE layer slices are taken below).
  const int64_t L = static_cast<int64_t>(moe_layers_.size()), K = cfg_.num_experts_per_tok, E = cfg_.num_experts;
  const int64_t N = B * T;
  at::Tensor valid = mask.reshape({N}).ne(0);
  at::Tensor rindices, rlogits, pat;
  if (plan.mode == RouterMode::replay) {
    check_plan_tensor(plan.indices, "replay indices", B, T, L, K);
    if (at::isFloatingType(plan.indices.scalar_type())) throw Error("routing plan: replay indices must be integers");
    rindices = plan.indices.to(dev, at::kLong).reshape({N, L, K});
    at::Tensor vm = valid.view({N, 1, 1});
    at::Tensor bad_range = (rindices.lt(0) | rindices.ge(E)) & vm;
    if (bad_range.any().item<bool>()) {
      int64_t f = bad_range.reshape({-1}).nonzero()[0].item<int64_t>();
      int64_t row = f / (L * K), l = (f / K) % L;
      throw Error("routing plan: replay expert index " + std::to_string(rindices.reshape({-1})[f].item<int64_t>()) +
                  " out of range [0, " + std::to_string(E) + ") at batch row " + std::to_string(row / T) + ", position " +
                  std::to_string(row % T) + ", MoE layer " + std::to_string(l) + " (model layer " + std::to_string(moe_layers_[l]) + ")");
    }
    if (K > 1) {
      at::Tensor s = std::get<0>(rindices.sort(-1));
      at::Tensor dup = (s.slice(-1, 1).eq(s.slice(-1, 0, K - 1))).any(-1) & valid.view({N, 1});  // [N, L]
      if (dup.any().item<bool>()) {
        int64_t f = dup.reshape({-1}).nonzero()[0].item<int64_t>();
        int64_t row = f / L, l = f % L;
        throw Error("routing plan: replay indices repeat an expert at batch row " + std::to_string(row / T) + ", position " +
                    std::to_string(row % T) + ", MoE layer " + std::to_string(l) + " (model layer " +
                    std::to_string(moe_layers_[l]) + ")");
      }
    }
  } else if (plan.mode == RouterMode::logits) {
    check_plan_tensor(plan.logits, "router logits", B, T, L, E);
    rlogits = plan.logits.to(dev).detach().reshape({N, L, E});
  }
  if (opt.probs_at.defined()) {
    check_plan_tensor(opt.probs_at, "probs_at indices", B, T, L, K);
    pat = opt.probs_at.to(dev, at::kLong).reshape({N, L, K});
    if ((pat.lt(0) | pat.ge(E)).any().item<bool>()) throw Error("probs_at: expert index out of range [0, " + std::to_string(E) + ")");
  }

  at::Tensor h = at::embedding(embed_weight, ids);
  std::vector<at::Tensor> cap_i, cap_p, out_pat, out_logits;
  // Padding rows skip the experts (their outputs are never read by a real token).
  at::Tensor run_rows = attention_mask.defined() ? valid : at::Tensor();
  at::Tensor hn;  // norm(h) for the layer or final norm that takes h next, when the layer before computed it
  int64_t moe_ix = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    auto& layer = layers[i];
    // This layer's slice of the [N, L, ...] plan tensors.
    auto sl = [&](const at::Tensor& t) { return layer->moe && t.defined() ? t.select(1, moe_ix) : at::Tensor(); };
    LayerArgs a{cos, sin, allowed, N, sl(rindices), sl(rlogits), layer->moe && plan.mode == RouterMode::replay ? valid : at::Tensor(),
                sl(pat), run_rows, plan.mode, opt.return_router_logits, opt.capture_routing, /*differentiable=*/false};
    LayerOutput o;
    if (opt.checkpoint_layers && !cache && at::GradMode::is_enabled()) {
      // Activation checkpointing: only the layer's input is kept for the backward pass, which runs the layer
      // again. The closure holds by value what that second run needs; both runs take the kernel of a
      // differentiated pass, so the recomputed outputs are the first run's bit for bit.
      a.differentiable = true;
      auto run = [layer, a](const std::vector<at::Tensor>& in) -> std::vector<at::Tensor> {
        LayerOutput r = run_layer(layer, in[0], at::Tensor(), nullptr, a);
        return {r.hidden, r.probs_at, r.router_logits, r.indices, r.probs};
      };
      std::vector<at::Tensor> t = checkpoint(run, {h}, 3);
      o.hidden = t[0];
      o.indices = t[3];
      o.probs = t[4];
      o.probs_at = t[1];
      o.router_logits = t[2];
    } else {
      RMSNormImpl* next = i + 1 < layers.size() ? layers[i + 1]->input_layernorm.get() : norm.get();
      o = run_layer(layer, h, hn, next, a, cache ? cache->k[i] : at::Tensor(), cache ? cache->v[i] : at::Tensor(), past);
    }
    h = o.hidden;
    hn = o.normed;  // undefined after a checkpointed layer: the next one norms its own input
    if (layer->moe) {
      if (opt.capture_routing) {
        cap_i.push_back(o.indices);
        cap_p.push_back(o.probs);
      }
      if (pat.defined()) out_pat.push_back(o.probs_at);
      if (opt.return_router_logits) out_logits.push_back(o.router_logits);
      ++moe_ix;
    }
  }
  if (cache) cache->len = S;
  h = hn.defined() ? hn : norm(h);
  if (opt.last_logits_only) h = h.slice(1, T - 1);
  ForwardOutput out;
  if (opt.hidden_only) out.hidden = h;
  else out.logits = lm_head ? lm_head(h) : linear_rows(h, embed_weight);
  // Per-layer [N, x] results -> [B, T, L, x]; a model without MoE layers gives empty L axes.
  auto stack = [&](const std::vector<at::Tensor>& v, int64_t last, c10::ScalarType st) {
    return v.empty() ? at::empty({B, T, 0, last}, at::TensorOptions().dtype(st).device(dev)) : at::stack(v, 1).view({B, T, L, last});
  };
  if (opt.capture_routing) {
    out.routing_indices = stack(cap_i, K, at::kLong);
    out.routing_probs = stack(cap_p, K, at::kFloat);
  }
  if (pat.defined()) out.probs_at = stack(out_pat, K, at::kFloat);
  if (opt.return_router_logits) out.router_logits = stack(out_logits, E, at::kFloat);
  return out;
}

at::Tensor load_balancing_loss(const at::Tensor& router_logits, const at::Tensor& mask, int64_t top_k) {
  if (router_logits.dim() != 4) throw Error("load_balancing_loss: router_logits must be [B, T, L, E], got " + shape_str(router_logits.sizes()));
  const int64_t B = router_logits.size(0), T = router_logits.size(1), L = router_logits.size(2), E = router_logits.size(3);
  if (top_k < 1 || top_k > E) throw Error("load_balancing_loss: top_k " + std::to_string(top_k) + " outside [1, " + std::to_string(E) + "]");
  at::Tensor probs = at::softmax(router_logits.to(at::kFloat), -1).reshape({B * T * L, E});
  at::Tensor sel = std::get<1>(probs.topk(top_k, -1));                                  // [M, k]
  at::Tensor chosen = at::one_hot(sel, E).to(at::kFloat);                                // [M, k, E]
  at::Tensor w = mask.defined() ? mask.to(probs.device(), at::kFloat).reshape({B, T, 1}).expand({B, T, L}).reshape({-1})
                                : at::ones({B * T * L}, probs.options());
  at::Tensor denom = w.sum().clamp_min(1.0);
  at::Tensor f = (chosen * w.view({-1, 1, 1})).sum(0) / denom;  // [k, E]
  at::Tensor p = (probs * w.view({-1, 1})).sum(0) / denom;      // [E]
  return (f * p.unsqueeze(0)).sum() * static_cast<double>(E);
}

// ---- weights ----
void init_weights(Qwen3Moe& m, uint64_t seed) {
  at::NoGradGuard ng;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const double std_ = m->config().initializer_range;
  for (auto& kv : m->named_parameters(true)) {
    const std::string& name = kv.key();
    at::Tensor p = kv.value();
    auto ends_with = [&](const std::string& s) { return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0; };
    at::Tensor v = at::empty(p.sizes(), at::TensorOptions().dtype(at::kFloat));
    if (ends_with("norm.weight") || ends_with("layernorm.weight")) {
      v.fill_(1.0);
    } else if (ends_with(".bias")) {
      v.zero_();
    } else {
      v.normal_(0.0, std_, gen);
      if (name == "model.embed_tokens.weight" && m->config().pad_token_id >= 0) v[m->config().pad_token_id].zero_();
    }
    p.copy_(v);
  }
}

std::vector<std::pair<std::string, at::Tensor>> named_weights(Qwen3Moe& m) {
  std::vector<std::pair<std::string, at::Tensor>> r;
  for (auto& kv : m->named_parameters(true)) r.emplace_back(kv.key(), kv.value());
  return r;
}

namespace {
// A checkpoint tensor the config does not use means the config describes another model (e.g. attention
// biases with attention_bias false): loading it anyway gives wrong outputs with no error.
void check_all_used(const Checkpoint& ck, const std::set<std::string>& used, bool tied, const std::string& dir,
                    const std::function<bool(const std::string&)>& other_shard) {
  std::vector<std::string> unused;
  for (const auto& n : ck.names())
    if (!used.count(n) && !(tied && n == "lm_head.weight") && !other_shard(n)) unused.push_back(n);
  if (unused.empty()) return;
  std::string list;
  for (size_t i = 0; i < unused.size() && i < 8; ++i) list += (i ? ", '" : "'") + unused[i] + "'";
  if (unused.size() > 8) list += ", ... (" + std::to_string(unused.size()) + " in all)";
  throw Error(dir + ": checkpoint tensors that config.json does not use: " + list +
              " (does config.json describe this checkpoint? e.g. attention_bias, num_experts, mlp_only_layers)");
}

// Loads every parameter of m from dir. With a target (device, dtype) each parameter's storage is replaced by
// the checkpoint tensor converted straight to it (set_data), one tensor at a time: the model's own
// uninitialised float32 CPU allocations are never touched (so never resident), and a bf16 model for a GPU
// never exists as a float32 CPU copy. Without a target, values are copied into the parameters as they are.
void load_into(Qwen3Moe& m, const std::string& dir, c10::optional<c10::Device> device, c10::optional<c10::ScalarType> dtype) {
  at::NoGradGuard ng;
  Checkpoint ck(dir);
  static const std::regex expert_re(R"(^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$)");
  std::map<std::string, at::Tensor> fused;  // fused tensors of the current layer
  std::set<std::string> used;               // checkpoint tensors the model took
  const int64_t E = m->config().num_experts, I = m->config().moe_intermediate_size, H = m->config().hidden_size;
  auto fused_tensor = [&](const std::string& name, std::vector<int64_t> want, c10::ScalarType dt) -> at::Tensor {
    auto it = fused.find(name);
    if (it != fused.end()) return it->second;
    if (fused.size() > 2) fused.clear();
    const TensorEntry& e = ck.entry(name);
    if (e.shape != want)
      throw Error(ck.file_of(name) + ": tensor '" + name + "' has shape " + shape_str(e.shape) + " but the config needs " + shape_str(want));
    used.insert(name);
    return fused[name] = ck.get(name, dt);
  };
  for (auto& [name, p] : named_weights(m)) {
    at::Tensor src;
    const c10::ScalarType want = dtype ? *dtype : p.scalar_type();  // read from the file straight into this dtype
    if (ck.has(name)) {
      const TensorEntry& e = ck.entry(name);
      if (e.shape != p.sizes().vec())
        throw Error(ck.file_of(name) + ": tensor '" + name + "' has shape " + shape_str(e.shape) + " but the config needs " +
                    shape_str(p.sizes()));
      src = ck.get(name, want);
      used.insert(name);
    } else {
      std::smatch mm;
      if (!std::regex_match(name, mm, expert_re)) throw Error(dir + ": missing tensor '" + name + "'");
      const std::string base = mm[1];
      const int64_t e = std::stoll(mm[2]);
      const std::string kind = mm[3];
      if (kind == "down") {
        std::string fname = base + ".down_proj";
        if (!ck.has(fname)) throw Error(dir + ": missing tensor '" + name + "' (and no fused '" + fname + "')");
        src = fused_tensor(fname, {E, H, I}, want)[e];
      } else {
        std::string fname = base + ".gate_up_proj";
        if (!ck.has(fname)) throw Error(dir + ": missing tensor '" + name + "' (and no fused '" + fname + "')");
        at::Tensor gu = fused_tensor(fname, {E, 2 * I, H}, want)[e];  // gate rows, then up rows
        src = kind == "gate" ? gu.slice(0, 0, I) : gu.slice(0, I, 2 * I);
      }
    }
    if (!device) {
      p.copy_(src);
      continue;
    }
    at::Tensor v = src.to(*device, *dtype);
    // A slice of a fused tensor (or of a mapped file) must not keep the whole of it alive.
    if (!v.is_contiguous() || v.storage().nbytes() != v.nbytes()) v = v.clone(at::MemoryFormat::Contiguous);
    p.set_data(v);
  }
  // Expert parallel: the other ranks' experts (per-expert names of another shard; the fused tensors are
  // read in part) are not this rank's to use.
  const ExpertShard sh = m->expert_shard();
  const int64_t per = E / sh.size, first = sh.rank * per;
  auto other_shard = [&](const std::string& n) {
    if (sh.size == 1) return false;
    std::smatch mm;
    if (std::regex_match(n, mm, expert_re)) {
      const int64_t e = std::stoll(mm[2]);
      return e < first || e >= first + per;
    }
    return n.size() > 20 && (n.compare(n.size() - 20, 20, ".experts.gate_up_proj") == 0 ||
                             n.compare(n.size() - 18, 18, ".experts.down_proj") == 0);
  };
  check_all_used(ck, used, m->config().tie_word_embeddings, dir, other_shard);
}

}  // namespace

void load_weights(Qwen3Moe& m, const std::string& dir) { load_into(m, dir, c10::nullopt, c10::nullopt); }

Qwen3Moe load_model(const std::string& dir, const c10::Device& device, c10::ScalarType dtype, ExpertShard shard) {
  ModelConfig cfg = load_config(dir + "/config.json");
  Qwen3Moe m(cfg, shard);  // parameters allocated uninitialised, replaced below
  load_into(m, dir, device, dtype);
  m->to(device);  // buffers, if any
  m->eval();
  m->choose_expert_kernel();
  return m;
}

void save_model(Qwen3Moe& m, const std::string& dir, const std::vector<std::pair<std::string, std::string>>& extra_files,
                const std::function<void(const std::string&)>& add_files, int64_t max_shard_bytes,
                const std::vector<std::pair<std::string, at::Tensor>>& weights) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  const std::string staged = make_staging_dir(d);
  try {
    ModelConfig cfg = m->config();
    cfg.torch_dtype = torch_dtype_name(m->embed_weight.scalar_type());
    write_weights(staged, weights.empty() ? named_weights(m) : weights, max_shard_bytes);
    if (add_files) add_files(staged);
    write_companions(staged, d, config_to_json(cfg).dump(2) + "\n", extra_files);
    io::sync_dir(staged);
    io::replace_dir(staged, d);
  } catch (...) {
    remove_staging_dir(staged);
    throw;
  }
}

void set_threads(int n) { at::set_num_threads(n > 0 ? n : at::get_num_threads()); }

c10::Device parse_device(const std::string& s) {
  if (s == "cpu") return c10::Device(c10::kCPU);
  if (s == "cuda" || s.rfind("cuda:", 0) == 0) {
    c10::optional<c10::Device> d;
    try {
      d = c10::Device(s);
    } catch (const std::exception&) {
    }
    if (d) {
      // Checked here, in one line, rather than by libtorch's multi-line error at the first tensor.
      const int64_t n = static_cast<int64_t>(torch::cuda::device_count());
      if (n == 0)
        throw Error("--device " + s + ": no CUDA device found (it needs a GPU and a CUDA build of libtorch)");
      if (d->has_index() && d->index() >= n)
        throw Error("--device " + s + ": only " + std::to_string(n) + " CUDA device(s) found");
      return *d;
    }
  }
  throw UsageError("unknown device '" + s + "' (expected cpu, cuda or cuda:N)");
}

c10::ScalarType parse_dtype(const std::string& s) {
  if (s == "f32" || s == "fp32" || s == "float32") return at::kFloat;
  if (s == "bf16" || s == "bfloat16") return at::kBFloat16;
  if (s == "f16" || s == "fp16" || s == "float16") return at::kHalf;
  throw UsageError("unknown dtype '" + s + "' (expected f32, bf16 or f16)");
}

}  // namespace moe::model
