// elementwise_cuda.cu: activations (silu, gelu, quick_gelu, geglu), add,
// scale, channel bias, and the layout ops (nearest 2x upsample, channel
// concat, NCHW <-> NLC transpose, dtype convert, embedding lookup, timestep
// embedding). Memory-bound: grid-stride loops, fp32 math, one read and one
// write per element. In place (out == x) is fine for the pointwise ops.
#include "cuda_common.cuh"

#include <math.h>

#define GRID_STRIDE(i, n)                                                           \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);      \
         i += (int64_t)gridDim.x * blockDim.x)

// ---- activations ---------------------------------------------------------------
__device__ __forceinline__ float silu_f(float v) { return v / (1.f + __expf(-v)); }
// exact erf form (torch default); erff is not affected by --use_fast_math
__device__ __forceinline__ float gelu_f(float v) { return 0.5f * v * (1.f + erff(v * 0.70710678118654752f)); }
__device__ __forceinline__ float quick_gelu_f(float v) { return v / (1.f + __expf(-1.702f * v)); }

template <typename T, int ACT>
__global__ void act_kernel(T *out, const T *x, int64_t n) {
    GRID_STRIDE(i, n) {
        float v = ld(x + i);
        v = ACT == CUDA_ACT_SILU ? silu_f(v) : ACT == CUDA_ACT_GELU ? gelu_f(v) : quick_gelu_f(v);
        st(out + i, v);
    }
}

extern "C" void cuda_activation(CudaCtx *c, int dt, int act, void *out, const void *x, int64_t n) {
    if (n <= 0) return;
    unsigned nb = cuda_blocks(n, 256);
    CUDA_DISPATCH(dt, {
        switch (act) {
        case CUDA_ACT_SILU: act_kernel<T, CUDA_ACT_SILU><<<nb, 256, 0, c->stream>>>((T *)out, (const T *)x, n); break;
        case CUDA_ACT_GELU: act_kernel<T, CUDA_ACT_GELU><<<nb, 256, 0, c->stream>>>((T *)out, (const T *)x, n); break;
        case CUDA_ACT_QUICK_GELU: act_kernel<T, CUDA_ACT_QUICK_GELU><<<nb, 256, 0, c->stream>>>((T *)out, (const T *)x, n); break;
        default: CUDA_REQUIRE(!"unknown activation");
        }
    });
    CUDA_CHECK_LAUNCH(c);
}

// x (rows, 2F) -> out (rows, F)
template <typename T>
__global__ void geglu_kernel(T *out, const T *x, int64_t rows, int64_t F) {
    GRID_STRIDE(i, rows * F) {
        int64_t r = i / F, f = i - r * F;
        const T *xr = x + r * 2 * F;
        st(out + i, ld(xr + f) * gelu_f(ld(xr + F + f)));
    }
}

extern "C" void cuda_geglu(CudaCtx *c, int dt, void *out, const void *x, int64_t rows, int64_t F) {
    if (rows * F <= 0) return;
    CUDA_DISPATCH(dt, {
        geglu_kernel<T><<<cuda_blocks(rows * F, 256), 256, 0, c->stream>>>((T *)out, (const T *)x, rows, F);
    });
    CUDA_CHECK_LAUNCH(c);
}

// ---- add, scale, channel bias -----------------------------------------------------
template <typename T>
__global__ void add_kernel(T *out, const T *a, const T *b, int64_t n) {
    GRID_STRIDE(i, n) st(out + i, ld(a + i) + ld(b + i));
}

template <typename T>
__global__ void scale_kernel(T *out, const T *x, float s, int64_t n) {
    GRID_STRIDE(i, n) st(out + i, ld(x + i) * s);
}

// x, out (NC, S); bias (NC).  grid (NC, chunks of S): no division per element
template <typename T>
__global__ void channel_bias_kernel(T *out, const T *x, const T *bias, int64_t S) {
    int64_t nc = blockIdx.x;
    float b = ld(bias + nc);
    const T *xr = x + nc * S;
    T *orow = out + nc * S;
    for (int64_t i = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; i < S; i += (int64_t)gridDim.y * blockDim.x)
        st(orow + i, ld(xr + i) + b);
}

extern "C" void cuda_add(CudaCtx *c, int dt, void *out, const void *a, const void *b, int64_t n) {
    if (n <= 0) return;
    CUDA_DISPATCH(dt, {
        add_kernel<T><<<cuda_blocks(n, 256), 256, 0, c->stream>>>((T *)out, (const T *)a, (const T *)b, n);
    });
    CUDA_CHECK_LAUNCH(c);
}

