// test_ops_cuda.c: every op of the CUDA backend against the CPU backend (the
// fp32 reference) on random inputs with SD shapes, for activations in F32,
// then F16 and BF16.
//
// Per op: one line "name rel_err tol OK" (max |gpu - cpu| / max |cpu|), and a
// poisoned-output check: the output is filled with NaN bytes (0xFF) before
// the op, so an element the kernel forgot to write shows up as NaN.
// Inputs are rounded to the activation dtype on the host first, so CPU and
// GPU see the same values and the error is the GPU's own.
//
// Tolerances (relative to max |ref|):
// - data movement (upsample, concat, transposes, embedding, copy): exact, 0;
// - add, scale, channel bias: the same single fp32 rounding as the CPU, 1e-6;
// - GEMM: fp32 with TF32 off, different summation order over K <= 768 with
//   |x|, |w| <= 1: 1e-5; with SDC_TF32=1 (10-bit mantissa inputs) 2e-3;
// - timestep embedding: 1e-4 (see test_timestep);
// - group norm, layer norm (fp32 two-pass statistics), softmax, activations
//   (__expf / erff vs the CPU's polynomial exp and erf): 1e-5 (errors are a
//   few ulp, ~1e-6);
// - F16 / BF16 activations: one rounding of the output, 2^-11 / 2^-8
//   relative: tolerance 2e-3 / 1e-2 (exact ops stay exact).
// - conv2d (im2col + the same cuBLAS GEMM, K = C*KH*KW <= 2304): like
//   linear, 1e-5 in F32 (2e-3 with TF32); the bias is added inside the GEMM
//   (beta = 1), so F16/BF16 round once, as above.
// - attention: F32 1e-5 (fp32 online softmax; exp2 vs the CPU's exp differ
//   by a few ulp). F16/BF16 run on tensor cores with the softmax weights P
//   rounded to the storage dtype before P.V (as flash attention does) and
//   the output rounded once: errors of up to a few units of 2^-11 / 2^-8
//   relative to max |v|, while averaging over keys makes max |out| smaller
//   than max |v|: 8 units, 4e-3 / 3e-2.
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

#define SH(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

typedef struct Env {
    TestCtx *t;
    Backend *cpu, *gpu;
    DType dt;      // activation dtype of gpu
    double dt_tol; // output rounding of dt
    int tf32;
} Env;

#include "cuda_testbuf.h"

// Downloads o.g and compares it with the CPU result in o.h. tol is the F32
// tolerance; 0 means exact in every dtype (data movement).
static void check_out(Env *e, const char *name, Buf *o, double tol) {
    e->gpu->sync(e->gpu);
    float *got = xmalloc(o->n * sizeof(float));
    backend_download_f32(e->gpu, got, &o->g, o->n);
    double t = tol;
    if (e->dt != DT_F32 && tol > 0 && e->dt_tol > t) t = e->dt_tol;
    char label[96];
    snprintf(label, sizeof label, "%s [%s]", name, dtype_name(e->dt));
    check_rel(e->t, label, got, o->h, o->n, t);
    size_t nan = 0;
    for (size_t i = 0; i < o->n; i++) nan += isnan(got[i]) != 0;
    check_true(e->t, nan == 0, "%-40s every output written (%zu NaN of %zu)", label, nan, o->n);
    free(got);
}

// ---- op cases ---------------------------------------------------------------------

static void test_linear(Env *e, const char *name, int64_t B, int64_t L, int64_t K, int64_t N, int bias) {
    Buf x = buf_in(e, 11, -1, 1, SH(B, L, K));     // (B, L, K)
    Buf w = buf_in(e, 12, -1, 1, SH(N, K));        // (N, K)
    Buf b = buf_in(e, 13, -1, 1, SH(N));           // (N)
    Buf o = buf_out(e, SH(B, L, N));               // (B, L, N)
    e->cpu->linear(e->cpu, &o.c, &x.c, &w.c, bias ? &b.c : NULL);
    e->gpu->linear(e->gpu, &o.g, &x.g, &w.g, bias ? &b.g : NULL);
    check_out(e, name, &o, e->tf32 ? 2e-3 : 1e-5);
    buf_free(e, &x), buf_free(e, &w), buf_free(e, &b), buf_free(e, &o);
}

