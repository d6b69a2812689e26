// benchutil.h: the two helpers every CPU benchmark needs (a monotonic clock
// and a deterministic random buffer). Header-only: each bench_*.c is its own
// program.
#ifndef SDC_BENCHUTIL_H
#define SDC_BENCHUTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline double now_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// n floats in [-0.5, 0.5) from an LCG, 64-byte aligned; exits on OOM (a
// benchmark program, not library code)
static inline float *buf(size_t n, unsigned seed) {
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "out of memory (%zu floats)\n", n);
        exit(1);
    }
    unsigned s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        p[i] = (float)(s >> 8) / 16777216.0f - 0.5f;
    }
    return p;
}

#endif