extern "C" void cuda_scale(CudaCtx *c, int dt, void *out, const void *x, float s, int64_t n) {
    if (n <= 0) return;
    CUDA_DISPATCH(dt, {
        scale_kernel<T><<<cuda_blocks(n, 256), 256, 0, c->stream>>>((T *)out, (const T *)x, s, n);
    });
    CUDA_CHECK_LAUNCH(c);
}

extern "C" void cuda_add_channel_bias(CudaCtx *c, int dt, void *out, const void *x, const void *bias,
                                      int64_t NC, int64_t S) {
    if (NC <= 0 || S <= 0) return;
    CUDA_REQUIRE(NC <= INT32_MAX);
    int64_t cy = (S + 1023) / 1024;
    if (cy > 65535) cy = 65535;
    CUDA_DISPATCH(dt, {
        channel_bias_kernel<T><<<dim3((unsigned)NC, (unsigned)cy), 256, 0, c->stream>>>(
            (T *)out, (const T *)x, (const T *)bias, S);
    });
    CUDA_CHECK_LAUNCH(c);
}

// ---- layout ------------------------------------------------------------------------
// x (NC, H, W) -> out (NC, OH, OW), out[y][x] = x[y / 2][x / 2] with OH
// 2H or 2H - 1 (odd skip sizes on the UNet's way up); one thread per output
template <typename T>
__global__ void upsample2x_kernel(T *out, const T *x, int64_t NC, int64_t H, int64_t W, int64_t OH,
                                  int64_t OW) {
    GRID_STRIDE(i, NC * OH * OW) {
        int64_t ox = i % OW, t = i / OW;
        int64_t oy = t % OH, nc = t / OH;
        out[i] = x[(nc * H + (oy >> 1)) * W + (ox >> 1)];
    }
}

extern "C" void cuda_upsample_nearest2x(CudaCtx *c, int dt, void *out, const void *x, int64_t NC,
                                        int64_t H, int64_t W, int64_t OH, int64_t OW) {
    int64_t n = NC * OH * OW;
    if (n <= 0) return;
    CUDA_DISPATCH(dt, {
        upsample2x_kernel<T><<<cuda_blocks(n, 256), 256, 0, c->stream>>>((T *)out, (const T *)x, NC, H, W, OH,
                                                                         OW);
    });
    CUDA_CHECK_LAUNCH(c);
}

// Concat is two strided 2D copies: per sample, a's block then b's block.
extern "C" void cuda_concat_channels(CudaCtx *c, int dt, void *out, const void *a, const void *b,
                                     int64_t N, int64_t a_per_n, int64_t b_per_n) {
    size_t es = dt == CDT_F32 ? 4 : 2;
    size_t pitch = (size_t)(a_per_n + b_per_n) * es;
    if (a_per_n > 0)
        CUDA_CHECK(c, cudaMemcpy2DAsync(out, pitch, a, (size_t)a_per_n * es, (size_t)a_per_n * es,
                                     (size_t)N, cudaMemcpyDeviceToDevice, c->stream));
    if (b_per_n > 0)
        CUDA_CHECK(c, cudaMemcpy2DAsync((char *)out + (size_t)a_per_n * es, pitch, b, (size_t)b_per_n * es,
                                     (size_t)b_per_n * es, (size_t)N, cudaMemcpyDeviceToDevice,
                                     c->stream));
}

// x (N, R, Cc) -> out (N, Cc, R) through a 32x33 shared tile (coalesced both ways).
// grid (ceil(Cc/32), ceil(R/32), N), block (32, 8)
template <typename T>
__global__ void transpose_kernel(T *out, const T *x, int64_t R, int64_t Cc) {
    __shared__ T tile[32][33];
    int64_t n = blockIdx.z;
    int64_t c0 = (int64_t)blockIdx.x * 32, r0 = (int64_t)blockIdx.y * 32;
    const T *xn = x + n * R * Cc;
    T *on = out + n * R * Cc;
    for (int j = threadIdx.y; j < 32; j += 8) {
        int64_t r = r0 + j, cc = c0 + threadIdx.x;
        if (r < R && cc < Cc) tile[j][threadIdx.x] = xn[r * Cc + cc];
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += 8) {
        int64_t cc = c0 + j, r = r0 + threadIdx.x;
        if (r < R && cc < Cc) on[cc * R + r] = tile[threadIdx.x][j];
    }
}

extern "C" void cuda_transpose(CudaCtx *c, int dt, void *out, const void *x, int64_t N, int64_t R,
                               int64_t Cc) {
    if (N <= 0 || R <= 0 || Cc <= 0) return;
    CUDA_REQUIRE(N <= 65535 && (R + 31) / 32 <= 65535 && (Cc + 31) / 32 <= INT32_MAX);
    dim3 grid((unsigned)((Cc + 31) / 32), (unsigned)((R + 31) / 32), (unsigned)N);
    // pure data movement: 2-byte types share one kernel
    if (dt == CDT_F32)
        transpose_kernel<float><<<grid, dim3(32, 8), 0, c->stream>>>((float *)out, (const float *)x, R, Cc);
    else
        transpose_kernel<uint16_t><<<grid, dim3(32, 8), 0, c->stream>>>((uint16_t *)out, (const uint16_t *)x, R, Cc);
    CUDA_CHECK_LAUNCH(c);
}