static void test_group_norm(Env *e, const char *name, int64_t N, int64_t C, int64_t H, int64_t W,
                            int groups, float eps, int silu) {
    // offset mean (3) so a naive E[x^2]-E[x]^2 variance would show
    Buf x = buf_in(e, 21, 2, 4, SH(N, C, H, W)); // (N, C, H, W)
    Buf g = buf_in(e, 22, 0.5f, 1.5f, SH(C));   // (C)
    Buf bt = buf_in(e, 23, -0.5f, 0.5f, SH(C)); // (C)
    Buf o = buf_out(e, SH(N, C, H, W));
    e->cpu->group_norm(e->cpu, &o.c, &x.c, &g.c, &bt.c, groups, eps, silu);
    e->gpu->group_norm(e->gpu, &o.g, &x.g, &g.g, &bt.g, groups, eps, silu);
    check_out(e, name, &o, 1e-5);
    buf_free(e, &x), buf_free(e, &g), buf_free(e, &bt), buf_free(e, &o);
}

static void test_layer_norm(Env *e, const char *name, int64_t B, int64_t L, int64_t D) {
    Buf x = buf_in(e, 31, -2, 3, SH(B, L, D)); // (B, L, D)
    Buf g = buf_in(e, 32, 0.5f, 1.5f, SH(D));
    Buf bt = buf_in(e, 33, -0.5f, 0.5f, SH(D));
    Buf o = buf_out(e, SH(B, L, D));
    e->cpu->layer_norm(e->cpu, &o.c, &x.c, &g.c, &bt.c, 1e-5f);
    e->gpu->layer_norm(e->gpu, &o.g, &x.g, &g.g, &bt.g, 1e-5f);
    check_out(e, name, &o, 1e-5);
    buf_free(e, &x), buf_free(e, &g), buf_free(e, &bt), buf_free(e, &o);
}

static void test_softmax(Env *e, const char *name, int64_t R, int64_t D) {
    Buf x = buf_in(e, 41, -8, 8, SH(R, D)); // (rows, D)
    Buf o = buf_out(e, SH(R, D));
    e->cpu->softmax(e->cpu, &o.c, &x.c);
    e->gpu->softmax(e->gpu, &o.g, &x.g);
    check_out(e, name, &o, 1e-5);
    buf_free(e, &x), buf_free(e, &o);
}

typedef void (*UnaryOp)(const Backend *, Tensor *, const Tensor *);

static void test_unary(Env *e, const char *name, size_t op_offset, int in_place) {
    int64_t shape[4] = {2, 320, 64, 64};
    Buf x = buf_in(e, 51, -6, 6, 4, shape); // (2, 320, 64, 64)
    Buf o = buf_out(e, 4, shape);
    UnaryOp cpu_op = *(UnaryOp *)((char *)e->cpu + op_offset);
    UnaryOp gpu_op = *(UnaryOp *)((char *)e->gpu + op_offset);
    cpu_op(e->cpu, &o.c, &x.c);
    if (in_place) { // out == x: run on a poisoned copy of x that is then overwritten
        backend_upload_f32(e->gpu, &o.g, x.h, x.n);
        gpu_op(e->gpu, &o.g, &o.g);
    } else {
        gpu_op(e->gpu, &o.g, &x.g);
    }
    check_out(e, name, &o, 1e-5);
    buf_free(e, &x), buf_free(e, &o);
}

static void test_geglu(Env *e) {
    Buf x = buf_in(e, 61, -4, 4, SH(2, 1024, 2 * 1280)); // (B, L, 2F)
    Buf o = buf_out(e, SH(2, 1024, 1280));               // (B, L, F)
    e->cpu->geglu(e->cpu, &o.c, &x.c);
    e->gpu->geglu(e->gpu, &o.g, &x.g);
    check_out(e, "geglu (2,1024,2560)", &o, 1e-5);
    buf_free(e, &x), buf_free(e, &o);
}

