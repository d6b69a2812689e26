// bf16_cpu.h: the CPU's bf16 compute path (issue 17) through oneDNN.
//
// conv2d, linear and attention's two matmuls take bf16 inputs and weights,
// accumulate in fp32 and write fp32: activations stay fp32 between ops and
// are rounded to bf16 (round to nearest even) at an op's input; weights come
// in bf16 already (the backend's param_dtype, converted once at load).
// oneDNN picks its implementation for the CPU it runs on (AMX, AVX512-BF16,
// or its reference code where the CPU has neither); cpu_bf16_impl_info names
// what it picked. Not the reference: the fp32 kernels (ops_cpu.h) are, and
// tests/test_cpu_bf16.c checks these against them.
//
// Only built with oneDNN (SDC_HAVE_DNNL); the backend refuses bf16 without it.
#ifndef SDC_BF16_CPU_H
#define SDC_BF16_CPU_H

#include <stddef.h>
#include <stdint.h>

// One context per backend: oneDNN's engine and stream, the primitives made so
// far (one per op shape, made on the first call and reused), and the staging
// buffers for the bf16 copies of the inputs (grown to the largest request,
// then reused). One calling thread at a time, as the CPU backend.
typedef struct CpuBf16 CpuBf16;

// 0, or nonzero with a message in msg (n bytes).
int cpu_bf16_create(CpuBf16 **out, char *msg, size_t n);
void cpu_bf16_destroy(CpuBf16 *c);

// Each op returns 0, or nonzero with cpu_bf16_error's message (a oneDNN call
// that failed, or out of memory for a staging buffer); out is then undefined.
const char *cpu_bf16_error(const CpuBf16 *c);
// 1 when the failure was a missing staging buffer (out of memory).
int cpu_bf16_error_is_oom(const CpuBf16 *c);

// out (M, N) f32 = x (M, K) f32 -> bf16 . w (N, K) bf16 ^T + b (N) f32 (or NULL)
int cpu_bf16_linear(CpuBf16 *c, float *out, const float *x, const uint16_t *w, const float *b, int64_t M,
                    int64_t K, int64_t N);
// out (N, OC, OH, OW) f32 = conv(x (N, C, H, W) f32 -> bf16, w (OC, C, KH, KW) bf16) + b (OC) f32 or NULL;
// zero padding pad on every side, stride, groups 1. w_param: w is a bf16
// parameter (not a per-call rounding of fp32 weights), which may be kept in
// the convolution's own layout while parameters are held (cpu_bf16_hold).
int cpu_bf16_conv2d(CpuBf16 *c, float *out, const float *x, const uint16_t *w, int w_param, const float *b, int N,
                    int C, int H, int W, int OC, int KH, int KW, int stride, int pad);
// Holds (hold 1) and releases (0) the parameters: while any hold is open the
// caller promises that no bf16 parameter is written or freed, so conv2d
// keeps its blocked copies of them (made on first use) instead of
// reordering them on every call; the last release drops the copies, as does
// cpu_bf16_params_changed at once. cpu_bf16_held_bytes: what they take.
void cpu_bf16_hold(CpuBf16 *c, int hold);
void cpu_bf16_params_changed(CpuBf16 *c);
size_t cpu_bf16_held_bytes(const CpuBf16 *c);
// Multi-head attention as cpu_attention (ops_cpu.h): q (B, Lq, H*D), k and v
// (B, Lk, H*D) f32 -> out (B, Lq, H*D) f32, scale 1/sqrt(D), causal masks key
// j > query i. Q.K^T and P.V in bf16 with fp32 accumulation; the softmax in
// fp32 (its probabilities rounded to bf16 for P.V). Per head, a block of
// queries at a time: never a head's whole (Lq, Lk) score matrix.
int cpu_bf16_attention(CpuBf16 *c, float *out, const float *q, const float *k, const float *v, int B, int Lq,
                       int Lk, int heads, int D, int causal);

// Backward (training, the mixed variant): bf16 operands (dy, x, w; dout, q,
// k, v) and the softmax's P and dS rounded to bf16, fp32 accumulation and
// fp32 gradients. dx / dq / dk / dv are overwritten, dw accumulated (+=);
// dx or dw NULL: not wanted. Bias gradients are not here (the caller sums the
// unrounded dy). Each returns 0, -1 with cpu_bf16_error, or 1 when oneDNN
// computes no bf16 on this CPU (cpu_bf16_native 0): the caller emulates.
int cpu_bf16_native(const CpuBf16 *c);
// linear: dx (M, K) = dy (M, N) . w (N, K); dw (N, K) += dy^T . x (M, K)
int cpu_bf16_linear_backward(CpuBf16 *c, float *dx, float *dw, const float *dy, const float *x, const uint16_t *w,
                             int64_t M, int64_t K, int64_t N);
// conv2d (as cpu_bf16_conv2d): dx (N, C, H, W), dw (OC, C, KH, KW) += from dy (N, OC, OH, OW)
int cpu_bf16_conv2d_backward(CpuBf16 *c, float *dx, float *dw, const float *dy, const float *x, const uint16_t *w,
                             int N, int C, int H, int W, int OC, int KH, int KW, int stride, int pad);
// attention (as cpu_bf16_attention): dq (B, Lq, H*D), dk and dv (B, Lk, H*D) from dout (B, Lq, H*D)
int cpu_bf16_attention_backward(CpuBf16 *c, float *dq, float *dk, float *dv, const float *dout, const float *q,
                                const float *k, const float *v, int B, int Lq, int Lk, int heads, int D,
                                int causal);

// The machine's bf16 GEMM rate in GFLOP/s: the best of reps oneDNN matmuls
// (n, n) bf16 x (n, n) bf16 -> f32, B prepacked in the library's own layout;
// 0 where oneDNN computes no bf16 here.
double cpu_bf16_gemm_gflops(CpuBf16 *c, int n, int reps);

// The oneDNN version and, per op, the implementations its primitives use so
// far, e.g. "oneDNN 2.6.3: conv2d ref:any; linear gemm:jit; attention ref:any".
void cpu_bf16_impl_info(const CpuBf16 *c, char *buf, size_t n);

// dst[i] = x[i] rounded to bf16, nearest even (NaN stays NaN); OpenMP.
void cpu_f32_to_bf16(uint16_t *dst, const float *x, int64_t n);
// fp32 weights w (n) rounded to bf16 for one op (the mixed-precision
// variant's master weights), in c's weight staging buffer: valid until the
// next call. NULL (cpu_bf16_error) when out of memory.
const uint16_t *cpu_bf16_weights(CpuBf16 *c, const float *w, int64_t n);

#endif