template <typename TO, typename TI>
__global__ void convert_kernel(TO *out, const TI *x, int64_t n) {
    GRID_STRIDE(i, n) st(out + i, ld(x + i));
}

extern "C" void cuda_convert(CudaCtx *c, void *out, int dst_dt, const void *x, int src_dt, int64_t n) {
    if (n <= 0) return;
    if (dst_dt == src_dt) {
        size_t es = dst_dt == CDT_F32 ? 4 : 2;
        if (out != x)
            CUDA_CHECK(c, cudaMemcpyAsync(out, x, (size_t)n * es, cudaMemcpyDeviceToDevice, c->stream));
        return;
    }
    unsigned nb = cuda_blocks(n, 256);
    CUDA_DISPATCH(dst_dt, {
        typedef T TO;
        CUDA_DISPATCH(src_dt, {
            convert_kernel<TO, T><<<nb, 256, 0, c->stream>>>((TO *)out, (const T *)x, n);
        });
    });
    CUDA_CHECK_LAUNCH(c);
}

// ---- embeddings ------------------------------------------------------------------
// ids (n_ids), table (V, D) -> out (n_ids, D)
template <typename T>
__global__ void embedding_kernel(T *out, const int32_t *ids, const T *table, int64_t n_ids,
                                 int64_t V, int64_t D) {
    GRID_STRIDE(i, n_ids * D) {
        int64_t r = i / D, d = i - r * D;
        int32_t id = ids[r];
        out[i] = (id >= 0 && id < V) ? table[(int64_t)id * D + d] : T(0.f);
    }
}

extern "C" void cuda_embedding(CudaCtx *c, int dt, void *out, const int32_t *ids, const void *table,
                               int64_t n_ids, int64_t V, int64_t D) {
    if (n_ids * D <= 0) return;
    CUDA_DISPATCH(dt, {
        embedding_kernel<T><<<cuda_blocks(n_ids * D, 256), 256, 0, c->stream>>>(
            (T *)out, ids, (const T *)table, n_ids, V, D);
    });
    CUDA_CHECK_LAUNCH(c);
}

// t (N) -> out (N, dim). torch does this in fp32: freq = exp(-ln(1e4) * i /
// (half - shift)), arg = t * freq, then sin/cos. exp/sin/cos are evaluated in
// double and rounded once, like correctly-rounded libm fp32 calls would be
// (--use_fast_math would otherwise give __sinf, which is poor for |arg| ~ 1000).
template <typename T>
__global__ void timestep_kernel(T *out, const float *t, int64_t N, int64_t dim, int flip,
                                float shift) {
    int64_t half = dim / 2;
    GRID_STRIDE(i, N * dim) {
        int64_t n = i / dim, j = i - n * dim;
        float v = 0.f; // odd dim: torch pads one zero column at the end
        if (j < 2 * half) {
            int64_t k = j < half ? j : j - half;
            float expo = __fdiv_rn(__fmul_rn(-9.210340371976184f, (float)k), (float)half - shift);
            float freq = (float)exp((double)expo);
            float arg = __fmul_rn(t[n], freq);
            int first = j < half; // first half: sin, unless flipped
            int use_sin = flip ? !first : first;
            v = use_sin ? (float)sin((double)arg) : (float)cos((double)arg);
        }
        st(out + i, v);
    }
}

extern "C" void cuda_timestep_embedding(CudaCtx *c, int dt, void *out, const float *timesteps_host,
                                        int64_t N, int64_t dim, int flip_sin_to_cos, float freq_shift) {
    if (N <= 0 || dim <= 0) return;
    CUDA_REQUIRE(N * sizeof(float) <= CUDA_SCRATCH_BYTES);
    // The scratch is reused by the next op on the same stream only after this
    // kernel ran, so the async copy is safe; pageable host memory is staged.
    CUDA_CHECK(c, cudaMemcpyAsync(c->scratch, timesteps_host, N * sizeof(float), cudaMemcpyHostToDevice,
                               c->stream));
    CUDA_DISPATCH(dt, {
        timestep_kernel<T><<<cuda_blocks(N * dim, 256), 256, 0, c->stream>>>(
            (T *)out, c->scratch, N, dim, flip_sin_to_cos, freq_shift);
    });
    CUDA_CHECK_LAUNCH(c);
}
