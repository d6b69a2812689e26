// bf16_cpu.c: conv2d, linear and attention in bf16 through oneDNN's C API
// (bf16_cpu.h), forward and backward. Built only with oneDNN (CMake's SDC_DNNL).
//
// Every primitive is made for one shape on its first call (oneDNN chooses the
// implementation then: AMX or AVX512-BF16 where the CPU has them) and kept in
// a small table with its memory objects, whose data handles are set before
// each execution. Linear and attention use the plain layouts sdc's tensors
// have (row-major; attention's Q, K, V copied head-major in bf16); conv2d
// from 256 output pixels takes oneDNN's blocked kernels (NHWC activations,
// weights in the primitive's own layout, reordered around the call; kept
// while a sampling run holds the parameters), below that the plain NCHW /
// OIHW ones. Inputs are rounded to bf16 into staging buffers
// (vcvtneps2bf16 where the CPU has AVX512-BF16), outputs written in fp32.
//
// Where oneDNN has no implementation (oneDNN 2.x implements bf16 only on CPUs
// with AVX-512, reference code included: on an AVX2 CPU every bf16 primitive
// is "unimplemented"), the op is emulated with the same numbers: the bf16
// operands widened to fp32 (exact) and multiplied by the fp32 kernels
// (OpenBLAS sgemm, cpu_conv2d), which accumulate in fp32 as oneDNN does. The
// results then differ from oneDNN's only in the order of the additions (and,
// in attention's backward, the rounding of P and dS); the speed is fp32's (a
// little less: the widening), the memory bf16's. The backward's emulation is
// the caller's (backend_cpu_bwd.c: the fp32 kernels on rounded operands).
//
// Not here: the backward of conv2d in the blocked layouts, and activations
// kept NHWC between convolutions (each blocked one reorders in and out).
#include "cpu/bf16_cpu.h"
#include "cpu/ops_cpu.h"
#include "cpu/fastmath.h"

#include <cblas.h>

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SDC_X86_AVX512BF16 1
#endif

enum {
    OP_CONV, OP_LINEAR, OP_ATT_QK, OP_ATT_PV,                         // forward
    OP_CONV_BWD_DATA, OP_CONV_BWD_WEIGHTS, OP_LINEAR_BWD, OP_ATT_BWD, // backward (training)
    OP_REORDER,                                                       // layout changes around blocked kernels
    OP_KINDS
};
static const char *const OP_NAME[OP_KINDS] = {"conv2d", "linear", "attention Q.K^T", "attention P.V",
                                              "conv2d backward data", "conv2d backward weights",
                                              "linear backward", "attention backward", "reorder"};

#define KEY_LEN 12

// One primitive for one op shape; m: its memories, passed as arg[j] (the
// forward's src, weights, bias, dst; a backward's diff_dst, weights,
// diff_src or src, diff_dst, diff_weights). p NULL: oneDNN has no
// implementation for it here, the op is emulated.
typedef struct Prim {
    int kind;
    int64_t key[KEY_LEN];
    dnnl_primitive_t p;
    dnnl_memory_t m[4];
    int arg[4];
    int ref;             // oneDNN's reference implementation (correct, but slow)
    struct Prim *aux[3]; // a blocked conv2d's reorders (src, weights, dst), owned
    size_t aux_bytes[2]; // their staging sizes: weights, dst
    int plain;           // a blocked conv2d that is not usable (ref, or not all made): the plain path
} Prim;

#define EMULATED "sdc fp32 emulation (oneDNN: unimplemented on this CPU)"

// A conv2d's weights in its primitive's blocked layout, made on first use
// while parameters are held (cpu_bf16_hold): the bf16 parameter at w, for
// the primitive pr (its layout).
typedef struct WCache {
    const void *w;
    const void *pr;
    void *data;
} WCache;

// attention's softmax row kernel (softmax_row_pick)
typedef float (*SoftmaxRow)(const float *r, uint16_t *p, int n, int Lk, float scale);
static SoftmaxRow softmax_row_pick(void);

struct CpuBf16 {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    Prim **prims; // each allocated once: a Prim * stays valid while more are made
    int n_prims, cap_prims;
    char impl[OP_KINDS][160]; // the implementations seen per op kind, "; " separated
    uint16_t *stage;          // bf16 inputs (grows, 64-byte aligned)
    size_t stage_cap;         // elements
    uint16_t *wstage;         // fp32 weights rounded for one op (cpu_bf16_weights)
    size_t wstage_cap;
    float *scores;            // attention: (bq, Lk) f32 scores of one query block
    size_t scores_cap;
    float *wide[3];           // emulation: the operands widened to fp32 (grow)
    size_t wide_cap[3];
    float *scratch;           // emulation: cpu_conv2d's / cpu_attention_bf16p's scratch
    size_t scratch_cap;
    uint16_t *bstage[4];      // backward: bf16 copies of its operands (grow)
    size_t bstage_cap[4];
    void *wblk;               // a blocked conv2d's weights, in the primitive's layout (bytes)
    size_t wblk_cap;
    void *ystage;             // a blocked conv2d's NHWC f32 output (bytes)
    size_t ystage_cap;
    float *bscratch;          // backward: f32 scratch (conv's weight gradient, attention's blocks)
    size_t bscratch_cap;
    struct WCache *wc;        // blocked conv2d weights kept while parameters are held (cpu_bf16_hold)
    int n_wc, cap_wc;
    int holds;                // open holds: parameters neither written nor freed
    size_t wc_bytes;
    SoftmaxRow softmax_row;   // attention's row kernel for this CPU
    int native;               // oneDNN computes bf16 matmuls here (else every op is emulated)
    char msg[256];
    int oom;
};

const char *cpu_bf16_error(const CpuBf16 *c) { return c->msg; }
int cpu_bf16_error_is_oom(const CpuBf16 *c) { return c->oom; }

static int fail(CpuBf16 *c, const char *what, dnnl_status_t st) {
    snprintf(c->msg, sizeof c->msg, "oneDNN: %s failed (%s)", what, dnnl_status2str(st));
    c->oom = 0;
    return -1;
}
#define DNNL_TRY(c, call)                                     \
    do {                                                      \
        dnnl_status_t st_ = (call);                           \
        if (st_ != dnnl_success) return fail((c), #call, st_); \
    } while (0)

// ---- rounding to bf16 ------------------------------------------------------------

static inline uint16_t round_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16; // nearest, ties to even
    if ((u & 0x7fffffffu) > 0x7f800000u) r = (u >> 16) | 0x40u; // NaN stays a (quiet) NaN
    return (uint16_t)r;
}

// round_bf16 of a value known finite (no NaN test: vectorises)
static inline uint16_t round_bf16_finite(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Below this many elements a loop runs on the calling thread: waking the
// team costs more than the loop (and on a loaded machine much more).
#define PAR_MIN ((int64_t)1 << 16)

// SDC_BF16_GENERIC=1: the generic kernels and the plain conv2d layouts on any
// CPU (tests/CMakeLists.txt's test_cpu_bf16_generic checks them where the
// fast ones would run).
static int bf16_generic_forced(void) {
    const char *e = getenv("SDC_BF16_GENERIC");
    return e && !strcmp(e, "1");
}

// n values rounded to bf16: round_bf16 in AVX2 lanes, or vcvtneps2bf16 on a
// CPU with AVX512-BF16 (the same nearest-even rounding and quiet NaNs, but
// subnormal inputs become +-0: the instruction ignores MXCSR and flushes).
typedef void (*RowToBf16)(uint16_t *dst, const float *x, int64_t n);

static void row_to_bf16_generic(uint16_t *dst, const float *x, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) dst[i] = round_bf16(x[i]);
}

#ifdef SDC_X86_AVX512BF16
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void
row_to_bf16_avx512bf16(uint16_t *dst, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm256_mask_storeu_epi16(dst + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i)));
    }
}
#endif

