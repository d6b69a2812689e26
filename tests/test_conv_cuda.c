// test_conv_cuda.c: the two prepared CUDA paths against the CPU backend (the
// fp32 reference) on random inputs, for activations in F32, then F16 and BF16:
//   - cuda_conv2d_cudnn (cuDNN convolution, conv_cuda.cu): SD 1.5 UNet and
//     VAE conv shapes at small batch, odd sizes, stride 2, 1x1, no bias; the
//     cuDNN algorithm timed on first use (cudnn-find); a workspace smaller
//     than cuDNN's first choice needs (the bound); the fallback to im2col
//     for a shape cuDNN does not support (simulated: the real cases are
//     shapes beyond cuDNN's int32 limits, too big for a test);
//   - cuda_group_norm_fast (norm_cuda.cu): UNet and VAE shapes, with and
//     without SiLU, eps 1e-5 / 1e-6, groups held by one block, by a cluster,
//     and split statistics for VAE-sized groups; the scalar path (S not a
//     multiple of the vector, misaligned pointers); in place;
//   - both through the backend (SDC_CUDA_CONV=cudnn, SDC_CUDA_GN=fast, set
//     by this test before it creates the backends), as the pipeline runs them.
//
// Per case: "name rel_err tol OK" (max |gpu - cpu| / max |cpu|), a check that
// every output element was written (outputs are poisoned with NaN bytes
// first), and for the conv the algorithm cuDNN ran and its workspace.
// Inputs are rounded to the activation dtype on the host first, so CPU and
// GPU see the same values and the error is the GPU's own.
//
// Tolerances (the figures of test_ops_cuda, relative to max |ref|):
// - conv2d F32: 1e-5 (fp32 products and sums with tensor cores off,
//   CUDNN_FMA_MATH; another summation order over K = C*KH*KW <= 23040 with
//   |x|, |w| <= 1); with SDC_TF32=1, 2e-3 (10-bit mantissa inputs). A
//   Winograd or FFT algorithm that misses 1e-5 shows here with its name.
// - group norm F32: 1e-5 (fp32 two-pass statistics like the CPU; __expf in
//   the SiLU: a few ulp).
// - F16 / BF16: fp32 accumulation and one rounding of the output (the bias
//   is added by the convolution itself, beta = 1): 2^-11 / 2^-8 relative,
//   tolerance 2e-3 / 1e-2.
//
// Without a GPU (or in a build without CUDA) it prints "SKIPPED: no CUDA
// device (reason)" and exits 77 (CTest: skipped), unless SDC_REQUIRE_GPU=1
// (tests/gpu/run.sh sets it), where a missing GPU is a failure.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "testutil.h"
#ifdef SDC_HAVE_CUDA
#include "cuda/ops_cuda.h"
#endif

#define SH(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

#ifdef SDC_HAVE_CUDA

typedef struct Env {
    TestCtx *t;
    Backend *cpu, *gpu;
    CudaCtx *ctx;  // gpu->impl
    DType dt;      // activation dtype of gpu
    double dt_tol; // output rounding of dt
    int tf32;
} Env;

#define CUDA_TESTBUF_OWN_BUF
#include "cuda_testbuf.h"

// One tensor in both places: h (host f32, the values both backends see),
// c (CPU f32 tensor over h), g (device tensor of the GPU backend's dtype at
// `raw` + off elements: off = 1 makes a misaligned pointer).
typedef struct Buf {
    float *h;
    Tensor c, g;
    void *raw;
    size_t n;
} Buf;

static Buf buf_make(Env *e, int off, int ndim, const int64_t *shape) {
    Buf b;
    b.c = tensor_make(DT_F32, DEV_CPU, NULL, ndim, shape);
    b.n = (size_t)tensor_numel(&b.c);
    b.h = xmalloc(b.n * sizeof(float));
    b.c.data = b.h;
    b.g = tensor_make(e->dt, DEV_CUDA, NULL, ndim, shape);
    b.raw = gpu_alloc(e, tensor_bytes(&b.g) + 16);
    b.g.data = (char *)b.raw + (size_t)off * dtype_size(e->dt);
    return b;
}

