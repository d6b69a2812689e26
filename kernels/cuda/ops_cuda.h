// ops_cuda.h: the plain C interface to the CUDA kernels of sdc (kernels/cuda).
//
// Raw device pointers and sizes only: no Tensor, no Backend, nothing from
// src/ (kernels know no model). src/core/backend_cuda.c wraps these into the
// Backend op table; bench/ may call them directly. The .cu files export C
// linkage, so this header is included as is from C and from CUDA C.
//
// One CudaCtx = one device, one stream, one cuBLAS handle, one small device
// scratch buffer. Every op is enqueued on the ctx stream and returns without
// waiting; cuda_ctx_sync waits.
//
// Errors. Setup calls (cuda_device_count, cuda_ctx_create) return 0 or a
// CUDA_ERR_* code and write a message ending in a hint into msg. Ops return
// void (the Backend table is void): a failed CUDA / cuBLAS / cuDNN call
// inside an op (or a copy) is recorded in the context, the first one kept,
// with its call site and the library's own message, and never aborts: the
// op's output is then undefined, and cuda_ctx_take_fault hands the failure
// to the caller (the backend's status: SDC_ERR_OOM or SDC_ERR_DEVICE), who
// ends the computation. Out of memory (CUDA_ERR_OOM) leaves the context
// usable; a failed launch usually does not (CUDA's errors are sticky), so
// the calls after it fail too. cuda_malloc returns NULL when out of device
// memory (the caller reports it). Only a bad argument from sdc itself (a
// bug: CUDA_REQUIRE) aborts.
//
// Dtypes: activations and parameters share one dtype per call (CDT_*; the
// values equal the DType enum of src/core/tensor.h). Arithmetic is fp32
// inside every kernel; F16/BF16 are storage formats only.
#ifndef SDC_OPS_CUDA_H
#define SDC_OPS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { CDT_F32 = 0, CDT_F16 = 1, CDT_BF16 = 2 }; // == DT_F32, DT_F16, DT_BF16

enum {
    CUDA_OK = 0,
    CUDA_ERR_NO_DEVICE = 1, // no GPU, no driver, driver too old, bad index
    CUDA_ERR_OOM = 2,       // device memory exhausted
    CUDA_ERR_LIB = 3,       // cuBLAS / cuDNN failed (to initialise, or inside an op)
    CUDA_ERR_LAUNCH = 4,    // a CUDA call inside an op failed (a launch, a copy)
};

typedef struct CudaCtx CudaCtx;

// Number of usable devices (0 when none); on failure returns CUDA_ERR_NO_DEVICE
// with the runtime's reason in msg.
int cuda_device_count(int *count, char *msg, size_t msg_n);
// Opens device `device`: stream, cuBLAS handle, workspace, scratch.
// allow_tf32 != 0 lets fp32 GEMMs use TF32 tensor cores (about 1e-3 relative
// error); sdc keeps it off unless asked.
int cuda_ctx_create(CudaCtx **out, int device, int allow_tf32, char *msg, size_t msg_n);
void cuda_ctx_destroy(CudaCtx *ctx);
// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" into buf.
void cuda_ctx_describe(const CudaCtx *ctx, char *buf, size_t n);
void cuda_ctx_set_tf32(CudaCtx *ctx, int allow_tf32);
// The first failure recorded inside an op since the last call (CUDA_ERR_*,
// its message into msg), or 0; forgets it.
int cuda_ctx_take_fault(CudaCtx *ctx, char *msg, size_t msg_n);
// Whether a failure is recorded (the backend skips ops until it is taken).
int cuda_ctx_faulted(const CudaCtx *ctx);

// ---- memory -----------------------------------------------------------------
void *cuda_malloc(CudaCtx *ctx, size_t bytes); // NULL when out of memory
void cuda_free(CudaCtx *ctx, void *p);
// Both copies are complete when they return (host buffers may be reused).
void cuda_upload(CudaCtx *ctx, void *dst, const void *host_src, size_t bytes);
void cuda_download(CudaCtx *ctx, void *host_dst, const void *src, size_t bytes);
void cuda_memset_async(CudaCtx *ctx, void *dst, int byte, size_t bytes);
// Free and total device memory (cudaMemGetInfo); 0 or -1.
int cuda_mem_info(CudaCtx *ctx, size_t *free_bytes, size_t *total_bytes);
// device to device, enqueued on the stream; dst == src is a no-op
void cuda_copy_bytes(CudaCtx *ctx, void *dst, const void *src, size_t bytes);
void cuda_ctx_sync(CudaCtx *ctx);

