// backend.h: the one table of compute ops that every model calls.
//
// Model code (src/models) calls only these entries and never branches on the
// device. The CPU backend (backend_cpu.c over kernels/cpu) is the reference:
// fp32, exact, OpenMP threads, OpenBLAS sgemm. The CUDA backend
// (backend_cuda.c over kernels/cuda) is checked against it. The "measure"
// backend has every op as a no-op: a model runs its forward against it and a
// measuring arena (arena.h) to learn how much activation memory it needs.
//
// Conventions, for every op:
// - all tensors live on be->device; activations have dtype be->act_dtype
//   (F32 on the CPU); parameters have dtype be->param_dtype;
// - shapes are checked (SDC_CHECK): a mismatch is a bug in the caller;
// - elementwise ops (silu, gelu, quick_gelu, add, scale, add_channel_bias)
//   accept out == x (in place); others need out distinct from inputs;
// - ops run on be's stream/threads and may return before the result is
//   ready on a device; be->sync waits.
#ifndef SDC_BACKEND_H
#define SDC_BACKEND_H

#include <stddef.h>

#include "core/error.h"
#include "core/tensor.h"

typedef struct Backend Backend;

// The scalars of one AdamW step, each rounded to fp32 as torch's kernels see it
// (src/train/optim.c computes them).
typedef struct AdamWScalars {
    float decay;    // 1 - lr * weight_decay
    float w1;       // 1 - beta1
    float b2, w2;   // beta2, 1 - beta2
    float bc2_sqrt; // sqrt(1 - beta2^step)
    float eps;
    float neg_step; // -lr / (1 - beta1^step)
} AdamWScalars;

struct Backend {
    const char *name; // "cpu", "cuda", "measure"
    Device device;
    DType act_dtype;   // activations
    DType param_dtype; // weights, converted once at load
    int threads;       // CPU threads (OpenMP and OpenBLAS)
    void *impl;        // backend-private state (scratch, handles, stream)

    // ---- memory -------------------------------------------------------------
    void *(*alloc)(const Backend *be, size_t bytes);             // NULL when out of memory
    void (*free)(const Backend *be, void *p);
    void (*upload)(const Backend *be, void *dst, const void *host_src, size_t bytes);
    void (*download)(const Backend *be, void *host_dst, const void *src, size_t bytes);
    void (*sync)(const Backend *be);