static void test_add_scale_bias(Env *e) {
    Buf a = buf_in(e, 71, -1, 1, SH(2, 320, 64, 64)); // (N, C, H, W)
    Buf b = buf_in(e, 72, -1, 1, SH(2, 320, 64, 64));
    Buf cb = buf_in(e, 73, -1, 1, SH(2, 320));       // (N, C)
    Buf o = buf_out(e, SH(2, 320, 64, 64));
    e->cpu->add(e->cpu, &o.c, &a.c, &b.c);
    e->gpu->add(e->gpu, &o.g, &a.g, &b.g);
    check_out(e, "add (2,320,64,64)", &o, 1e-6);
    // in place: o = o + b (o holds a + b from above)
    e->cpu->add(e->cpu, &o.c, &o.c, &b.c);
    e->gpu->add(e->gpu, &o.g, &o.g, &b.g);
    check_out(e, "add in place", &o, 1e-6);
    Buf o2 = buf_out(e, SH(2, 320, 64, 64));
    e->cpu->scale(e->cpu, &o2.c, &a.c, 0.18215f);
    e->gpu->scale(e->gpu, &o2.g, &a.g, 0.18215f);
    check_out(e, "scale 0.18215", &o2, 1e-6);
    Buf o3 = buf_out(e, SH(2, 320, 64, 64));
    e->cpu->add_channel_bias(e->cpu, &o3.c, &a.c, &cb.c);
    e->gpu->add_channel_bias(e->gpu, &o3.g, &a.g, &cb.g);
    check_out(e, "add_channel_bias (2,320,64,64)+(2,320)", &o3, 1e-6);
    buf_free(e, &a), buf_free(e, &b), buf_free(e, &cb);
    buf_free(e, &o), buf_free(e, &o2), buf_free(e, &o3);
}

static void test_layout(Env *e) {
    Buf x = buf_in(e, 81, -1, 1, SH(2, 640, 16, 16)); // (N, C, H, W)
    Buf up = buf_out(e, SH(2, 640, 32, 32));
    e->cpu->upsample_nearest2x(e->cpu, &up.c, &x.c);
    e->gpu->upsample_nearest2x(e->gpu, &up.g, &x.g);
    check_out(e, "upsample_nearest2x (2,640,16,16)", &up, 0);
    Buf upo = buf_out(e, SH(2, 640, 31, 32)); // to an odd skip size (2H - 1)
    e->cpu->upsample_nearest2x(e->cpu, &upo.c, &x.c);
    e->gpu->upsample_nearest2x(e->gpu, &upo.g, &x.g);
    check_out(e, "upsample_nearest2x (2,640,16,16) -> (31,32)", &upo, 0);
    buf_free(e, &upo);

    Buf a = buf_in(e, 82, -1, 1, SH(2, 320, 32, 32));
    Buf b = buf_in(e, 83, -1, 1, SH(2, 640, 32, 32));
    Buf cat = buf_out(e, SH(2, 960, 32, 32));
    e->cpu->concat_channels(e->cpu, &cat.c, &a.c, &b.c);
    e->gpu->concat_channels(e->gpu, &cat.g, &a.g, &b.g);
    check_out(e, "concat_channels 320+640", &cat, 0);

    Buf img = buf_in(e, 84, -1, 1, SH(2, 320, 64, 64));
    Buf nlc = buf_out(e, SH(2, 4096, 320));
    e->cpu->nchw_to_nlc(e->cpu, &nlc.c, &img.c);
    e->gpu->nchw_to_nlc(e->gpu, &nlc.g, &img.g);
    check_out(e, "nchw_to_nlc (2,320,64,64)", &nlc, 0);
    // odd sizes: partial 32x32 tiles
    Buf seq = buf_in(e, 85, -1, 1, SH(3, 35, 77));
    Buf back = buf_out(e, SH(3, 77, 5, 7));
    e->cpu->nlc_to_nchw(e->cpu, &back.c, &seq.c);
    e->gpu->nlc_to_nchw(e->gpu, &back.g, &seq.g);
    check_out(e, "nlc_to_nchw (3,35,77)->(3,77,5,7)", &back, 0);

    buf_free(e, &x), buf_free(e, &up), buf_free(e, &a), buf_free(e, &b), buf_free(e, &cat);
    buf_free(e, &img), buf_free(e, &nlc), buf_free(e, &seq), buf_free(e, &back);
}

