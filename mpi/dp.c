// dp.c: data-parallel collectives over MPI (see dp.h for the reduction order).
#include "mpi/dp.h"

#include "mpi/mpi_check.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int dp_init(DataParallel *dp, MPI_Comm comm, size_t bucket_bytes, SdcError *err) {
    memset(dp, 0, sizeof *dp);
    dp->comm = MPI_COMM_NULL;
    dp->size = 1;
    const char *mb = getenv("SDC_DP_BUCKET_MB");
    dp->bucket_bytes = bucket_bytes ? bucket_bytes
                       : mb && atof(mb) > 0 ? (size_t)(atof(mb) * 1048576.0) : DP_BUCKET_DEFAULT;
    if (dp->bucket_bytes < sizeof(float))
        return sdc_err(err, SDC_ERR_ARG, "dp_init: bucket of %zu bytes holds no float", bucket_bytes);
    if (comm == MPI_COMM_NULL) return 0;
    int inited = 0, fin = 0;
    MPI_TRY(MPI_Initialized(&inited), "dp_init");
    MPI_TRY(MPI_Finalized(&fin), "dp_init");
    if (!inited || fin)
        return sdc_err(err, SDC_ERR_ARG, "dp_init: MPI is not initialised\n---> run under mpiexec / srun (sdc "
                       "initialises MPI there), or pass MPI_COMM_NULL for one process");
    int size = 1;
    MPI_TRY(MPI_Comm_size(comm, &size), "dp_init");
    if (size == 1) return 0; // nothing to reduce: no communicator kept
    MPI_Comm c = MPI_COMM_NULL;
    MPI_TRY(MPI_Comm_dup(comm, &c), "dp_init");
    dp->comm = c;
    MPI_TRY(MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN), "dp_init");
    MPI_TRY(MPI_Comm_rank(c, &dp->rank), "dp_init");
    dp->size = size;
    return 0;
}

void dp_free(DataParallel *dp) {
    if (dp->comm != MPI_COMM_NULL) {
        int fin = 0;
        MPI_Finalized(&fin);
        if (!fin) MPI_Comm_free(&dp->comm);
    }
    free(dp->reqs);
    memset(dp, 0, sizeof *dp);
    dp->comm = MPI_COMM_NULL;
    dp->size = 1;
}

static double dp_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int allreduce_mean(DataParallel *dp, float *buf, size_t n, SdcError *err);

int dp_allreduce_mean(DataParallel *dp, float *buf, size_t n, SdcError *err) {
    if (dp->size == 1 || n == 0) return 0;
    const double t0 = dp_now();
    const int rc = allreduce_mean(dp, buf, n, err);
    dp->ar_s += dp_now() - t0;
    dp->ar_calls++;
    return rc;
}

static int allreduce_mean(DataParallel *dp, float *buf, size_t n, SdcError *err) {
    size_t per = dp->bucket_bytes / sizeof(float); // elements per bucket
    if (per > (size_t)INT_MAX) per = (size_t)INT_MAX;  // MPI counts are int
    const size_t nb = (n + per - 1) / per;
    if (nb > (size_t)INT_MAX)
        return sdc_err(err, SDC_ERR_ARG, "dp_allreduce_mean: %zu buckets ---> raise the bucket size", nb);
    if ((int)nb > dp->cap_reqs) { // once, for the largest gradient buffer
        MPI_Request *r = realloc(dp->reqs, nb * sizeof *r);
        if (!r) return sdc_err(err, SDC_ERR_OOM, "dp_allreduce_mean: %zu requests", nb);
        dp->reqs = r;
        dp->cap_reqs = (int)nb;
    }
    for (size_t b = 0; b < nb; b++) {
        const size_t off = b * per, cnt = n - off < per ? n - off : per;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, buf + off, (int)cnt, MPI_FLOAT, MPI_SUM, dp->comm, &dp->reqs[b]);
        if (rc != MPI_SUCCESS) {
            if (b) MPI_Waitall((int)b, dp->reqs, MPI_STATUSES_IGNORE); // let the posted ones finish
            return mpi_fail(err, __FILE__, __LINE__, "MPI_Iallreduce", rc,
                           "gradient all-reduce, bucket %zu of %zu (%zu floats)", b, nb, cnt);
        }
    }
    MPI_TRY(MPI_Waitall((int)nb, dp->reqs, MPI_STATUSES_IGNORE), "gradient all-reduce of %zu floats in %zu "
               "buckets over %d ranks", n, nb, dp->size);
    const float inv = 1.0f / (float)dp->size;
    for (size_t i = 0; i < n; i++) buf[i] *= inv;
    return 0;
}

