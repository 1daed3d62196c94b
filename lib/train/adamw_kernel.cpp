#include "train/adamw_kernel.h"

#include <cmath>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace moe::train::kernel {
namespace {

// One element, in the vector path's order (std::fma: one rounding, as _mm256_fmadd_ps); CPUs without AVX2.
inline void one(float& p, float& m, float& v, float g, const AdamWScalars& s) {
  const float pd = p * s.decay;
  const float mi = std::fma(g, s.one_minus_beta1, m * s.beta1);
  const float vi = std::fma(s.one_minus_beta2 * g, g, v * s.beta2);
  const float denom = std::sqrt(vi) / s.sqrt_bc2 + s.eps;
  p = pd + s.neg_step * mi / denom;
  m = mi;
  v = vi;
}

#if defined(__x86_64__)
// Eight elements, dense.
__attribute__((target("avx2,fma"))) inline void eight(float* p, float* m, float* v, const float* g, const AdamWScalars& s) {
  const __m256 gi = _mm256_loadu_ps(g);
  const __m256 pd = _mm256_mul_ps(_mm256_loadu_ps(p), _mm256_set1_ps(s.decay));
  const __m256 mi = _mm256_fmadd_ps(gi, _mm256_set1_ps(s.one_minus_beta1), _mm256_mul_ps(_mm256_loadu_ps(m), _mm256_set1_ps(s.beta1)));
  const __m256 vi = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(s.one_minus_beta2), gi), gi,
                                    _mm256_mul_ps(_mm256_loadu_ps(v), _mm256_set1_ps(s.beta2)));
  const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), _mm256_set1_ps(s.sqrt_bc2)), _mm256_set1_ps(s.eps));
  _mm256_storeu_ps(p, _mm256_add_ps(pd, _mm256_div_ps(_mm256_mul_ps(_mm256_set1_ps(s.neg_step), mi), denom)));
  _mm256_storeu_ps(m, mi);
  _mm256_storeu_ps(v, vi);
}

__attribute__((target("avx2,fma"))) void update_avx2(float* p, float* m, float* v, const float* g, int64_t b, int64_t e,
                                                     const AdamWScalars& s) {
  int64_t i = b;
  for (; i + 8 <= e; i += 8) eight(p + i, m + i, v + i, g + i, s);
  if (i < e) {
    // The tail through the same vector code (padded with ones), so an element's bits do not depend on where
    // a split put it.
    float tp[8], tm[8], tv[8], tg[8];
    for (int l = 0; l < 8; ++l) tp[l] = tm[l] = tv[l] = tg[l] = 1.f;
    const int64_t n = e - i;
    for (int64_t l = 0; l < n; ++l) tp[l] = p[i + l], tm[l] = m[i + l], tv[l] = v[i + l], tg[l] = g[i + l];
    eight(tp, tm, tv, tg, s);
    for (int64_t l = 0; l < n; ++l) p[i + l] = tp[l], m[i + l] = tm[l], v[i + l] = tv[l];
  }
}

__attribute__((target("avx2,fma"))) double sum_squares_avx2(const float* x, int64_t n) {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();  // lanes 0-3 and 4-7
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256d a = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), b = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    lo = _mm256_add_pd(lo, _mm256_mul_pd(a, a));
    hi = _mm256_add_pd(hi, _mm256_mul_pd(b, b));
  }
  double acc[8];
  _mm256_storeu_pd(acc, lo);
  _mm256_storeu_pd(acc + 4, hi);
  for (int64_t l = 0; i < n; ++i, ++l) acc[l] += static_cast<double>(x[i]) * x[i];
  double s = 0;
  for (double a : acc) s += a;
  return s;
}

const bool have_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif

}  // namespace

void adamw_update(float* p, float* m, float* v, const float* g, int64_t b, int64_t e, const AdamWScalars& s) {
#if defined(__x86_64__)
  if (have_avx2) return update_avx2(p, m, v, g, b, e, s);
#endif
  for (int64_t i = b; i < e; ++i) one(p[i], m[i], v[i], g[i], s);
}

double sum_squares(const float* x, int64_t n) {
#if defined(__x86_64__)
  if (have_avx2) return sum_squares_avx2(x, n);
#endif
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < n; ++i) acc[i % 8] += static_cast<double>(x[i]) * x[i];
  double s = 0;
  for (double a : acc) s += a;
  return s;
}

}  // namespace moe::train::kernel
