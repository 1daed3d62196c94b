#include "model/few_rows_kernel.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
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

// The weight rows of the next block of R outputs, a line at a time into L2 while this block's rows are summed:
// the hardware's prefetchers alone keep few of R interleaved short rows in flight (rows of 256 floats read
// 1.5x faster with it, rows of 1024 1.2x, one thread, scratch measurements). The address of w[i], which may
// lie past the weight's end (the last block's successor): a prefetch never faults, and the address is formed
// as an integer, not as a pointer out of bounds.
inline void prefetch_l2(const float* w, int64_t i) {
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(w) + static_cast<uintptr_t>(i) * sizeof(float)), _MM_HINT_T1);
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
      if ((h & 15) == 0) {  // one prefetch per 64-byte line
        MOE_UNROLL
        for (int j = 0; j < R; ++j) prefetch_l2(w, (o + R + j) * H + h);
      }
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
      for (int j = 0; j < R; ++j) prefetch_l2(w, (o + R + j) * H + h);
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

// Long rows (more than 64 floats: attention scores over a decode step's keys) in another loop order: X's rows
// stream through once, in order, each term added into y in memory. Each element's operations are the same
// fused multiply-adds in the same j order, so both loops give the same bits; the order only helps memory
// (X's rows are far apart in a KV cache: one pass over 4 vectors of every row at a time misses the cache).
__attribute__((target("avx2,fma"))) void combine_long_rows_avx2(const float* a, const float* X, int64_t n, int64_t D, int64_t ldx,
                                                                float* y) {
  const int64_t D8 = D - D % 8;
  const __m256i mt = tail_mask(D - D8);
  for (int64_t d = 0; d < D8; d += 8) _mm256_storeu_ps(y + d, _mm256_setzero_ps());
  if (D8 < D) _mm256_maskstore_ps(y + D8, mt, _mm256_setzero_ps());
  for (int64_t j = 0; j < n; ++j) {
    if (a[j] == 0.f) continue;
    const __m256 aj = _mm256_set1_ps(a[j]);
    const float* xr = X + j * ldx;
    for (int64_t d = 0; d < D8; d += 8)
      _mm256_storeu_ps(y + d, _mm256_fmadd_ps(aj, _mm256_loadu_ps(xr + d), _mm256_loadu_ps(y + d)));
    if (D8 < D)
      _mm256_maskstore_ps(y + D8, mt, _mm256_fmadd_ps(aj, _mm256_maskload_ps(xr + D8, mt), _mm256_maskload_ps(y + D8, mt)));
  }
}

// NV (up to 4) vectors of y at a time, the last one partial unless FULL: NV independent FMA chains, so their
// latency overlaps (one chain waits on its previous FMA). Each element's sum is still in j order.
template <int NV, bool FULL>
__attribute__((target("avx2,fma"))) inline void combine_chunk(const float* a, const float* X, int64_t n, int64_t ldx, float* y,
                                                              __m256i last) {
  __m256 acc[NV];
  MOE_UNROLL
  for (int c = 0; c < NV; ++c) acc[c] = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    if (a[j] == 0.f) continue;
    const __m256 aj = _mm256_set1_ps(a[j]);
    const float* xr = X + j * ldx;
    MOE_UNROLL
    for (int c = 0; c < NV; ++c) {
      const __m256 x = FULL || c < NV - 1 ? _mm256_loadu_ps(xr + 8 * c) : _mm256_maskload_ps(xr + 8 * c, last);
      acc[c] = _mm256_fmadd_ps(aj, x, acc[c]);
    }
  }
  MOE_UNROLL
  for (int c = 0; c < NV; ++c) {
    if (FULL || c < NV - 1)
      _mm256_storeu_ps(y + 8 * c, acc[c]);
    else
      _mm256_maskstore_ps(y + 8 * c, last, acc[c]);
  }
}

