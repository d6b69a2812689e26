// test_dp.c: data-parallel collectives (mpi/dp.h) under 1, 2 and 4 ranks
// (tests/tests.cmake runs it with mpiexec; alone it is one rank): the bucketed
// mean of a buffer of 3 buckets and a remainder is exactly the expected
// average (values chosen so that every summation order is exact), every rank
// holds the same bits for arbitrary floats, f64 sums and broadcasts arrive,
// and dp_share covers every sample index exactly once.
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpi/dp.h"

static int g_rank, g_checks, g_fail;

// Counts a check; rank 0 prints it, any rank prints its failures.
__attribute__((format(printf, 2, 3))) static void check(int ok, const char *fmt, ...) {
    g_checks++;
    g_fail += !ok;
    if (ok && g_rank) return;
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    printf("  [rank %d] %s  %s\n", g_rank, msg, ok ? "OK" : "NOT OK");
}

static uint64_t fnv1a(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

int main(int argc, char **argv) {
    SdcError err = {0};
    int null_ok;
    // size 1 without MPI at all: every call a no-op
    {
        DataParallel one;
        float x[3] = {1.5f, -2, 3};
        double d[2] = {1, 2};
        int rc = dp_init(&one, MPI_COMM_NULL, 0, &err);
        rc |= dp_allreduce_mean(&one, x, 3, &err) | dp_allreduce_sum_double(&one, d, 2, &err) |
              dp_broadcast(&one, x, sizeof x, 0, &err);
        null_ok = !rc && one.size == 1 && x[0] == 1.5f && x[1] == -2 && d[1] == 2 &&
                  one.bucket_bytes == DP_BUCKET_DEFAULT;
        dp_free(&one);
    }
    MPI_Init(&argc, &argv);
    int size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (!g_rank) printf("test_dp: %d rank%s\n", size, size > 1 ? "s" : "");
    check(null_ok, "MPI_COMM_NULL (before MPI_Init): size 1, every call a no-op");

    // 1. exact mean: 3 buckets of 16 Ki floats and a remainder of 123
    const size_t bucket = 64 << 10, per = bucket / sizeof(float), n = 3 * per + 123;
    DataParallel dp;
    int rc = dp_init(&dp, MPI_COMM_WORLD, bucket, &err);
    check(rc == 0 && dp.size == size && dp.rank == g_rank, "dp_init: rank %d of %d: %s", dp.rank, dp.size, err.msg);
    float *buf = malloc(n * sizeof(float));
    // x(r, i) = (i % 1021) + 1024 r: sums stay small integers, exact in any order
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i % 1021) + 1024.0f * (float)g_rank;
    rc = dp_allreduce_mean(&dp, buf, n, &err);
    // exact for power-of-two rank counts (1/R exact); else within one rounding of the multiply
    const int pow2 = (size & (size - 1)) == 0;
    const double rsum = 1024.0 * size * (size - 1) / 2; // sum over ranks of 1024 r
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double want = ((double)(i % 1021) * size + rsum) / size;
        bad += pow2 ? (double)buf[i] != want : fabs(buf[i] - want) > 1e-6 * want;
    }
    check(rc == 0 && bad == 0, "mean of %zu floats in 4 buckets (%zu per bucket) over %d ranks: %zu wrong %s", n, per,
          size, bad, err.msg);
    // the default 25 MiB bucket (one bucket) gives the same
    DataParallel big;
    rc = dp_init(&big, MPI_COMM_WORLD, 0, &err);
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i % 1021) + 1024.0f * (float)g_rank;
    rc |= dp_allreduce_mean(&big, buf, n, &err);
    bad = 0;
    for (size_t i = 0; i < n; i++) {
        double want = ((double)(i % 1021) * size + rsum) / size;
        bad += pow2 ? (double)buf[i] != want : fabs(buf[i] - want) > 1e-6 * want;
    }
    check(rc == 0 && bad == 0 && big.cap_reqs <= 1, "one 25 MiB bucket: same result (%zu wrong)", bad);

    // 2. arbitrary floats: every rank holds the same bits (buckets of 3 floats: many in flight)
    DataParallel tiny;
    rc = dp_init(&tiny, MPI_COMM_WORLD, 12, &err);
    for (size_t i = 0; i < 1000; i++)
        buf[i] = (float)((i * 2654435761u + 977u * (unsigned)g_rank) % 100003) / 7777.0f - 6.1f;
    rc |= dp_allreduce_mean(&tiny, buf, 1000, &err);
    uint64_t h = fnv1a(buf, 1000 * sizeof(float)), h0 = h;
    rc |= dp_broadcast(&dp, &h0, sizeof h0, 0, &err);
    check(rc == 0 && h == h0 && (size == 1 || tiny.cap_reqs == 334), "arbitrary floats, 334 buckets in flight: every "
          "rank has the same bits (hash %016llx)", (unsigned long long)h);

    // 3. f64 sums and a broadcast from the last rank
    double m[3] = {1.0, (double)g_rank, 0.25};
    rc = dp_allreduce_sum_double(&dp, m, 2, &err);
    rc |= dp_hook_allreduce_sum(&dp, m + 2, 1, &err); // the trainer's hook form
    check(rc == 0 && m[0] == size && m[1] == (double)size * (size - 1) / 2 && m[2] == 0.25 * size,
          "sum_double (and its hook adapter): %g %g %g", m[0], m[1], m[2]);
    char msg[32];
    snprintf(msg, sizeof msg, "from rank %d", g_rank);
    rc = dp_broadcast(&dp, msg, sizeof msg, size - 1, &err);
    char want[32];
    snprintf(want, sizeof want, "from rank %d", size - 1);
    check(rc == 0 && !strcmp(msg, want), "broadcast from rank %d: \"%s\"", size - 1, msg);
    rc = dp_broadcast(&dp, msg, sizeof msg, size, &err);
    check(rc != 0 && strstr(err.msg, "root"), "broadcast from a rank that does not exist refused: %s", err.msg);

    // 4. dp_share: batches 1..9 over 1..4 ranks, each index exactly once, contiguous, first ranks larger
    int share_bad = 0;
    for (int64_t b = 0; b <= 9; b++)
        for (int r = 1; r <= 4; r++) {
            int seen[16] = {0};
            int64_t prev_end = 0, prev_count = b + 1;
            for (int k = 0; k < r; k++) {
                int64_t first, count;
                dp_share(b, k, r, &first, &count);
                share_bad += first != prev_end || count > prev_count || count < b / r || count > b / r + 1;
                for (int64_t i = first; i < first + count; i++) seen[i]++;
                prev_end = first + count, prev_count = count;
            }
            for (int64_t i = 0; i < b; i++) share_bad += seen[i] != 1;
        }
    check(share_bad == 0, "dp_share: batch 0..9 over 1..4 ranks: every index once, contiguous, first ranks one more");

    free(buf);
    dp_free(&dp);
    dp_free(&big);
    dp_free(&tiny);
    int fails = g_fail;
    MPI_Allreduce(MPI_IN_PLACE, &fails, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (!g_rank) printf("%d passed, %d failed\n", g_checks - g_fail, fails);
    MPI_Finalize();
    return fails ? 1 : 0;
}