// The AVX512-BF16 kernels (this file's target-attributed ones) may run: the
// CPU has the instructions and SDC_BF16_GENERIC=1 does not forbid them.
static int use_avx512bf16(void) {
#ifdef SDC_X86_AVX512BF16
    return !bf16_generic_forced() && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

static RowToBf16 row_to_bf16_pick(void) {
#ifdef SDC_X86_AVX512BF16
    if (use_avx512bf16()) return row_to_bf16_avx512bf16;
#endif
    return row_to_bf16_generic;
}

static RowToBf16 row_to_bf16 = row_to_bf16_generic; // set by cpu_bf16_create

void cpu_f32_to_bf16(uint16_t *dst, const float *x, int64_t n) {
    const int64_t chunk = 4096; // a 16 KiB run of x per iteration
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (int64_t i = 0; i < n; i += chunk) row_to_bf16(dst + i, x + i, n - i < chunk ? n - i : chunk);
}

// A staging buffer of at least n elements of `size` bytes; NULL (and the
// error set) when there is no memory for it.
static void *grow(CpuBf16 *c, void **buf, size_t *cap, size_t n, size_t size) {
    if (n <= *cap) return *buf;
    free(*buf);
    *buf = aligned_alloc(64, (n * size + 63) / 64 * 64);
    *cap = *buf ? n : 0;
    if (!*buf) {
        snprintf(c->msg, sizeof c->msg, "bf16: cannot allocate %.1f MiB of staging memory (out of memory)",
                 (double)n * size / (1 << 20));
        c->oom = 1;
    }
    return *buf;
}
static uint16_t *stage(CpuBf16 *c, size_t n) {
    return grow(c, (void **)&c->stage, &c->stage_cap, n, sizeof(uint16_t));
}

const uint16_t *cpu_bf16_weights(CpuBf16 *c, const float *w, int64_t n) {
    uint16_t *d = grow(c, (void **)&c->wstage, &c->wstage_cap, (size_t)n, sizeof(uint16_t));
    if (d) cpu_f32_to_bf16(d, w, n);
    return d;
}

// ---- context -------------------------------------------------------------------

int cpu_bf16_create(CpuBf16 **out, char *msg, size_t n) {
    *out = NULL;
    CpuBf16 *c = calloc(1, sizeof *c);
    if (!c) return snprintf(msg, n, "bf16: out of memory"), -1;
    dnnl_status_t st = dnnl_engine_create(&c->eng, dnnl_cpu, 0);
    if (st == dnnl_success) st = dnnl_stream_create(&c->stream, c->eng, dnnl_stream_default_flags);
    if (st != dnnl_success) {
        snprintf(msg, n, "oneDNN: cannot create its CPU engine (%s)", dnnl_status2str(st));
        cpu_bf16_destroy(c);
        return -1;
    }
    { // does oneDNN compute bf16 here? (a 16 x 16 matmul's primitive descriptor)
        dnnl_memory_desc_t a, b, d;
        dnnl_matmul_desc_t md;
        dnnl_primitive_desc_t pd = NULL;
        const dnnl_dims_t dims = {16, 16};
        st = dnnl_memory_desc_init_by_tag(&a, 2, dims, dnnl_bf16, dnnl_ab);
        if (st == dnnl_success) st = dnnl_memory_desc_init_by_tag(&b, 2, dims, dnnl_bf16, dnnl_ab);
        if (st == dnnl_success) st = dnnl_memory_desc_init_by_tag(&d, 2, dims, dnnl_f32, dnnl_ab);
        if (st == dnnl_success) st = dnnl_matmul_desc_init(&md, &a, &b, NULL, &d);
        if (st == dnnl_success) st = dnnl_primitive_desc_create(&pd, &md, NULL, c->eng, NULL);
        c->native = st == dnnl_success;
        c->softmax_row = softmax_row_pick();
        row_to_bf16 = row_to_bf16_pick(); // (the same for every context: the CPU's)
        if (pd) dnnl_primitive_desc_destroy(pd);
    }
    *out = c;
    return 0;
}

static void prim_free(Prim *pr) {
    if (!pr) return;
    if (pr->p) dnnl_primitive_destroy(pr->p);
    for (int j = 0; j < 4; j++)
        if (pr->m[j]) dnnl_memory_destroy(pr->m[j]);
    for (int j = 0; j < 3; j++) prim_free(pr->aux[j]);
    free(pr);
}

void cpu_bf16_destroy(CpuBf16 *c) {
    if (!c) return;
    for (int i = 0; i < c->n_prims; i++) prim_free(c->prims[i]);
    free(c->prims);
    if (c->stream) dnnl_stream_destroy(c->stream);
    if (c->eng) dnnl_engine_destroy(c->eng);
    free(c->stage);
    free(c->wstage);
    free(c->scores);
    cpu_bf16_params_changed(c);
    free(c->wc);
    free(c->wblk);
    free(c->ystage);
    free(c->wide[0]), free(c->wide[1]), free(c->wide[2]), free(c->scratch);
    for (int i = 0; i < 4; i++) free(c->bstage[i]);
    free(c->bscratch);
    free(c);
}

void cpu_bf16_impl_info(const CpuBf16 *c, char *buf, size_t n) {
    const dnnl_version_t *v = dnnl_version();
    size_t off = (size_t)snprintf(buf, n, "oneDNN %d.%d.%d:", v->major, v->minor, v->patch);
    int any = 0;
    for (int k = 0; k < OP_KINDS && off < n; k++)
        if (c->impl[k][0]) off += (size_t)snprintf(buf + off, n - off, "%s %s %s", any++ ? ";" : "", OP_NAME[k], c->impl[k]);
    if (!any && off < n) snprintf(buf + off, n - off, " no bf16 op ran yet");
}

// ---- primitives ------------------------------------------------------------------

static Prim *prim_find(CpuBf16 *c, int kind, const int64_t *key) {
    for (int i = 0; i < c->n_prims; i++)
        if (c->prims[i]->kind == kind && !memcmp(c->prims[i]->key, key, sizeof c->prims[i]->key)) return c->prims[i];
    return NULL;
}

// Adds an implementation's name (NULL: none) to those named for op kind,
// once (cpu_bf16_impl_info).
static void note_impl(CpuBf16 *c, int kind, const char *impl) {
    if (!impl || strstr(c->impl[kind], impl)) return;
    const size_t l = strlen(c->impl[kind]);
    snprintf(c->impl[kind] + l, sizeof c->impl[kind] - l, "%s%s", l ? ", " : "", impl);
}

static const int FWD_ARGS[4] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_BIAS, DNNL_ARG_DST};