    // ---- ops ----------------------------------------------------------------
    // x (N, C, H, W), w (OC, C, KH, KW), b (OC) or NULL -> out (N, OC, OH, OW),
    // OH = (H + 2*pad - KH) / stride + 1. Zero padding, no dilation, groups 1.
    void (*conv2d)(const Backend *be, Tensor *out, const Tensor *x, const Tensor *w,
                   const Tensor *b, int stride, int pad);
    // torch.nn.Linear: x (..., K) as (M, K), w (N, K), b (N) or NULL -> out (..., N)
    void (*linear)(const Backend *be, Tensor *out, const Tensor *x, const Tensor *w, const Tensor *b);
    // torch.nn.GroupNorm over x (N, C, *spatial) with affine gamma, beta (C);
    // silu != 0 applies SiLU after the affine (the ResNet norm+act pair).
    void (*group_norm)(const Backend *be, Tensor *out, const Tensor *x, const Tensor *gamma,
                       const Tensor *beta, int groups, float eps, int silu);
    // torch.nn.LayerNorm over the last dim: x (..., D), gamma, beta (D)
    void (*layer_norm)(const Backend *be, Tensor *out, const Tensor *x, const Tensor *gamma,
                       const Tensor *beta, float eps);
    // Multi-head scaled dot-product attention, scale 1/sqrt(D):
    // q (B, Lq, H*D), k and v (B, Lk, H*D) -> out (B, Lq, H*D).
    // causal != 0 masks key j > query i (CLIP). Never holds the full
    // (Lq, Lk) score matrix of every head at once.
    void (*attention)(const Backend *be, Tensor *out, const Tensor *q, const Tensor *k,
                      const Tensor *v, int heads, int causal);
    void (*softmax)(const Backend *be, Tensor *out, const Tensor *x); // over the last dim
    void (*silu)(const Backend *be, Tensor *out, const Tensor *x);
    void (*gelu)(const Backend *be, Tensor *out, const Tensor *x);       // exact (erf) form
    void (*quick_gelu)(const Backend *be, Tensor *out, const Tensor *x); // x * sigmoid(1.702 x)
    // x (..., 2F) -> out (..., F) = x[..., :F] * gelu(x[..., F:])  (diffusers GEGLU)
    void (*geglu)(const Backend *be, Tensor *out, const Tensor *x);
    // (N, C, H, W) -> (N, C, OH, OW), out[y][x] = x[y / 2][x / 2], with OH
    // 2H or 2H - 1 (and OW likewise): the UNet's way up to an odd skip size,
    // as torch's nearest interpolate to that size gives.
    void (*upsample_nearest2x)(const Backend *be, Tensor *out, const Tensor *x);
    // diffusers get_timestep_embedding: out (N, dim) from N timesteps given on
    // the host; max_period 10000, half = dim/2,
    // freq_i = exp(-ln(10000) * i / (half - freq_shift)), [sin, cos] or
    // [cos, sin] when flip_sin_to_cos.
    void (*timestep_embedding)(const Backend *be, Tensor *out, const float *timesteps_host,
                               int flip_sin_to_cos, float freq_shift);
    void (*add)(const Backend *be, Tensor *out, const Tensor *a, const Tensor *b); // same shapes
    // x (N, C, *spatial) + bias (N, C) broadcast over spatial (ResNet time embedding)
    void (*add_channel_bias)(const Backend *be, Tensor *out, const Tensor *x, const Tensor *bias);
    void (*scale)(const Backend *be, Tensor *out, const Tensor *x, float s);
    // a (N, Ca, *spatial), b (N, Cb, *spatial) -> out (N, Ca+Cb, *spatial)
    void (*concat_channels)(const Backend *be, Tensor *out, const Tensor *a, const Tensor *b);
    // (N, C, H, W) -> (N, H*W, C) and back (out carries the target shape)
    void (*nchw_to_nlc)(const Backend *be, Tensor *out, const Tensor *x);
    void (*nlc_to_nchw)(const Backend *be, Tensor *out, const Tensor *x);
    // ids I32 (B, L) on the device, table (V, D) -> out (B, L, D)
    void (*embedding)(const Backend *be, Tensor *out, const Tensor *ids, const Tensor *table);
    void (*copy)(const Backend *be, Tensor *out, const Tensor *x); // same numel, also converts dtype

    // ---- backward (training) --------------------------------------------------
    // Gradients of activations are overwritten; gradients of parameters (dw,
    // db, dgamma, dbeta, dtable) are ADDED to, so micro-batches accumulate.
    // A parameter gradient may be NULL when it is not wanted. NULL entries
    // (here and in the training section below): the backend cannot train
    // (the measure backend has no-ops). The CUDA backend has them all
    // (issue 12; checked against the CPU by tests/test_bwd_cuda.c on a GPU),
    // but `sdc train` does not run on it yet (the runners refuse --device cuda).
    // linear: x (M, K), w (N, K), dy (M, N) -> dx (M, K) (may be NULL), dw, db
    void (*linear_backward)(const Backend *be, Tensor *dx, Tensor *dw, Tensor *db, const Tensor *dy,
                            const Tensor *x, const Tensor *w);
    // conv2d: x (N, C, H, W), w (OC, C, KH, KW), dy (N, OC, OH, OW) -> dx (may be NULL), dw, db
    void (*conv2d_backward)(const Backend *be, Tensor *dx, Tensor *dw, Tensor *db, const Tensor *dy,
                            const Tensor *x, const Tensor *w, int stride, int pad);
    // group norm (+SiLU when silu): recomputes statistics from x -> dx (never NULL), dgamma, dbeta
    void (*group_norm_backward)(const Backend *be, Tensor *dx, Tensor *dgamma, Tensor *dbeta,
                                const Tensor *dy, const Tensor *x, const Tensor *gamma, const Tensor *beta,
                                int groups, float eps, int silu);
    void (*layer_norm_backward)(const Backend *be, Tensor *dx, Tensor *dgamma, Tensor *dbeta,
                                const Tensor *dy, const Tensor *x, const Tensor *gamma, float eps);
    // attention: recomputes the scores per query block -> dq, dk, dv (all overwritten)
    void (*attention_backward)(const Backend *be, Tensor *dq, Tensor *dk, Tensor *dv, const Tensor *dout,
                               const Tensor *q, const Tensor *k, const Tensor *v, int heads, int causal);
    // elementwise, from the forward input x (dx may equal dy)
    void (*silu_backward)(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x);
    void (*gelu_backward)(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x);
    void (*quick_gelu_backward)(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x);
    // geglu: x (..., 2F), dy (..., F) -> dx (..., 2F), not aliasing x or dy
    void (*geglu_backward)(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *x);
    // softmax from the forward output y
    void (*softmax_backward)(const Backend *be, Tensor *dx, const Tensor *dy, const Tensor *y);
    // dy (N, C, OH, OW) -> dx (N, C, H, W): sums over each 2x2 source block
    void (*upsample_nearest2x_backward)(const Backend *be, Tensor *dx, const Tensor *dy);
    // dy (N, C, *spatial) -> dbias (N, C) (overwritten: the bias is an activation)
    void (*add_channel_bias_backward)(const Backend *be, Tensor *dbias, const Tensor *dy);
    // dy (N, Ca+Cb, *spatial) -> da, db (either NULL)
    void (*concat_channels_backward)(const Backend *be, Tensor *da, Tensor *db, const Tensor *dy);
    // dtable (V, D) += dy (B, L, D) rows at ids I32 (B, L); ids are checked (SDC_CHECK)
    void (*embedding_backward)(const Backend *be, Tensor *dtable, const Tensor *ids, const Tensor *dy);

