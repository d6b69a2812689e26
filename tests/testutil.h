// testutil.h: the few helpers every test uses. A test prints one line per
// compared tensor: name, max |a-b| / max |ref|, tolerance, OK / NOT OK; and
// returns non-zero from main if any check failed (test_summary).
#ifndef SDC_TESTUTIL_H
#define SDC_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

typedef struct TestCtx {
    int checks, failures;
} TestCtx;

// Max |got - ref| / max(max |ref|, 1e-30) over n values.
double rel_err(const float *got, const float *ref, size_t n);
double max_abs_diff(const float *got, const float *ref, size_t n);
// Prints "  name  rel_err=...  tol=...  OK|NOT OK" and counts the result.
int check_rel(TestCtx *t, const char *name, const float *got, const float *ref, size_t n, double tol);
// A plain boolean check with a message.
int check_true(TestCtx *t, int cond, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// Prints "N passed, N failed" and returns the process exit code.
int test_summary(TestCtx *t);

// Deterministic uniform floats in [lo, hi) from a small LCG (seeded).
void fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi);
// A reference tensor of a safetensors fixture as malloc'd host f32 (any
// float dtype converted), its shape in *shape_out (may be NULL); NULL and a
// failed check when the fixture has no tensor of that name.
struct StFile;
struct Tensor;
float *fixture_f32(TestCtx *t, const struct StFile *f, const char *name, struct Tensor *shape_out);
// Monotonic seconds.
double now_s(void);

// The exit status that CTest reports as "skipped" (SKIP_RETURN_CODE of every
// test_* in tests/CMakeLists.txt): a test that could not run never passes.
#define TEST_SKIP_EXIT 77

// The CUDA backend a GPU test runs on (act_dtype activations). With no GPU
// (or a build without CUDA) it prints "SKIPPED: no CUDA device (why)" and
// returns TEST_SKIP_EXIT, the test's exit status; with SDC_REQUIRE_GPU=1
// (tests/gpu/run.sh) "FAILED: ..." and 1. Returns -1 with *out set when
// there is a GPU.
struct Backend;
int test_cuda_backend(struct Backend **out, int act_dtype);

#endif
