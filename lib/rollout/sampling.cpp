#include "moe/rollout/sampling.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <string>

#include "moe/io/error.h"

namespace moe::rollout {
namespace {
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
}  // namespace

namespace detail {
// No top-k or top-p: the CDF is inverted in vocabulary order, which needs no sort (any fixed order gives an
// exact sample; the sorted order matters only where a prefix of it is kept). Token i is drawn when
// cdf[i - 1] <= u * total < cdf[i], cdf the float64 running sum of the float32 probabilities; when rounding
// leaves u * total at or above the last sum, the last token of nonzero probability. On the CPU this is one
// pass per row over the probabilities (rows in parallel: a row's result does not depend on the threads);
// elsewhere the same rule in tensor operations.
at::Tensor sample_untruncated(const at::Tensor& logp, const std::vector<double>& uniforms, bool tensor_ops) {
  const int64_t B = logp.size(0), V = logp.size(1);
  at::Tensor probs = logp.exp();
  if (probs.device().is_cpu() && !tensor_ops) {
    probs = probs.contiguous();
    at::Tensor tokens = at::empty({B}, at::TensorOptions().dtype(at::kLong));
    const float* pr = probs.data_ptr<float>();
    int64_t* out = tokens.data_ptr<int64_t>();
    at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const float* row = pr + b * V;
        double total = 0;
        for (int64_t i = 0; i < V; ++i) total += row[i];
        const double threshold = uniforms[b] * total;
        int64_t pick = -1, last = 0;
        double c = 0;
        for (int64_t i = 0; i < V; ++i) {
          c += row[i];
          if (row[i] > 0) last = i;
          if (c > threshold) {
            pick = i;
            break;
          }
        }
        if (pick < 0) {
          for (int64_t i = last + 1; i < V; ++i)
            if (row[i] > 0) last = i;
          pick = last;
        }
        out[b] = pick;
      }
    });
    return tokens;
  }
  at::Tensor cdf = probs.to(at::kDouble).cumsum(-1);
  at::Tensor u = at::tensor(uniforms, at::TensorOptions().dtype(at::kDouble)).to(cdf.device()).unsqueeze(1);
  at::Tensor idx = (cdf <= u * cdf.narrow(1, V - 1, 1)).sum(-1);
  at::Tensor last = at::where(probs > 0, at::arange(V, idx.options()), at::zeros({}, idx.options())).amax(-1);
  return at::minimum(idx, last);
}
}  // namespace detail

double stream_uniform(uint64_t seed, uint64_t stream, uint64_t step) {
  uint64_t h = splitmix64(splitmix64(splitmix64(seed) ^ stream) ^ step);
  return static_cast<double>(h >> 11) * 0x1.0p-53;  // 53 random bits
}

Sampled sample_next(const at::Tensor& logits, const SamplingParams& p, const std::vector<double>& uniforms,
                    bool check_finite) {
  if (logits.dim() != 2) throw Error("sample_next: logits must be [batch, vocab]");
  if (!(p.temperature > 0) || !std::isfinite(p.temperature))
    throw Error("temperature must be > 0, got " + std::to_string(p.temperature));
  if (!(p.top_p > 0 && p.top_p <= 1)) throw Error("top-p must be in (0, 1], got " + std::to_string(p.top_p));
  if (p.top_k < 0) throw Error("top-k must be >= 0");
  const int64_t B = logits.size(0), V = logits.size(1);

  at::Tensor scaled = logits.to(at::kFloat) / p.temperature;
  at::Tensor logp = at::log_softmax(scaled, -1);
  at::Tensor finite = at::isfinite(std::get<0>(logp.max(-1)));
  if (check_finite && B > 0 && !finite.all().item<bool>()) throw Error("sampling: logits contain NaN or no finite value");

  at::Tensor tokens;
  const int64_t k = p.top_k > 0 && p.top_k < V ? p.top_k : V;
  if (p.greedy) {
    tokens = scaled.argmax(-1);
  } else if (static_cast<int64_t>(uniforms.size()) != B) {
    throw Error("sample_next: need one uniform per row");
  } else if (k == V && p.top_p >= 1.0) {
    tokens = detail::sample_untruncated(logp, uniforms, /*tensor_ops=*/false);
  } else {
    // Candidates in descending probability, ties in vocabulary order; truncate by top-k and top-p, then
    // invert the CDF. With top-k, only the k best are selected and ordered (no sort of the vocabulary).
    at::Tensor vals, order;
    if (k < V) {
      // The k entries a stable sort would put first: all above the k-th largest value, then the ties at it
      // in vocabulary order; gathered in vocabulary order (a scatter by running count, no host copy).
      at::Tensor kth = std::get<0>(logp.topk(k, -1, /*largest=*/true, /*sorted=*/false)).amin(-1, true);
      at::Tensor above = logp > kth, tie = logp == kth;
      at::Tensor room = k - above.sum(-1, true);
      at::Tensor keep = above | (tie & (tie.cumsum(-1) <= room));
      at::Tensor slot = at::where(keep, keep.cumsum(-1) - 1, at::full({}, k, at::kLong));
      at::Tensor top = at::zeros({B, k + 1}, slot.options());  // zeros: a NaN row keeps fewer than k
      top.scatter_(1, slot, at::arange(V, slot.options()).expand({B, V}));
      top = top.narrow(1, 0, k);
      auto sorted = at::sort(logp.gather(1, top), /*stable=*/true, /*dim=*/-1, /*descending=*/true);
      vals = std::get<0>(sorted);
      order = top.gather(1, std::get<1>(sorted));
    } else {
      auto sorted = at::sort(logp, /*stable=*/true, /*dim=*/-1, /*descending=*/true);
      vals = std::get<0>(sorted);
      order = std::get<1>(sorted);
    }
    at::Tensor probs = vals.exp();
    if (p.top_p < 1.0) {
      // Keep token j when the mass strictly before it is < top_p (so the first token always stays).
      at::Tensor before = probs.cumsum(-1) - probs;
      probs = probs.masked_fill(before >= p.top_p, 0.0);
    }
    at::Tensor cdf = probs.to(at::kDouble).cumsum(-1);
    at::Tensor total = cdf.select(1, k - 1).unsqueeze(1);
    at::Tensor u = at::tensor(uniforms, at::TensorOptions().dtype(at::kDouble)).to(cdf.device()).unsqueeze(1);
    // Index of the first entry whose cumulative mass exceeds u * total.
    at::Tensor idx = (cdf <= u * total).sum(-1, /*keepdim=*/true);
    // Kept entries are a prefix of the sorted order; never step past the last one (u -> 1 edge).
    at::Tensor last_kept = ((probs > 0).sum(-1, /*keepdim=*/true) - 1).clamp_min(0);
    idx = at::minimum(idx, last_kept);
    tokens = order.gather(1, idx).squeeze(1);
  }
  at::Tensor lp = logp.gather(1, tokens.unsqueeze(1)).squeeze(1);
  return {tokens, lp, finite};
}

}  // namespace moe::rollout
