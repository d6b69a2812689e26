// dp.h: data parallelism over MPI: the gradient all-reduce (mean over the
// ranks of a data communicator, in buckets like torch DDP), sums of loss and
// metrics, broadcasts of parameters / state from one rank, and the split of
// a global batch into per-rank shares. The CPU implementation of the
// DESIGN's "data communicator"; a GPU one (NCCL) goes behind the same calls.
//
// Overlap with the backward pass: dp_overlap_* below.
//
// Reduction order. The mean is an MPI_SUM of each bucket (MPI_Iallreduce,
// every bucket in flight at once, then one wait) followed by a multiply by
// 1/R in f32 on every rank. The order in which the R contributions are added
// is the MPI library's (Open MPI picks recursive doubling, ring or
// Rabenseifner by size), so a sum over 2 or 4 ranks may differ from a single
// process's in the last bits; it does not depend on the bucket size (buckets
// are disjoint element ranges). Every rank gets the same bits: each partial
// sum is formed once and forwarded, or formed by both partners of a pair as
// a+b and b+a, which IEEE addition makes equal (tests/test_dp.c checks it).
// With R a power of two, 1/R is exact and the mean is the correctly rounded
// sum / R.
#ifndef SDC_DP_H
#define SDC_DP_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define DP_BUCKET_DEFAULT ((size_t)25 << 20) // torch DDP's bucket_cap_mb = 25

typedef struct DataParallel {
    MPI_Comm comm;       // a duplicate of the caller's (errors returned, not fatal); MPI_COMM_NULL when size 1
    int rank, size;
    size_t bucket_bytes;
    MPI_Request *reqs;   // (cap_reqs) one per bucket in flight; grown once to the largest buffer's count
    int cap_reqs;
    // the overlapped all-reduce in progress (dp_overlap_*)
    float *ov_buf;
    size_t ov_n, ov_lo;  // buffer, its length, the lowest element already posted
    int ov_nreq;
    double ov_exposed_s; // summed: time in dp_overlap_end (posting the rest, waiting: what the backward did not hide)
    double ov_post_s;    // summed: time posting buckets during the backward
    double ov_early, ov_total; // summed: floats posted during the backward, and in all
    long long ov_steps;
    double ar_s;         // summed: time in dp_allreduce_mean
    long long ar_calls;
} DataParallel;

// comm: the data communicator (MPI_COMM_WORLD for pure data parallelism), or
// MPI_COMM_NULL for one process without MPI. bucket_bytes 0: 25 MiB.
// Collective over comm (it is duplicated).
int dp_init(DataParallel *dp, MPI_Comm comm, size_t bucket_bytes, SdcError *err);
void dp_free(DataParallel *dp);

// buf (n) f32, in place: the element-wise mean over the ranks, identical on
// every rank. Size 1: nothing to do. All ranks call it with the same n.
int dp_allreduce_mean(DataParallel *dp, float *buf, size_t n, SdcError *err);
// vals (n) f64, in place: the sum over the ranks (losses, token counts).
int dp_allreduce_sum_double(DataParallel *dp, double *vals, int n, SdcError *err);
// bytes of buf from rank root to every rank (parameters at start, a resumed state).
int dp_broadcast(DataParallel *dp, void *buf, size_t bytes, int root, SdcError *err);

// The same mean, overlapped with the backward pass (torch DDP's buckets,
// issue order from the last layer): dp_overlap_begin for a flat buffer of
// n floats, dp_overlap_ready as the backward finishes blocks (elements
// [lo, n) are final; lo only decreases), which posts every whole bucket of
// bucket_bytes from the top down at once (MPI_Iallreduce), dp_overlap_end
// after the backward: posts the rest, waits, scales by 1/R. The result is
// dp_allreduce_mean's (the buckets are disjoint element ranges), on every
// rank. ov_exposed_s sums the time dp_overlap_end waits: the part of the
// reduction the backward did not hide.
int dp_overlap_begin(DataParallel *dp, float *buf, size_t n, SdcError *err);
int dp_overlap_ready(DataParallel *dp, size_t lo, SdcError *err);
int dp_overlap_end(DataParallel *dp, SdcError *err);

// ZeRO-1 (sharded optimizer state). Rank r owns the block [displs[r],
// displs[r] + counts[r]) of a buffer; the blocks follow each other in rank
// order. reduce_scatter_mean: rank r's block of buf becomes the mean over
// the ranks (the rest of buf is left stale). allgather: every rank's block
// of buf goes to every rank. gather: each rank's `mine` (its block's worth)
// into all at displs on rank 0 (all is only read on rank 0).
int dp_reduce_scatter_mean(DataParallel *dp, float *buf, const int *counts, const int *displs, SdcError *err);
int dp_allgather(DataParallel *dp, float *buf, const int *counts, const int *displs, SdcError *err);
int dp_gather(DataParallel *dp, const float *mine, float *all, const int *counts, const int *displs, SdcError *err);
int dp_hook_reduce_scatter_mean(void *dp, float *buf, const int *counts, const int *displs, SdcError *err);
int dp_hook_allgather(void *dp, float *buf, const int *counts, const int *displs, SdcError *err);
int dp_hook_gather(void *dp, const float *mine, float *all, const int *counts, const int *displs, SdcError *err);

// The same with the DataParallel as a void * (DbHooks.allreduce_mean /
// .allreduce_sum in src/train/dreambooth.h take these, user = the DataParallel).
int dp_hook_allreduce_mean(void *dp, float *buf, size_t n, SdcError *err);
int dp_hook_allreduce_sum(void *dp, double *vals, int n, SdcError *err);

// Rank `rank`'s contiguous share [first, first + count) of a global batch of
// global_batch samples over `size` ranks: the first global_batch % size
// ranks get one more. Every index in [0, global_batch) is in exactly one share.
void dp_share(int64_t global_batch, int rank, int size, int64_t *first, int64_t *count);

#endif