// A random input in [lo, hi), never zeros.
static Buf buf_in(Env *e, int off, uint64_t seed, float lo, float hi, int ndim, const int64_t *shape) {
    Buf b = buf_make(e, off, ndim, shape);
    fill_uniform(b.h, b.n, seed, lo, hi);
    round_to(b.h, b.n, e->dt);
    backend_upload_f32(e->gpu, &b.g, b.h, b.n);
    return b;
}

// Fills the device copy with NaN bytes (0xFF is NaN in f32, f16 and bf16).
static void poison(Env *e, Buf *b) {
    size_t bytes = tensor_bytes(&b->g);
    void *p = xmalloc(bytes);
    memset(p, 0xFF, bytes);
    e->gpu->upload(e->gpu, b->g.data, p, bytes);
    free(p);
}

// An output: device copy poisoned, host reference zeroed.
static Buf buf_out(Env *e, int off, int ndim, const int64_t *shape) {
    Buf b = buf_make(e, off, ndim, shape);
    poison(e, &b);
    memset(b.h, 0, b.n * sizeof(float));
    return b;
}

static void buf_free(Env *e, Buf *b) {
    free(b->h);
    e->gpu->free(e->gpu, b->raw);
    b->h = NULL;
}

// Downloads o.g and compares it with the CPU result in o.h; tol is the F32
// tolerance (the dtype's rounding is the floor for F16/BF16).
static void check_out(Env *e, const char *name, Buf *o, double tol) {
    e->gpu->sync(e->gpu);
    float *got = xmalloc(o->n * sizeof(float));
    backend_download_f32(e->gpu, got, &o->g, o->n);
    double t = tol;
    if (e->dt != DT_F32 && e->dt_tol > t) t = e->dt_tol;
    char label[160];
    snprintf(label, sizeof label, "%s [%s]", name, dtype_name(e->dt));
    check_rel(e->t, label, got, o->h, o->n, t);
    size_t nan = 0;
    for (size_t i = 0; i < o->n; i++) nan += isnan(got[i]) != 0;
    check_true(e->t, nan == 0, "%-56s every output written (%zu NaN of %zu)", label, nan, o->n);
    free(got);
}

// ---- convolution ------------------------------------------------------------------

#define CONV_WS_CAP ((size_t)256 << 20) // the backend's cap (backend_cuda.c)

enum { WS_FULL, WS_MIN, WS_NONE };