static void test_timestep(Env *e) {
    const float ts[4] = {999.f, 500.f, 1.f, 0.f};
    Buf o = buf_out(e, SH(4, 320));
    e->cpu->timestep_embedding(e->cpu, &o.c, ts, 1, 0.f); // SD 1.x/2.x UNet
    e->gpu->timestep_embedding(e->gpu, &o.g, ts, 1, 0.f);
    // arg = t * freq reaches ~1000 rad: exp implementations that differ by
    // 1 ulp in freq move arg by up to 6e-5, hence 1e-4
    check_out(e, "timestep_embedding flip=1 shift=0", &o, 1e-4);
    Buf o2 = buf_out(e, SH(4, 256));
    e->cpu->timestep_embedding(e->cpu, &o2.c, ts, 0, 1.f);
    e->gpu->timestep_embedding(e->gpu, &o2.g, ts, 0, 1.f);
    check_out(e, "timestep_embedding flip=0 shift=1", &o2, 1e-4);
    buf_free(e, &o), buf_free(e, &o2);
}

static void test_embedding(Env *e) {
    Buf table = buf_in(e, 91, -1, 1, SH(1000, 768)); // (V, D)
    int32_t ids[2 * 77];                              // (B, L)
    for (int i = 0; i < 2 * 77; i++) ids[i] = (i * 7919 + 13) % 1000;
    int64_t ish[2] = {2, 77};
    Tensor ids_c = tensor_make(DT_I32, DEV_CPU, ids, 2, ish);
    Tensor ids_g = tensor_make(DT_I32, DEV_CUDA, gpu_alloc(e, sizeof ids), 2, ish);
    e->gpu->upload(e->gpu, ids_g.data, ids, sizeof ids);
    Buf o = buf_out(e, SH(2, 77, 768));
    e->cpu->embedding(e->cpu, &o.c, &ids_c, &table.c);
    e->gpu->embedding(e->gpu, &o.g, &ids_g, &table.g);
    check_out(e, "embedding (2,77) from (1000,768)", &o, 0);
    e->gpu->free(e->gpu, ids_g.data);
    buf_free(e, &table), buf_free(e, &o);
}

// copy: dtype conversions on the device against the host's convert_from_f32.
static void test_copy(Env *e) {
    const DType dts[3] = {DT_F32, DT_F16, DT_BF16};
    Buf x = buf_in(e, 101, -3, 3, SH(3, 1000)); // (3, 1000) in e->dt
    for (int k = 0; k < 3; k++) {
        Tensor o = tensor_make(dts[k], DEV_CUDA, NULL, x.g.ndim, x.g.shape);
        o.data = gpu_alloc(e, tensor_bytes(&o));
        e->gpu->copy(e->gpu, &o, &x.g);
        float *got = xmalloc(x.n * sizeof(float)), *ref = xmalloc(x.n * sizeof(float));
        backend_download_f32(e->gpu, got, &o, x.n);
        memcpy(ref, x.h, x.n * sizeof(float));
        round_to(ref, x.n, dts[k]);
        char label[96];
        snprintf(label, sizeof label, "copy %s -> %s", dtype_name(e->dt), dtype_name(dts[k]));
        check_rel(e->t, label, got, ref, x.n, 0);
        free(got), free(ref);
        e->gpu->free(e->gpu, o.data);
    }
    buf_free(e, &x);
}

