// Private helpers of lib/algo: masks, masked means, metric extraction, shape checks.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "moe/io/error.h"

namespace moe::algo::detail {

// Bool "counts" tensor from a mask of any dtype.
inline at::Tensor valid_of(const at::Tensor& mask) {
  return mask.scalar_type() == at::kBool ? mask : mask > 0;
}

// x where valid, else 0. Unlike x * m this neither propagates NaN/inf from padding nor lets gradient reach it.
inline at::Tensor zero_invalid(const at::Tensor& x, const at::Tensor& valid) {
  return at::where(valid, x, at::zeros_like(x));
}

// Per-row count of valid tokens, [B], in dtype.
inline at::Tensor row_count(const at::Tensor& valid, at::ScalarType dtype) {
  return valid.sum(1).to(dtype);
}

// Masked mean as a tensor (0 when nothing is valid).
inline at::Tensor masked_mean(const at::Tensor& x, const at::Tensor& valid) {
  auto n = valid.sum().to(x.scalar_type()).clamp_min(1);
  return zero_invalid(x, valid).sum() / n;
}

inline double to_double(const at::Tensor& t) { return t.detach().to(at::kDouble).item<double>(); }

// Masked mean of a (possibly bool) tensor as a metric value.
inline double mean_metric(const at::Tensor& x, const at::Tensor& valid) {
  return to_double(masked_mean(x.detach().to(at::kDouble), valid));
}

// Floating dtype to compute softmax-like quantities in: at least fp32.
inline at::ScalarType at_least_float(at::ScalarType t) {
  return (t == at::kDouble) ? at::kDouble : at::kFloat;
}

inline std::string shape_str(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

inline void require(bool ok, const std::string& what) {
  if (!ok) throw moe::Error(what);
}

inline void require_shape(const at::Tensor& t, at::IntArrayRef shape, const char* name) {
  require(t.defined(), std::string(name) + ": missing tensor");
  require(t.sizes() == shape,
          std::string(name) + ": shape " + shape_str(t.sizes()) + ", expected " + shape_str(shape));
}

}  // namespace moe::algo::detail