// ---- GEMM (gemm_cuda.cu) ------------------------------------------------------
// torch Linear, row-major: out (M, N) = x (M, K) . w (N, K)^T + b (N); b may be NULL.
void cuda_linear(CudaCtx *ctx, int dt, void *out, const void *x, const void *w, const void *b,
                 int64_t M, int64_t N, int64_t K);

// ---- normalisation and softmax (norm_cuda.cu) --------------------------------
// x (N, C, S) with S = prod(spatial); gamma, beta (C); groups divides C.
void cuda_group_norm(CudaCtx *ctx, int dt, void *out, const void *x, const void *gamma,
                     const void *beta, int64_t N, int64_t C, int64_t S, int groups, float eps,
                     int silu);
// The two implementations behind cuda_group_norm, callable directly (tests,
// bench). _chunked: the default, chunked statistics then a normalise pass
// (x read three times). _fast: 16-byte vector loads where S and the pointers
// allow, one block or one thread-block cluster (<= 8 blocks) per (sample,
// group) holding the group in registers (x read once), else a vectorised
// statistics + normalise pair; selected by SDC_CUDA_GN=fast (read once at
// cuda_ctx_create). Both: fp32 two-pass mean and variance.
void cuda_group_norm_chunked(CudaCtx *ctx, int dt, void *out, const void *x, const void *gamma,
                             const void *beta, int64_t N, int64_t C, int64_t S, int groups,
                             float eps, int silu);
void cuda_group_norm_fast(CudaCtx *ctx, int dt, void *out, const void *x, const void *gamma,
                          const void *beta, int64_t N, int64_t C, int64_t S, int groups, float eps,
                          int silu);
// x (rows, D) normalised over D; gamma, beta (D).
void cuda_layer_norm(CudaCtx *ctx, int dt, void *out, const void *x, const void *gamma,
                     const void *beta, int64_t rows, int64_t D, float eps);
// x (rows, D) -> softmax over D.
void cuda_softmax(CudaCtx *ctx, int dt, void *out, const void *x, int64_t rows, int64_t D);

// ---- elementwise and layout (elementwise_cuda.cu) ----------------------------
enum { CUDA_ACT_SILU = 0, CUDA_ACT_GELU = 1, CUDA_ACT_QUICK_GELU = 2 };
void cuda_activation(CudaCtx *ctx, int dt, int act, void *out, const void *x, int64_t n);
// x (rows, 2F) -> out (rows, F) = x[:, :F] * gelu(x[:, F:])
void cuda_geglu(CudaCtx *ctx, int dt, void *out, const void *x, int64_t rows, int64_t F);
void cuda_add(CudaCtx *ctx, int dt, void *out, const void *a, const void *b, int64_t n);
void cuda_scale(CudaCtx *ctx, int dt, void *out, const void *x, float s, int64_t n);
// x (NC, S) + bias (NC) broadcast over S
void cuda_add_channel_bias(CudaCtx *ctx, int dt, void *out, const void *x, const void *bias,
                           int64_t NC, int64_t S);
// x (NC, H, W) -> out (NC, OH, OW) with OH in {2H - 1, 2H}: out[y][x] = x[y/2][x/2]
void cuda_upsample_nearest2x(CudaCtx *ctx, int dt, void *out, const void *x, int64_t NC, int64_t H,
                             int64_t W, int64_t OH, int64_t OW);
// a (N, Ca*S), b (N, Cb*S) -> out (N, (Ca+Cb)*S); sizes in elements per sample
void cuda_concat_channels(CudaCtx *ctx, int dt, void *out, const void *a, const void *b,
                          int64_t N, int64_t a_per_n, int64_t b_per_n);
// Batched transpose: x (N, R, Cc) -> out (N, Cc, R). NCHW->NLC is R=C, Cc=H*W;
// NLC->NCHW is R=H*W, Cc=C.
void cuda_transpose(CudaCtx *ctx, int dt, void *out, const void *x, int64_t N, int64_t R,
                    int64_t Cc);
// n elements of dtype src_dt -> dst_dt (same dtype: a device memcpy)
void cuda_convert(CudaCtx *ctx, void *out, int dst_dt, const void *x, int src_dt, int64_t n);
// ids I32 (n_ids) in [0, V), table (V, D) -> out (n_ids, D). Out-of-range ids
// give a zero row (the caller validates ids on the host).
void cuda_embedding(CudaCtx *ctx, int dt, void *out, const int32_t *ids, const void *table,
                    int64_t n_ids, int64_t V, int64_t D);
