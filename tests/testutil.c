// testutil.c: see testutil.h.
#include "testutil.h"

#include <stdlib.h>

#include "core/backend.h"
#include "core/tensor.h"
#include "io/safetensors.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

double max_abs_diff(const float *got, const float *ref, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        if (!(d <= m)) m = d; // NaN propagates
    }
    return m;
}

double rel_err(const float *got, const float *ref, size_t n) {
    double mref = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(ref[i]) > mref) mref = fabs(ref[i]);
    if (mref < 1e-30) mref = 1e-30;
    return max_abs_diff(got, ref, n) / mref;
}

int check_rel(TestCtx *t, const char *name, const float *got, const float *ref, size_t n, double tol) {
    double e = rel_err(got, ref, n);
    int ok = e <= tol; // NaN fails
    t->checks++;
    if (!ok) t->failures++;
    printf("  %-48s rel_err=%.3e  tol=%.0e  %s\n", name, e, tol, ok ? "OK" : "NOT OK");
    fflush(stdout);
    return ok;
}

int check_true(TestCtx *t, int cond, const char *fmt, ...) {
    t->checks++;
    if (!cond) t->failures++;
    va_list ap;
    va_start(ap, fmt);
    printf("  ");
    vprintf(fmt, ap);
    va_end(ap);
    printf("  %s\n", cond ? "OK" : "NOT OK");
    fflush(stdout);
    return cond;
}

int test_summary(TestCtx *t) {
    printf("%d passed, %d failed\n", t->checks - t->failures, t->failures);
    return t->failures ? 1 : 0;
}

void fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi) {
    uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        double u = (double)(s >> 11) / 9007199254740992.0;
        x[i] = (float)(lo + (hi - lo) * u);
    }
}

double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

float *fixture_f32(TestCtx *t, const StFile *f, const char *name, Tensor *shape_out) {
    const StEntry *e = st_find(f, name);
    if (!e) {
        check_true(t, 0, "%s has %s", f->path, name);
        return NULL;
    }
    Tensor v = st_tensor(f, e);
    size_t n = (size_t)tensor_numel(&v);
    float *h = malloc((n ? n : 1) * sizeof *h);
    if (!h) {
        check_true(t, 0, "%s: out of memory for %s", f->path, name);
        return NULL;
    }
    convert_to_f32(h, v.data, v.dtype, n);
    if (shape_out) *shape_out = v;
    return h;
}

int test_cuda_backend(Backend **out, int act_dtype) {
    const char *req = getenv("SDC_REQUIRE_GPU");
    SdcError err = {0};
    *out = NULL;
    if (backend_cuda_available() && backend_cuda_create(out, 0, (DType)act_dtype, &err) == SDC_OK) return -1;
    const char *why = backend_cuda_available() ? err.msg : "sdc was built without CUDA";
    if (req && req[0] == '1') {
        printf("FAILED: SDC_REQUIRE_GPU=1 but no CUDA device (%s)\n", why);
        return 1;
    }
    printf("SKIPPED: no CUDA device (%s)\n", why);
    return TEST_SKIP_EXIT;
}
