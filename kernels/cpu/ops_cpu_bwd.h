// ops_cpu_bwd.h: the backward (gradient) kernels of the fp32 CPU ops in
// ops_cpu.h, on raw pointers with explicit shape ints. They are the reference
// every other backend's backward is checked against, and what the trainer
// calls (through the backend table, once it grows backward entries).
//
// Conventions, for every kernel here:
// - dy is the gradient of the loss w.r.t. the op's output, same shape.
// - Gradients w.r.t. ACTIVATIONS (dx, dq, dk, dv, da, db of concat, dbias of
//   add_channel_bias) are OVERWRITTEN.
// - Gradients w.r.t. PARAMETERS (dw, db of linear/conv, dgamma, dbeta,
//   dtable) are ACCUMULATED (+=), so micro-batches and gradient accumulation
//   need no extra buffer; zero them once per optimizer step.
// - A gradient pointer may be NULL, and that gradient is not computed (a
//   frozen parameter, or an input that needs no gradient such as conv_in's
//   latents), for: dx, dw, db of linear and conv2d; dx, dgamma, dbeta of
//   layer norm; dgamma, dbeta of group norm; da, db of concat. The others
//   must be given.
// - Shapes are those of the forward op, listed again in each comment.
// - Scratch, where needed, comes from the caller, as in the forward; the
//   kernel uses the biggest tile or query block that fits in what it is
//   given (at least the minimum stated), so a small scratch is slower, never
//   wrong (the tests use that to exercise the tiling on small shapes).
//
// Ops whose backward is another forward kernel, so no kernel here:
//   add:            da = db = dy
//   scale by s:     dx = cpu_scale(dy, s)
//   nchw_to_nlc:    dx = cpu_nlc_to_nchw(dy)   (and the other way round)
//   timestep embedding: no parameters, its input needs no gradient.
#ifndef SDC_OPS_CPU_BWD_H
#define SDC_OPS_CPU_BWD_H

#include <stddef.h>
#include <stdint.h>

// ---- matrix products ---------------------------------------------------------

// torch.nn.Linear backward. x (M, K), w (N, K), dy (M, N):
//   dx (M, K)  = dy . w          (overwritten)
//   dw (N, K) += dy^T . x
//   db (N)    += sum over M of dy
void cpu_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int M, int K, int N);

// Floats of scratch that let cpu_conv2d_backward run at full speed (tiles of
// about 2048 output pixels, within CPU_SCRATCH_BUDGET_FLOATS plus one row);
// it runs with as little as cpu_conv2d_backward_scratch_min_floats (one
// output row: C*KH*KW*OW; 0 for a 1x1 stride-1 unpadded conv).
size_t cpu_conv2d_backward_scratch_floats(int C, int H, int W, int OC, int KH, int KW, int stride,
                                          int pad);
size_t cpu_conv2d_backward_scratch_min_floats(int C, int H, int W, int OC, int KH, int KW,
                                              int stride, int pad);
// conv2d backward. x (N, C, H, W), w (OC, C, KH, KW), dy (N, OC, OH, OW):
//   dx (N, C, H, W)     = col2im(w^T . dy)            (overwritten)
//   dw (OC, C, KH, KW) += dy . im2col(x)^T
//   db (OC)            += sum over N, OH, OW of dy
// Per tile of output rows: cols (C*KH*KW, tile) = im2col(x) in the scratch,
// dw += dy_tile . cols^T; then the same scratch takes w^T . dy_tile and is
// scattered back into dx. Small images at batch > 1 (8x8 latents) go several
// whole images to a tile, their dy staged next to cols (OC, tile), when the
// scratch holds at least two; a 1x1 stride-1 unpadded conv otherwise needs
// no im2col (one pair of sgemm per image).
void cpu_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int N, int C, int H, int W, int OC, int KH, int KW,
                         int stride, int pad, float *scratch, size_t scratch_floats);

// ---- attention -----------------------------------------------------------------

