// ops_cpu.h: the fp32 CPU kernels of sdc, on raw pointers with explicit
// shape ints. They know nothing of Tensor, Backend or any model: the CPU
// backend (src/core/backend_cpu.c) checks shapes and calls these.
//
// Every buffer is contiguous row-major fp32 unless said otherwise. Threads:
// OpenMP for loops, OpenBLAS sgemm for the matrix products (inside an OpenMP
// parallel region OpenBLAS runs single-threaded by itself, so the kernels
// either parallelise their own loop around single-threaded sgemm calls or
// make one big threaded sgemm call, never both at once).
//
// Scratch: conv2d and attention need a work buffer. They take it from the
// caller (the backend owns one that grows to the largest request and is then
// reused) and say how big it must be through the *_scratch_floats functions;
// the sizes are bounded (CPU_SCRATCH_BUDGET_FLOATS plus one row or block),
// whatever the image size.
#ifndef SDC_OPS_CPU_H
#define SDC_OPS_CPU_H

#include <stddef.h>
#include <stdint.h>

// The scratch a conv2d tile or the attention blocks of all threads aim to
// stay under: 8 Mi floats = 32 MiB.
#define CPU_SCRATCH_BUDGET_FLOATS ((size_t)8 << 20)

// ---- matrix products ---------------------------------------------------------

// torch.nn.Linear: x (M, K), w (N, K), b (N) or NULL -> out (M, N).
void cpu_linear(float *out, const float *x, const float *w, const float *b, int M, int K, int N);

// Floats of scratch cpu_conv2d needs (0 for a 1x1 stride-1 unpadded conv).
size_t cpu_conv2d_scratch_floats(int C, int H, int W, int OC, int KH, int KW, int stride, int pad);
// x (N, C, H, W), w (OC, C, KH, KW), b (OC) or NULL -> out (N, OC, OH, OW),
// OH = (H + 2 pad - KH) / stride + 1. im2col over tiles of output rows, one
// sgemm W (OC, C*KH*KW) x cols (C*KH*KW, tile) per tile.
void cpu_conv2d(float *out, const float *x, const float *w, const float *b, int N, int C, int H,
                int W, int OC, int KH, int KW, int stride, int pad, float *scratch,
                size_t scratch_floats);

// Floats of scratch cpu_attention needs with `threads` OpenMP threads
// (D = head dim).
size_t cpu_attention_scratch_floats(int Lq, int Lk, int D, int threads);
// q (B, Lq, H*D), k and v (B, Lk, H*D) -> out (B, Lq, H*D); scale 1/sqrt(D);
// causal masks key j > query i. Blocks of queries per (batch, head), exact
// softmax over the whole key row of a block; never the full score matrix.
void cpu_attention(float *out, const float *q, const float *k, const float *v, int B, int Lq,
                   int Lk, int H, int D, int causal, float *scratch, size_t scratch_floats);
// cpu_attention with each softmax numerator exp(s - max) rounded to bf16
// (nearest even) before P.V, the row sums from the unrounded ones: the bf16
// attention's emulation where oneDNN has no bf16 (kernels/cpu/bf16_cpu.c),
// given q, k, v already rounded to bf16 values. Same scratch.
void cpu_attention_bf16p(float *out, const float *q, const float *k, const float *v, int B, int Lq,
                         int Lk, int H, int D, int causal, float *scratch, size_t scratch_floats);

// ---- normalisation -----------------------------------------------------------

// x (N, C, S) with S the flattened spatial size; gamma, beta (C); groups
// divides C. silu != 0 applies x*sigmoid(x) after the affine.
void cpu_group_norm(float *out, const float *x, const float *gamma, const float *beta, int N,
                    int C, int64_t S, int groups, float eps, int silu);
// x (M, D) normalised over D; gamma, beta (D).
void cpu_layer_norm(float *out, const float *x, const float *gamma, const float *beta, int64_t M,
                    int D, float eps);
// x (M, D) -> softmax over D.
void cpu_softmax(float *out, const float *x, int64_t M, int D);

// ---- elementwise (out may equal x) --------------------------------------------

void cpu_silu(float *out, const float *x, int64_t n);
void cpu_gelu(float *out, const float *x, int64_t n); // exact erf form
void cpu_quick_gelu(float *out, const float *x, int64_t n);
// x (M, 2F) -> out (M, F) = x[:, :F] * gelu(x[:, F:]); out must not alias x.
void cpu_geglu(float *out, const float *x, int64_t M, int F);
void cpu_add(float *out, const float *a, const float *b, int64_t n);
void cpu_scale(float *out, const float *x, float s, int64_t n);
// x (N, C, S) + bias (N, C) broadcast over S.
void cpu_add_channel_bias(float *out, const float *x, const float *bias, int N, int C, int64_t S);

// ---- layout ------------------------------------------------------------------

// (N, C, H, W) -> (N, C, 2H, 2W), nearest.
void cpu_upsample_nearest2x(float *out, const float *x, int N, int C, int H, int W, int OH, int OW);
// a (N, Ca, S), b (N, Cb, S) -> out (N, Ca+Cb, S).
void cpu_concat_channels(float *out, const float *a, const float *b, int N, int Ca, int Cb,
                         int64_t S);
// (N, C, S) -> (N, S, C) and back: blocked transposes.
void cpu_nchw_to_nlc(float *out, const float *x, int N, int C, int64_t S);
void cpu_nlc_to_nchw(float *out, const float *x, int N, int C, int64_t S);
// ids (n) indexing table (V, D) -> out (n, D). Returns the first position
// whose id is outside [0, V), or -1 when all are valid (then out is full).
int64_t cpu_embedding(float *out, const int32_t *ids, const float *table, int64_t n, int V, int D);
// diffusers get_timestep_embedding with max_period 10000: t (N) -> out (N, dim).
void cpu_timestep_embedding(float *out, const float *t, int N, int dim, int flip_sin_to_cos,
                            float freq_shift);

// ---- vectorisable math, exposed for tests -------------------------------------

// exp over an array with the fast approximation the kernels use (relative
// error about 2e-7 against libm expf; gelu and silu are tested as ops).
void cpu_vexp(float *out, const float *x, int64_t n);

// ---- training step (train_cpu.c) --------------------------------------------------

// Per sample n of N (per floats each): e = pred - target, sq[n] = sum e^2 in
// double, dpred = k[n] * e (dpred may equal pred).
void cpu_mse_backward(float *dpred, double *sq, const float *pred, const float *target, const float *k, int64_t N,
                      int64_t per);
// sum of x[i]^2, accumulated in double in index order.
double cpu_sum_squares(const float *x, size_t n);
// torch.optim.AdamW's single-tensor fp32 update of n elements (the scalars as
// torch's kernels see them: backend.h AdamWScalars).
void cpu_ema(float *shadow, const float *p, size_t n, float one_minus_decay);
void cpu_adamw(float *p, const float *g, float *m, float *v, size_t n, float decay, float w1, float b2, float w2,
               float bc2_sqrt, float eps, float neg_step);

#endif
