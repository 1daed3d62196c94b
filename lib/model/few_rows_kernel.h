// y = x W^T for a few rows of x (decode: batch 1-4), reading W once as it lies in memory. Includes no
// libtorch header: the caller (model/few_rows.cpp) wraps it as a tensor operation with its gradient.
#pragma once
#include <cstdint>

namespace moe::model::kernel {

// The most rows one call takes.
constexpr int64_t kFewRows = 4;

// The instruction set the kernel runs with: the best this CPU has (AVX-512, else AVX2 with FMA), or none
// (callers then use a matrix product). set_few_rows_isa picks a lesser one (tests, benchmarks; not
// thread-safe) and returns false, changing nothing, for one the CPU lacks.
enum class Isa { none, avx2, avx512 };
Isa few_rows_isa();
bool set_few_rows_isa(Isa isa);

// y[r * O + o] = sum over h of x[r * H + h] * w[o * H + h], for rows r < n (1 <= n <= kFewRows) and outputs
// o in [o0, o1); x [n, H], w [O, H] and y [n, O] row-major and dense; few_rows_isa() != none. Each output is
// summed in one order for an instruction set (lanes of 8 or 16 over h, the lanes added pairwise, then the
// tail of h), whatever n, o0, o1 or the caller's split of [0, O) over threads: a row's result does not
// depend on the rows beside it.
void few_rows(const float* x, const float* w, float* y, int64_t n, int64_t H, int64_t O, int64_t o0, int64_t o1);

// out [cols, rows] = in [rows, cols] transposed, both row-major and dense (8 x 8 tiles in registers with
// AVX2; plain loops without a kernel).
void transpose(const float* in, int64_t rows, int64_t cols, float* out);

// The row operations of attention (model/few_rows.cpp), AVX2 with FMA; few_rows_isa() != none.
// y[d] = sum over j < n with a[j] != 0 of a[j] * X[j * ldx + d], for d < D (X's rows: D dense floats, ldx
// apart); y is overwritten (zeros when no a[j] != 0). Each y[d] sums its terms in j order, one fused
// multiply-add per term.
void combine_rows(const float* a, const float* X, int64_t n, int64_t D, int64_t ldx, float* y);
// combine_rows for m rows at once (1 <= m <= 4), sharing each load of X: Y[r * ldy + d] = sum over j < n of
// A[r * lda + j] * X[j * ldx + d], for r < m and d < D. A term j is skipped only when A[r][j] is 0 in every
// row; a zero term of one row adds 0 * X[j][d], which for finite X changes nothing but the sign of a zero
// sum: each row gets combine_rows(A + r * lda, X, n, D, ldx, Y + r * ldy)'s bits. Each Y element sums in j
// order, one fused multiply-add per term.
void combine_row_block(const float* A, int64_t lda, int64_t m, const float* X, int64_t n, int64_t D, int64_t ldx, float* Y,
                       int64_t ldy);
// Y [m, D] = A [m, n] X [n, D], any m (A's rows lda apart, Y's ldy): combine_row_block's register blocks
// with no term skipped, so each Y[r][d] is sum over j < n of A[r][j] X[j][d] in j order, one fused
// multiply-add per term from 0, whatever m, the rows beside it or a caller's split of the rows. X is read 24
// columns at a time: columns [24 b, 24 b + 24) of row j at X + b * step + j * ldx. A dense X [n, D]: ldx = D,
// step = 24; W's panels (pack_panels): ldx = 24, step = 24 n.
void matmul(const float* A, int64_t lda, int64_t m, const float* X, int64_t n, int64_t D, int64_t ldx, int64_t step, float* Y,
            int64_t ldy);
// X = W^T for matmul as panels, W [D, n] (nn.Linear's [out, in]): panel p is [n, kPanel] row-major,
// P[p][j][c] = W[p * kPanel + c][j], zeros past D; ceil(D / kPanel) * kPanel * n floats. Each panel is read in
// order, a term's kPanel columns in one 96-byte piece, where W^T's rows may lie far apart.
constexpr int64_t kPanel = 24;
void pack_panels(const float* w, int64_t D, int64_t n, float* P);
// Softmax of one row's allowed scores: with mx the largest allowed s[j] * scale (NaN scores passed over),
// p[j] = allowed[j] ? exp(s[j] * scale - mx) : 0 (one fused multiply-subtract, the exponential a polynomial
// within 2 ulp of expf), then each times 1 / (their sum, in a fixed order); j < n, at least one allowed.
// p may be s.
void softmax_row(const float* s, const bool* allowed, float scale, int64_t n, float* p);
// Its gradient in the scores, in place: g[j] = p[j] * (g[j] - delta) * scale for j < n, where g comes in as the
// gradient in p and delta is the sum of p times it (rowsum(go * o) for attention).
void softmax_row_backward(const float* p, float delta, float scale, int64_t n, float* g);

// Element-wise rows of the layers, AVX2 with FMA; few_rows_isa() != none. Each row is computed alone, in a
// fixed order.
// RMSNorm of a row of H: y = w * (x * inv) with inv = 1 / sqrt(sum of x^2 / H + eps), returned.
float rms_norm_row(const float* x, const float* w, int64_t H, float eps, float* y);
// Its gradient in x for the gradient ga of the normalised-and-scaled row:
// gx = inv gt - x inv^3 (sum of gt x) / H, gt = ga w.
void rms_norm_row_backward(const float* x, const float* w, float inv, const float* ga, int64_t H, float* gx);
// y += a * (b * s) over n floats (RMSNorm's weight gradient, row by row).
void add_scaled_product(const float* a, const float* b, float s, int64_t n, float* y);
// y += a x over n floats (one fused multiply-add per element).
void axpy(float a, const float* x, int64_t n, float* y);
// out = g * w over n floats; returns the sum of g * y (a weighted scatter's gradients in its rows and weights).
float scale_row_dot(const float* g, const float* y, float w, int64_t n, float* out);
// The rotary embedding of a row of D (even): y = a c + rotate_half(a) s (rotate_half(a) = [-a2, a1]).
void rope_row(const float* a, const float* c, const float* s, int64_t D, float* y);
// Its transpose: ga = gy c + [gy2 s2, -gy1 s1].
void rope_row_backward(const float* gy, const float* c, const float* s, int64_t D, float* ga);
// h = silu(g) u over n floats (the exponential within 2 ulp of expf), and its gradients gg and gu from gh.
void silu_mul(const float* g, const float* u, int64_t n, float* h);
void silu_mul_backward(const float* g, const float* u, const float* gh, int64_t n, float* gg, float* gu);

}  // namespace moe::model::kernel
