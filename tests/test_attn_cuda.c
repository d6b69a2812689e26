// test_attn_cuda.c: the FlashAttention-2-style attention kernel
// (cuda_attention_fa2, kernels/cuda/attention_fa2_cuda.cu) against the CPU
// backend's attention (the fp32 reference), F16 and BF16, on random inputs.
//
// The kernel is called directly (not through SDC_CUDA_ATTN), over every
// padded head-dim class (16, 32, 48, 64, 80, 96, 128, 160; D = 2, 3, 8, 16,
// 20, 32, 40, 64, 80, 96, 100, 112, 128, 144, 160), query/key counts that are
// and are not multiples of the 64-query / 64- or 32-key tiles (1, 33, 65, 77,
// 257, 1024, 4096), cross attention (Lk = 77), causal (77, 33, 130, 257),
// batch 1..4, heads 1..12, the scalar path (D % 8 != 0, pointers one element
// off 16-byte alignment) and SD 1.5's largest self attention (2, 4096, 8x40).
// Last, SDC_CUDA_ATTN=fa2 (set before the first cuda_attention call) must
// make cuda_attention give the same bits as the direct call.
//
// Per case and dtype: "name rel_err tol OK" (max |gpu - cpu| / max |cpu|),
// every output element written (the output is poisoned with NaN bytes
// first), and 16 poisoned bytes on each side of the output untouched.
// Inputs are rounded to the dtype on the host, so both sides see the same
// values. q in [-4, 4], k in [-2, 2]: scores of std ~2.7 after the 1/sqrt(D)
// scale, peaked rows, so a wrong max or rescale shows.
//
// Tolerances (as test_ops_cuda's attention): P is rounded to the storage
// dtype before P.V (as flash attention does; l sums the rounded P) and the
// output is rounded once: errors of a few units of 2^-11 (F16) / 2^-8 (BF16)
// relative to max |v|, while averaging over keys makes max |out| smaller
// than max |v|: 8 units, 4e-3 / 3e-2. (A host emulation of the kernel's
// fragment code gave 3e-4 / 2.5e-3.)
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

#ifdef SDC_HAVE_CUDA

#define GUARD 8 // poisoned elements (16 bytes) on each side of the output

typedef struct Env {
    TestCtx *t;
    Backend *cpu;
    CudaCtx *ctx;
} Env;

typedef struct Case {
    const char *name;
    int B, Lq, Lk, H, D, causal;
    int offset; // elements: 1 moves q, k, v, out off 16-byte alignment
} Case;

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test_attn_cuda: out of host memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