template <int NV>
__attribute__((target("avx2,fma"))) inline void combine_chunk(const float* a, const float* X, int64_t n, int64_t ldx, float* y,
                                                              int64_t left) {
  if (left >= 8 * NV) return combine_chunk<NV, true>(a, X, n, ldx, y, __m256i{});
  combine_chunk<NV, false>(a, X, n, ldx, y, tail_mask(left - 8 * (NV - 1)));
}

__attribute__((target("avx2,fma"))) void combine_rows_avx2(const float* a, const float* X, int64_t n, int64_t D, int64_t ldx, float* y) {
  if (D > 64) return combine_long_rows_avx2(a, X, n, D, ldx, y);
  for (int64_t d = 0; d < D; d += 32) {  // up to 4 vectors at a time, only as many as are left
    const int64_t left = D - d;
    switch (std::min<int64_t>(4, (left + 7) / 8)) {
      case 1: combine_chunk<1>(a, X + d, n, ldx, y + d, left); break;
      case 2: combine_chunk<2>(a, X + d, n, ldx, y + d, left); break;
      case 3: combine_chunk<3>(a, X + d, n, ldx, y + d, left); break;
      default: combine_chunk<4>(a, X + d, n, ldx, y + d, left); break;
    }
  }
}

// M rows of A (up to 4) against NV vectors of X's columns (up to 3), the last partial unless FULL: M * NV
// independent FMA chains sharing each load of X (one row's NV chains wait on FMA latency: a third of the
// peak at NV = 3). With SKIP, term j is skipped when every row's A[r][j] is 0 (attention's masked keys);
// each element's sum is in j order, one fused multiply-add per term, as combine_chunk's.
template <int M, int NV, bool FULL, bool SKIP>
__attribute__((target("avx2,fma"))) inline void combine_block(const float* A, int64_t lda, const float* X, int64_t n, int64_t ldx,
                                                              float* Y, int64_t ldy, __m256i last) {
  __m256 acc[M][NV];
  MOE_UNROLL
  for (int r = 0; r < M; ++r) {
    MOE_UNROLL
    for (int c = 0; c < NV; ++c) acc[r][c] = _mm256_setzero_ps();
  }
  for (int64_t j = 0; j < n; ++j) {
    if constexpr (SKIP) {
      uint32_t bits = 0;  // the rows' terms without their signs: 0 when every one is +-0
      MOE_UNROLL
      for (int r = 0; r < M; ++r) {
        uint32_t u;
        std::memcpy(&u, A + r * lda + j, sizeof u);
        bits |= u << 1;
      }
      if (bits == 0) continue;
    }
    const float* xr = X + j * ldx;
    __m256 x[NV];
    MOE_UNROLL
    for (int c = 0; c < NV; ++c) x[c] = FULL || c < NV - 1 ? _mm256_loadu_ps(xr + 8 * c) : _mm256_maskload_ps(xr + 8 * c, last);
    MOE_UNROLL
    for (int r = 0; r < M; ++r) {
      const __m256 ar = _mm256_set1_ps(A[r * lda + j]);
      MOE_UNROLL
      for (int c = 0; c < NV; ++c) acc[r][c] = _mm256_fmadd_ps(ar, x[c], acc[r][c]);
    }
  }
  MOE_UNROLL
  for (int r = 0; r < M; ++r) {
    MOE_UNROLL
    for (int c = 0; c < NV; ++c) {
      if (FULL || c < NV - 1)
        _mm256_storeu_ps(Y + r * ldy + 8 * c, acc[r][c]);
      else
        _mm256_maskstore_ps(Y + r * ldy + 8 * c, last, acc[r][c]);
    }
  }
}

template <int M, int NV, bool SKIP>
__attribute__((target("avx2,fma"))) inline void combine_block(const float* A, int64_t lda, const float* X, int64_t n, int64_t ldx,
                                                              float* Y, int64_t ldy, int64_t left) {
  if (left >= 8 * NV) return combine_block<M, NV, true, SKIP>(A, lda, X, n, ldx, Y, ldy, __m256i{});
  combine_block<M, NV, false, SKIP>(A, lda, X, n, ldx, Y, ldy, tail_mask(left - 8 * (NV - 1)));
}