// Makes the primitive of op descriptor d (attr and hint may be NULL) with
// memories for the given descriptors (NULL: none), passed as args[0..3], and
// files it under (kind, key).
static Prim *prim_make_ex(CpuBf16 *c, int kind, const int64_t *key, const_dnnl_op_desc_t d,
                          const_dnnl_primitive_attr_t attr, const_dnnl_primitive_desc_t hint, const int args[4],
                          const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *wei,
                          const dnnl_memory_desc_t *bias, const dnnl_memory_desc_t *dst) {
    Prim *pr = calloc(1, sizeof *pr);
    if (pr && c->n_prims == c->cap_prims) {
        int cap = c->cap_prims ? 2 * c->cap_prims : 32;
        Prim **p = realloc(c->prims, (size_t)cap * sizeof *p);
        if (p) c->prims = p, c->cap_prims = cap;
    }
    if (!pr || c->n_prims == c->cap_prims) {
        free(pr);
        snprintf(c->msg, sizeof c->msg, "bf16: out of memory for the primitive table");
        c->oom = 1;
        return NULL;
    }
    pr->kind = kind;
    memcpy(pr->key, key, sizeof pr->key);
    memcpy(pr->arg, args, sizeof pr->arg);
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t st = dnnl_primitive_desc_create(&pd, d, attr, c->eng, hint);
    if (st == dnnl_unimplemented) { // emulated (see the top of the file)
        note_impl(c, kind, EMULATED);
        c->prims[c->n_prims++] = pr;
        return pr;
    }
    if (st != dnnl_success) {
        snprintf(c->msg, sizeof c->msg, "oneDNN: no %s implementation for this shape (%s)", OP_NAME[kind],
                 dnnl_status2str(st));
        c->oom = 0;
        free(pr);
        return NULL;
    }
    const char *impl = NULL;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    pr->ref = impl && !strncmp(impl, "ref", 3);
    note_impl(c, kind, impl);
    st = dnnl_primitive_create(&pr->p, pd);
    const dnnl_memory_desc_t *mds[4] = {src, wei, bias, dst};
    for (int j = 0; st == dnnl_success && j < 4; j++) {
        if (!mds[j]) continue;
        // the primitive's own layout for the argument (what format_tag_any became)
        const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md, args[j]);
        st = dnnl_memory_create(&pr->m[j], md ? md : mds[j], c->eng, DNNL_MEMORY_NONE);
    }
    dnnl_primitive_desc_destroy(pd);
    if (st != dnnl_success) {
        if (pr->p) dnnl_primitive_destroy(pr->p);
        for (int j = 0; j < 4; j++)
            if (pr->m[j]) dnnl_memory_destroy(pr->m[j]);
        free(pr);
        fail(c, "creating a primitive", st);
        return NULL;
    }
    c->prims[c->n_prims++] = pr;
    return pr;
}

static Prim *prim_make(CpuBf16 *c, int kind, const int64_t *key, const_dnnl_op_desc_t d,
                       const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *wei, const dnnl_memory_desc_t *bias,
                       const dnnl_memory_desc_t *dst) {
    return prim_make_ex(c, kind, key, d, NULL, NULL, FWD_ARGS, src, wei, bias, dst);
}

// Runs pr on the given buffers (in the order of its arg kinds; NULL where it
// has no such memory).
static int prim_run(CpuBf16 *c, Prim *pr, const void *src, const void *wei, const void *bias, void *dst) {
    const int *ARG = pr->arg;
    const void *h[4] = {src, wei, bias, dst};
    dnnl_exec_arg_t args[4];
    int n = 0;
    for (int j = 0; j < 4; j++) {
        if (!pr->m[j]) continue;
        DNNL_TRY(c, dnnl_memory_set_data_handle(pr->m[j], (void *)h[j]));
        args[n++] = (dnnl_exec_arg_t){ARG[j], pr->m[j]};
    }
    DNNL_TRY(c, dnnl_primitive_execute(pr->p, c->stream, n, args));
    DNNL_TRY(c, dnnl_stream_wait(c->stream));
    return 0;
}

// A 2-D memory descriptor (rows, cols) with element strides (rs, cs).
static dnnl_status_t md2(dnnl_memory_desc_t *md, int64_t rows, int64_t cols, int64_t rs, int64_t cs,
                         dnnl_data_type_t dt) {
    dnnl_dims_t dims = {rows, cols}, strides = {rs, cs};
    return dnnl_memory_desc_init_by_strides(md, 2, dims, dt, strides);
}

// A matmul dst (M, N) = src (M, K) . wei (K, N) over strided views, bias (1, N)
// f32 when with_bias; src and wei bf16, dst f32; acc: dst += the product
// instead (a sum post-op: gradients that accumulate). Made once per key.
static Prim *matmul_prim_acc(CpuBf16 *c, int kind, int64_t M, int64_t K, int64_t N, const int64_t src_st[2],
                             const int64_t wei_st[2], const int64_t dst_st[2], int with_bias, int acc) {
    const int64_t key[KEY_LEN] = {M, K, N, src_st[0], src_st[1], wei_st[0], wei_st[1], dst_st[0], dst_st[1],
                                  with_bias, acc};
    Prim *pr = prim_find(c, kind, key);
    if (pr) return pr;
    dnnl_memory_desc_t src, wei, bias, dst;
    dnnl_matmul_desc_t d;
    dnnl_status_t st = md2(&src, M, K, src_st[0], src_st[1], dnnl_bf16);
    if (st == dnnl_success) st = md2(&wei, K, N, wei_st[0], wei_st[1], dnnl_bf16);
    if (st == dnnl_success) st = md2(&dst, M, N, dst_st[0], dst_st[1], dnnl_f32);
    if (st == dnnl_success && with_bias) st = md2(&bias, 1, N, N, 1, dnnl_f32);
    if (st == dnnl_success) st = dnnl_matmul_desc_init(&d, &src, &wei, with_bias ? &bias : NULL, &dst);
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    if (st == dnnl_success && acc) st = dnnl_primitive_attr_create(&attr);
    if (st == dnnl_success && acc) st = dnnl_post_ops_create(&po);
    if (st == dnnl_success && acc) st = dnnl_post_ops_append_sum(po, 1.0f);
    if (st == dnnl_success && acc) st = dnnl_primitive_attr_set_post_ops(attr, po);
    if (po) dnnl_post_ops_destroy(po);
    if (st != dnnl_success) {
        if (attr) dnnl_primitive_attr_destroy(attr);
        fail(c, "describing a matmul", st);
        return NULL;
    }
    pr = prim_make_ex(c, kind, key, &d, attr, NULL, FWD_ARGS, &src, &wei, with_bias ? &bias : NULL, &dst);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return pr;
}

static Prim *matmul_prim(CpuBf16 *c, int kind, int64_t M, int64_t K, int64_t N, const int64_t src_st[2],
                         const int64_t wei_st[2], const int64_t dst_st[2], int with_bias) {
    return matmul_prim_acc(c, kind, M, K, N, src_st, wei_st, dst_st, with_bias, 0);
}

// ---- emulation ---------------------------------------------------------------------

static float *wide(CpuBf16 *c, int slot, size_t n) {
    return grow(c, (void **)&c->wide[slot], &c->wide_cap[slot], n, sizeof(float));
}

// dst (rows, cols) f32 <- src rows of bf16 with row stride ld
static void widen2d(float *dst, const uint16_t *src, int64_t rows, int64_t cols, int64_t ld) {
#pragma omp parallel for collapse(2) schedule(static) if (rows * cols >= PAR_MIN)
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            uint32_t u = (uint32_t)src[i * ld + j] << 16;
            memcpy(&dst[i * cols + j], &u, 4);
        }
}

// The matmul of matmul_prim emulated: dst (M, N) = src (M, K) . wei (K, N)
// (+ bias). src is row-major (strides (lda, 1)); wei either row-major
// (ldb, 1) or column-major (1, ldb); dst row-major (ldc, 1).
static int matmul_emulated(CpuBf16 *c, const int64_t *key, const uint16_t *src, const uint16_t *wei,
                           const float *bias, float *dst) {
    const int64_t M = key[0], K = key[1], N = key[2], lda = key[3], wr = key[5], wc = key[6], ldc = key[7];
    float *a = wide(c, 0, (size_t)(M * K)), *b = wide(c, 1, (size_t)(K * N));
    if (!a || !b) return -1;
    widen2d(a, src, M, K, lda);
    const int col_major = wr == 1 && !(wc == 1 && N > 1); // (K, N) stored as N rows of K
    if (col_major) widen2d(b, wei, N, K, wc);
    else widen2d(b, wei, K, N, wr);
    for (int64_t i = 0; bias && i < M; i++) memcpy(dst + i * ldc, bias, (size_t)N * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, col_major ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, 1.0f, a,
                (int)K, b, col_major ? (int)K : (int)N, bias ? 1.0f : 0.0f, dst, (int)ldc);
    return 0;
}

