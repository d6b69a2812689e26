// cuda_testbuf.h: the buffers of the CUDA op tests (test_ops_cuda.c,
// test_bwd_cuda.c): one tensor in both places, h (host f32, the values both
// backends see), c (a CPU f32 tensor over h) and g (a device tensor of the GPU
// backend's dtype). Static functions; include it after the test's Env typedef,
// which has `Backend *gpu` and `DType dt` (the GPU backend's activations).
// CUDA_TESTBUF_OWN_BUF defined first: only xmalloc, gpu_alloc and round_to
// (test_conv_cuda.c has a Buf of its own, at an offset from its allocation).
#ifndef SDC_CUDA_TESTBUF_H
#define SDC_CUDA_TESTBUF_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "testutil.h"

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test: out of host memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

static void *gpu_alloc(Env *e, size_t bytes) {
    void *p = e->gpu->alloc(e->gpu, bytes);
    if (!p) {
        fprintf(stderr, "test: out of GPU memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

// Rounds n values to dtype dt in place (round trip through the storage format).
static void round_to(float *x, size_t n, DType dt) {
    if (dt == DT_F32) return;
    uint16_t *tmp = xmalloc(n * 2);
    convert_from_f32(tmp, dt, x, n);
    convert_to_f32(x, tmp, dt, n);
    free(tmp);
}

#ifndef CUDA_TESTBUF_OWN_BUF
typedef struct Buf {
    float *h;
    Tensor c, g;
    size_t n;
} Buf;

static Buf buf_make(Env *e, DType dt, int ndim, const int64_t *shape) {
    Buf b;
    b.c = tensor_make(DT_F32, DEV_CPU, NULL, ndim, shape);
    b.n = (size_t)tensor_numel(&b.c);
    b.h = xmalloc(b.n * sizeof(float));
    b.c.data = b.h;
    b.g = tensor_make(dt, e->gpu->device, NULL, ndim, shape);
    b.g.data = gpu_alloc(e, tensor_bytes(&b.g));
    return b;
}

// A random input in [lo, hi), never zeros, rounded to e->dt on both sides.
static Buf buf_in(Env *e, uint64_t seed, float lo, float hi, int ndim, const int64_t *shape) {
    Buf b = buf_make(e, e->dt, ndim, shape);
    fill_uniform(b.h, b.n, seed, lo, hi);
    round_to(b.h, b.n, e->dt);
    backend_upload_f32(e->gpu, &b.g, b.h, b.n);
    return b;
}

// Fills the device copy with NaN bytes: an element an op forgets to write shows.
static void buf_poison(Env *e, Buf *b) {
    size_t bytes = tensor_bytes(&b->g);
    void *p = xmalloc(bytes);
    memset(p, 0xFF, bytes); // NaN in f32, f16 and bf16
    e->gpu->upload(e->gpu, b->g.data, p, bytes);
    free(p);
}

// An output: its device copy poisoned, its host copy zero.
static Buf buf_out(Env *e, int ndim, const int64_t *shape) {
    Buf b = buf_make(e, e->dt, ndim, shape);
    buf_poison(e, &b);
    memset(b.h, 0, b.n * sizeof(float));
    return b;
}

static void buf_free(Env *e, Buf *b) {
    free(b->h);
    e->gpu->free(e->gpu, b->g.data);
    b->h = NULL;
}
#endif // CUDA_TESTBUF_OWN_BUF

#endif
