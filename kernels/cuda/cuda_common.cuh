// cuda_common.cuh: what every kernels/cuda/*.cu file shares and nothing
// outside kernels/cuda sees: the CudaCtx layout, the checking macros that
// print the call site and the library's own message, fp32 <-> storage dtype
// load/store, and the dtype dispatch. Internal header (not part of the C API).
#ifndef SDC_CUDA_COMMON_CUH
#define SDC_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda/ops_cuda.h"

struct CudaCtx {
    int device;
    cudaStream_t stream;
    cublasHandle_t cublas;
    int allow_tf32;
    void *cublas_ws; // cuBLAS workspace (CUDA_CUBLAS_WS bytes)
    float *scratch;  // small per-op scratch (CUDA_SCRATCH_BYTES), e.g. group norm partials
    int sm_count;
    char name[256];
    int cc_major, cc_minor;
    size_t total_mem;
    // cuDNN (conv_cuda.cu): the handle is made on first use (cuda_ctx_cudnn)
    cudnnHandle_t cudnn;
    int cudnn_state;                  // 0 not tried yet, 1 usable, -1 cudnnCreate failed
    int conv_algo;                    // CUDA_CONV_*: SDC_CUDA_CONV at create, or set
    struct CudaConvCache *conv_cache; // per-shape cuDNN plans (conv_cuda.cu), NULL until used
    struct ConvBwdCache *conv_bwd_cache; // per-shape cuDNN backward plans (conv_bwd_cuda.cu)
    int gn_fast;                      // SDC_CUDA_GN=fast at create: cuda_group_norm_fast
    signed char gn_cluster_ok[3][2][4]; // (dtype, vector, log2 cluster): 0 unknown, 1 ok, -1 no
    int fault;           // CUDA_ERR_* of the first failed call inside an op since the last
    char fault_msg[512]; // cuda_ctx_take_fault (0: none), and its message
};

#define CUDA_CUBLAS_WS (32u << 20)
#define CUDA_SCRATCH_BYTES (4u << 20)

// Records a failure inside an op in c (the first one since the last
// cuda_ctx_take_fault is kept; see ops_cuda.h, "Errors"): code CUDA_ERR_*,
// the message names the call site and the library's own words.
void cuda_fault(CudaCtx *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

// A failed call inside an op is recorded in the context c, never an abort:
// the op's output is then undefined and the backend skips the ops after it
// until the model entry point returns the failure (backend.h: status).
// Out of memory (a workspace cuBLAS / cuDNN could not get) is CUDA_ERR_OOM.
#define CUDA_CHECK(c, call)                                                                   \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess)                                                                \
            cuda_fault((c), e_ == cudaErrorMemoryAllocation ? CUDA_ERR_OOM : CUDA_ERR_LAUNCH,  \
                       "CUDA error at %s:%d (%s): %s: %s", __FILE__, __LINE__, #call,          \
                       cudaGetErrorName(e_), cudaGetErrorString(e_));                         \
    } while (0)

#define CUBLAS_CHECK(c, call)                                                                 \
    do {                                                                                      \
        cublasStatus_t s_ = (call);                                                           \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                      \
            cuda_fault((c), s_ == CUBLAS_STATUS_ALLOC_FAILED ? CUDA_ERR_OOM : CUDA_ERR_LIB,   \
                       "cuBLAS error at %s:%d (%s): %s: %s", __FILE__, __LINE__, #call,        \
                       cublasGetStatusName(s_), cublasGetStatusString(s_));                   \
    } while (0)

