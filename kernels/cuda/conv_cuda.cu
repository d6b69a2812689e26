// conv_cuda.cu: torch.nn.Conv2d (NCHW, zero padding, no dilation, groups 1)
// on the GPU as im2col + cuBLAS GEMM, fp32 accumulation for every storage
// dtype. Not cuDNN: sdc stays on one library (cuBLAS) it already needs, and
// the GEMM is where the time goes either way (the im2col pass is one write
// and one read of the unfolded input, bounded by the caller's workspace).
//
// Per sample n, row-major:
//   out[n] (OC, P) = w (OC, K) . col[n] (K, P),  K = C*KH*KW, P = OH*OW,
//   col[n][(c*KH + kh)*KW + kw][oh*OW + ow] = x[n][c][oh*s - pad + kh][ow*s - pad + kw]
// which, read column-major, is out^T (P, OC) = col^T (P, K) . w^T (K, OC):
// m = P, n = OC, k = K, A = col (lda = row length of col), B = w (ldb = K),
// C = out (ldc = P). Samples are the batch of a strided-batched GEMM.
//
// 1x1 stride-1 unpadded convs need no im2col: col[n] is x[n] itself.
// Otherwise the workspace (ws, from the backend) holds the columns of as
// many whole samples as fit, else of a range of output pixels of one sample
// (so a 512x512 VAE conv runs in any workspace of at least K*32 elements).
//
// The bias is written into out first and the GEMM adds onto it (beta = 1):
// one rounding of the result, the same traffic as a separate bias pass.
#include "cuda_common.cuh"

static cudaDataType_t conv_cuda_type(int dt) {
    switch (dt) {
    case CDT_F32: return CUDA_R_32F;
    case CDT_F16: return CUDA_R_16F;
    case CDT_BF16: return CUDA_R_16BF;
    }
    CUDA_REQUIRE(!"unsupported dtype");
    return CUDA_R_32F;
}

static size_t conv_dtype_size(int dt) { return dt == CDT_F32 ? 4 : 2; }

// out (N, OC, P) = b[oc] broadcast. grid-stride
template <typename T>
__global__ void conv_bias_fill_kernel(T *out, const T *b, int64_t OC, int64_t P, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = b[(i / P) % OC];
}

// col (nb, K, Pc) for samples [n0, n0+nb) and output pixels [p0, p0+Pc) from
// x (N, C, H, W); out-of-image taps are 0. Raw copies, no conversion.
template <typename T>
__global__ void im2col_kernel(T *col, const T *x, int n0, int nb, int C, int H, int W, int KH,
                              int KW, int stride, int pad, int OW, int64_t p0, int64_t Pc) {
    const int64_t K = (int64_t)C * KH * KW;
    const int64_t total = (int64_t)nb * K * Pc;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t pp = i % Pc;
        int64_t r = (i / Pc) % K;
        int64_t nn = i / (Pc * K);
        int64_t p = p0 + pp;
        int oh = (int)(p / OW), ow = (int)(p % OW);
        int kw = (int)(r % KW), kh = (int)((r / KW) % KH), c = (int)(r / (KW * KH));
        int ih = oh * stride - pad + kh, iw = ow * stride - pad + kw;
        T v = T(0.f);
        if (ih >= 0 && ih < H && iw >= 0 && iw < W)
            v = x[(((n0 + nn) * C + c) * (int64_t)H + ih) * W + iw];
        col[i] = v;
    }
}

extern "C" size_t cuda_conv2d_workspace_bytes(int dt, int N, int C, int H, int W, int OC, int KH,
                                              int KW, int stride, int pad) {
    if (KH == 1 && KW == 1 && stride == 1 && pad == 0) return 0;
    int64_t OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    return (size_t)N * C * KH * KW * OH * OW * conv_dtype_size(dt);
}

