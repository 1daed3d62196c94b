#include "model/few_rows_kernel.h"

#include <stdexcept>

#if defined(__x86_64__)
#include <immintrin.h>
#define MOE_FEW_ROWS_X86 1
#endif

namespace moe::model::kernel {

#ifdef MOE_FEW_ROWS_X86
// The loops over N and R are unrolled, so that the accumulators live in registers (rolled, GCC keeps them
// on the stack and every FMA goes through memory: 3x slower).
#if defined(__clang__)
#define MOE_UNROLL _Pragma("unroll")
#else
#define MOE_UNROLL _Pragma("GCC unroll 16")
#endif

namespace {

// Sum of the eight lanes: (l0 + l4, l1 + l5, l2 + l6, l3 + l7), then (a0 + a2, a1 + a3), then their sum.
__attribute__((target("avx2,fma"))) inline float lanes_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// N rows by R outputs at a time: R weight rows stream from memory once, each feeding N accumulators.
// N * R + R + 1 vector registers (at most 15 of AVX2's 16).
template <int N, int R>
__attribute__((target("avx2,fma"))) void block(const float* x, const float* w, float* y, int64_t H, int64_t O, int64_t o0,
                                               int64_t o1) {
  const int64_t H8 = H & ~int64_t{7};
  int64_t o = o0;
  for (; o + R <= o1; o += R) {
    __m256 acc[N][R];
    MOE_UNROLL
    for (int r = 0; r < N; ++r)
      MOE_UNROLL
      for (int j = 0; j < R; ++j) acc[r][j] = _mm256_setzero_ps();
    for (int64_t h = 0; h < H8; h += 8) {
      __m256 wv[R];
      MOE_UNROLL
      for (int j = 0; j < R; ++j) wv[j] = _mm256_loadu_ps(w + (o + j) * H + h);
      MOE_UNROLL
      for (int r = 0; r < N; ++r) {
        const __m256 xv = _mm256_loadu_ps(x + r * H + h);
        MOE_UNROLL
        for (int j = 0; j < R; ++j) acc[r][j] = _mm256_fmadd_ps(wv[j], xv, acc[r][j]);
      }
    }
    MOE_UNROLL
    for (int r = 0; r < N; ++r)
      MOE_UNROLL
      for (int j = 0; j < R; ++j) {
        float t = lanes_sum(acc[r][j]);
        for (int64_t h = H8; h < H; ++h) t += w[(o + j) * H + h] * x[r * H + h];
        y[r * O + o + j] = t;
      }
  }
  if constexpr (R > 1) {
    if (o < o1) block<N, 1>(x, w, y, H, O, o, o1);
  }
}


// GCC 12 warns that _mm512_extractf64x4_pd's _mm256_undefined_pd() "may be used uninitialized": a known
// false positive in its own header.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// The same with AVX-512 where the CPU has it: 16 lanes and 32 registers, so more weight rows at a time
// (N * R + R + 1 <= 31). The 16 lanes: the upper eight added to the lower eight, then as above.
template <int N, int R>
__attribute__((target("avx512f,avx2,fma"))) void block512(const float* x, const float* w, float* y, int64_t H, int64_t O, int64_t o0,
                                                 int64_t o1) {
  const int64_t H16 = H & ~int64_t{15};
  int64_t o = o0;
  for (; o + R <= o1; o += R) {
    __m512 acc[N][R];
    MOE_UNROLL
    for (int r = 0; r < N; ++r)
      MOE_UNROLL
      for (int j = 0; j < R; ++j) acc[r][j] = _mm512_setzero_ps();
    for (int64_t h = 0; h < H16; h += 16) {
      __m512 wv[R];
      MOE_UNROLL
      for (int j = 0; j < R; ++j) wv[j] = _mm512_loadu_ps(w + (o + j) * H + h);
      MOE_UNROLL
      for (int r = 0; r < N; ++r) {
        const __m512 xv = _mm512_loadu_ps(x + r * H + h);
        MOE_UNROLL
        for (int j = 0; j < R; ++j) acc[r][j] = _mm512_fmadd_ps(wv[j], xv, acc[r][j]);
      }
    }
    MOE_UNROLL
    for (int r = 0; r < N; ++r)
      MOE_UNROLL
      for (int j = 0; j < R; ++j) {
        const __m512 v = acc[r][j];
        float t = lanes_sum(_mm256_add_ps(_mm512_castps512_ps256(v),
                                          _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
        for (int64_t h = H16; h < H; ++h) t += w[(o + j) * H + h] * x[r * H + h];
        y[r * O + o + j] = t;
      }
  }
  if constexpr (R > 1) {
    if (o < o1) block512<N, 1>(x, w, y, H, O, o, o1);
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

Isa best_isa() {
  if (__builtin_cpu_supports("avx512f")) return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
  return Isa::none;
}

Isa g_isa = best_isa();
}  // namespace

Isa few_rows_isa() { return g_isa; }

bool set_few_rows_isa(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(best_isa())) return false;
  g_isa = isa;
  return true;
}

void few_rows(const float* x, const float* w, float* y, int64_t n, int64_t H, int64_t O, int64_t o0, int64_t o1) {
  if (g_isa == Isa::avx512) {
    switch (n) {
      case 1: return block512<1, 12>(x, w, y, H, O, o0, o1);
      case 2: return block512<2, 8>(x, w, y, H, O, o0, o1);
      case 3: return block512<3, 7>(x, w, y, H, O, o0, o1);
      case 4: return block512<4, 6>(x, w, y, H, O, o0, o1);
      default: throw std::invalid_argument("few_rows: n outside [1, kFewRows]");
    }
  }
  switch (n) {
    case 1: return block<1, 8>(x, w, y, H, O, o0, o1);
    case 2: return block<2, 4>(x, w, y, H, O, o0, o1);
    case 3: return block<3, 3>(x, w, y, H, O, o0, o1);
    case 4: return block<4, 2>(x, w, y, H, O, o0, o1);
    default: throw std::invalid_argument("few_rows: n outside [1, kFewRows]");
  }
}

namespace {
// Lanes [0, m) of a row's last, partial vector of 8.
__attribute__((target("avx2,fma"))) inline __m256i tail_mask(int64_t m) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(m)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Four vectors of y at a time: four independent FMA chains, so their latency overlaps (one chain waits on its
// previous FMA). Each element's sum is still in j order.
__attribute__((target("avx2,fma"))) void combine_rows_avx2(const float* a, const float* X, int64_t n, int64_t D, int64_t ldx, float* y) {
  for (int64_t d = 0; d < D; d += 32) {
    __m256i m[4];
    __m256 acc[4];
    MOE_UNROLL
    for (int c = 0; c < 4; ++c) {
      m[c] = tail_mask(D - d - 8 * c);  // all lanes, some or none in the last vectors
      acc[c] = _mm256_setzero_ps();
    }
    for (int64_t j = 0; j < n; ++j) {
      if (a[j] == 0.f) continue;
      const __m256 aj = _mm256_set1_ps(a[j]);
      const float* xr = X + j * ldx + d;
      MOE_UNROLL
      for (int c = 0; c < 4; ++c) acc[c] = _mm256_fmadd_ps(aj, _mm256_maskload_ps(xr + 8 * c, m[c]), acc[c]);
    }
    MOE_UNROLL
    for (int c = 0; c < 4; ++c) _mm256_maskstore_ps(y + d + 8 * c, m[c], acc[c]);
  }
}

// exp(x) for x <= 0 (softmax's shifted scores): x = n ln2 + r, |r| <= ln2 / 2, exp(r) by Cephes' expf
// polynomial, times 2^n. Within 2 ulp of expf; below -87.3 (exp < 1.2e-38, no weight beside the row's
// maximum's 1) it gives exp(-87.3).
__attribute__((target("avx2,fma"))) inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma"))) float softmax_weights_avx2(const float* s, const bool* allowed, float scale, float mx, int64_t n,
                                                               float* p) {
  __m256 sum = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; j += 8) {
    const __m256i m = tail_mask(n - j);
    alignas(32) int32_t keep[8];
    for (int l = 0; l < 8; ++l) keep[l] = j + l < n && allowed[j + l] ? -1 : 0;
    const __m256 x = _mm256_fmsub_ps(_mm256_maskload_ps(s + j, m), _mm256_set1_ps(scale), _mm256_set1_ps(mx));
    const __m256 w = _mm256_and_ps(exp_nonpositive(x), _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(keep))));
    sum = _mm256_add_ps(sum, w);
    _mm256_maskstore_ps(p + j, m, w);
  }
  return lanes_sum(sum);
}
}  // namespace

void combine_rows(const float* a, const float* X, int64_t n, int64_t D, int64_t ldx, float* y) {
  if (g_isa == Isa::none) throw std::logic_error("combine_rows: no kernel selected");
  combine_rows_avx2(a, X, n, D, ldx, y);
}

float softmax_weights(const float* s, const bool* allowed, float scale, float mx, int64_t n, float* p) {
  if (g_isa == Isa::none) throw std::logic_error("softmax_weights: no kernel selected");
  return softmax_weights_avx2(s, allowed, scale, mx, n, p);
}
#else
// Other architectures: callers take the matrix product.
Isa few_rows_isa() { return Isa::none; }
bool set_few_rows_isa(Isa isa) { return isa == Isa::none; }
void few_rows(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t) {
  throw std::logic_error("few_rows: no kernel for this architecture");
}
void combine_rows(const float*, const float*, int64_t, int64_t, int64_t, float*) {
  throw std::logic_error("combine_rows: no kernel for this architecture");
}
float softmax_weights(const float*, const bool*, float, float, int64_t, float*) {
  throw std::logic_error("softmax_weights: no kernel for this architecture");
}
#endif

}  // namespace moe::model::kernel