// The next 24 columns of M rows (X and Y at their first), `left` of them left: up to 3 vectors, only as many
// as are left.
template <int M, bool SKIP>
__attribute__((target("avx2,fma"))) inline void combine_columns(const float* A, int64_t lda, const float* X, int64_t n, int64_t ldx,
                                                                float* Y, int64_t ldy, int64_t left) {
  switch (std::min<int64_t>(3, (left + 7) / 8)) {
    case 1: return combine_block<M, 1, SKIP>(A, lda, X, n, ldx, Y, ldy, left);
    case 2: return combine_block<M, 2, SKIP>(A, lda, X, n, ldx, Y, ldy, left);
    default: return combine_block<M, 3, SKIP>(A, lda, X, n, ldx, Y, ldy, left);
  }
}

template <int M>
__attribute__((target("avx2,fma"))) void combine_row_block_avx2(const float* A, int64_t lda, const float* X, int64_t n, int64_t D,
                                                                int64_t ldx, float* Y, int64_t ldy) {
  for (int64_t d = 0; d < D; d += 24) combine_columns<M, true>(A, lda, X + d, n, ldx, Y + d, ldy, D - d);
}

// matmul: 24 columns at a time (a panel: 96 bytes a term), every row of A against them, 4 rows at a time (12
// accumulators, 3 loads of X and 4 broadcasts of A per term), the last 1-3 rows alone.
__attribute__((target("avx2,fma"))) void matmul_avx2(const float* A, int64_t lda, int64_t m, const float* X, int64_t n, int64_t D,
                                                     int64_t ldx, int64_t step, float* Y, int64_t ldy) {
  static_assert(kPanel == 24, "a panel is combine_columns' 3 vectors");
  for (int64_t d = 0; d < D; d += kPanel) {
    const float* Xd = X + (d / kPanel) * step;
    int64_t r = 0;
    for (; r + 4 <= m; r += 4) combine_columns<4, false>(A + r * lda, lda, Xd, n, ldx, Y + r * ldy + d, ldy, D - d);
    switch (m - r) {
      case 1: combine_columns<1, false>(A + r * lda, lda, Xd, n, ldx, Y + r * ldy + d, ldy, D - d); break;
      case 2: combine_columns<2, false>(A + r * lda, lda, Xd, n, ldx, Y + r * ldy + d, ldy, D - d); break;
      case 3: combine_columns<3, false>(A + r * lda, lda, Xd, n, ldx, Y + r * ldy + d, ldy, D - d); break;
      default: break;
    }
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

// Lanes of the 8 flags from al (0 or 1 each), at most left of them read: all ones where set.
__attribute__((target("avx2,fma"))) inline __m256 flags_mask(const bool* al, int64_t left) {
  uint64_t b = 0;
  if (left >= 8)
    std::memcpy(&b, al, 8);
  else
    for (int64_t l = 0; l < left; ++l) b |= static_cast<uint64_t>(al[l]) << (8 * l);
  const __m256i w = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<int64_t>(b)));
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(w, _mm256_setzero_si256()));
}