// ---- ops ---------------------------------------------------------------------------

// Runs a matmul_prim's primitive, or its emulation.
static int matmul_run(CpuBf16 *c, Prim *pr, const uint16_t *src, const uint16_t *wei, const float *bias, float *dst) {
    return pr->p ? prim_run(c, pr, src, wei, bias, dst) : matmul_emulated(c, pr->key, src, wei, bias, dst);
}

int cpu_bf16_linear(CpuBf16 *c, float *out, const float *x, const uint16_t *w, const float *b, int64_t M,
                    int64_t K, int64_t N) {
    uint16_t *xb = stage(c, (size_t)(M * K)); // (M, K) bf16
    if (!xb) return -1;
    // w (N, K) row-major is the (K, N) weights matrix with strides (1, K)
    Prim *pr = matmul_prim(c, OP_LINEAR, M, K, N, (const int64_t[]){K, 1}, (const int64_t[]){1, K},
                           (const int64_t[]){N, 1}, b != NULL);
    if (!pr) return -1;
    cpu_f32_to_bf16(xb, x, M * K);
    return matmul_run(c, pr, xb, w, b, out);
}

// A reorder from one layout / type to another (FROM in m[0], TO in m[3]), not
// filed in the table: a blocked conv2d owns its three. NULL: c->msg says why.
static Prim *reorder_make(CpuBf16 *c, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to) {
    Prim *pr = calloc(1, sizeof *pr);
    if (!pr) {
        snprintf(c->msg, sizeof c->msg, "bf16: out of memory for a reorder");
        c->oom = 1;
        return NULL;
    }
    pr->kind = OP_REORDER;
    memcpy(pr->arg, (const int[]){DNNL_ARG_FROM, 0, 0, DNNL_ARG_TO}, sizeof pr->arg);
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t st = dnnl_reorder_primitive_desc_create(&pd, from, c->eng, to, c->eng, NULL);
    if (st == dnnl_success) {
        const char *impl = NULL;
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
        note_impl(c, OP_REORDER, impl);
        st = dnnl_primitive_create(&pr->p, pd);
        dnnl_primitive_desc_destroy(pd);
    }
    if (st == dnnl_success) st = dnnl_memory_create(&pr->m[0], from, c->eng, DNNL_MEMORY_NONE);
    if (st == dnnl_success) st = dnnl_memory_create(&pr->m[3], to, c->eng, DNNL_MEMORY_NONE);
    if (st != dnnl_success) {
        prim_free(pr);
        fail(c, "creating a reorder", st);
        return NULL;
    }
    return pr;
}

// Below this many output pixels (N OH OW) a conv2d keeps the plain layouts:
// the blocked kernel is ~1.5x faster (AMD Zen 5: brgconv 1,040-1,100 GFLOP/s
// against gemm:jit 470-740 at SD's shapes), but its weights are reordered on
// every call (~21 GB/s), which only pays above ~150 pixels (1280 channels at
// 8 x 8: 1.4 ms of reorder for a 1.9 ms convolution).
#define CONV_BLOCKED_MIN_PIXELS 256

void cpu_bf16_params_changed(CpuBf16 *c) {
    for (int i = 0; i < c->n_wc; i++) free(c->wc[i].data);
    c->n_wc = 0;
    c->wc_bytes = 0;
}

void cpu_bf16_hold(CpuBf16 *c, int hold) {
    c->holds += hold ? 1 : -1;
    if (c->holds <= 0) {
        c->holds = 0;
        cpu_bf16_params_changed(c);
    }
}

size_t cpu_bf16_held_bytes(const CpuBf16 *c) { return c->wc_bytes; }

// The blocked weights of parameter w for pr: kept ones, or reordered now
// (and kept while held; else into the per-call buffer). NULL: c->msg.
static const void *blocked_weights(CpuBf16 *c, Prim *pr, const uint16_t *w, int keep) {
    keep = keep && c->holds > 0;
    for (int i = 0; keep && i < c->n_wc; i++)
        if (c->wc[i].w == w && c->wc[i].pr == pr) return c->wc[i].data;
    if (keep && c->n_wc == c->cap_wc) {
        int cap = c->cap_wc ? 2 * c->cap_wc : 64;
        WCache *n = realloc(c->wc, (size_t)cap * sizeof *n);
        if (n) c->wc = n, c->cap_wc = cap;
        else keep = 0; // no room to keep it: reordered per call, as unheld
    }
    void *d = keep ? aligned_alloc(64, (pr->aux_bytes[0] + 63) / 64 * 64) : NULL;
    if (!d) d = grow(c, (void **)&c->wblk, &c->wblk_cap, pr->aux_bytes[0], 1), keep = 0;
    if (!d || prim_run(c, pr->aux[1], w, NULL, NULL, d)) {
        if (keep) free(d);
        return NULL;
    }
    if (keep) {
        c->wc[c->n_wc++] = (WCache){w, pr, d};
        c->wc_bytes += pr->aux_bytes[0];
    }
    return d;
}

// conv2d through oneDNN's blocked kernels (brgconv on AVX512-BF16 and AMX);
// 1 when there is none for this shape (oneDNN would take its reference code:
// the caller then uses the plain layouts), else 0 or -1 (c->msg).
// src and dst NHWC, weights in the primitive's own blocked layout. Per call:
// x f32 NCHW -> bf16 NHWC, w bf16 OIHW -> blocked, the convolution into f32
// NHWC, then NHWC -> out (NCHW). The weights are reordered on every call,
// unless they are a parameter (w_param) and parameters are held
// (cpu_bf16_hold: a sampling loop): then once, and kept until the last
// release. Never kept unheld: a copy keyed by the weights' address would go
// stale when a model is freed and another loaded there (docs/decisions.md
// "CPU bf16").
static int conv_blocked(CpuBf16 *c, float *out, const float *x, const uint16_t *w, int w_param, const float *b,
                        int N, int C, int H, int W, int OC, int KH, int KW, int stride, int pad) {
    const int OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    const int64_t key[KEY_LEN] = {N, C, H, W, OC, KH, KW, stride, pad, b != NULL, 1};
    Prim *pr = prim_find(c, OP_CONV, key);
    if (!pr) {
        dnnl_memory_desc_t src, wei, bias, dst, x_md, w_md, out_md;
        dnnl_convolution_desc_t d;
        dnnl_dims_t sd = {N, C, H, W}, wd = {OC, C, KH, KW}, bd = {OC}, dd = {N, OC, OH, OW};
        dnnl_dims_t strides = {stride, stride}, padding = {pad, pad};
        dnnl_status_t st = dnnl_memory_desc_init_by_tag(&src, 4, sd, dnnl_bf16, dnnl_nhwc);
        if (st == dnnl_success) st = dnnl_memory_desc_init_by_tag(&wei, 4, wd, dnnl_bf16, dnnl_format_tag_any);
        if (st == dnnl_success && b) st = dnnl_memory_desc_init_by_tag(&bias, 1, bd, dnnl_f32, dnnl_a);
        if (st == dnnl_success) st = dnnl_memory_desc_init_by_tag(&dst, 4, dd, dnnl_f32, dnnl_nhwc);
        if (st == dnnl_success) st = dnnl_memory_desc_init_by_tag(&x_md, 4, sd, dnnl_f32, dnnl_nchw);
        if (st == dnnl_success) st = dnnl_memory_desc_init_by_tag(&w_md, 4, wd, dnnl_bf16, dnnl_oihw);
        if (st == dnnl_success) st = dnnl_memory_desc_init_by_tag(&out_md, 4, dd, dnnl_f32, dnnl_nchw);
        if (st == dnnl_success)
            st = dnnl_convolution_forward_desc_init(&d, dnnl_forward_inference, dnnl_convolution_direct, &src, &wei,
                                                    b ? &bias : NULL, &dst, strides, padding, padding);
        if (st != dnnl_success) return fail(c, "describing a convolution", st);
        if (!(pr = prim_make(c, OP_CONV, key, &d, &src, &wei, b ? &bias : NULL, &dst))) return -1;
        pr->plain = 1; // until every part of the blocked path is made
        if (!pr->p || pr->ref) return 1;
        const dnnl_memory_desc_t *wblk = NULL, *dblk = NULL;
        dnnl_memory_get_memory_desc(pr->m[1], &wblk);
        dnnl_memory_get_memory_desc(pr->m[3], &dblk);
        pr->aux_bytes[0] = dnnl_memory_desc_get_size(wblk);
        pr->aux_bytes[1] = dnnl_memory_desc_get_size(dblk);
        if (!(pr->aux[0] = reorder_make(c, &x_md, &src)) || !(pr->aux[1] = reorder_make(c, &w_md, wblk)) ||
            !(pr->aux[2] = reorder_make(c, dblk, &out_md)))
            return -1;
        pr->plain = 0;
    }
    if (pr->plain) return 1;
    uint16_t *xb = stage(c, (size_t)N * C * H * W);                               // NHWC bf16
    void *yb = grow(c, (void **)&c->ystage, &c->ystage_cap, pr->aux_bytes[1], 1); // NHWC f32
    const void *wb = xb && yb ? blocked_weights(c, pr, w, w_param) : NULL;        // blocked weights
    if (!xb || !yb || !wb) return -1;
    if (prim_run(c, pr->aux[0], x, NULL, NULL, xb) || prim_run(c, pr, xb, wb, b, yb)) return -1;
    return prim_run(c, pr->aux[2], yb, NULL, NULL, out);
}