    // ---- training: memory, the loss, the optimizer --------------------------------
    // dst[0, bytes) = 0 (gradient arenas, adapters). Every backend has it.
    void (*zero)(const Backend *be, void *dst, size_t bytes);
    // c (M, N) = alpha * a (M, K) . b (K, N) + beta * c (a LoRA merged into its weight)
    void (*matmul)(const Backend *be, Tensor *c, const Tensor *a, const Tensor *b, float alpha, float beta);
    // The diffusion loss's backward, per sample n of pred (N, ...): e = pred - target,
    // sq_host[n] = sum of e^2 (double), dpred[n] = k_host[n] * e. dpred may be pred.
    void (*mse_backward)(const Backend *be, Tensor *dpred, double *sq_host, const Tensor *pred,
                         const Tensor *target, const float *k_host);
    // sum of x[i]^2 over n floats, accumulated in double in index order (torch's clip_grad_norm_ per tensor)
    double (*sum_squares)(const Backend *be, const float *x, size_t n);
    // One AdamW update of n parameters, torch's single-tensor fp32 path element by element:
    // p = p * decay; m = m + w1 (g - m); v = v * b2 + w2 g^2; p += neg_step * m / (sqrt(v) / bc2_sqrt + eps)
    void (*adamw)(const Backend *be, float *p, const float *g, float *m, float *v, size_t n,
                  const struct AdamWScalars *s);
    // The exponential moving average of n parameters (diffusers' EMAModel.step, fp32, element by
    // element): shadow = shadow - one_minus_decay * (shadow - p). NULL where training is not supported.
    void (*ema)(const Backend *be, float *shadow, const float *p, size_t n, float one_minus_decay);

    // ---- memory report --------------------------------------------------------
    // Bytes free and in total on the device (CPU: MemAvailable / MemTotal).
    // Returns 0, or nonzero when unknown; may be NULL (the measure backend).
    int (*mem_info)(const Backend *be, size_t *free_bytes, size_t *total_bytes);

    // ---- errors ---------------------------------------------------------------
    // Ops return nothing. A failure inside one that is not a bug in the
    // caller (no memory for the scratch or a workspace, a failed CUDA launch,
    // copy or cuBLAS / cuDNN call, a size the kernels cannot index) is
    // recorded by the backend, the first one kept; the outputs of that op and
    // of the ops after it are undefined (the CUDA backend skips them). status
    // returns 0, or that failure's code (SDC_ERR_OOM, SDC_ERR_DEVICE,
    // SDC_ERR_UNSUPPORTED) and message, and forgets it: the ops work again
    // after it (out of memory), or fail again (a broken CUDA context), so a
    // checkpoint written after a failure is either whole or itself an error.
    // NULL: cannot fail (measure). The model entry points (forwards,
    // backwards, loads, a training step) ask it through backend_status before
    // they return, so a failure comes back as the error of the call it
    // happened in, never as an abort.
    int (*status)(const Backend *be, SdcError *err);
};