int dp_allreduce_sum_double(DataParallel *dp, double *vals, int n, SdcError *err) {
    if (dp->size == 1 || n <= 0) return 0;
    MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, vals, n, MPI_DOUBLE, MPI_SUM, dp->comm), "sum of %d values over %d ranks",
               n, dp->size);
    return 0;
}

int dp_broadcast(DataParallel *dp, void *buf, size_t bytes, int root, SdcError *err) {
    if (root < 0 || root >= dp->size)
        return sdc_err(err, SDC_ERR_ARG, "dp_broadcast: root %d, but there are %d ranks", root, dp->size);
    if (dp->size == 1) return 0;
    const size_t chunk = (size_t)1 << 30; // MPI counts are int
    for (size_t off = 0; off < bytes; off += chunk) {
        const size_t k = bytes - off < chunk ? bytes - off : chunk;
        MPI_TRY(MPI_Bcast((char *)buf + off, (int)k, MPI_BYTE, root, dp->comm), "broadcast of %zu bytes from "
                   "rank %d", bytes, root);
    }
    return 0;
}


static int ov_post(DataParallel *dp, size_t lo, size_t hi, SdcError *err) {
    if (dp->ov_nreq == dp->cap_reqs) {
        int cap = dp->cap_reqs ? 2 * dp->cap_reqs : 16;
        MPI_Request *r = realloc(dp->reqs, (size_t)cap * sizeof *r);
        if (!r) return sdc_err(err, SDC_ERR_OOM, "gradient all-reduce: %d requests", cap);
        dp->reqs = r, dp->cap_reqs = cap;
    }
    MPI_TRY(MPI_Iallreduce(MPI_IN_PLACE, dp->ov_buf + lo, (int)(hi - lo), MPI_FLOAT, MPI_SUM, dp->comm,
                           &dp->reqs[dp->ov_nreq]),
            "overlapped gradient all-reduce of elements [%zu, %zu) over %d ranks", lo, hi, dp->size);
    dp->ov_nreq++;
    return 0;
}

int dp_overlap_begin(DataParallel *dp, float *buf, size_t n, SdcError *err) {
    dp->ov_buf = buf, dp->ov_n = dp->ov_lo = n, dp->ov_nreq = 0;
    (void)err;
    return 0;
}

int dp_overlap_ready(DataParallel *dp, size_t lo, SdcError *err) {
    if (dp->size == 1 || !dp->ov_buf) return 0;
    const double t0 = dp_now();
    size_t per = dp->bucket_bytes / sizeof(float);
    if (per > (size_t)INT_MAX) per = (size_t)INT_MAX;
    while (dp->ov_lo >= lo + per) { // a whole bucket is final: in flight while the backward goes on
        SDC_TRY(ov_post(dp, dp->ov_lo - per, dp->ov_lo, err));
        dp->ov_lo -= per;
        dp->ov_early += (double)per;
    }
    if (dp->ov_nreq) { // let MPI progress what is in flight (no progress thread: it moves inside MPI calls)
        int done = 0;
        MPI_TRY(MPI_Testall(dp->ov_nreq, dp->reqs, &done, MPI_STATUSES_IGNORE), "overlapped gradient all-reduce");
    }
    dp->ov_post_s += dp_now() - t0;
    return 0;
}