__attribute__((target("avx2,fma"))) void softmax_row_avx2(const float* s, const bool* allowed, float scale, int64_t n, float* p) {
  constexpr int64_t kChunks = 64;  // the lanes' masks of up to 512 scores kept from the first pass
  __m256 keeps[kChunks];
  const __m256 vscale = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 mx = ninf;
  for (int64_t j = 0; j < n; j += 8) {  // a NaN score is passed over (max_ps returns its second operand), as std::max
    const __m256i m = tail_mask(n - j);
    const __m256 keep = _mm256_and_ps(flags_mask(allowed + j, n - j), _mm256_castsi256_ps(m));
    if (j / 8 < kChunks) keeps[j / 8] = keep;
    mx = _mm256_max_ps(_mm256_blendv_ps(ninf, _mm256_mul_ps(_mm256_maskload_ps(s + j, m), vscale), keep), mx);
  }
  mx = _mm256_max_ps(mx, _mm256_permute2f128_ps(mx, mx, 1));  // every lane the maximum (no NaN left)
  mx = _mm256_max_ps(mx, _mm256_shuffle_ps(mx, mx, _MM_SHUFFLE(1, 0, 3, 2)));
  mx = _mm256_max_ps(mx, _mm256_shuffle_ps(mx, mx, _MM_SHUFFLE(2, 3, 0, 1)));
  __m256 sum = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; j += 8) {
    const __m256i m = tail_mask(n - j);
    const __m256 keep = j / 8 < kChunks ? keeps[j / 8] : flags_mask(allowed + j, n - j);
    const __m256 w = _mm256_and_ps(exp_nonpositive(_mm256_fmsub_ps(_mm256_maskload_ps(s + j, m), vscale, mx)), keep);
    sum = _mm256_add_ps(sum, w);
    _mm256_maskstore_ps(p + j, m, w);
  }
  const __m256 inv = _mm256_set1_ps(1.f / lanes_sum(sum));
  for (int64_t j = 0; j < n; j += 8) {
    const __m256i m = tail_mask(n - j);
    _mm256_maskstore_ps(p + j, m, _mm256_mul_ps(_mm256_maskload_ps(p + j, m), inv));
  }
}