// x (N, C, H, W) * w (OC, C, K, K) + b through cuda_conv2d_cudnn, twice (the
// plan is made by the first call, found in the table by the second), each
// checked. ws: WS_FULL is what the backend would hand over (the im2col size,
// capped); WS_MIN the least any conv may get (C*K*K*32 elements); WS_NONE no
// workspace (only for 1x1 convs, which im2col runs without one too).
// expect: CUDA_CONV_CUDNN, or CUDA_CONV_IM2COL for the fallback.
static void conv_case(Env *e, const char *name, int N, int C, int H, int W, int OC, int K,
                      int stride, int pad, int bias, int ws_mode, int expect) {
    int OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
    Buf x = buf_in(e, 0, 111, -1, 1, SH(N, C, H, W));  // (N, C, H, W)
    Buf w = buf_in(e, 0, 112, -1, 1, SH(OC, C, K, K)); // (OC, C, K, K)
    Buf b = buf_in(e, 0, 113, -1, 1, SH(OC));          // (OC)
    Buf o = buf_out(e, 0, SH(N, OC, OH, OW));          // (N, OC, OH, OW)
    e->cpu->conv2d(e->cpu, &o.c, &x.c, &w.c, bias ? &b.c : NULL, stride, pad);

    size_t es = dtype_size(e->dt);
    size_t least = (size_t)C * K * K * 32 * es;
    size_t full = cuda_conv2d_workspace_bytes(e->dt, N, C, H, W, OC, K, K, stride, pad);
    if (full > CONV_WS_CAP) full = CONV_WS_CAP;
    if (full < least) full = least;
    size_t ws_bytes = ws_mode == WS_FULL ? full : ws_mode == WS_MIN ? least : 0;
    void *ws = ws_bytes ? gpu_alloc(e, ws_bytes) : NULL;
    double tol = e->tf32 ? 2e-3 : 1e-5;

    for (int call = 0; call < 2; call++) {
        if (call) poison(e, &o);
        int path = cuda_conv2d_cudnn(e->ctx, e->dt, o.g.data, x.g.data, w.g.data,
                                     bias ? b.g.data : NULL, N, C, H, W, OC, K, K, stride, pad, ws,
                                     ws_bytes);
        CudaConvChoice ch;
        cuda_conv2d_cudnn_last(e->ctx, &ch);
        char label[160];
        snprintf(label, sizeof label, "%s%s", name, call ? " (plan cached)" : "");
        if (!call)
            printf("    %s [%s]: ran %s, workspace %.2f of %.2f MiB; cuDNN's first choice %s (%.2f MiB)\n",
                   name, dtype_name(e->dt), cuda_conv_algo_name(ch.algo), ch.ws_bytes / 1048576.0,
                   ws_bytes / 1048576.0, cuda_conv_algo_name(ch.preferred_algo),
                   ch.preferred_ws_bytes / 1048576.0);
        check_true(e->t, path == expect, "%-56s ran %s (expected %s)", label,
                   path == CUDA_CONV_CUDNN ? "cuDNN" : "im2col",
                   expect == CUDA_CONV_CUDNN ? "cuDNN" : "im2col");
        if (path == CUDA_CONV_CUDNN)
            check_true(e->t, ch.ws_bytes <= ws_bytes, "%-56s workspace %zu <= given %zu", label,
                       ch.ws_bytes, ws_bytes);
        if (!call && ws_mode != WS_FULL && path == CUDA_CONV_CUDNN && ch.preferred_ws_bytes <= ws_bytes)
            printf("    note: cuDNN's first choice fits this workspace too; the bound was not exercised\n");
        check_out(e, label, &o, tol);
    }
    if (ws) e->gpu->free(e->gpu, ws);
    buf_free(e, &x), buf_free(e, &w), buf_free(e, &b), buf_free(e, &o);
}

// The same through the backend's conv2d (its own workspace, SDC_CUDA_CONV=cudnn).
static void conv_backend_case(Env *e, const char *name, int N, int C, int H, int W, int OC, int K,
                              int stride, int pad) {
    int OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
    Buf x = buf_in(e, 0, 121, -1, 1, SH(N, C, H, W));
    Buf w = buf_in(e, 0, 122, -1, 1, SH(OC, C, K, K));
    Buf b = buf_in(e, 0, 123, -1, 1, SH(OC));
    Buf o = buf_out(e, 0, SH(N, OC, OH, OW));
    e->cpu->conv2d(e->cpu, &o.c, &x.c, &w.c, &b.c, stride, pad);
    e->gpu->conv2d(e->gpu, &o.g, &x.g, &w.g, &b.g, stride, pad);
    CudaConvChoice ch;
    cuda_conv2d_cudnn_last(e->ctx, &ch);
    check_true(e->t, ch.algo >= 0, "%-56s backend conv2d ran cuDNN (%s)", name,
               cuda_conv_algo_name(ch.algo));
    check_out(e, name, &o, e->tf32 ? 2e-3 : 1e-5);
    buf_free(e, &x), buf_free(e, &w), buf_free(e, &b), buf_free(e, &o);
}

