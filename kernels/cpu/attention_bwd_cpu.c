// attention_bwd_cpu.c: backward of multi-head scaled dot-product attention
// on the CPU (the forward is attention_cpu.c; the API is in ops_cpu_bwd.h).
//
// Flash-attention-2 style, without the row logsumexp the forward does not
// save: per (batch, head) and block of bq queries, a thread recomputes
//   P  (bq, Lk) = softmax(scale Q_blk . K_h^T)   exact: the whole key row
//   dP (bq, Lk) = dO_blk . V_h^T
//   Di (bq)     = sum_j P_ij dP_ij               (= dO_i . O_i, so the
//                                                  forward output is not needed)
//   dS (bq, Lk) = P (dP - Di)                    in place of dP
//   dQ_blk  = scale dS . K_h                     (written)
//   dK_h   += scale dS^T . Q_blk                 (over the query blocks)
//   dV_h   += P^T . dO_blk
// One (batch, head) is one task, so a head's dK and dV are only ever touched
// by one thread. With at least as many tasks as threads each thread runs
// single-threaded sgemm calls on its own tasks; with fewer (B*H = 1) tasks
// run one after the other with threaded sgemm. A thread holds two (bq, Lk)
// blocks, never a head's full (Lq, Lk) score matrix.
//
// This is the readable reference; it uses plain sgemm (strided straight
// into q, k, v, dout, dq, dk, dv: ld = H*D), not the forward's packed
// register-tiled kernels.
#include "cpu/ops_cpu_bwd.h"
#include "cpu/ops_cpu.h"
#include "cpu/fastmath.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <omp.h>

// Floats of the two blocks a thread aims for (8 MiB), and the query block
// bounds. Big blocks matter here: each sgemm repacks all of K_h or V_h
// (Lk x D), so with D = 40 a block of 32 queries spent most of its time
// packing (measured: 4096 tokens x 8 x 40 ran 2.4 s at bq 32).
#define ATT_BWD_BLOCK_FLOATS ((int64_t)1 << 21)
#define ATT_BWD_BQ_MIN 16
#define ATT_BWD_BQ_MAX 256

size_t cpu_attention_backward_scratch_floats(int Lq, int Lk, int D, int threads) {
    (void)D;
    if (threads < 1) threads = 1;
    // A thread's two blocks: ATT_BWD_BLOCK_FLOATS, and all threads' together
    // within CPU_SCRATCH_BUDGET_FLOATS, but never under ATT_BWD_BQ_MIN rows.
    int64_t per_thread = ATT_BWD_BLOCK_FLOATS;
    if (per_thread * threads > (int64_t)CPU_SCRATCH_BUDGET_FLOATS)
        per_thread = (int64_t)CPU_SCRATCH_BUDGET_FLOATS / threads;
    int64_t bq = per_thread / (2 * (int64_t)Lk);
    if (bq < ATT_BWD_BQ_MIN) bq = ATT_BWD_BQ_MIN;
    if (bq > ATT_BWD_BQ_MAX) bq = ATT_BWD_BQ_MAX;
    if (bq > Lq) bq = Lq;
    return (size_t)threads * (size_t)(2 * bq * Lk);
}

// One (batch, head): qh, doh (Lq, D) and kh, vh (Lk, D), all with row
// stride ld; dqh (Lq, D), dkh, dvh (Lk, D) likewise. P and dP (bq, Lk) are
// the thread's scratch.
static void head_backward(float *dqh, float *dkh, float *dvh, const float *doh, const float *qh,
                          const float *kh, const float *vh, int Lq, int Lk, int D, int ld,
                          int causal, int bq, float *P, float *dP) {
    const float scale = 1.0f / sqrtf((float)D);
    for (int j = 0; j < Lk; j++)
        for (int d = 0; d < D; d++) dkh[(int64_t)j * ld + d] = dvh[(int64_t)j * ld + d] = 0.0f;
    for (int i0 = 0; i0 < Lq; i0 += bq) {
        const int nb = i0 + bq < Lq ? bq : Lq - i0; // rows in this block
        const float *qb = qh + (int64_t)i0 * ld, *dob = doh + (int64_t)i0 * ld; // (nb, D)
        // P (nb, Lk) = scale qb . kh^T, then row softmax (masked keys -> 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, Lk, D, scale, qb, ld, kh, ld,
                    0.0f, P, Lk);
        // dP (nb, Lk) = dob . vh^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, Lk, D, 1.0f, dob, ld, vh, ld,
                    0.0f, dP, Lk);
        for (int r = 0; r < nb; r++) {
            float *p = P + (int64_t)r * Lk, *dp = dP + (int64_t)r * Lk; // (Lk), (Lk)
            const int nk = causal ? (i0 + r + 1 < Lk ? i0 + r + 1 : Lk) : Lk; // keys seen
            // float sums in SIMD lanes, as the forward's softmax: a row of 4096
            // probabilities in [0, 1] sums to ~1e-7 relative.
            float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
            for (int j = 0; j < nk; j++) mx = p[j] > mx ? p[j] : mx;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int j = 0; j < nk; j++) {
                p[j] = fm_expf(p[j] - mx);
                s += p[j];
            }
            const float inv = 1.0f / s;
            float di = 0.0f;
#pragma omp simd reduction(+ : di)
            for (int j = 0; j < nk; j++) {
                p[j] *= inv;
                di += p[j] * dp[j];
            }
#pragma omp simd
            for (int j = 0; j < nk; j++) dp[j] = p[j] * (dp[j] - di);
            for (int j = nk; j < Lk; j++) p[j] = dp[j] = 0.0f;
        }
        // dvh (Lk, D) += P^T (Lk, nb) . dob (nb, D)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Lk, D, nb, 1.0f, P, Lk, dob, ld, 1.0f,
                    dvh, ld);
        // dqb (nb, D) = scale dS (nb, Lk) . kh (Lk, D)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, D, Lk, scale, dP, Lk, kh, ld,
                    0.0f, dqh + (int64_t)i0 * ld, ld);
        // dkh (Lk, D) += scale dS^T (Lk, nb) . qb (nb, D)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Lk, D, nb, scale, dP, Lk, qb, ld, 1.0f,
                    dkh, ld);
    }
}

void cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                            const float *k, const float *v, int B, int Lq, int Lk, int H, int D,
                            int causal, float *scratch, size_t scratch_floats) {
    const int ld = H * D, tasks = B * H;
    int nt = omp_get_max_threads();
    if (tasks < nt) nt = 1; // one task at a time, threaded sgemm inside
    // Query block: the most rows whose two (bq, Lk) blocks fit a thread's share.
    int64_t share = (int64_t)(scratch_floats / (size_t)nt);
    int64_t bq = share / (2 * (int64_t)Lk);
    assert(bq >= 1); // scratch sized by cpu_attention_backward_scratch_floats
    if (bq > ATT_BWD_BQ_MAX) bq = ATT_BWD_BQ_MAX;
    if (bq > Lq) bq = Lq;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        float *P = scratch + (int64_t)omp_get_thread_num() * share; // (bq, Lk)
        float *dP = P + bq * Lk;                                     // (bq, Lk)
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < tasks; t++) {
            const int b = t / H, h = t % H;
            const int64_t oq = (int64_t)b * Lq * ld + (int64_t)h * D; // (b, 0, h, 0)
            const int64_t ok = (int64_t)b * Lk * ld + (int64_t)h * D;
            head_backward(dq + oq, dk + ok, dv + ok, dout + oq, q + oq, k + ok, v + ok, Lq, Lk, D,
                          ld, causal, (int)bq, P, dP);
        }
    }
}