__attribute__((target("avx2,fma"))) void softmax_row_backward_avx2(const float* p, float delta, float scale, int64_t n, float* g) {
  const __m256 vd = _mm256_set1_ps(delta), vs = _mm256_set1_ps(scale);
  for (int64_t j = 0; j < n; j += 8) {
    const __m256i m = tail_mask(n - j);
    const __m256 d = _mm256_sub_ps(_mm256_maskload_ps(g + j, m), vd);
    _mm256_maskstore_ps(g + j, m, _mm256_mul_ps(_mm256_mul_ps(_mm256_maskload_ps(p + j, m), d), vs));
  }
}
// 8 x 8 tiles through registers (unpack, shuffle, permute: the classic AVX transpose), the edges scalar.
__attribute__((target("avx2,fma"))) void transpose_avx2(const float* in, int64_t rows, int64_t cols, float* out) {
  const int64_t r8 = rows - rows % 8, c8 = cols - cols % 8;
  for (int64_t r = 0; r < r8; r += 8)
    for (int64_t c = 0; c < c8; c += 8) {
      __m256 t[8], u[8];
      MOE_UNROLL
      for (int i = 0; i < 8; ++i) t[i] = _mm256_loadu_ps(in + (r + i) * cols + c);
      MOE_UNROLL
      for (int i = 0; i < 8; i += 2) {
        u[i] = _mm256_unpacklo_ps(t[i], t[i + 1]);
        u[i + 1] = _mm256_unpackhi_ps(t[i], t[i + 1]);
      }
      MOE_UNROLL
      for (int i = 0; i < 8; i += 4) {
        t[i] = _mm256_shuffle_ps(u[i], u[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        t[i + 1] = _mm256_shuffle_ps(u[i], u[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        t[i + 2] = _mm256_shuffle_ps(u[i + 1], u[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        t[i + 3] = _mm256_shuffle_ps(u[i + 1], u[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      MOE_UNROLL
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(out + (c + i) * rows + r, _mm256_permute2f128_ps(t[i], t[i + 4], 0x20));
        _mm256_storeu_ps(out + (c + i + 4) * rows + r, _mm256_permute2f128_ps(t[i], t[i + 4], 0x31));
      }
    }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = r < r8 ? c8 : 0; c < cols; ++c) out[c * rows + r] = in[r * cols + c];
}

// ---- element-wise rows of the layers (RMSNorm, RMSNorm then rotary embedding, SiLU(g) * u) ----
// Loops take vectors of 8, the last one masked: `left` floats are left from p on. (Masked stores only at the
// end: a load that reads a masked store's data waits for it to reach the cache.)
__attribute__((target("avx2,fma"))) inline __m256 ld(const float* p, int64_t left) {
  return left >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, tail_mask(left));
}
__attribute__((target("avx2,fma"))) inline void st(float* p, int64_t left, __m256 v) {
  if (left >= 8)
    _mm256_storeu_ps(p, v);
  else
    _mm256_maskstore_ps(p, tail_mask(left), v);
}

__attribute__((target("avx2,fma"))) inline float sum_squares(const float* x, int64_t H) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < H; i += 8) {
    const int64_t left = H - i;
    const __m256 v = ld(x + i, left);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  return lanes_sum(acc);
}

__attribute__((target("avx2,fma"))) float rms_norm_row_avx2(const float* x, const float* w, int64_t H, float eps, float* y) {
  const float inv = 1.f / std::sqrt(sum_squares(x, H) / static_cast<float>(H) + eps);
  const __m256 iv = _mm256_set1_ps(inv);
  for (int64_t i = 0; i < H; i += 8) {
    const int64_t left = H - i;
    const __m256 t = _mm256_mul_ps(ld(x + i, left), iv);  // x * inv, rounded, then times w: as torch
    st(y + i, left, _mm256_mul_ps(ld(w + i, left), t));
  }
  return inv;
}

// gx = inv * gt - x * inv^3 * (sum gt * x) / H with gt = ga * w.
__attribute__((target("avx2,fma"))) void rms_norm_row_backward_avx2(const float* x, const float* w, float inv, const float* ga, int64_t H,
                                                                    float* gx) {
  __m256 dacc = _mm256_setzero_ps();
  for (int64_t i = 0; i < H; i += 8) {
    const int64_t left = H - i;
    const __m256 gt = _mm256_mul_ps(ld(ga + i, left), ld(w + i, left));
    dacc = _mm256_fmadd_ps(gt, ld(x + i, left), dacc);
  }
  const float c = lanes_sum(dacc) * inv * inv * inv / static_cast<float>(H);
  const __m256 iv = _mm256_set1_ps(inv), cv = _mm256_set1_ps(c);
  for (int64_t i = 0; i < H; i += 8) {
    const int64_t left = H - i;
    const __m256 gt = _mm256_mul_ps(ld(ga + i, left), ld(w + i, left));
    st(gx + i, left, _mm256_fnmadd_ps(ld(x + i, left), cv, _mm256_mul_ps(gt, iv)));
  }
}

// sigmoid(g) from exp(-|g|) (<= 1, no overflow): 1 / (1 + e) for g >= 0, e / (1 + e) below.
__attribute__((target("avx2,fma"))) inline __m256 sigmoid(__m256 g) {
  const __m256 neg_abs = _mm256_or_ps(g, _mm256_set1_ps(-0.f));
  const __m256 e = exp_nonpositive(neg_abs);
  const __m256 r = _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_add_ps(_mm256_set1_ps(1.f), e));
  return _mm256_blendv_ps(r, _mm256_mul_ps(e, r), g);  // sign bit of g picks e / (1 + e)
}
}  // namespace

float rms_norm_row(const float* x, const float* w, int64_t H, float eps, float* y) {
  if (g_isa == Isa::none) throw std::logic_error("rms_norm_row: no kernel selected");
  return rms_norm_row_avx2(x, w, H, eps, y);
}

void rms_norm_row_backward(const float* x, const float* w, float inv, const float* ga, int64_t H, float* gx) {
  if (g_isa == Isa::none) throw std::logic_error("rms_norm_row_backward: no kernel selected");
  rms_norm_row_backward_avx2(x, w, inv, ga, H, gx);
}

namespace {
__attribute__((target("avx2,fma"))) void rope_row_avx2(const float* a, const float* c, const float* s, int64_t D, float* y) {
  const int64_t h = D / 2;
  // y[i] = a[i] c[i] - a[i + h] s[i] (i < h), a[i] c[i] + a[i - h] s[i] (i >= h); each product rounded,
  // then the sum: transformers' q * cos + rotate_half(q) * sin.
  for (int half = 0; half < 2; ++half) {
    const float* other = half == 0 ? a + h : a;
    const int64_t o = half * h;
    const __m256 sign = _mm256_set1_ps(half == 0 ? -0.f : 0.f);
    for (int64_t i = 0; i < h; i += 8) {
    const int64_t left = h - i;
      const __m256 ac = _mm256_mul_ps(ld(a + o + i, left), ld(c + o + i, left));
      const __m256 rs = _mm256_mul_ps(_mm256_xor_ps(ld(other + i, left), sign), ld(s + o + i, left));
      st(y + o + i, left, _mm256_add_ps(ac, rs));
    }
  }
}

// The rotary embedding's transpose: ga[j] = gy[j] c[j] + gy[j + h] s[j + h] (j < h), gy[j] c[j] - gy[j - h]
// s[j - h] (j >= h).
__attribute__((target("avx2,fma"))) void rope_row_backward_avx2(const float* gy, const float* c, const float* s, int64_t D, float* ga) {
  const int64_t h = D / 2;
  for (int half = 0; half < 2; ++half) {
    const int64_t o = half * h, p = half == 0 ? h : 0;
    const __m256 sign = _mm256_set1_ps(half == 0 ? 0.f : -0.f);
    for (int64_t i = 0; i < h; i += 8) {
    const int64_t left = h - i;
      const __m256 gc = _mm256_mul_ps(ld(gy + o + i, left), ld(c + o + i, left));
      const __m256 gs = _mm256_mul_ps(ld(gy + p + i, left), ld(s + p + i, left));
      st(ga + o + i, left, _mm256_add_ps(gc, _mm256_xor_ps(gs, sign)));
    }
  }
}

__attribute__((target("avx2,fma"))) void silu_mul_avx2(const float* g, const float* u, int64_t n, float* h) {
  for (int64_t i = 0; i < n; i += 8) {
    const int64_t left = n - i;
    const __m256 gv = ld(g + i, left);
    st(h + i, left, _mm256_mul_ps(_mm256_mul_ps(gv, sigmoid(gv)), ld(u + i, left)));
  }
}

// d/dg silu(g) = s (1 + g (1 - s)), s = sigmoid(g).
__attribute__((target("avx2,fma"))) void silu_mul_backward_avx2(const float* g, const float* u, const float* gh, int64_t n, float* gg,
                                                                float* gu) {
  const __m256 one = _mm256_set1_ps(1.f);
  for (int64_t i = 0; i < n; i += 8) {
    const int64_t left = n - i;
    const __m256 gv = ld(g + i, left), uv = ld(u + i, left), hv = ld(gh + i, left);
    const __m256 sg = sigmoid(gv);
    const __m256 silu = _mm256_mul_ps(gv, sg);
    const __m256 dsilu = _mm256_mul_ps(sg, _mm256_fmadd_ps(gv, _mm256_sub_ps(one, sg), one));
    st(gu + i, left, _mm256_mul_ps(hv, silu));
    st(gg + i, left, _mm256_mul_ps(_mm256_mul_ps(hv, uv), dsilu));
  }
}
}  // namespace

namespace {
__attribute__((target("avx2,fma"))) void add_scaled_product_avx2(const float* a, const float* b, float s, int64_t n, float* y) {
  const __m256 sv = _mm256_set1_ps(s);
  for (int64_t i = 0; i < n; i += 8) {
    const int64_t left = n - i;
    const __m256 t = _mm256_mul_ps(ld(b + i, left), sv);
    st(y + i, left, _mm256_fmadd_ps(ld(a + i, left), t, ld(y + i, left)));
  }
}
}  // namespace

void add_scaled_product(const float* a, const float* b, float s, int64_t n, float* y) {
  if (g_isa == Isa::none) throw std::logic_error("add_scaled_product: no kernel selected");
  add_scaled_product_avx2(a, b, s, n, y);
}

namespace {
__attribute__((target("avx2,fma"))) void axpy_avx2(float a, const float* x, int64_t n, float* y) {
  const __m256 av = _mm256_set1_ps(a);
  for (int64_t i = 0; i < n; i += 8) {
    const int64_t left = n - i;
    st(y + i, left, _mm256_fmadd_ps(av, ld(x + i, left), ld(y + i, left)));
  }
}

__attribute__((target("avx2,fma"))) float scale_row_dot_avx2(const float* g, const float* y, float w, int64_t n, float* out) {
  const __m256 wv = _mm256_set1_ps(w);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) {
    const int64_t left = n - i;
    const __m256 gv = ld(g + i, left);
    st(out + i, left, _mm256_mul_ps(gv, wv));
    acc = _mm256_fmadd_ps(gv, ld(y + i, left), acc);
  }
  return lanes_sum(acc);
}
}  // namespace

void axpy(float a, const float* x, int64_t n, float* y) {
  if (g_isa == Isa::none) throw std::logic_error("axpy: no kernel selected");
  axpy_avx2(a, x, n, y);
}

float scale_row_dot(const float* g, const float* y, float w, int64_t n, float* out) {
  if (g_isa == Isa::none) throw std::logic_error("scale_row_dot: no kernel selected");
  return scale_row_dot_avx2(g, y, w, n, out);
}

void rope_row(const float* a, const float* c, const float* s, int64_t D, float* y) {
  if (g_isa == Isa::none) throw std::logic_error("rope_row: no kernel selected");
  rope_row_avx2(a, c, s, D, y);
}

void rope_row_backward(const float* gy, const float* c, const float* s, int64_t D, float* ga) {
  if (g_isa == Isa::none) throw std::logic_error("rope_row_backward: no kernel selected");
  rope_row_backward_avx2(gy, c, s, D, ga);
}

void silu_mul(const float* g, const float* u, int64_t n, float* h) {
  if (g_isa == Isa::none) throw std::logic_error("silu_mul: no kernel selected");
  silu_mul_avx2(g, u, n, h);
}

void silu_mul_backward(const float* g, const float* u, const float* gh, int64_t n, float* gg, float* gu) {
  if (g_isa == Isa::none) throw std::logic_error("silu_mul_backward: no kernel selected");
  silu_mul_backward_avx2(g, u, gh, n, gg, gu);
}

void transpose(const float* in, int64_t rows, int64_t cols, float* out) {
  if (g_isa == Isa::none) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = in[r * cols + c];
    return;
  }
  transpose_avx2(in, rows, cols, out);
}

void combine_rows(const float* a, const float* X, int64_t n, int64_t D, int64_t ldx, float* y) {
  if (g_isa == Isa::none) throw std::logic_error("combine_rows: no kernel selected");
  combine_rows_avx2(a, X, n, D, ldx, y);
}

void combine_row_block(const float* A, int64_t lda, int64_t m, const float* X, int64_t n, int64_t D, int64_t ldx, float* Y,
                       int64_t ldy) {
  if (g_isa == Isa::none) throw std::logic_error("combine_row_block: no kernel selected");
  switch (m) {
    case 1: return combine_row_block_avx2<1>(A, lda, X, n, D, ldx, Y, ldy);
    case 2: return combine_row_block_avx2<2>(A, lda, X, n, D, ldx, Y, ldy);
    case 3: return combine_row_block_avx2<3>(A, lda, X, n, D, ldx, Y, ldy);
    case 4: return combine_row_block_avx2<4>(A, lda, X, n, D, ldx, Y, ldy);
    default: throw std::logic_error("combine_row_block: rows outside 1..4");
  }
}

void matmul(const float* A, int64_t lda, int64_t m, const float* X, int64_t n, int64_t D, int64_t ldx, int64_t step, float* Y,
            int64_t ldy) {
  if (g_isa == Isa::none) throw std::logic_error("matmul: no kernel selected");
  matmul_avx2(A, lda, m, X, n, D, ldx, step, Y, ldy);
}

void softmax_row(const float* s, const bool* allowed, float scale, int64_t n, float* p) {
  if (g_isa == Isa::none) throw std::logic_error("softmax_row: no kernel selected");
  softmax_row_avx2(s, allowed, scale, n, p);
}

void softmax_row_backward(const float* p, float delta, float scale, int64_t n, float* g) {
  if (g_isa == Isa::none) throw std::logic_error("softmax_row_backward: no kernel selected");
  softmax_row_backward_avx2(p, delta, scale, n, g);
}
#else
// Other architectures: callers take the matrix product.
Isa few_rows_isa() { return Isa::none; }
bool set_few_rows_isa(Isa isa) { return isa == Isa::none; }
void few_rows(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t) {
  throw std::logic_error("few_rows: no kernel for this architecture");
}
void transpose(const float* in, int64_t rows, int64_t cols, float* out) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = in[r * cols + c];
}
float rms_norm_row(const float*, const float*, int64_t, float, float*) { throw std::logic_error("rms_norm_row: no kernel"); }
void rms_norm_row_backward(const float*, const float*, float, const float*, int64_t, float*) {
  throw std::logic_error("rms_norm_row_backward: no kernel");
}
void add_scaled_product(const float*, const float*, float, int64_t, float*) { throw std::logic_error("add_scaled_product: no kernel"); }
void axpy(float, const float*, int64_t, float*) { throw std::logic_error("axpy: no kernel"); }
float scale_row_dot(const float*, const float*, float, int64_t, float*) { throw std::logic_error("scale_row_dot: no kernel"); }
void rope_row(const float*, const float*, const float*, int64_t, float*) { throw std::logic_error("rope_row: no kernel"); }
void rope_row_backward(const float*, const float*, const float*, int64_t, float*) {
  throw std::logic_error("rope_row_backward: no kernel");
}
void silu_mul(const float*, const float*, int64_t, float*) { throw std::logic_error("silu_mul: no kernel"); }
void silu_mul_backward(const float*, const float*, const float*, int64_t, float*, float*) {
  throw std::logic_error("silu_mul_backward: no kernel");
}
void combine_rows(const float*, const float*, int64_t, int64_t, int64_t, float*) {
  throw std::logic_error("combine_rows: no kernel for this architecture");
}
void combine_row_block(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, float*, int64_t) {
  throw std::logic_error("combine_row_block: no kernel for this architecture");
}
void matmul(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, int64_t, float*, int64_t) {
  throw std::logic_error("matmul: no kernel for this architecture");
}
void softmax_row(const float*, const bool*, float, int64_t, float*) {
  throw std::logic_error("softmax_row: no kernel for this architecture");
}
void softmax_row_backward(const float*, float, float, int64_t, float*) {
  throw std::logic_error("softmax_row_backward: no kernel for this architecture");
}
#endif

// Plain loops (once per weight; no instruction set needed).
void pack_panels(const float* w, int64_t D, int64_t n, float* P) {
  for (int64_t d0 = 0; d0 < D; d0 += kPanel) {
    float* panel = P + d0 * n;
    const int64_t cols = std::min(kPanel, D - d0);
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t c = 0; c < cols; ++c) panel[j * kPanel + c] = w[(d0 + c) * n + j];
      for (int64_t c = cols; c < kPanel; ++c) panel[j * kPanel + c] = 0.f;
    }
  }
}

}  // namespace moe::model::kernel