static void conv_all(Env *e) {
    const int C2 = CUDA_CONV_CUDNN;
    // UNet (SD 1.5, 512 px: latent 64x64), batch 2
    conv_case(e, "conv 3x3 (2,320,64,64)->320 +b", 2, 320, 64, 64, 320, 3, 1, 1, 1, WS_FULL, C2);
    conv_case(e, "conv 3x3 conv_in (2,4,64,64)->320 +b", 2, 4, 64, 64, 320, 3, 1, 1, 1, WS_FULL, C2);
    conv_case(e, "conv 3x3 (2,640,32,32)->640 +b", 2, 640, 32, 32, 640, 3, 1, 1, 1, WS_FULL, C2);
    conv_case(e, "conv 3x3 (2,1280,16,16)->1280 +b", 2, 1280, 16, 16, 1280, 3, 1, 1, 1, WS_FULL, C2);
    conv_case(e, "conv 3x3 (2,2560,8,8)->1280 +b", 2, 2560, 8, 8, 1280, 3, 1, 1, 1, WS_FULL, C2);
    conv_case(e, "conv 3x3 s2 (2,320,64,64)->320 +b", 2, 320, 64, 64, 320, 3, 2, 1, 1, WS_FULL, C2);
    conv_case(e, "conv 3x3 s2 (2,1280,16,16)->1280 +b", 2, 1280, 16, 16, 1280, 3, 2, 1, 1, WS_FULL, C2);
    conv_case(e, "conv 1x1 (2,960,32,32)->640 +b", 2, 960, 32, 32, 640, 1, 1, 0, 1, WS_FULL, C2);
    conv_case(e, "conv 1x1 (2,640,64,64)->320 +b, no ws", 2, 640, 64, 64, 320, 1, 1, 0, 1, WS_NONE, C2);
    conv_case(e, "conv 3x3 conv_out (2,320,64,64)->4 +b", 2, 320, 64, 64, 4, 3, 1, 1, 1, WS_FULL, C2);
    // odd sizes, no bias
    conv_case(e, "conv 3x3 odd (1,3,37,29)->5 no bias", 1, 3, 37, 29, 5, 3, 1, 1, 0, WS_FULL, C2);
    conv_case(e, "conv 3x3 s2 odd (3,5,17,13)->7 +b", 3, 5, 17, 13, 7, 3, 2, 1, 1, WS_FULL, C2);
    // VAE decoder, batch 1
    conv_case(e, "conv 3x3 VAE (1,512,64,64)->512 +b", 1, 512, 64, 64, 512, 3, 1, 1, 1, WS_FULL, C2);
    conv_case(e, "conv 3x3 VAE (1,256,256,256)->256 +b", 1, 256, 256, 256, 256, 3, 1, 1, 1, WS_FULL, C2);
    conv_case(e, "conv 3x3 VAE (1,128,512,512)->128 +b", 1, 128, 512, 512, 128, 3, 1, 1, 1, WS_FULL, C2);
    // the workspace bound: the least workspace a conv may get
    conv_case(e, "conv 3x3 (2,320,64,64)->320, least ws", 2, 320, 64, 64, 320, 3, 1, 1, 1, WS_MIN, C2);
    conv_case(e, "conv 3x3 VAE (1,512,128,128)->512, least ws", 1, 512, 128, 128, 512, 3, 1, 1, 1,
              WS_MIN, C2);
    // the algorithm timed by cuDNN on first use (SDC_CUDA_CONV=cudnn-find)
    cuda_ctx_set_conv_algo(e->ctx, CUDA_CONV_CUDNN_FIND);
    conv_case(e, "conv 3x3 find (2,320,64,64)->320 +b", 2, 320, 64, 64, 320, 3, 1, 1, 1, WS_FULL, C2);
    conv_case(e, "conv 1x1 find (2,960,32,32)->640 no bias", 2, 960, 32, 32, 640, 1, 1, 0, 0, WS_FULL, C2);
    cuda_ctx_set_conv_algo(e->ctx, CUDA_CONV_CUDNN);
    // the fallback: a shape cuDNN "does not support" runs im2col, and stays there
    cuda_conv2d_cudnn_simulate_unsupported(e->ctx, 1);
    conv_case(e, "conv fallback (2,7,19,23)->6 s2", 2, 7, 19, 23, 6, 3, 2, 1, 1, WS_FULL,
              CUDA_CONV_IM2COL);
    cuda_conv2d_cudnn_simulate_unsupported(e->ctx, 0);
    conv_case(e, "conv fallback (2,7,19,23)->6 s2, cached", 2, 7, 19, 23, 6, 3, 2, 1, 1, WS_FULL,
              CUDA_CONV_IM2COL);
    conv_case(e, "conv after fallback (2,7,19,21)->6 s2", 2, 7, 19, 21, 6, 3, 2, 1, 1, WS_FULL, C2);
    // through the backend, as the UNet and VAE call it
    conv_backend_case(e, "backend conv 3x3 (2,640,32,32)->640", 2, 640, 32, 32, 640, 3, 1, 1);
    conv_backend_case(e, "backend conv 1x1 (2,1920,16,16)->1280", 2, 1920, 16, 16, 1280, 1, 1, 0);
}

