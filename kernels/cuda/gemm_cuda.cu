// gemm_cuda.cu: torch.nn.Linear on the GPU through cuBLAS (cublasGemmEx),
// row-major, fp32 accumulation for every storage dtype, then the bias in one
// elementwise pass.
//
// Row-major out (M, N) = x (M, K) . w (N, K)^T is, read column-major,
// out^T (N, M) = w^T' (N, K) . x^T' (K, M) where a row-major (R, C) buffer is
// a column-major (C, R) one: so A = w buffer with OP_T (lda K), B = x buffer
// with OP_N (ldb K), C = out buffer (ldc N), m = N, n = M, k = K.
//
// fp32: CUBLAS_COMPUTE_32F with the default math mode never uses TF32, so
// results match the CPU sgemm to ~1e-6; ctx->allow_tf32 switches to
// CUBLAS_COMPUTE_32F_FAST_TF32 (~1e-3) for speed.
#include "cuda_common.cuh"

static cudaDataType_t cuda_type(int dt) {
    switch (dt) {
    case CDT_F32: return CUDA_R_32F;
    case CDT_F16: return CUDA_R_16F;
    case CDT_BF16: return CUDA_R_16BF;
    }
    CUDA_REQUIRE(!"unsupported dtype");
    return CUDA_R_32F;
}

// out (M, N) += b (N) broadcast over rows
template <typename T>
__global__ void bias_rows_kernel(T *out, const T *b, int64_t M, int64_t N) {
    int64_t n = M * N;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        st(out + i, ld(out + i) + ld(b + i % N));
}

extern "C" void cuda_linear(CudaCtx *c, int dt, void *out, const void *x, const void *w,
                            const void *b, int64_t M, int64_t N, int64_t K) {
    CUDA_REQUIRE(M > 0 && N > 0 && K > 0 && M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX);
    const float alpha = 1.f, beta = 0.f;
    cudaDataType_t t = cuda_type(dt);
    cublasComputeType_t ct = CUBLAS_COMPUTE_32F;
    if (dt == CDT_F32 && c->allow_tf32) ct = CUBLAS_COMPUTE_32F_FAST_TF32;
    CUBLAS_CHECK(c, cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &alpha,
                              w, t, (int)K, x, t, (int)K, &beta, out, t, (int)N, ct,
                              CUBLAS_GEMM_DEFAULT));
    if (b) {
        CUDA_DISPATCH(dt, {
            bias_rows_kernel<T><<<cuda_blocks(M * N, 256), 256, 0, c->stream>>>(
                (T *)out, (const T *)b, M, N);
        });
        CUDA_CHECK_LAUNCH(c);
    }
}