// diffusers get_timestep_embedding; timesteps given on the host, N of them.
// out (N, dim), fp32 math rounded as torch does it in fp32.
void cuda_timestep_embedding(CudaCtx *ctx, int dt, void *out, const float *timesteps_host,
                             int64_t N, int64_t dim, int flip_sin_to_cos, float freq_shift);

// ---- convolution (conv_cuda.cu) ------------------------------------------------
// torch Conv2d, NCHW: x (N, C, H, W), w (OC, C, KH, KW), b (OC) or NULL ->
// out (N, OC, OH, OW), OH = (H + 2*pad - KH) / stride + 1; zero padding, no
// dilation, groups 1. im2col + cuBLAS GEMM (default) or cuDNN (below); ws is
// device scratch of ws_bytes owned by the caller: any size of at least
// C*KH*KW*32 elements works (less means more, smaller GEMMs),
// cuda_conv2d_workspace_bytes is the size that runs the whole batch in one
// GEMM (0 for 1x1 stride-1 unpadded convs, which need none; ws may then be
// NULL). The cuDNN path uses the same ws and never asks for more: it picks
// among the algorithms whose workspace fits ws_bytes.
size_t cuda_conv2d_workspace_bytes(int dt, int N, int C, int H, int W, int OC, int KH, int KW,
                                   int stride, int pad);
void cuda_conv2d(CudaCtx *ctx, int dt, void *out, const void *x, const void *w, const void *b,
                 int N, int C, int H, int W, int OC, int KH, int KW, int stride, int pad, void *ws,
                 size_t ws_bytes);

// Which implementation cuda_conv2d runs: SDC_CUDA_CONV=cudnn (cuDNN, the
// algorithm from cuDNN's heuristics) or =cudnn-find (cuDNN, the algorithm
// timed fastest by cudnnFindConvolutionForwardAlgorithmEx on first use of a
// shape), read once at cuda_ctx_create; anything else is im2col.
enum { CUDA_CONV_IM2COL = 0, CUDA_CONV_CUDNN = 1, CUDA_CONV_CUDNN_FIND = 2 };
void cuda_ctx_set_conv_algo(CudaCtx *ctx, int algo);
// The implementations, callable directly (tests, bench); same contract as
// cuda_conv2d. cuda_conv2d_cudnn: cuDNN's legacy convolution API (NCHW,
// fp32 compute; tensor cores for F16/BF16, for F32 only with TF32 allowed),
// one algorithm per shape chosen once among those whose workspace fits
// ws_bytes (heuristics, or timing under CUDA_CONV_CUDNN_FIND). Returns
// CUDA_CONV_CUDNN, or CUDA_CONV_IM2COL when it ran im2col instead (cuDNN
// unavailable, or it does not support the shape: then that shape stays on
// im2col).
void cuda_conv2d_im2col(CudaCtx *ctx, int dt, void *out, const void *x, const void *w,
                        const void *b, int N, int C, int H, int W, int OC, int KH, int KW,
                        int stride, int pad, void *ws, size_t ws_bytes);
int cuda_conv2d_cudnn(CudaCtx *ctx, int dt, void *out, const void *x, const void *w, const void *b,
                      int N, int C, int H, int W, int OC, int KH, int KW, int stride, int pad,
                      void *ws, size_t ws_bytes);
// The plan the last cuda_conv2d_cudnn call used: the algorithm
// (cudnnConvolutionFwdAlgo_t, -1 when it ran im2col) and its workspace, and
// cuDNN's first choice regardless of workspace with what that needs.
typedef struct CudaConvChoice {
    int algo, preferred_algo;
    size_t ws_bytes, preferred_ws_bytes;
} CudaConvChoice;
void cuda_conv2d_cudnn_last(const CudaCtx *ctx, CudaConvChoice *out);
const char *cuda_conv_algo_name(int algo); // "IMPLICIT_PRECOMP_GEMM", ...
// Test hook for the fallback path: while on, every shape seen for the first
// time is recorded as if cuDNN had answered CUDNN_STATUS_NOT_SUPPORTED.
void cuda_conv2d_cudnn_simulate_unsupported(CudaCtx *ctx, int on);