extern "C" void cuda_conv2d(CudaCtx *c, int dt, void *out, const void *x, const void *w,
                            const void *b, int N, int C, int H, int W, int OC, int KH, int KW,
                            int stride, int pad, void *ws, size_t ws_bytes) {
    const int64_t OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    const int64_t P = OH * OW, K = (int64_t)C * KH * KW;
    CUDA_REQUIRE(N > 0 && C > 0 && OC > 0 && OH > 0 && OW > 0 && stride > 0 && pad >= 0);
    CUDA_REQUIRE(P <= INT32_MAX && K <= INT32_MAX);
    const size_t es = conv_dtype_size(dt);
    cudaDataType_t t = conv_cuda_type(dt);
    cublasComputeType_t ct = CUBLAS_COMPUTE_32F;
    if (dt == CDT_F32 && c->allow_tf32) ct = CUBLAS_COMPUTE_32F_FAST_TF32;

    float beta = 0.f;
    if (b) {
        int64_t n = (int64_t)N * OC * P;
        CUDA_DISPATCH(dt, {
            conv_bias_fill_kernel<T><<<cuda_blocks(n, 256), 256, 0, c->stream>>>(
                (T *)out, (const T *)b, OC, P, n);
        });
        CUDA_CHECK_LAUNCH();
        beta = 1.f;
    }
    const float alpha = 1.f;

    if (KH == 1 && KW == 1 && stride == 1 && pad == 0) { // col[n] = x[n] (C, P)
        CUBLAS_CHECK(cublasGemmStridedBatchedEx(
            c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, (int)P, OC, (int)K, &alpha, x, t, (int)P,
            (long long)K * P, w, t, (int)K, 0, &beta, out, t, (int)P, (long long)OC * P, N, ct,
            CUBLAS_GEMM_DEFAULT));
        return;
    }

    const size_t per_sample = (size_t)K * P * es;
    CUDA_REQUIRE(ws != NULL && ws_bytes >= (size_t)K * 32 * es);
    if (ws_bytes >= per_sample) { // whole samples, as many as fit
        int chunk = (int)(ws_bytes / per_sample < (size_t)N ? ws_bytes / per_sample : (size_t)N);
        for (int n0 = 0; n0 < N; n0 += chunk) {
            int nb = N - n0 < chunk ? N - n0 : chunk;
            CUDA_DISPATCH(dt, {
                im2col_kernel<T><<<cuda_blocks((int64_t)nb * K * P, 256), 256, 0, c->stream>>>(
                    (T *)ws, (const T *)x, n0, nb, C, H, W, KH, KW, stride, pad, (int)OW, 0, P);
            });
            CUDA_CHECK_LAUNCH();
            CUBLAS_CHECK(cublasGemmStridedBatchedEx(
                c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, (int)P, OC, (int)K, &alpha, ws, t, (int)P,
                (long long)K * P, w, t, (int)K, 0, &beta, (char *)out + (size_t)n0 * OC * P * es, t,
                (int)P, (long long)OC * P, nb, ct, CUBLAS_GEMM_DEFAULT));
        }
        return;
    }
    // one sample at a time, a range of Pc output pixels per GEMM (Pc a multiple of 32)
    int64_t Pc = (int64_t)(ws_bytes / ((size_t)K * es)) / 32 * 32;
    for (int n0 = 0; n0 < N; n0++) {
        for (int64_t p0 = 0; p0 < P; p0 += Pc) {
            int64_t pc = P - p0 < Pc ? P - p0 : Pc;
            CUDA_DISPATCH(dt, {
                im2col_kernel<T><<<cuda_blocks(K * pc, 256), 256, 0, c->stream>>>(
                    (T *)ws, (const T *)x, n0, 1, C, H, W, KH, KW, stride, pad, (int)OW, p0, pc);
            });
            CUDA_CHECK_LAUNCH();
            // out[n0][:, p0:p0+pc]: column-major (pc x OC) with ldc = P
            CUBLAS_CHECK(cublasGemmEx(c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, (int)pc, OC, (int)K,
                                      &alpha, ws, t, (int)pc, w, t, (int)K, &beta,
                                      (char *)out + ((size_t)n0 * OC * P + p0) * es, t, (int)P, ct,
                                      CUBLAS_GEMM_DEFAULT));
        }
    }
}