// Floats of scratch for cpu_attention_backward with `threads` OpenMP threads:
// per thread two (bq, Lk) blocks (probabilities and their gradient), bq up
// to 256 queries, all threads within CPU_SCRATCH_BUDGET_FLOATS unless that
// leaves fewer than 16 rows. The minimum is threads * 2 * Lk (bq = 1).
size_t cpu_attention_backward_scratch_floats(int Lq, int Lk, int D, int threads);
// Multi-head SDPA backward, scale 1/sqrt(D), causal masks key j > query i.
// Runs on omp_get_max_threads() threads (size the scratch for that many).
// q (B, Lq, H*D), k and v (B, Lk, H*D), dout (B, Lq, H*D) ->
//   dq (B, Lq, H*D), dk and dv (B, Lk, H*D)   (all overwritten, none NULL)
// Flash-attention-2 style without saved statistics: per (batch, head) and
// block of bq queries, the scores are recomputed and soft-maxed over the
// whole key row (exact), then
//   dP = dO . V^T,  Di = sum_j P_ij dP_ij (= dO_i . O_i),  dS = P (dP - Di),
//   dQ = scale dS . K,  dK += scale dS^T . Q,  dV += P^T . dO.
// The forward output is not needed. Never holds a head's full score matrix.
void cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                            const float *k, const float *v, int B, int Lq, int Lk, int H, int D,
                            int causal, float *scratch, size_t scratch_floats);

// ---- normalisation -----------------------------------------------------------

// Group norm (+ fused SiLU) backward; recomputes the statistics from x.
// x, dy (N, C, S); gamma, beta (C) (beta is read only when silu != 0):
//   dx (N, C, S) (overwritten; may equal dy; never NULL: it holds the
//   intermediate gradient), dgamma (C) +=, dbeta (C) +=.
void cpu_group_norm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                             const float *x, const float *gamma, const float *beta, int N, int C,
                             int64_t S, int groups, float eps, int silu);
// Layer norm backward over the last dim; recomputes the statistics from x.
// x, dy (M, D); gamma (D): dx (M, D) (overwritten; may equal dy),
// dgamma (D) +=, dbeta (D) +=. Scratch: 2*M floats (row mean and 1/std).
size_t cpu_layer_norm_backward_scratch_floats(int64_t M);
void cpu_layer_norm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                             const float *x, const float *gamma, int64_t M, int D, float eps,
                             float *scratch, size_t scratch_floats);
// Row softmax backward from the forward OUTPUT y (M, D):
//   dx = y * (dy - sum_d dy*y)   (overwritten; dx may equal dy)
void cpu_softmax_backward(float *dx, const float *dy, const float *y, int64_t M, int D);

// ---- elementwise (dx overwritten; dx may equal dy) -----------------------------

// From the forward INPUT x (n):
void cpu_silu_backward(float *dx, const float *dy, const float *x, int64_t n);
void cpu_gelu_backward(float *dx, const float *dy, const float *x, int64_t n); // erf form
void cpu_quick_gelu_backward(float *dx, const float *dy, const float *x, int64_t n);
// x (M, 2F) = [a | g], dy (M, F) -> dx (M, 2F) = [dy*gelu(g) | dy*a*gelu'(g)];
// dx must not alias x or dy.
void cpu_geglu_backward(float *dx, const float *dy, const float *x, int64_t M, int F);
// add_channel_bias backward: dx = dy (no kernel); dbias (N, C) = sum over S
// of dy (N, C, S) (overwritten: the bias is an activation, the projected
// time embedding).
void cpu_add_channel_bias_backward(float *dbias, const float *dy, int N, int C, int64_t S);

// ---- layout ------------------------------------------------------------------

// dy (N, C, OH, OW) with OH 2H or 2H-1 (OW likewise) -> dx (N, C, H, W) =
// sum of dy over each source pixel's 2x2 block (cut at the odd edge).
void cpu_upsample_nearest2x_backward(float *dx, const float *dy, int N, int C, int H, int W,
                                     int OH, int OW);
// dout (N, Ca+Cb, S) -> da (N, Ca, S), db (N, Cb, S) (overwritten; either NULL).
void cpu_concat_channels_backward(float *da, float *db, const float *dout, int N, int Ca, int Cb,
                                  int64_t S);
// dtable (V, D) += scatter of dy (n, D) rows at ids (n) (repeated ids add).
// Returns the first position whose id is outside [0, V), or -1 when all are
// valid (then, and only then, dtable has been updated).
int64_t cpu_embedding_backward(float *dtable, const int32_t *ids, const float *dy, int64_t n,
                               int V, int D);

#endif
