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

}  // namespace moe::model::kernel