static int conv_blocked_wanted(const CpuBf16 *c, int N, int OH, int OW) {
    if (!c->native || bf16_generic_forced()) return 0;
    const char *e = getenv("SDC_BF16_CONV"); // measuring: "plain" or "blocked" for every shape
    if (e && !strcmp(e, "plain")) return 0;
    if (e && !strcmp(e, "blocked")) return 1;
    return (int64_t)N * OH * OW >= CONV_BLOCKED_MIN_PIXELS;
}

int cpu_bf16_conv2d(CpuBf16 *c, float *out, const float *x, const uint16_t *w, int w_param, const float *b, int N,
                    int C, int H, int W, int OC, int KH, int KW, int stride, int pad) {
    const int OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    if (conv_blocked_wanted(c, N, OH, OW)) {
        const int rc = conv_blocked(c, out, x, w, w_param, b, N, C, H, W, OC, KH, KW, stride, pad);
        if (rc <= 0) return rc; // done, or failed; 1: no blocked kernel for this shape
    }
    const int64_t key[KEY_LEN] = {N, C, H, W, OC, KH, KW, stride, pad, b != NULL};
    Prim *pr = prim_find(c, OP_CONV, key);
    if (!pr) {
        dnnl_memory_desc_t src, wei, bias, dst;
        dnnl_convolution_desc_t d;
        dnnl_dims_t sd = {N, C, H, W}, wd = {OC, C, KH, KW}, bd = {OC}, dd = {N, OC, OH, OW};
        dnnl_dims_t strides = {stride, stride}, padding = {pad, pad};
        dnnl_status_t st = dnnl_memory_desc_init_by_tag(&src, 4, sd, dnnl_bf16, dnnl_nchw);
        if (st == dnnl_success) st = dnnl_memory_desc_init_by_tag(&wei, 4, wd, dnnl_bf16, dnnl_oihw);
        if (st == dnnl_success && b) st = dnnl_memory_desc_init_by_tag(&bias, 1, bd, dnnl_f32, dnnl_a);
        if (st == dnnl_success) st = dnnl_memory_desc_init_by_tag(&dst, 4, dd, dnnl_f32, dnnl_nchw);
        if (st == dnnl_success)
            st = dnnl_convolution_forward_desc_init(&d, dnnl_forward_inference, dnnl_convolution_direct, &src, &wei,
                                                    b ? &bias : NULL, &dst, strides, padding, padding);
        if (st != dnnl_success) return fail(c, "describing a convolution", st);
        if (!(pr = prim_make(c, OP_CONV, key, &d, &src, &wei, b ? &bias : NULL, &dst))) return -1;
    }
    const size_t nx = (size_t)N * C * H * W, nw = (size_t)OC * C * KH * KW;
    uint16_t *xb = stage(c, nx); // (N, C, H, W) bf16
    if (!xb) return -1;
    cpu_f32_to_bf16(xb, x, (int64_t)nx);
    if (pr->p) return prim_run(c, pr, xb, w, b, out);
    // emulated: x (N, C, H, W) and w (OC, C, KH, KW) widened, cpu_conv2d
    float *xf = wide(c, 0, nx), *wf = wide(c, 1, nw);
    const size_t need = cpu_conv2d_scratch_floats(C, H, W, OC, KH, KW, stride, pad);
    float *sc = need ? grow(c, (void **)&c->scratch, &c->scratch_cap, need, sizeof(float)) : NULL;
    if (!xf || !wf || (need && !sc)) return -1;
    widen2d(xf, xb, 1, (int64_t)nx, 0);
    widen2d(wf, w, 1, (int64_t)nw, 0);
    cpu_conv2d(out, xf, wf, b, N, C, H, W, OC, KH, KW, stride, pad, sc, need);
    return 0;
}

// Scores a query block holds: about 2^20 floats (4 MiB), 16..Lq rows. One
// block is shared by all threads (oneDNN parallelises each matmul inside),
// unlike the fp32 kernel's block per thread.
#define ATT_BLOCK_FLOATS ((int64_t)1 << 20)

// Emulated: q, k, v rounded to bf16 values (in fp32) and the fp32 kernel
// with its probabilities rounded (cpu_attention_bf16p): one OpenMP region
// for the whole op, where per-block sgemm calls would wake the team twice per
// block (on a loaded 2-core machine that cost 3x the op itself).
static int attention_emulated(CpuBf16 *c, float *out, const float *q, const float *k, const float *v, int B,
                              int Lq, int Lk, int heads, int D, int causal) {
    const size_t nq = (size_t)B * Lq * heads * D, nk = (size_t)B * Lk * heads * D;
    const size_t need = cpu_attention_scratch_floats(Lq, Lk, D, omp_get_max_threads());
    float *qr = wide(c, 0, nq), *kr = wide(c, 1, nk), *vr = wide(c, 2, nk);
    float *sc = grow(c, (void **)&c->scratch, &c->scratch_cap, need, sizeof(float));
    if (!qr || !kr || !vr || !sc) return -1;
    const float *src[3] = {q, k, v};
    float *dst[3] = {qr, kr, vr};
    for (int t = 0; t < 3; t++) {
        const int64_t n = t ? (int64_t)nk : (int64_t)nq;
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN)
        for (int64_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)round_bf16(src[t][i]) << 16;
            memcpy(&dst[t][i], &u, 4);
        }
    }
    cpu_attention_bf16p(out, qr, kr, vr, B, Lq, Lk, heads, D, causal, sc, need);
    return 0;
}

// One attention row's probabilities: p[j] = exp(scale (r[j] - max r)) rounded
// to bf16 for j < n, 0 for n <= j < Lk; returns the sum of the unrounded
// exps. The generic one (fm_expf, 8 AVX2 lanes) and, where the CPU has
// AVX512-BF16 (every CPU oneDNN computes bf16 on but AVX-512-only Skylake),
// 16 lanes with the hardware's rounding (vcvtneps2bf16, nearest even as
// round_bf16). The softmax was a quarter of an SD 1.5 UNet pass (AMD Zen 5,
// 2 threads: 720 M exps a pass at 512 px) before the wide one.
static float softmax_row_generic(const float *r, uint16_t *p, int n, int Lk, float scale) {
    float mx = -INFINITY, sum = 0.0f;
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < n; j++) mx = r[j] > mx ? r[j] : mx;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) {
        const float e = fm_expf(scale * (r[j] - mx));
        sum += e;
        p[j] = round_bf16_finite(e);
    }
    for (int j = n; j < Lk; j++) p[j] = 0;
    return sum;
}

