// IEEE binary16 conversions. Scalar code is exact round-to-nearest-even; the bulk paths use F16C
// (same rounding) when the CPU supports it and fall back to the scalar code otherwise.
#include <cmath>
#include <cstring>

#include "moe/format/routing.h"

// clang before 16 has no __builtin_cpu_supports("f16c"): it (the fuzzing build) takes the scalar path.
#if (defined(__x86_64__) || defined(__i386__)) && (!defined(__clang__) || __clang_major__ >= 16)
#include <immintrin.h>
#define MOE_HAVE_F16C_PATH 1
#endif

namespace moe::format {

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN, quieted
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to infinity
  if (a < 0x38800000u) {
    // Below the smallest normal half (2^-14): the result is a multiple of 2^-24. Scaling by 2^24 is exact
    // and nearbyint rounds half to even in the default rounding mode.
    float v;
    std::memcpy(&v, &a, 4);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(v * 16777216.0f)));
  }
  a += 0xfffu + ((a >> 13) & 1u);  // round to nearest, ties to even, on the 13 dropped bits
  return static_cast<uint16_t>(sign | ((a - 0x38000000u) >> 13));
}

float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    float v = static_cast<float>(mant) * (1.0f / 16777216.0f);  // exact: mant * 2^-24
    return sign ? -v : v;
  }
  if (exp == 31) bits = sign | 0x7f800000u | (mant << 13);
  else bits = sign | ((exp + 112u) << 23) | (mant << 13);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

namespace {
inline uint16_t load_le16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

void h2f_scalar(const unsigned char* s, float* d, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = half_to_float(load_le16(s + 2 * i));
}
void f2h_scalar(const float* s, unsigned char* d, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint16_t h = float_to_half(s[i]);
    d[2 * i] = static_cast<unsigned char>(h);
    d[2 * i + 1] = static_cast<unsigned char>(h >> 8);
  }
}

#ifdef MOE_HAVE_F16C_PATH
__attribute__((target("avx,f16c"))) void h2f_f16c(const unsigned char* s, float* d, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 2 * i))));
  h2f_scalar(s + 2 * i, d + i, n - i);
}
__attribute__((target("avx,f16c"))) void f2h_f16c(const float* s, unsigned char* d, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 2 * i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  f2h_scalar(s + i, d + 2 * i, n - i);
}
bool have_f16c() {
  static const bool ok = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  return ok;
}
#endif
}  // namespace

void halves_to_floats(const void* src_le, float* dst, size_t n) {
  const auto* s = static_cast<const unsigned char*>(src_le);
#ifdef MOE_HAVE_F16C_PATH
  if (have_f16c()) return h2f_f16c(s, dst, n);
#endif
  h2f_scalar(s, dst, n);
}

void floats_to_halves(const float* src, void* dst_le, size_t n) {
  auto* d = static_cast<unsigned char*>(dst_le);
#ifdef MOE_HAVE_F16C_PATH
  if (have_f16c()) return f2h_f16c(src, d, n);
#endif
  f2h_scalar(src, d, n);
}

}  // namespace moe::format