// ---- group norm -------------------------------------------------------------------

// x (N, C, H, W) with mean ~3 (so a naive E[x^2]-E[x]^2 variance would show)
// through cuda_group_norm_fast; off = 1 misaligns x and out; in_place: out = x.
static void gn_case(Env *e, const char *name, int N, int C, int H, int W, int groups, float eps,
                    int silu, int off, int in_place) {
    Buf x = buf_in(e, off, 21, 2, 4, SH(N, C, H, W)); // (N, C, H, W)
    Buf g = buf_in(e, 0, 22, 0.5f, 1.5f, SH(C));     // (C)
    Buf bt = buf_in(e, 0, 23, -0.5f, 0.5f, SH(C));   // (C)
    Buf o = buf_out(e, off, SH(N, C, H, W));
    e->cpu->group_norm(e->cpu, &o.c, &x.c, &g.c, &bt.c, groups, eps, silu);
    const void *src = x.g.data;
    if (in_place) { // the input copied into the poisoned output, which is then overwritten
        backend_upload_f32(e->gpu, &o.g, x.h, x.n);
        src = o.g.data;
    }
    cuda_group_norm_fast(e->ctx, e->dt, o.g.data, src, g.g.data, bt.g.data, N, C, (int64_t)H * W,
                         groups, eps, silu);
    check_out(e, name, &o, 1e-5);
    buf_free(e, &x), buf_free(e, &g), buf_free(e, &bt), buf_free(e, &o);
}

static void gn_backend_case(Env *e, const char *name, int N, int C, int H, int W, float eps, int silu) {
    Buf x = buf_in(e, 0, 24, 2, 4, SH(N, C, H, W));
    Buf g = buf_in(e, 0, 25, 0.5f, 1.5f, SH(C));
    Buf bt = buf_in(e, 0, 26, -0.5f, 0.5f, SH(C));
    Buf o = buf_out(e, 0, SH(N, C, H, W));
    e->cpu->group_norm(e->cpu, &o.c, &x.c, &g.c, &bt.c, 32, eps, silu);
    e->gpu->group_norm(e->gpu, &o.g, &x.g, &g.g, &bt.g, 32, eps, silu);
    check_out(e, name, &o, 1e-5);
    buf_free(e, &x), buf_free(e, &g), buf_free(e, &bt), buf_free(e, &o);
}