#ifdef SDC_X86_AVX512BF16
// exp(x) for x <= 0 (a softmax's arguments): x = k ln2 + f, |f| <= ln2/2, a
// degree-6 Taylor polynomial of e^f (truncation < 1.2e-7 relative), times 2^k
// by vscalefps (which also gives 0 below -87 instead of garbage).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-100.0f));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), x);
    f = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.42860682030941723212e-6f), f);
    __m512 q = _mm512_set1_ps(1.38888889e-3f);
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(8.33333333e-3f));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(4.16666667e-2f));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(1.66666667e-1f));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(0.5f));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(1.0f));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(q, k);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static float
softmax_row_avx512bf16(const float *r, uint16_t *p, int n, int Lk, float scale) {
    __m512 vmx = _mm512_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 16 <= n; j += 16) vmx = _mm512_max_ps(vmx, _mm512_loadu_ps(r + j));
    if (j < n) vmx = _mm512_mask_max_ps(vmx, (__mmask16)((1u << (n - j)) - 1), vmx, _mm512_maskz_loadu_ps((__mmask16)((1u << (n - j)) - 1), r + j));
    const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmx)), vs = _mm512_set1_ps(scale);
    __m512 sum = _mm512_setzero_ps();
    for (j = 0; j + 16 <= n; j += 16) {
        const __m512 e = exp512(_mm512_mul_ps(vs, _mm512_sub_ps(_mm512_loadu_ps(r + j), mx)));
        sum = _mm512_add_ps(sum, e);
        _mm256_storeu_si256((__m256i *)(p + j), (__m256i)_mm512_cvtneps_pbh(e));
    }
    if (j < n) {
        const __mmask16 m = (__mmask16)((1u << (n - j)) - 1);
        const __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_mul_ps(vs, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, r + j), mx))));
        sum = _mm512_add_ps(sum, e);
        _mm256_mask_storeu_epi16(p + j, m, (__m256i)_mm512_cvtneps_pbh(e));
        j = n;
    }
    for (j = n; j < Lk; j++) p[j] = 0;
    return _mm512_reduce_add_ps(sum);
}
#endif

static SoftmaxRow softmax_row_pick(void) {
#ifdef SDC_X86_AVX512BF16
    if (use_avx512bf16()) return softmax_row_avx512bf16;
#endif
    return softmax_row_generic;
}

// q, k or v (B, L, heads * D) f32 -> bf16 head-major (B, heads, L, D), so
// each head's matrix is contiguous for the matmuls.
static void to_bf16_heads(uint16_t *dst, const float *src, int B, int L, int heads, int D) {
    const int64_t HD = (int64_t)heads * D;
#pragma omp parallel for collapse(2) schedule(static) if ((int64_t)B * L * HD >= PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < heads; h++) {
            uint16_t *d = dst + ((int64_t)b * heads + h) * L * D;
            const float *s = src + (int64_t)b * L * HD + (int64_t)h * D;
            for (int i = 0; i < L; i++) row_to_bf16(d + (int64_t)i * D, s + i * HD, D);
        }
}

int cpu_bf16_attention(CpuBf16 *c, float *out, const float *q, const float *k, const float *v, int B, int Lq,
                       int Lk, int heads, int D, int causal) {
    const int64_t HD = (int64_t)heads * D;
    int bq = (int)(ATT_BLOCK_FLOATS / Lk);
    if (bq < 16) bq = 16;
    if (bq > Lq) bq = Lq;
    { // oneDNN without a bf16 matmul here: the whole op emulated
        Prim *qk = matmul_prim(c, OP_ATT_QK, bq, D, Lk, (const int64_t[]){D, 1}, (const int64_t[]){1, D},
                               (const int64_t[]){Lk, 1}, 0);
        if (!qk) return -1;
        if (!qk->p) {
            Prim *pv = matmul_prim(c, OP_ATT_PV, bq, Lk, D, (const int64_t[]){Lk, 1}, (const int64_t[]){D, 1},
                                   (const int64_t[]){D, 1}, 0); // (named in the implementation info)
            if (!pv) return -1;
            return attention_emulated(c, out, q, k, v, B, Lq, Lk, heads, D, causal);
        }
    }
    const size_t nq = (size_t)B * Lq * HD, nk = (size_t)B * Lk * HD;
    uint16_t *st = stage(c, nq + 2 * nk + (size_t)bq * Lk); // q, k, v head-major, then P (bq, Lk), bf16
    if (!st) return -1;
    // (bq, Lk) f32 scores, later P.V's (bq, D) block (D may exceed Lk: cross-attention on 77 keys, D 160),
    // then bq 1 / row sums
    const size_t ns = (size_t)bq * (Lk > D ? Lk : D);
    float *s = grow(c, (void **)&c->scores, &c->scores_cap, ns + (size_t)bq, sizeof(float));
    if (!s) return -1;
    float *inv = s + ns;
    uint16_t *qb = st, *kb = qb + nq, *vb = kb + nk, *pb = vb + nk;
    to_bf16_heads(qb, q, B, Lq, heads, D);
    to_bf16_heads(kb, k, B, Lk, heads, D);
    to_bf16_heads(vb, v, B, Lk, heads, D);
    const float scale = 1.0f / sqrtf((float)D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < heads; h++)
            for (int q0 = 0; q0 < Lq; q0 += bq) {
                const int rows = Lq - q0 < bq ? Lq - q0 : bq;
                const size_t bh = (size_t)b * heads + h;
                const uint16_t *qh = qb + (bh * Lq + q0) * D, *kh = kb + bh * Lk * D, *vh = vb + bh * Lk * D;
                float *ob = out + ((size_t)b * Lq + q0) * HD + (size_t)h * D; // (rows, D), row stride HD
                // S (rows, Lk) = Q_blk (rows, D) . K_h^T (D, Lk); K_h^T's (d, j) is at j * D + d
                Prim *qk = matmul_prim(c, OP_ATT_QK, rows, D, Lk, (const int64_t[]){D, 1}, (const int64_t[]){1, D},
                                       (const int64_t[]){Lk, 1}, 0);
                if (!qk || matmul_run(c, qk, qh, kh, NULL, s)) return -1;
                // P = exp(scale * (S - row max)) rounded to bf16 (keys past a causal row's limit: 0), the row
                // sums from the unrounded exps; O is scaled by 1 / sum after P.V (cpu_attention_bf16p's numbers)
#pragma omp parallel for schedule(static) if ((int64_t)rows * Lk >= PAR_MIN)
                for (int i = 0; i < rows; i++) {
                    const int n = causal && q0 + i + 1 < Lk ? q0 + i + 1 : Lk;
                    inv[i] = 1.0f / c->softmax_row(s + (size_t)i * Lk, pb + (size_t)i * Lk, n, Lk, scale);
                }
                // O_blk (rows, D) = P (rows, Lk) . V_h (Lk, D) into the spent scores (dense: oneDNN's brgemm
                // takes it where a dst of row stride HD got gemm:jit, 1.2x slower), then / sum into out
                Prim *pv = matmul_prim(c, OP_ATT_PV, rows, Lk, D, (const int64_t[]){Lk, 1}, (const int64_t[]){D, 1},
                                       (const int64_t[]){D, 1}, 0);
                if (!pv || matmul_run(c, pv, pb, vh, NULL, s)) return -1;
                for (int i = 0; i < rows; i++) {
                    float *o = ob + (size_t)i * HD;
                    const float *t = s + (size_t)i * D;
#pragma omp simd
                    for (int d = 0; d < D; d++) o[d] = t[d] * inv[i];
                }
            }
    return 0;
}