// Conv2d: x (N, C, H, W) * w (OC, C, K, K) + b. The shapes cover the UNet's
// 3x3 / stride-2 / 1x1 convs, odd sizes, and both workspace regimes: whole
// samples per GEMM, and a 512x512 VAE conv that is cut into pixel ranges.
static void test_conv(Env *e, const char *name, int64_t N, int64_t C, int64_t H, int64_t W,
                      int64_t OC, int64_t K, int stride, int pad, int bias) {
    int64_t OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
    Buf x = buf_in(e, 111, -1, 1, SH(N, C, H, W));     // (N, C, H, W)
    Buf w = buf_in(e, 112, -1, 1, SH(OC, C, K, K));    // (OC, C, K, K)
    Buf b = buf_in(e, 113, -1, 1, SH(OC));             // (OC)
    Buf o = buf_out(e, SH(N, OC, OH, OW));             // (N, OC, OH, OW)
    e->cpu->conv2d(e->cpu, &o.c, &x.c, &w.c, bias ? &b.c : NULL, stride, pad);
    e->gpu->conv2d(e->gpu, &o.g, &x.g, &w.g, bias ? &b.g : NULL, stride, pad);
    check_out(e, name, &o, e->tf32 ? 2e-3 : 1e-5);
    buf_free(e, &x), buf_free(e, &w), buf_free(e, &b), buf_free(e, &o);
}

// Attention: q (B, Lq, H*D), k, v (B, Lk, H*D). q in [-4, 4] and k in
// [-2, 2] give scores of std ~2.7 after the 1/sqrt(D) scale: peaked rows,
// so a wrong max or rescale shows.
static void test_attention(Env *e, const char *name, int64_t B, int64_t Lq, int64_t Lk, int heads,
                           int64_t D, int causal) {
    Buf q = buf_in(e, 121, -4, 4, SH(B, Lq, heads * D)); // (B, Lq, H*D)
    Buf k = buf_in(e, 122, -2, 2, SH(B, Lk, heads * D)); // (B, Lk, H*D)
    Buf v = buf_in(e, 123, -1, 1, SH(B, Lk, heads * D)); // (B, Lk, H*D)
    Buf o = buf_out(e, SH(B, Lq, heads * D));
    e->cpu->attention(e->cpu, &o.c, &q.c, &k.c, &v.c, heads, causal);
    e->gpu->attention(e->gpu, &o.g, &q.g, &k.g, &v.g, heads, causal);
    double tol = e->dt == DT_BF16 ? 3e-2 : e->dt == DT_F16 ? 4e-3 : 1e-5;
    check_out(e, name, &o, tol);
    buf_free(e, &q), buf_free(e, &k), buf_free(e, &v), buf_free(e, &o);
}