// 0, or the first failure recorded inside be's ops (see status above).
int backend_status(const Backend *be, SdcError *err);

// A run that reads the parameters many times (a sampling loop) holds them
// (hold 1) and releases them when done (0). While any hold is open nothing
// writes or frees a parameter on be, so the backend may keep copies derived
// from them: the CPU bf16 variant keeps its conv2d weights in oneDNN's
// blocked layout (made on first use) instead of reordering them on every
// call. The last release drops the copies; backend_params_changed drops them
// at once (a model freed, or its parameters written in place).
// backend_held_bytes: the memory the copies take. No-ops elsewhere.
void backend_hold_params(const Backend *be, int hold);
void backend_params_changed(const Backend *be);
size_t backend_held_bytes(const Backend *be);

// Creates the CPU backend with `threads` threads (0 = OMP_NUM_THREADS, else all cores).
int backend_cpu_create(Backend **out, int threads, SdcError *err);
// The thread count OMP_NUM_THREADS asks for (its first entry; what PyTorch
// and OpenBLAS read), 0 when unset or not a positive count. threads = 0 in
// the create calls takes it, else every core.
int backend_cpu_env_threads(void);
// The CPU backend computing in bf16 through oneDNN (--precision bf16 on the
// CPU): param_dtype BF16 (every parameter rounded to bf16 once, at load),
// act_dtype F32; conv2d, linear and attention multiply bf16 by bf16 into fp32
// accumulators, every other op is the fp32 one. Fails with
// SDC_ERR_UNSUPPORTED and a hint when sdc was built without oneDNN.
int backend_cpu_create_bf16(Backend **out, int threads, SdcError *err);
// The mixed-precision variant for training (--mixed-precision bf16):
// param_dtype F32 (fp32 master weights, gradients and AdamW state), act_dtype
// F32; conv2d and linear round their weights to bf16 per call, and conv2d,
// linear and attention compute in bf16 with fp32 accumulation, backward
// included (through oneDNN where it computes bf16; on a CPU without bf16,
// bf16-rounded operands through the fp32 kernels). Same failure as above.
int backend_cpu_create_bf16_mixed(Backend **out, int threads, SdcError *err);
// Whether this build has the CPU bf16 path (oneDNN).
int backend_cpu_bf16_available(void);
// The bf16 variant: oneDNN's version and the implementations its ops ran so
// far (e.g. "oneDNN 2.6.3: conv2d ref:any; linear gemm:jit"), into buf;
// "" for any other backend.
void backend_cpu_bf16_info(const Backend *be, char *buf, size_t n);
// The bf16 variants: the machine's bf16 GEMM rate (GFLOP/s, oneDNN, n x n x
// n, best of reps, at the backend's thread count), the yardstick of the
// benchmarks; 0 where no bf16 is computed natively (or any other backend).
double backend_cpu_bf16_gemm_gflops(const Backend *be, int n, int reps);
// Creates the CUDA backend on device `device_index`; act_dtype F32, F16 or
// BF16. Fails with SDC_ERR_DEVICE and a hint when there is no usable GPU or
// sdc was built without CUDA.
// device_index < 0: the GPU of this rank, its node-local rank (SLURM_LOCALID,
// OMPI_COMM_WORLD_LOCAL_RANK, ...) modulo the devices it can see (one rank per GPU).
int backend_cuda_create(Backend **out, int device_index, DType act_dtype, SdcError *err);
// The no-op backend used to size arenas (static; never destroyed).
const Backend *backend_measure(void);
void backend_destroy(Backend *be);
// Whether this build has the CUDA backend compiled in.
int backend_cuda_available(void);

// Tensor helpers that move data between host f32 and a backend tensor
// (converting to/from the tensor's dtype).
void backend_upload_f32(const Backend *be, Tensor *dst, const float *host, size_t n);
void backend_download_f32(const Backend *be, float *host, const Tensor *src, size_t n);

#endif