// ---- backward (training) -------------------------------------------------------------
// Each returns 1 when oneDNN computes no bf16 on this CPU: the caller then
// runs its emulation (the fp32 kernels on rounded operands, backend_cpu_bwd.c).

int cpu_bf16_native(const CpuBf16 *c) { return c->native; }

// x (n) f32 rounded into backward staging buffer `slot`; NULL when out of memory.
static uint16_t *bround(CpuBf16 *c, int slot, const float *x, int64_t n) {
    uint16_t *d = grow(c, (void **)&c->bstage[slot], &c->bstage_cap[slot], (size_t)n, sizeof(uint16_t));
    if (d) cpu_f32_to_bf16(d, x, n);
    return d;
}

int cpu_bf16_linear_backward(CpuBf16 *c, float *dx, float *dw, const float *dy, const float *x, const uint16_t *w,
                             int64_t M, int64_t K, int64_t N) {
    if (!c->native) return 1;
    // dx (M, K) = dy (M, N) . w (N, K)
    Prim *pd = dx ? matmul_prim(c, OP_LINEAR_BWD, M, N, K, (const int64_t[]){N, 1}, (const int64_t[]){K, 1},
                                (const int64_t[]){K, 1}, 0)
                  : NULL;
    // dw (N, K) += dy^T (N, M) . x (M, K); dy^T's (n, m) is at m * N + n
    Prim *pw = dw ? matmul_prim_acc(c, OP_LINEAR_BWD, N, M, K, (const int64_t[]){1, N}, (const int64_t[]){K, 1},
                                    (const int64_t[]){K, 1}, 0, 1)
                  : NULL;
    if ((dx && !pd) || (dw && !pw)) return -1;
    if ((pd && !pd->p) || (pw && !pw->p)) return fail(c, "linear backward: no bf16 matmul for this shape", dnnl_unimplemented);
    const uint16_t *dyb = bround(c, 0, dy, M * N);
    if (!dyb) return -1;
    if (dx && prim_run(c, pd, dyb, w, NULL, dx)) return -1;
    if (!dw) return 0;
    const uint16_t *xb = bround(c, 1, x, M * K);
    return xb ? prim_run(c, pw, dyb, xb, NULL, dw) : -1;
}

int cpu_bf16_conv2d_backward(CpuBf16 *c, float *dx, float *dw, const float *dy, const float *x, const uint16_t *w,
                             int N, int C, int H, int W, int OC, int KH, int KW, int stride, int pad) {
    if (!c->native) return 1;
    const int OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    const int64_t key[KEY_LEN] = {N, C, H, W, OC, KH, KW, stride, pad};
    Prim *pd = prim_find(c, OP_CONV_BWD_DATA, key), *pw = prim_find(c, OP_CONV_BWD_WEIGHTS, key);
    if (!pd || !pw) { // both made together, from one forward hint
        dnnl_memory_desc_t src, dsrc, wei, dwei, ddst;
        dnnl_convolution_desc_t fd, bd, wd;
        dnnl_dims_t sd = {N, C, H, W}, wdim = {OC, C, KH, KW}, dd = {N, OC, OH, OW};
        dnnl_dims_t strides = {stride, stride}, padding = {pad, pad};
        dnnl_primitive_desc_t hint = NULL;
        dnnl_status_t st = dnnl_memory_desc_init_by_tag(&src, 4, sd, dnnl_bf16, dnnl_nchw);
        if (st == dnnl_success) st = dnnl_memory_desc_init_by_tag(&dsrc, 4, sd, dnnl_f32, dnnl_nchw);
        if (st == dnnl_success) st = dnnl_memory_desc_init_by_tag(&wei, 4, wdim, dnnl_bf16, dnnl_oihw);
        if (st == dnnl_success) st = dnnl_memory_desc_init_by_tag(&dwei, 4, wdim, dnnl_f32, dnnl_oihw);
        if (st == dnnl_success) st = dnnl_memory_desc_init_by_tag(&ddst, 4, dd, dnnl_bf16, dnnl_nchw);
        if (st == dnnl_success)
            st = dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct, &src, &wei,
                                                    NULL, &ddst, strides, padding, padding);
        if (st == dnnl_success)
            st = dnnl_convolution_backward_data_desc_init(&bd, dnnl_convolution_direct, &dsrc, &wei, &ddst, strides,
                                                          padding, padding);
        if (st == dnnl_success)
            st = dnnl_convolution_backward_weights_desc_init(&wd, dnnl_convolution_direct, &src, &dwei, NULL, &ddst,
                                                             strides, padding, padding);
        if (st == dnnl_success) st = dnnl_primitive_desc_create(&hint, &fd, NULL, c->eng, NULL);
        if (st != dnnl_success) return fail(c, "describing a convolution backward", st);
        if (!pd)
            pd = prim_make_ex(c, OP_CONV_BWD_DATA, key, &bd, NULL, hint,
                              (const int[]){DNNL_ARG_DIFF_DST, DNNL_ARG_WEIGHTS, 0, DNNL_ARG_DIFF_SRC}, &ddst, &wei,
                              NULL, &dsrc);
        if (pd && !pw)
            pw = prim_make_ex(c, OP_CONV_BWD_WEIGHTS, key, &wd, NULL, hint,
                              (const int[]){DNNL_ARG_SRC, DNNL_ARG_DIFF_DST, 0, DNNL_ARG_DIFF_WEIGHTS}, &src, &ddst,
                              NULL, &dwei);
        dnnl_primitive_desc_destroy(hint);
        if (!pd || !pw) return -1;
    }
    if (!pd->p || !pw->p) return fail(c, "conv2d backward: no bf16 implementation for this shape", dnnl_unimplemented);
    const uint16_t *dyb = bround(c, 0, dy, (int64_t)N * OC * OH * OW);
    if (!dyb) return -1;
    if (dx && prim_run(c, pd, dyb, w, NULL, dx)) return -1;
    if (!dw) return 0;
    // the weight gradient into scratch, then added (no sum post-op on this primitive)
    const int64_t nw = (int64_t)OC * C * KH * KW;
    const uint16_t *xb = bround(c, 1, x, (int64_t)N * C * H * W);
    float *g = grow(c, (void **)&c->bscratch, &c->bscratch_cap, (size_t)nw, sizeof(float));
    if (!xb || !g || prim_run(c, pw, xb, dyb, NULL, g)) return -1;
#pragma omp parallel for simd schedule(static) if (nw >= PAR_MIN)
    for (int64_t i = 0; i < nw; i++) dw[i] += g[i];
    return 0;
}

// Scores a backward query block holds: two f32 (bq, Lk) blocks (S then P, dP
// then dS) and their bf16 copies.
#define ATT_BWD_BLOCK_FLOATS ((int64_t)1 << 20)

