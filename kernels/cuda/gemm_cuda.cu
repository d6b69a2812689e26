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

// ---- backward -------------------------------------------------------------------
// Row-major to cuBLAS's column-major as above (a row-major (R, C) buffer is a
// column-major (C, R) one):
//   dx (M, K) = dy (M, N) . w (N, K):  dx^T (K, M) = w' (K, N) . dy' (N, M)
//     -> m = K, n = M, k = N; A = w OP_N (lda K), B = dy OP_N (ldb N), C = dx (ldc K)
//   dw (N, K) += dy^T (N, M) . x (M, K):  dw^T (K, N) = x' (K, M) . dy'^T (M, N)
//     -> m = K, n = N, k = M; A = x OP_N (lda K), B = dy OP_T (ldb N), C = dw (ldc K), beta 1
// The bias gradient is a column sum of dy, in two deterministic passes:
// per chunk of rows a partial sum per column (threads of a block take
// adjacent columns, so the loads coalesce), then per column the partials in
// chunk order, added into db.

static cublasComputeType_t compute_type(const CudaCtx *c, int dt) {
    return dt == CDT_F32 && c->allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

template <typename T>
__global__ void col_partial_kernel(float *part, const T *a, int64_t M, int64_t N, int64_t rows_per) {
    int64_t col = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    int64_t chunk = blockIdx.y;
    if (col >= N) return;
    int64_t r0 = chunk * rows_per, r1 = r0 + rows_per < M ? r0 + rows_per : M;
    float s = 0.f;
    for (int64_t r = r0; r < r1; r++) s += ld(a + r * N + col);
    part[chunk * N + col] = s;
}

template <typename T>
__global__ void col_finish_kernel(T *db, const float *part, int64_t chunks, int64_t N) {
    for (int64_t col = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; col < N;
         col += (int64_t)gridDim.x * blockDim.x) {
        float s = 0.f;
        for (int64_t k = 0; k < chunks; k++) s += part[k * N + col];
        st(db + col, ld(db + col) + s);
    }
}

// db (N) += sum over the M rows of a (M, N)
static void col_sums_acc(CudaCtx *c, int dt, void *db, const void *a, int64_t M, int64_t N) {
    const int64_t cap = CUDA_SCRATCH_BYTES / sizeof(float); // partials that fit the scratch
    int64_t chunks = M < 1024 ? M : 1024;
    if (chunks * N > cap) chunks = cap / N > 0 ? cap / N : 1;
    if (N > cap) { // more columns than the scratch holds: one partial row at a time
        cuda_fault(c, CUDA_ERR_LIB, "linear backward: %lld output features is beyond the bias-gradient "
                   "scratch (%lld)", (long long)N, (long long)cap);
        return;
    }
    const int64_t rows_per = (M + chunks - 1) / chunks;
    chunks = (M + rows_per - 1) / rows_per;
    dim3 grid((unsigned)((N + 255) / 256), (unsigned)chunks);
    CUDA_DISPATCH(dt, {
        col_partial_kernel<T><<<grid, 256, 0, c->stream>>>(c->scratch, (const T *)a, M, N, rows_per);
        CUDA_CHECK_LAUNCH(c);
        col_finish_kernel<T><<<cuda_blocks(N, 256), 256, 0, c->stream>>>((T *)db, c->scratch, chunks, N);
        CUDA_CHECK_LAUNCH(c);
    });
}

extern "C" void cuda_linear_backward(CudaCtx *c, int dt, void *dx, void *dw, void *db, const void *dy,
                                     const void *x, const void *w, int64_t M, int64_t N, int64_t K) {
    CUDA_REQUIRE(M > 0 && N > 0 && K > 0 && M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX);
    const float one = 1.f, zero = 0.f;
    const cudaDataType_t t = cuda_type(dt);
    const cublasComputeType_t ct = compute_type(c, dt);
    if (dx)
        CUBLAS_CHECK(c, cublasGemmEx(c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, (int)K, (int)M, (int)N, &one, w, t,
                                  (int)K, dy, t, (int)N, &zero, dx, t, (int)K, ct, CUBLAS_GEMM_DEFAULT));
    if (dw)
        CUBLAS_CHECK(c, cublasGemmEx(c->cublas, CUBLAS_OP_N, CUBLAS_OP_T, (int)K, (int)N, (int)M, &one, x, t,
                                  (int)K, dy, t, (int)N, &one, dw, t, (int)K, ct, CUBLAS_GEMM_DEFAULT));
    if (db) col_sums_acc(c, dt, db, dy, M, N);
}

// c (M, N) = alpha a (M, K) . b (K, N) + beta c, row-major:
// c^T (N, M) = b' (N, K) . a' (K, M) -> m = N, n = M, k = K; A = b (lda N), B = a (ldb K), C (ldc N)
extern "C" void cuda_matmul(CudaCtx *c, int dt, void *out, const void *a, const void *b, int64_t M,
                            int64_t N, int64_t K, float alpha, float beta) {
    CUDA_REQUIRE(M > 0 && N > 0 && K > 0 && M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX);
    const cudaDataType_t t = cuda_type(dt);
    CUBLAS_CHECK(c, cublasGemmEx(c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, (int)N, (int)M, (int)K, &alpha, b, t,
                              (int)N, a, t, (int)K, &beta, out, t, (int)N, compute_type(c, dt),
                              CUBLAS_GEMM_DEFAULT));
}