static void gn_all(Env *e) {
    // UNet, eps 1e-5: one block per group, or a cluster of 2..8
    gn_case(e, "gn (2,320,64,64) g32", 2, 320, 64, 64, 32, 1e-5f, 0, 0, 0);
    gn_case(e, "gn+silu (2,640,32,32) g32", 2, 640, 32, 32, 32, 1e-5f, 1, 0, 0);
    gn_case(e, "gn+silu (2,1280,8,8) g32", 2, 1280, 8, 8, 32, 1e-5f, 1, 0, 0);
    gn_case(e, "gn+silu (2,2560,8,8) g32", 2, 2560, 8, 8, 32, 1e-5f, 1, 0, 0);
    gn_case(e, "gn+silu (2,960,64,64) g32", 2, 960, 64, 64, 32, 1e-5f, 1, 0, 0);
    gn_case(e, "gn+silu (8,1920,16,16) g32", 8, 1920, 16, 16, 32, 1e-5f, 1, 0, 0);
    // VAE, eps 1e-6: clusters, then split statistics (256 and 512 px: 0.5M-1M values a group)
    gn_case(e, "gn+silu VAE (1,512,64,64) g32", 1, 512, 64, 64, 32, 1e-6f, 1, 0, 0);
    gn_case(e, "gn+silu VAE (1,512,128,128) g32", 1, 512, 128, 128, 32, 1e-6f, 1, 0, 0);
    gn_case(e, "gn+silu VAE (1,256,256,256) g32", 1, 256, 256, 256, 32, 1e-6f, 1, 0, 0);
    gn_case(e, "gn VAE (1,128,512,512) g32", 1, 128, 512, 512, 32, 1e-6f, 0, 0, 0);
    // odd and misaligned: the scalar path
    gn_case(e, "gn+silu odd (1,6,5,5) g3", 1, 6, 5, 5, 3, 1e-5f, 1, 0, 0);
    gn_case(e, "gn+silu odd (1,96,7,9) g32", 1, 96, 7, 9, 32, 1e-6f, 1, 0, 0);
    gn_case(e, "gn (3,64,3,3) g32, S=9", 3, 64, 3, 3, 32, 1e-5f, 0, 0, 0);
    gn_case(e, "gn+silu misaligned (2,320,64,64) g32", 2, 320, 64, 64, 32, 1e-5f, 1, 1, 0);
    gn_case(e, "gn misaligned VAE (1,128,256,256) g32", 1, 128, 256, 256, 32, 1e-6f, 0, 1, 0);
    // in place (out == x), cluster and split paths
    gn_case(e, "gn+silu in place (2,640,32,32) g32", 2, 640, 32, 32, 32, 1e-5f, 1, 0, 1);
    gn_case(e, "gn+silu in place VAE (1,512,256,256) g32", 1, 512, 256, 256, 32, 1e-6f, 1, 0, 1);
    // through the backend (SDC_CUDA_GN=fast)
    gn_backend_case(e, "backend gn+silu (2,320,64,64) g32", 2, 320, 64, 64, 1e-5f, 1);
}

static void run_all(Env *e) {
    printf("-- activations %s%s\n", dtype_name(e->dt),
           e->tf32 && e->dt == DT_F32 ? " (TF32: SDC_TF32=1)" : "");
    conv_all(e);
    gn_all(e);
}

#endif // SDC_HAVE_CUDA

// ---- main -------------------------------------------------------------------------

int main(void) {
    TestCtx t = {0};
    // the backend-level cases run the new paths as a user would select them
    setenv("SDC_CUDA_CONV", "cudnn", 1);
    setenv("SDC_CUDA_GN", "fast", 1);
    Backend *gpu = NULL;
    const int gpu_rc = test_cuda_backend(&gpu, DT_F32);
    if (gpu_rc >= 0) return gpu_rc;
#ifdef SDC_HAVE_CUDA
    SdcError err = {0};
    Backend *cpu = NULL;
    if (backend_cpu_create(&cpu, 0, &err) != SDC_OK) {
        printf("FAILED: CPU backend: %s\n", err.msg);
        return 1;
    }
    const char *tf = getenv("SDC_TF32");
    Env e = {.t = &t, .cpu = cpu, .gpu = gpu, .ctx = (CudaCtx *)gpu->impl, .dt = DT_F32,
             .dt_tol = 0, .tf32 = tf && tf[0] == '1'};
    char dev[320];
    cuda_ctx_describe(e.ctx, dev, sizeof dev);
    printf("device: %s\n", dev);

    double t0 = now_s();
    run_all(&e);
    backend_destroy(gpu);

    const DType low[2] = {DT_F16, DT_BF16};
    const double low_tol[2] = {2e-3, 1e-2};
    for (int k = 0; k < 2; k++) {
        Backend *g = NULL;
        if (backend_cuda_create(&g, 0, low[k], &err) != SDC_OK) {
            check_true(&t, 0, "create CUDA backend %s: %s", dtype_name(low[k]), err.msg);
            continue;
        }
        e.gpu = g;
        e.ctx = (CudaCtx *)g->impl;
        e.dt = low[k];
        e.dt_tol = low_tol[k];
        run_all(&e);
        backend_destroy(g);
    }
    printf("(%.1f s)\n", now_s() - t0);
    backend_destroy(cpu);
#endif
    return test_summary(&t);
}