int cpu_bf16_attention_backward(CpuBf16 *c, float *dq, float *dk, float *dv, const float *dout, const float *q,
                                const float *k, const float *v, int B, int Lq, int Lk, int heads, int D,
                                int causal) {
    if (!c->native) return 1;
    const int64_t HD = (int64_t)heads * D;
    int bq = (int)(ATT_BWD_BLOCK_FLOATS / (2 * (int64_t)Lk));
    if (bq < 16) bq = 16;
    if (bq > Lq) bq = Lq;
    const size_t nq = (size_t)B * Lq * HD, nk = (size_t)B * Lk * HD, nb = (size_t)bq * Lk;
    uint16_t *qb = grow(c, (void **)&c->bstage[0], &c->bstage_cap[0], 2 * nq, sizeof(uint16_t)); // q, dout
    uint16_t *kb = grow(c, (void **)&c->bstage[1], &c->bstage_cap[1], 2 * nk, sizeof(uint16_t)); // k, v
    uint16_t *pb = grow(c, (void **)&c->bstage[2], &c->bstage_cap[2], 2 * nb, sizeof(uint16_t)); // P, dS
    float *sb = grow(c, (void **)&c->bscratch, &c->bscratch_cap, 2 * nb + (size_t)bq, sizeof(float)); // S, dP
    if (!qb || !kb || !pb || !sb) return -1;
    uint16_t *dob = qb + nq, *vb = kb + nk, *dsb = pb + nb;
    float *dp = sb + nb;
    to_bf16_heads(qb, q, B, Lq, heads, D);
    to_bf16_heads(dob, dout, B, Lq, heads, D);
    to_bf16_heads(kb, k, B, Lk, heads, D);
    to_bf16_heads(vb, v, B, Lk, heads, D);
    const float scale = 1.0f / sqrtf((float)D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < heads; h++) {
            const size_t bh = (size_t)b * heads + h;
            const uint16_t *kh = kb + bh * Lk * D, *vh = vb + bh * Lk * D;
            float *dkh = dk + (size_t)b * Lk * HD + (size_t)h * D, *dvh = dv + (size_t)b * Lk * HD + (size_t)h * D;
            for (int j = 0; j < Lk; j++) // (Lk, D), row stride HD; accumulated over the query blocks
                for (int d = 0; d < D; d++) dkh[(size_t)j * HD + d] = dvh[(size_t)j * HD + d] = 0.0f;
            for (int q0 = 0; q0 < Lq; q0 += bq) {
                const int rows = Lq - q0 < bq ? Lq - q0 : bq;
                const uint16_t *qh = qb + (bh * Lq + q0) * D, *doh = dob + (bh * Lq + q0) * D; // (rows, D)
                float *dqb = dq + ((size_t)b * Lq + q0) * HD + (size_t)h * D;                  // (rows, D), HD
                // S = Q_blk . K_h^T and dP = dO_blk . V_h^T, (rows, Lk) f32
                Prim *qk = matmul_prim(c, OP_ATT_BWD, rows, D, Lk, (const int64_t[]){D, 1}, (const int64_t[]){1, D},
                                       (const int64_t[]){Lk, 1}, 0);
                if (!qk || prim_run(c, qk, qh, kh, NULL, sb) || prim_run(c, qk, doh, vh, NULL, dp)) return -1;
                // P = softmax(scale S) and dS = scale P (dP - rowsum(P dP)) in f32, each rounded to bf16
#pragma omp parallel for schedule(static) if ((int64_t)rows * Lk >= PAR_MIN)
                for (int i = 0; i < rows; i++) {
                    float *r = sb + (size_t)i * Lk, *g = dp + (size_t)i * Lk;
                    uint16_t *p = pb + (size_t)i * Lk, *ds = dsb + (size_t)i * Lk;
                    const int n = causal && q0 + i + 1 < Lk ? q0 + i + 1 : Lk;
                    float mx = -INFINITY, sum = 0.0f, di = 0.0f;
#pragma omp simd reduction(max : mx)
                    for (int j = 0; j < n; j++) mx = r[j] > mx ? r[j] : mx;
#pragma omp simd reduction(+ : sum)
                    for (int j = 0; j < n; j++) sum += r[j] = fm_expf(scale * (r[j] - mx));
                    const float inv = 1.0f / sum;
#pragma omp simd reduction(+ : di)
                    for (int j = 0; j < n; j++) {
                        r[j] *= inv;
                        di += r[j] * g[j];
                    }
#pragma omp simd
                    for (int j = 0; j < n; j++) {
                        p[j] = round_bf16_finite(r[j]);
                        ds[j] = round_bf16_finite(scale * r[j] * (g[j] - di));
                    }
                    for (int j = n; j < Lk; j++) p[j] = ds[j] = 0;
                }
                // dV_h (Lk, D) += P^T (Lk, rows) . dO_blk; dK_h += dS^T . Q_blk (P^T's (j, i) at i * Lk + j)
                Prim *acc = matmul_prim_acc(c, OP_ATT_BWD, Lk, rows, D, (const int64_t[]){1, Lk},
                                            (const int64_t[]){D, 1}, (const int64_t[]){HD, 1}, 0, 1);
                if (!acc || prim_run(c, acc, pb, doh, NULL, dvh) || prim_run(c, acc, dsb, qh, NULL, dkh)) return -1;
                // dQ_blk (rows, D) = dS (rows, Lk) . K_h (Lk, D)
                Prim *dqp = matmul_prim(c, OP_ATT_BWD, rows, Lk, D, (const int64_t[]){Lk, 1}, (const int64_t[]){D, 1},
                                        (const int64_t[]){HD, 1}, 0);
                if (!dqp || prim_run(c, dqp, dsb, kh, NULL, dqb)) return -1;
            }
        }
    return 0;
}

// ---- the machine's bf16 GEMM rate ----------------------------------------------------

double cpu_bf16_gemm_gflops(CpuBf16 *c, int n, int reps) {
    if (!c->native || n < 16 || reps < 1) return 0;
    dnnl_memory_desc_t a, b, d;
    dnnl_matmul_desc_t md;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t p = NULL;
    dnnl_memory_t m[3] = {NULL, NULL, NULL};
    const dnnl_dims_t dims = {n, n};
    double best = 0;
    // B in the layout the library likes best (prepacked, as a weight): its peak, the yardstick
    dnnl_status_t st = dnnl_memory_desc_init_by_tag(&a, 2, dims, dnnl_bf16, dnnl_ab);
    if (st == dnnl_success) st = dnnl_memory_desc_init_by_tag(&b, 2, dims, dnnl_bf16, dnnl_format_tag_any);
    if (st == dnnl_success) st = dnnl_memory_desc_init_by_tag(&d, 2, dims, dnnl_f32, dnnl_ab);
    if (st == dnnl_success) st = dnnl_matmul_desc_init(&md, &a, &b, NULL, &d);
    if (st == dnnl_success) st = dnnl_primitive_desc_create(&pd, &md, NULL, c->eng, NULL);
    if (st == dnnl_success) st = dnnl_primitive_create(&p, pd);
    const int args_kind[3] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST};
    for (int j = 0; st == dnnl_success && j < 3; j++)
        st = dnnl_memory_create(&m[j], dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md, args_kind[j]), c->eng,
                                DNNL_MEMORY_ALLOCATE);
    for (int j = 0; st == dnnl_success && j < 2; j++) { // 0.5 .. 1 in bf16 (no subnormals, no overflow)
        void *h = NULL;
        st = dnnl_memory_get_data_handle(m[j], &h);
        const size_t bytes = dnnl_memory_desc_get_size(dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md,
                                                                                     args_kind[j]));
        for (size_t i = 0; h && i < bytes / 2; i++) ((uint16_t *)h)[i] = (uint16_t)(0x3f00 + (i * 7919u) % 128);
    }
    const dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, m[0]}, {DNNL_ARG_WEIGHTS, m[1]}, {DNNL_ARG_DST, m[2]}};
    for (int r = -1; st == dnnl_success && r < reps; r++) { // r = -1: warm-up
        const double t0 = omp_get_wtime();
        st = dnnl_primitive_execute(p, c->stream, 3, args);
        if (st == dnnl_success) st = dnnl_stream_wait(c->stream);
        const double g = 2.0 * n * n * (double)n / (omp_get_wtime() - t0) * 1e-9;
        if (r >= 0 && g > best) best = g;
    }
    for (int j = 0; j < 3; j++)
        if (m[j]) dnnl_memory_destroy(m[j]);
    if (p) dnnl_primitive_destroy(p);
    if (pd) dnnl_primitive_desc_destroy(pd);
    return st == dnnl_success ? best : 0;
}