// ---- attention (attention_cuda.cu) ---------------------------------------------
// Multi-head scaled dot-product attention, scale 1/sqrt(D), flash style (no
// (Lq, Lk) matrix in memory): q (B, Lq, H*D), k, v (B, Lk, H*D) ->
// out (B, Lq, H*D); causal != 0 masks key j > query i. D <= CUDA_ATTN_MAX_HEAD_DIM.
// F16/BF16 with D <= 160 run on tensor cores (P rounded to the storage dtype
// before P.V); F32 and larger heads on CUDA cores in fp32.
#define CUDA_ATTN_MAX_HEAD_DIM 512
// SDC_CUDA_ATTN=fa2 (read once) sends the F16/BF16 cases to cuda_attention_fa2;
// unset or "wmma" keeps the WMMA kernel.
void cuda_attention(CudaCtx *ctx, int dt, void *out, const void *q, const void *k, const void *v,
                    int B, int Lq, int Lk, int H, int D, int causal);
// The FlashAttention-2-style kernel (attention_fa2_cuda.cu; register-level
// mma.sync, cp.async double buffering), called directly by its test and
// benchmark: same contract as cuda_attention for dt F16/BF16 and
// D <= CUDA_ATTN_FA2_MAX_HEAD_DIM. Not yet run on a GPU.
#define CUDA_ATTN_FA2_MAX_HEAD_DIM 160
void cuda_attention_fa2(CudaCtx *ctx, int dt, void *out, const void *q, const void *k,
                        const void *v, int B, int Lq, int Lk, int H, int D, int causal);

// ---- backward and training (issue 12, part 1) ----------------------------------
// The gradients of the ops above and the kernels of a training step, with the
// conventions of the CPU reference (kernels/cpu/ops_cpu_bwd.h, train_cpu.c):
// gradients of activations are overwritten, gradients of parameters (dw, db,
// dgamma, dbeta, dtable) are ADDED to; a gradient pointer documented as
// optional may be NULL (not computed). Every kernel takes the storage dtype
// dt of all its tensors and computes in fp32; reductions into a parameter
// gradient are deterministic (no atomics: a fixed order, so a resumed run is
// bit-identical to an uninterrupted one on the same GPU). Written without a
// GPU (sessions 4-17 had none): compiled, checked against the CPU by
// tests/test_bwd_cuda.c when a card runs tests/gpu/run.sh.

// GEMM (gemm_cuda.cu). linear backward, row-major, x (M, K), w (N, K), dy (M, N):
//   dx (M, K) = dy . w (NULL: skipped), dw (N, K) += dy^T . x (NULL: skipped),
//   db (N) += column sums of dy (NULL: skipped; deterministic reduction)
void cuda_linear_backward(CudaCtx *ctx, int dt, void *dx, void *dw, void *db, const void *dy,
                          const void *x, const void *w, int64_t M, int64_t N, int64_t K);
// c (M, N) = alpha * a (M, K) . b (K, N) + beta * c, row-major
void cuda_matmul(CudaCtx *ctx, int dt, void *c, const void *a, const void *b, int64_t M, int64_t N,
                 int64_t K, float alpha, float beta);

// convolution (conv_cuda.cu), cuDNN backward data and filter (NCHW; the
// algorithm from cuDNN's heuristics among those whose workspace fits ws):
//   dx (N, C, H, W) = grad wrt x (NULL: skipped), dw (OC, C, KH, KW) +=,
//   db (OC) += sums of dy over N, OH, OW (NULL: skipped).
// Returns 0, or -1 when cuDNN is unavailable or refused the shape (recorded
// as a fault: the backend reports it).
int cuda_conv2d_backward(CudaCtx *ctx, int dt, void *dx, void *dw, void *db, const void *dy,
                         const void *x, const void *w, int N, int C, int H, int W, int OC, int KH,
                         int KW, int stride, int pad, void *ws, size_t ws_bytes);

// normalisation, softmax, elementwise (backward_cuda.cu); layout (train_cuda.cu)
// group norm (+SiLU) backward, statistics recomputed from x; x, dy (N, C, S);
// gamma, beta (C) (beta read only with silu): dx (N, C, S) overwritten (never
// NULL; may equal dy), dgamma, dbeta (C) += (either NULL).
void cuda_group_norm_backward(CudaCtx *ctx, int dt, void *dx, void *dgamma, void *dbeta,
                              const void *dy, const void *x, const void *gamma, const void *beta,
                              int64_t N, int64_t C, int64_t S, int groups, float eps, int silu);
// layer norm backward over D; x, dy (rows, D); gamma (D): dx (may equal dy;
// NULL: skipped), dgamma, dbeta (D) += (either NULL).
void cuda_layer_norm_backward(CudaCtx *ctx, int dt, void *dx, void *dgamma, void *dbeta,
                              const void *dy, const void *x, const void *gamma, int64_t rows,
                              int64_t D, float eps);