int dp_overlap_end(DataParallel *dp, SdcError *err) {
    if (!dp->ov_buf) return sdc_err(err, SDC_ERR_INTERNAL, "dp_overlap_end without dp_overlap_begin");
    if (dp->size == 1) {
        dp->ov_buf = NULL;
        return 0;
    }
    const double t0 = dp_now();
    size_t per = dp->bucket_bytes / sizeof(float);
    if (per > (size_t)INT_MAX) per = (size_t)INT_MAX;
    while (dp->ov_lo > 0) {
        const size_t lo = dp->ov_lo > per ? dp->ov_lo - per : 0;
        SDC_TRY(ov_post(dp, lo, dp->ov_lo, err));
        dp->ov_lo = lo;
    }
    MPI_TRY(MPI_Waitall(dp->ov_nreq, dp->reqs, MPI_STATUSES_IGNORE), "overlapped gradient all-reduce of %zu floats "
            "in %d buckets over %d ranks", dp->ov_n, dp->ov_nreq, dp->size);
    const float inv = 1.0f / (float)dp->size;
    for (size_t i = 0; i < dp->ov_n; i++) dp->ov_buf[i] *= inv;
    dp->ov_exposed_s += dp_now() - t0;
    dp->ov_total += (double)dp->ov_n;
    dp->ov_steps++;
    dp->ov_buf = NULL;
    dp->ov_nreq = 0;
    return 0;
}

int dp_reduce_scatter_mean(DataParallel *dp, float *buf, const int *counts, const int *displs, SdcError *err) {
    if (dp->size == 1) return 0;
    const int r = dp->rank, mine = counts[r];
    float *tmp = malloc((size_t)(mine > 0 ? mine : 1) * sizeof(float));
    if (!tmp) return sdc_err(err, SDC_ERR_OOM, "reduce-scatter: %d floats", mine);
    // the blocks are contiguous in rank order: buf + displs[0] is rank 0's
    int rc = MPI_Reduce_scatter(buf + displs[0], tmp, counts, MPI_FLOAT, MPI_SUM, dp->comm);
    if (rc != MPI_SUCCESS) {
        free(tmp);
        return mpi_fail(err, __FILE__, __LINE__, "MPI_Reduce_scatter", rc, "gradient reduce-scatter over %d ranks",
                       dp->size);
    }
    const float inv = 1.0f / (float)dp->size;
    float *dst = buf + displs[r];
    for (int i = 0; i < mine; i++) dst[i] = tmp[i] * inv;
    free(tmp);
    return 0;
}

int dp_allgather(DataParallel *dp, float *buf, const int *counts, const int *displs, SdcError *err) {
    if (dp->size == 1) return 0;
    MPI_TRY(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs, MPI_FLOAT, dp->comm),
               "parameter all-gather over %d ranks", dp->size);
    return 0;
}

int dp_gather(DataParallel *dp, const float *mine, float *all, const int *counts, const int *displs, SdcError *err) {
    if (dp->size == 1) {
        memcpy(all + displs[0], mine, (size_t)counts[0] * sizeof(float));
        return 0;
    }
    MPI_TRY(MPI_Gatherv(mine, counts[dp->rank], MPI_FLOAT, all, counts, displs, MPI_FLOAT, 0, dp->comm),
               "optimizer-state gather over %d ranks", dp->size);
    return 0;
}

int dp_hook_reduce_scatter_mean(void *dp, float *buf, const int *counts, const int *displs, SdcError *err) {
    return dp_reduce_scatter_mean(dp, buf, counts, displs, err);
}

int dp_hook_allgather(void *dp, float *buf, const int *counts, const int *displs, SdcError *err) {
    return dp_allgather(dp, buf, counts, displs, err);
}

int dp_hook_gather(void *dp, const float *mine, float *all, const int *counts, const int *displs, SdcError *err) {
    return dp_gather(dp, mine, all, counts, displs, err);
}

int dp_hook_allreduce_mean(void *dp, float *buf, size_t n, SdcError *err) {
    return dp_allreduce_mean(dp, buf, n, err);
}

int dp_hook_allreduce_sum(void *dp, double *vals, int n, SdcError *err) {
    return dp_allreduce_sum_double(dp, vals, n, err);
}

void dp_share(int64_t global_batch, int rank, int size, int64_t *first, int64_t *count) {
    if (size < 1) size = 1;
    if (global_batch < 0) global_batch = 0;
    if (rank < 0 || rank >= size) {
        *first = global_batch, *count = 0;
        return;
    }
    const int64_t base = global_batch / size, extra = global_batch % size;
    *count = base + (rank < extra);
    *first = (int64_t)rank * base + (rank < extra ? rank : extra);
}