static void *gpu_alloc(Env *e, size_t bytes) {
    void *p = cuda_malloc(e->ctx, bytes);
    if (!p) {
        fprintf(stderr, "test_attn_cuda: out of GPU memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

// n random values in [lo, hi), rounded to dt: h (f32, what the CPU sees) and
// bits (n 16-bit values of dt, what the GPU sees).
static void make_input(float *h, uint16_t *bits, size_t n, uint64_t seed, float lo, float hi,
                       DType dt) {
    fill_uniform(h, n, seed, lo, hi);
    convert_from_f32(bits, dt, h, n);
    convert_to_f32(h, bits, dt, n);
}

// Runs one case in dtype dt: fa2 on the GPU vs the CPU backend. With
// dispatch != 0 it also runs cuda_attention (SDC_CUDA_ATTN=fa2) and checks
// that it gives the same bits.
static void run_case(Env *e, const Case *c, DType dt, int dispatch) {
    const int64_t HD = (int64_t)c->H * c->D;
    const size_t nq = (size_t)c->B * c->Lq * HD, nk = (size_t)c->B * c->Lk * HD;
    float *q = xmalloc(nq * 4), *k = xmalloc(nk * 4), *v = xmalloc(nk * 4); // host f32
    float *ref = xmalloc(nq * 4), *got = xmalloc(nq * 4);
    uint16_t *bits = xmalloc((nq > nk ? nq : nk) * 2);
    uint16_t *obits = xmalloc((nq + 2 * GUARD + 1) * 2);

    // device buffers, each with GUARD + offset elements in front
    const size_t pre = GUARD + (size_t)c->offset;
    uint16_t *dq = gpu_alloc(e, (nq + pre) * 2), *dk = gpu_alloc(e, (nk + pre) * 2);
    uint16_t *dv = gpu_alloc(e, (nk + pre) * 2), *dout = gpu_alloc(e, (nq + pre + GUARD) * 2);
    make_input(q, bits, nq, 121, -4, 4, dt); // (B, Lq, H*D)
    cuda_upload(e->ctx, dq + pre, bits, nq * 2);
    make_input(k, bits, nk, 122, -2, 2, dt); // (B, Lk, H*D)
    cuda_upload(e->ctx, dk + pre, bits, nk * 2);
    make_input(v, bits, nk, 123, -1, 1, dt); // (B, Lk, H*D)
    cuda_upload(e->ctx, dv + pre, bits, nk * 2);
    cuda_memset_async(e->ctx, dout, 0xFF, (nq + pre + GUARD) * 2); // NaN in f16 and bf16

    int64_t qs[3] = {c->B, c->Lq, HD}, ks[3] = {c->B, c->Lk, HD};
    Tensor tq = tensor_make(DT_F32, DEV_CPU, q, 3, qs), to = tensor_make(DT_F32, DEV_CPU, ref, 3, qs);
    Tensor tk = tensor_make(DT_F32, DEV_CPU, k, 3, ks), tv = tensor_make(DT_F32, DEV_CPU, v, 3, ks);
    e->cpu->attention(e->cpu, &to, &tq, &tk, &tv, c->H, c->causal);

    cuda_attention_fa2(e->ctx, (int)dt, dout + pre, dq + pre, dk + pre, dv + pre, c->B, c->Lq,
                       c->Lk, c->H, c->D, c->causal);
    cuda_ctx_sync(e->ctx);
    cuda_download(e->ctx, obits, dout + pre - GUARD, (nq + 2 * GUARD) * 2);
    convert_to_f32(got, obits + GUARD, dt, nq);

    char label[128];
    snprintf(label, sizeof label, "%s [%s]", c->name, dtype_name(dt));
    check_rel(e->t, label, got, ref, nq, dt == DT_BF16 ? 3e-2 : 4e-3);
    size_t nan = 0, guard_hit = 0;
    for (size_t i = 0; i < nq; i++) nan += isnan(got[i]) != 0;
    for (size_t i = 0; i < GUARD; i++)
        guard_hit += (obits[i] != 0xFFFF) + (obits[GUARD + nq + i] != 0xFFFF);
    check_true(e->t, nan == 0 && guard_hit == 0,
               "%-48s every output written (%zu NaN of %zu), none outside (%zu)", label, nan, nq,
               guard_hit);

    if (dispatch) { // cuda_attention with SDC_CUDA_ATTN=fa2 is this kernel, bit for bit
        uint16_t *again = xmalloc(nq * 2);
        cuda_memset_async(e->ctx, dout + pre, 0xFF, nq * 2);
        cuda_attention(e->ctx, (int)dt, dout + pre, dq + pre, dk + pre, dv + pre, c->B, c->Lq,
                       c->Lk, c->H, c->D, c->causal);
        cuda_ctx_sync(e->ctx);
        cuda_download(e->ctx, again, dout + pre, nq * 2);
        check_true(e->t, memcmp(again, obits + GUARD, nq * 2) == 0,
                   "%-48s SDC_CUDA_ATTN=fa2: cuda_attention == cuda_attention_fa2", label);
        free(again);
    }

    cuda_free(e->ctx, dq), cuda_free(e->ctx, dk), cuda_free(e->ctx, dv), cuda_free(e->ctx, dout);
    free(q), free(k), free(v), free(ref), free(got), free(bits), free(obits);
}

static const Case CASES[] = {
    // SD 1.5 at 512x512 (64x64 latent), batch 2 with guidance
    {"self D=40 (2,4096,8x40)", 2, 4096, 4096, 8, 40, 0, 0},
    {"cross D=40 (2,4096,8x40) Lk77", 2, 4096, 77, 8, 40, 0, 0},
    {"self D=80 (2,1024,8x80)", 2, 1024, 1024, 8, 80, 0, 0},
    {"cross D=80 (3,1024,8x80) Lk77", 3, 1024, 77, 8, 80, 0, 0},
    {"self D=160 (1,256,8x160)", 1, 256, 256, 8, 160, 0, 0},
    {"cross D=160 (4,256,8x160) Lk77", 4, 256, 77, 8, 160, 0, 0},
    // SD 2.x and CLIP
    {"self D=64 (2,1024,5x64)", 2, 1024, 1024, 5, 64, 0, 0},
    {"causal D=64 (2,77,12x64) CLIP", 2, 77, 77, 12, 64, 1, 0},
    // tails, causal diagonals, the other padded classes
    {"causal D=64 (1,257,4x64)", 1, 257, 257, 4, 64, 1, 0},
    {"causal D=160 (1,130,2x160)", 1, 130, 130, 2, 160, 1, 0},
    {"causal D=8 (3,33,2x8)", 3, 33, 33, 2, 8, 1, 0},
    {"D=16 (2,65,3x16) Lk257", 2, 65, 257, 3, 16, 0, 0},
    {"D=32 (4,1,8x32) Lk65", 4, 1, 65, 8, 32, 0, 0},
    {"D=96 (1,257,2x96) Lk1", 1, 257, 1, 2, 96, 0, 0},
    {"D=128 (2,65,1x128) Lk65", 2, 65, 65, 1, 128, 0, 0},
    {"D=112->128 (1,100,2x112) Lk100", 1, 100, 100, 2, 112, 0, 0},
    {"D=144->160 (1,70,1x144) Lk90", 1, 70, 90, 1, 144, 0, 0},
    {"D=8 (1,1,1x8) Lk1", 1, 1, 1, 1, 8, 0, 0},
    // scalar path: D % 8 != 0, or pointers off 16-byte alignment
    {"scalar D=3 (3,37,2x3) Lk19", 3, 37, 19, 2, 3, 0, 0},
    {"scalar causal D=2 (2,33,2x2)", 2, 33, 33, 2, 2, 1, 0},
    {"scalar D=20 (2,50,4x20) Lk77", 2, 50, 77, 4, 20, 0, 0},
    {"scalar D=100 (1,100,3x100) Lk65", 1, 100, 65, 3, 100, 0, 0},
    {"scalar misaligned D=64 (2,77,2x64)", 2, 77, 77, 2, 64, 0, 1},
    {"scalar misaligned D=40 (1,65,8x40) Lk77", 1, 65, 77, 8, 40, 0, 1},
};

static void run_all(Env *e) {
    const DType dts[2] = {DT_F16, DT_BF16};
    const int n = (int)(sizeof CASES / sizeof CASES[0]);
    for (int d = 0; d < 2; d++) {
        printf("-- cuda_attention_fa2, %s\n", dtype_name(dts[d]));
        for (int i = 0; i < n; i++) run_case(e, &CASES[i], dts[d], 0);
    }
    static const Case via_env[2] = {
        {"dispatch causal D=64 (2,77,12x64)", 2, 77, 77, 12, 64, 1, 0},
        {"dispatch scalar D=3 (3,37,2x3) Lk19", 3, 37, 19, 2, 3, 0, 0},
    };
    printf("-- cuda_attention with SDC_CUDA_ATTN=fa2\n");
    run_case(e, &via_env[0], DT_BF16, 1);
    run_case(e, &via_env[1], DT_F16, 1);
}

#endif // SDC_HAVE_CUDA

int main(void) {
    TestCtx t = {0};
    // before any cuda_attention call: the kernel choice is read once
    setenv("SDC_CUDA_ATTN", "fa2", 1);
    Backend *gpu = NULL;
    const int gpu_rc = test_cuda_backend(&gpu, DT_BF16);
    if (gpu_rc >= 0) return gpu_rc;
#ifdef SDC_HAVE_CUDA
    SdcError err = {0};
    Backend *cpu = NULL;
    if (backend_cpu_create(&cpu, 0, &err) != SDC_OK) {
        printf("FAILED: CPU backend: %s\n", err.msg);
        return 1;
    }
    char dev[320];
    cuda_ctx_describe((const CudaCtx *)gpu->impl, dev, sizeof dev);
    printf("device: %s\n", dev);
    Env e = {.t = &t, .cpu = cpu, .ctx = (CudaCtx *)gpu->impl}; // be->impl is the CudaCtx
    double t0 = now_s();
    run_all(&e);
    printf("(%.1f s)\n", now_s() - t0);
    backend_destroy(cpu);
#endif
    backend_destroy(gpu);
    return test_summary(&t);
}