// dx = y * (dy - sum_d dy * y), y the forward output (rows, D); dx may equal dy
void cuda_softmax_backward(CudaCtx *ctx, int dt, void *dx, const void *dy, const void *y,
                           int64_t rows, int64_t D);
// act CUDA_ACT_*: dx = dy * act'(x), x the forward input; dx may equal dy
void cuda_activation_backward(CudaCtx *ctx, int dt, int act, void *dx, const void *dy,
                              const void *x, int64_t n);
// x (rows, 2F) = [a | g], dy (rows, F) -> dx (rows, 2F) = [dy gelu(g) | dy a gelu'(g)]
void cuda_geglu_backward(CudaCtx *ctx, int dt, void *dx, const void *dy, const void *x,
                         int64_t rows, int64_t F);
// dy (NC, OH, OW) -> dx (NC, H, W): sum over each source pixel's 2x2 block
void cuda_upsample_nearest2x_backward(CudaCtx *ctx, int dt, void *dx, const void *dy, int64_t NC,
                                      int64_t H, int64_t W, int64_t OH, int64_t OW);
// out (C) (+)= sums of x (N, C, S) over N and S: accumulate != 0 adds to out
// (a conv bias gradient), else overwrites it. With N = 1 and C = N*C of
// (N, C, S): add_channel_bias's backward (dbias (N, C) overwritten).
void cuda_channel_sums(CudaCtx *ctx, int dt, void *out, const void *x, int64_t N, int64_t C,
                       int64_t S, int accumulate);
// dy (N, a_per_n + b_per_n) -> da (N, a_per_n), db (N, b_per_n) (either NULL)
void cuda_concat_channels_backward(CudaCtx *ctx, int dt, void *da, void *db, const void *dy,
                                   int64_t N, int64_t a_per_n, int64_t b_per_n);
// dtable (V, D) += dy (n_ids, D) rows at ids (device I32, validated by the
// caller), repeated ids summed in index order (deterministic)
void cuda_embedding_backward(CudaCtx *ctx, int dt, void *dtable, const int32_t *ids,
                             const void *dy, int64_t n_ids, int64_t V, int64_t D);

// a training step's kernels (train_cuda.cu), fp32 (master weights,
// gradients and moments are F32 whatever the activations):
// per sample n of pred, target (N, per) in dt: e = pred - target, dpred = k[n] e
// (dpred may equal pred), sq_host[n] = sum of e^2 in double (copied to the
// host: the call waits for the stream)
void cuda_mse_backward(CudaCtx *ctx, int dt, void *dpred, double *sq_host, const void *pred,
                       const void *target, const float *k_host, int64_t N, int64_t per);
// sum of x[i]^2 in double (waits for the stream)
double cuda_sum_squares(CudaCtx *ctx, const float *x, size_t n);
// torch's single-tensor fp32 AdamW element by element, bit for bit as
// cpu_adamw rounds it (no contraction, IEEE sqrt and division)
void cuda_adamw(CudaCtx *ctx, float *p, const float *g, float *m, float *v, size_t n, float decay,
                float w1, float b2, float w2, float bc2_sqrt, float eps, float neg_step);
// shadow = shadow - one_minus_decay * (shadow - p), as cpu_ema rounds it
void cuda_ema(CudaCtx *ctx, float *shadow, const float *p, size_t n, float one_minus_decay);

// attention backward (attention_bwd_cuda.cu), scale 1/sqrt(D), causal masks
// key j > query i; q, dout (B, Lq, H*D), k, v (B, Lk, H*D) -> dq (B, Lq, H*D),
// dk, dv (B, Lk, H*D), all overwritten. The scores are recomputed per block
// of queries (cuBLAS GEMMs in fp32, the whole key row soft-maxed exactly:
// dP = dO V^T, Di = sum_j P_ij dP_ij, dS = P (dP - Di), dQ = scale dS K,
// dK += scale dS^T Q, dV += P^T dO); ws (device, ws_bytes) holds the blocks:
// cuda_attention_backward_ws_bytes gives the size for the whole problem at
// full speed, cuda_attention_backward_ws_min_bytes the least it runs with.
size_t cuda_attention_backward_ws_bytes(int dt, int B, int Lq, int Lk, int H, int D);
size_t cuda_attention_backward_ws_min_bytes(int dt, int B, int Lq, int Lk, int H, int D);
void cuda_attention_backward(CudaCtx *ctx, int dt, void *dq, void *dk, void *dv, const void *dout,
                             const void *q, const void *k, const void *v, int B, int Lq, int Lk,
                             int H, int D, int causal, void *ws, size_t ws_bytes);

#ifdef __cplusplus
}
#endif

#endif