#define CUDNN_CHECK(c, call)                                                                  \
    do {                                                                                      \
        cudnnStatus_t s_ = (call);                                                            \
        if (s_ != CUDNN_STATUS_SUCCESS)                                                       \
            cuda_fault((c), s_ == CUDNN_STATUS_ALLOC_FAILED ? CUDA_ERR_OOM : CUDA_ERR_LIB,    \
                       "cuDNN error at %s:%d (%s): %s (unset SDC_CUDA_CONV to use the im2col " \
                       "convolution)", __FILE__, __LINE__, #call, cudnnGetErrorString(s_));   \
    } while (0)

// After every kernel launch: a bad launch configuration shows here, at its site.
#define CUDA_CHECK_LAUNCH(c) CUDA_CHECK(c, cudaGetLastError())

// An argument no caller should pass (a bug in sdc, like SDC_CHECK).
#define CUDA_REQUIRE(cond)                                                                 \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "sdc: %s:%d: %s: check failed: %s\n", __FILE__, __LINE__,      \
                    __func__, #cond);                                                      \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

// ---- storage dtype <-> fp32 ---------------------------------------------------
__device__ __forceinline__ float ld(const float *p) { return *p; }
__device__ __forceinline__ float ld(const __half *p) { return __half2float(*p); }
__device__ __forceinline__ float ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void st(float *p, float v) { *p = v; }
__device__ __forceinline__ void st(__half *p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }

// VEC consecutive values <-> fp32; VEC > 1 is one 16-byte access (p 16-byte aligned).
template <typename T, int VEC>
__device__ __forceinline__ void ld_vec(const T *p, float *v) {
    if constexpr (VEC == 1) {
        v[0] = ld(p);
    } else {
        static_assert(VEC * sizeof(T) == 16, "one 16-byte vector");
        uint4 raw = *reinterpret_cast<const uint4 *>(p);
        const T *e = reinterpret_cast<const T *>(&raw);
#pragma unroll
        for (int i = 0; i < VEC; i++) v[i] = ld(e + i);
    }
}
template <typename T, int VEC>
__device__ __forceinline__ void st_vec(T *p, const float *v) {
    if constexpr (VEC == 1) {
        st(p, v[0]);
    } else {
        uint4 raw;
        T *e = reinterpret_cast<T *>(&raw);
#pragma unroll
        for (int i = 0; i < VEC; i++) st(e + i, v[i]);
        *reinterpret_cast<uint4 *>(p) = raw;
    }
}

// Runs BODY with `T` bound to the C++ type of dtype code DT.
#define CUDA_DISPATCH(DT, ...)                                                           \
    do {                                                                                 \
        switch (DT) {                                                                    \
        case CDT_F32: { typedef float T; __VA_ARGS__; } break;                            \
        case CDT_F16: { typedef __half T; __VA_ARGS__; } break;                           \
        case CDT_BF16: { typedef __nv_bfloat16 T; __VA_ARGS__; } break;                   \
        default:                                                                         \
            fprintf(stderr, "sdc: %s:%d: unsupported dtype code %d\n", __FILE__, __LINE__, \
                    (int)(DT));                                                          \
            abort();                                                                     \
        }                                                                                \
    } while (0)

// The context's cuDNN handle (created with the context's stream on first
// use), or NULL when cuDNN cannot be initialised (said once on stderr).
cudnnHandle_t cuda_ctx_cudnn(CudaCtx *c);
// Frees the per-shape cuDNN plans (conv_cuda.cu); called by cuda_ctx_destroy.
void cuda_conv_cache_destroy(CudaCtx *c);
void cuda_conv_bwd_cache_destroy(CudaCtx *c); // (conv_bwd_cuda.cu)

static inline unsigned cuda_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    if (b > 65535LL * 32) b = 65535LL * 32; // kernels use grid-stride loops
    if (b < 1) b = 1;
    return (unsigned)b;
}

// Block-wide sum of one float (or double) per thread (blockDim.x a multiple
// of 32, <= 1024): a fixed tree, so the same inputs give the same bits.
template <typename F> __device__ __forceinline__ F warp_sum(F v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
template <typename F> __device__ __forceinline__ F block_sum(F v, F *smem32) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads(); // smem32 may still be read by a previous call
    if (lane == 0) smem32[wid] = v;
    __syncthreads();
    v = threadIdx.x < nw ? smem32[threadIdx.x] : F(0);
    if (wid == 0) v = warp_sum(v);
    if (threadIdx.x == 0) smem32[0] = v;
    __syncthreads();
    return smem32[0];
}

#endif