static void run_all(Env *e) {
    printf("-- CUDA backend, activations %s%s\n", dtype_name(e->dt),
           e->tf32 && e->dt == DT_F32 ? " (TF32 GEMM: SDC_TF32=1)" : "");
    test_linear(e, "linear (1,4096,320)x(320,320)+b", 1, 4096, 320, 320, 1);
    test_linear(e, "linear (1,77,768)x(3072,768)+b", 1, 77, 768, 3072, 1);
    test_linear(e, "linear (2,77,768)x(320,768) no bias", 2, 77, 768, 320, 0);
    test_group_norm(e, "group_norm (2,320,64,64) g32", 2, 320, 64, 64, 32, 1e-5f, 0);
    test_group_norm(e, "group_norm+silu (2,640,32,32) g32", 2, 640, 32, 32, 32, 1e-6f, 1);
    test_group_norm(e, "group_norm+silu (1,96,7,9) g32", 1, 96, 7, 9, 32, 1e-5f, 1);
    test_layer_norm(e, "layer_norm (2,4096,320)", 2, 4096, 320);
    test_layer_norm(e, "layer_norm (1,77,768)", 1, 77, 768);
    test_softmax(e, "softmax (4096,77)", 4096, 77);
    test_softmax(e, "softmax (64,4096)", 64, 4096);
    test_unary(e, "silu (2,320,64,64)", offsetof(Backend, silu), 0);
    test_unary(e, "silu in place", offsetof(Backend, silu), 1);
    test_unary(e, "gelu (2,320,64,64)", offsetof(Backend, gelu), 0);
    test_unary(e, "quick_gelu (2,320,64,64)", offsetof(Backend, quick_gelu), 0);
    test_geglu(e);
    test_add_scale_bias(e);
    test_layout(e);
    test_timestep(e);
    test_embedding(e);
    test_copy(e);
    test_conv(e, "conv2d 3x3 (2,320,64,64)->320 +b", 2, 320, 64, 64, 320, 3, 1, 1, 1);
    test_conv(e, "conv2d 3x3 conv_in (1,4,64,64)->320 +b", 1, 4, 64, 64, 320, 3, 1, 1, 1);
    test_conv(e, "conv2d 3x3 s2 (2,640,16,16)->640 +b", 2, 640, 16, 16, 640, 3, 2, 1, 1);
    test_conv(e, "conv2d 1x1 (2,960,32,32)->640 +b", 2, 960, 32, 32, 640, 1, 1, 0, 1);
    test_conv(e, "conv2d 3x3 odd (1,3,37,29)->5 no bias", 1, 3, 37, 29, 5, 3, 1, 1, 0);
    test_conv(e, "conv2d 3x3 batch chunks (4,256,128,128)->64", 4, 256, 128, 128, 64, 3, 1, 1, 1);
    test_conv(e, "conv2d 3x3 pixel chunks (1,128,512,512)->128", 1, 128, 512, 512, 128, 3, 1, 1, 1);
    test_attention(e, "attention self D=40 (2,1024,320) h8", 2, 1024, 1024, 8, 40, 0);
    test_attention(e, "attention cross D=80 (2,256,640) Lk77 h8", 2, 256, 77, 8, 80, 0);
    test_attention(e, "attention self D=160 (1,256,1280) h8", 1, 256, 256, 8, 160, 0);
    test_attention(e, "attention self D=64 (2,1024,320) h5", 2, 1024, 1024, 5, 64, 0);
    test_attention(e, "attention causal D=64 (2,77,768) h12", 2, 77, 77, 12, 64, 1);
    test_attention(e, "attention D=100 (1,100,300) Lk65 h3", 1, 100, 65, 3, 100, 0);
    test_attention(e, "attention tiny D=4 (3,37,8) Lk19 h2", 3, 37, 19, 2, 4, 0);
    test_attention(e, "attention tiny causal D=2 (2,33,4) h2", 2, 33, 33, 2, 2, 1);
    test_attention(e, "attention VAE D=512 (1,1024,512) h1", 1, 1024, 1024, 1, 512, 0);
}

// ---- main -------------------------------------------------------------------------

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Backend *gpu = NULL;
    const int gpu_rc = test_cuda_backend(&gpu, DT_F32);
    if (gpu_rc >= 0) return gpu_rc;
    Backend *cpu = NULL;
    if (backend_cpu_create(&cpu, 0, &err) != SDC_OK) {
        printf("FAILED: CPU backend: %s\n", err.msg);
        return 1;
    }
    const char *tf = getenv("SDC_TF32");
    Env e = {.t = &t, .cpu = cpu, .gpu = gpu, .dt = DT_F32, .dt_tol = 0, .tf32 = tf && tf[0] == '1'};

    // the error path: a device that does not exist is a clear SDC_ERR_DEVICE
    Backend *bad = NULL;
    SdcError e2 = {0};
    int rc = backend_cuda_create(&bad, 999, DT_F32, &e2);
    check_true(&t, rc == SDC_ERR_DEVICE && bad == NULL && strstr(e2.msg, "--->") != NULL,
               "device 999 -> SDC_ERR_DEVICE with a hint: \"%s\"", e2.msg);

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
        e.dt = low[k];
        e.dt_tol = low_tol[k];
        run_all(&e);
        backend_destroy(g);
    }
    printf("(%.1f s)\n", now_s() - t0);
    backend_destroy(cpu);
    return test_summary(&t);
}
