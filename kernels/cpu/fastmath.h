// fastmath.h: branch-free exp and normal-CDF approximations for the CPU
// kernels' hot loops (private to kernels/cpu). libm's expf/erff are scalar
// calls that stop GCC from vectorising a loop; these inline into plain
// float arithmetic that it turns into AVX2/FMA code, so a softmax row or a
// SiLU over a feature map runs 8 lanes at a time.
//
// Accuracy (checked against libm in tests/test_ops_cpu.c):
// - fm_expf: relative error < 3e-7 for x in [-87, 88]; inputs are clamped
//   to that range (exp(-87) ~ 1.6e-38, so underflow gives a tiny normal
//   number instead of 0, which no softmax or sigmoid can tell apart).
// - fm_norm_cdf: Phi(x) = (1 + erf(x / sqrt 2)) / 2 from the Chebyshev fit of
//   erfc in Numerical Recipes (fractional error < 1.2e-7 on erfc), so the
//   tail Phi(x) for x << 0 keeps its relative accuracy and gelu = x Phi(x)
//   has an absolute error below 1.5e-7 |x|.
#ifndef SDC_KERNELS_CPU_FASTMATH_H
#define SDC_KERNELS_CPU_FASTMATH_H

#include <stdint.h>
#include <string.h>

// GCC's default -ftrapping-math forbids if-converting a float compare whose
// result feeds more arithmetic (the range clamps below), so no loop calling
// these would vectorise. sdc never reads floating-point exception flags:
// every file that includes this header drops that guarantee from here on.
// (clang already defaults to ignoring FP exceptions.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

static inline float fm_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    // x = n ln2 + r, |r| <= ln2/2; n rounded to nearest by the 1.5*2^23 trick
    const float shifter = 12582912.0f;
    float n = (x * 1.44269504088896341f + shifter) - shifter;
    float r = x - n * 0.693145751953125f;  // ln2 high part (exact product)
    r = r - n * 1.42860682030941723212e-6f; // ln2 low part
    // Taylor to r^7 on |r| <= 0.347: truncation < 2e-9 relative
    float p = 1.98412698e-4f;
    p = p * r + 1.38888889e-3f;
    p = p * r + 8.33333333e-3f;
    p = p * r + 4.16666667e-2f;
    p = p * r + 1.66666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23; // 2^n, n in [-126, 127]
    float s;
    memcpy(&s, &bits, 4);
    return p * s;
}

// 1 / (1 + exp(-x))
static inline float fm_sigmoid(float x) { return 1.0f / (1.0f + fm_expf(-x)); }

// Phi(x) = P(N(0,1) <= x) = erfc(-x / sqrt 2) / 2
static inline float fm_norm_cdf(float x) {
    float z = x * 0.70710678118654752f;
    float az = z < 0 ? -z : z;
    float t = 1.0f / (1.0f + 0.5f * az);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float erfc_az = t * fm_expf(p - az * az); // erfc(|z|)
    float half_tail = 0.5f * erfc_az;
    return z < 0 ? half_tail : 1.0f - half_tail;
}

#endif
