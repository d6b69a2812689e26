// attention_cpu.c: multi-head scaled dot-product attention on the CPU.
//
// Work is cut into tasks (batch, head, block of bq queries); each OpenMP
// thread takes a contiguous run of tasks (so mostly one head at a time) and
// per task computes, in its own scratch:
//   Kp = K_h^T packed in panels of 16 keys, (ldk/16, D, 16), zero-padded to
//        ldk = Lk rounded up to 16 (rebuilt only when the thread moves to
//        another head; panels keep the kernel's reads sequential, where a
//        plain (D, Lk) transpose has a 16 KB row stride that maps all D rows
//        to one L1 set)
//   S (bq, ldk) = scale * Q_blk (bq, D) . Kp     // register-tiled kernel below
//   S <- exp(S - row max), l = row sums           (exact softmax: the whole key
//                                                  row is there)
//   Vp = V_h packed in panels of 16 columns (rebuilt with Kp)
//   O_blk (bq, D) = S (bq, Lk) . Vp / l           // register-tiled kernel
//                                                  (sgemm on V_h when D % 8 != 0),
//                                                  straight into out (ld H*D)
// So a thread holds one (bq, Lk) block of scores, never a head's full
// (Lq, Lk) matrix: 4096 self-attention keys cost 4096 * bq floats a thread.
//
// Why not sgemm: with D = 40 the Q.K^T inner dimension is tiny and P.V has
// only 40 columns, and OpenBLAS repacks all of K_h or V_h (and S) for every
// query block. Packing K and V once per head and keeping 6x16 tiles in
// registers measured, per thread at 4096 tokens x 8 heads x 40:
// Q.K^T ~60 ms (about 1.5x faster than sgemm), P.V 61 ms (sgemm 85 ms); the whole op went
// from 238 ms to 142 ms on 2 threads (bench_ops_cpu, attn_self_4096x8x40).
#include "cpu/ops_cpu.h"
#include "cpu/fastmath.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

// Scores a thread holds at once: about ATT_BLOCK_FLOATS, and a query block of
// ATT_BQ_MIN..ATT_BQ_MAX rows, a multiple of QK_MR.
#define ATT_BLOCK_FLOATS ((int64_t)1 << 18)
#define ATT_BQ_MIN 24
#define ATT_BQ_MAX 252
#define QK_MR 6  // query rows per register tile
#define QK_NR 16 // keys per register tile (two 8-float vectors)

typedef float v8f __attribute__((vector_size(32)));
typedef float v8f_u __attribute__((vector_size(32), aligned(4), may_alias)); // unaligned access

static int att_ldk(int Lk) { return (Lk + QK_NR - 1) / QK_NR * QK_NR; }

static int att_block_rows(int Lq, int Lk) {
    int64_t bq = ATT_BLOCK_FLOATS / att_ldk(Lk);
    if (bq < ATT_BQ_MIN) bq = ATT_BQ_MIN;
    if (bq > ATT_BQ_MAX) bq = ATT_BQ_MAX;
    bq = bq / QK_MR * QK_MR;
    if (bq > Lq) bq = Lq;
    if (bq < 1) bq = 1;
    return (int)bq;
}

// One thread's scratch: packed K^T (D, ldk), packed V (Lk, D), scores
// (bq, ldk), 1/row sums (bq); each part rounded up to 16 floats (64 bytes).
static int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }
static int64_t att_thread_floats(int bq, int Lk, int D) {
    int64_t ldk = att_ldk(Lk);
    return round16((int64_t)D * ldk) + round16((int64_t)Lk * D) + round16((int64_t)bq * ldk) +
           round16(bq);
}

size_t cpu_attention_scratch_floats(int Lq, int Lk, int D, int threads) {
    if (threads < 1) threads = 1;
    return (size_t)threads * (size_t)att_thread_floats(att_block_rows(Lq, Lk), Lk, D);
}

// kp (ldk/16, D, 16) <- k_h^T in panels, for k_h (Lk, D) with row stride
// ld; keys Lk..ldk-1 are 0.
static void build_kt(float *kp, const float *kh, int Lk, int D, int ld, int ldk) {
    for (int j0 = 0; j0 < ldk; j0 += QK_NR) {
        float *panel = kp + (int64_t)j0 * D; // (D, 16)
        for (int j = j0; j < j0 + QK_NR; j++)
            for (int d = 0; d < D; d++)
                panel[d * QK_NR + (j - j0)] = j < Lk ? kh[(int64_t)j * ld + d] : 0.0f;
    }
}

// s (rows, ldk) = scale * q (rows, D; row stride ld) . K^T from the panels
// kt (ldk/16, D, 16), for key columns 0..ncols-1 (ncols a multiple of 16).
static void qk_block(float *s, int ldk, const float *q, int ld, const float *kt, int rows, int D,
                     int ncols, float scale) {
    int i = 0;
    for (; i + QK_MR <= rows; i += QK_MR) {
        const float *q0 = q + (int64_t)i * ld, *q1 = q0 + ld, *q2 = q1 + ld;
        const float *q3 = q2 + ld, *q4 = q3 + ld, *q5 = q4 + ld;
        for (int j = 0; j < ncols; j += QK_NR) {
            v8f a0 = {0}, b0 = {0}, a1 = {0}, b1 = {0}, a2 = {0}, b2 = {0};
            v8f a3 = {0}, b3 = {0}, a4 = {0}, b4 = {0}, a5 = {0}, b5 = {0};
            const float *kp = kt + (int64_t)j * D; // panel j / 16: (D, 16)
            for (int d = 0; d < D; d++, kp += QK_NR) {
                v8f k0 = *(const v8f_u *)kp, k1 = *(const v8f_u *)(kp + 8);
                a0 += k0 * q0[d]; b0 += k1 * q0[d];
                a1 += k0 * q1[d]; b1 += k1 * q1[d];
                a2 += k0 * q2[d]; b2 += k1 * q2[d];
                a3 += k0 * q3[d]; b3 += k1 * q3[d];
                a4 += k0 * q4[d]; b4 += k1 * q4[d];
                a5 += k0 * q5[d]; b5 += k1 * q5[d];
            }
            float *sp = s + (int64_t)i * ldk + j;
            *(v8f_u *)(sp) = a0 * scale; *(v8f_u *)(sp + 8) = b0 * scale; sp += ldk;
            *(v8f_u *)(sp) = a1 * scale; *(v8f_u *)(sp + 8) = b1 * scale; sp += ldk;
            *(v8f_u *)(sp) = a2 * scale; *(v8f_u *)(sp + 8) = b2 * scale; sp += ldk;
            *(v8f_u *)(sp) = a3 * scale; *(v8f_u *)(sp + 8) = b3 * scale; sp += ldk;
            *(v8f_u *)(sp) = a4 * scale; *(v8f_u *)(sp + 8) = b4 * scale; sp += ldk;
            *(v8f_u *)(sp) = a5 * scale; *(v8f_u *)(sp + 8) = b5 * scale;
        }
    }
    for (; i < rows; i++) { // leftover rows, one at a time
        const float *q0 = q + (int64_t)i * ld;
        for (int j = 0; j < ncols; j += QK_NR) {
            v8f a0 = {0}, b0 = {0};
            const float *kp = kt + (int64_t)j * D;
            for (int d = 0; d < D; d++, kp += QK_NR) {
                a0 += *(const v8f_u *)kp * q0[d];
                b0 += *(const v8f_u *)(kp + 8) * q0[d];
            }
            float *sp = s + (int64_t)i * ldk + j;
            *(v8f_u *)(sp) = a0 * scale;
            *(v8f_u *)(sp + 8) = b0 * scale;
        }
    }
}

// Rows of s (rows, ld), already scaled: s <- exp(s - row max) over the row's
// keys, inv_sum[i] <- 1 / row sum; keys past a row's causal limit (up to
// lk_eff) are set to 0. round_p: each exp then rounded to bf16 (nearest
// even), the sum kept from the unrounded ones (cpu_attention_bf16p).
static inline __attribute__((always_inline)) void block_exp(float *s, float *inv_sum, int rows, int ld, int q0,
                                                            int lk_eff, int causal, const int round_p) {
    for (int i = 0; i < rows; i++) {
        float *r = s + (int64_t)i * ld; // (lk_eff)
        int n = lk_eff;
        if (causal && q0 + i + 1 < n) n = q0 + i + 1; // keys j <= query index
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int j = 0; j < n; j++) mx = r[j] > mx ? r[j] : mx;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < n; j++) {
            float e = fm_expf(r[j] - mx);
            r[j] = e;
            sum += e;
        }
        inv_sum[i] = 1.0f / sum;
        if (round_p) {
#pragma omp simd
            for (int j = 0; j < n; j++) {
                uint32_t u;
                memcpy(&u, &r[j], 4); // a finite exp in (0, 1]: no NaN to keep
                u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
                memcpy(&r[j], &u, 4);
            }
        }
        for (int j = n; j < lk_eff; j++) r[j] = 0.0f;
    }
}

// ---- P.V ---------------------------------------------------------------------
// o (rows, D; ld) = p (rows, n; ldp) . V, each output row scaled by
// inv_sum[row], with V packed per head as vp (D/16 panels, Lk, 16) (a last
// panel of 8 when D % 16 == 8). Register tile: 6 rows x 16 columns of D, so
// each V load feeds 6 FMAs and the panel streams sequentially. Used when D
// is a multiple of 8 (every SD head dim: 40, 64, 80, 160); other D go
// through sgemm on V in place.
#define PV_MR 6

// vp <- v_h (Lk, D; row stride ld) in panels of 16 (or a last 8) columns.
static void build_vp(float *vp, const float *vh, int Lk, int D, int ld) {
    for (int d0 = 0; d0 < D; d0 += 16) {
        int w = D - d0 < 16 ? D - d0 : 16;
        float *panel = vp + (int64_t)d0 * Lk; // (Lk, w)
        for (int j = 0; j < Lk; j++)
            for (int c = 0; c < w; c++) panel[(int64_t)j * w + c] = vh[(int64_t)j * ld + d0 + c];
    }
}

static inline __attribute__((always_inline)) void pv_tile(float *o, int ld, const float *p, int ldp,
                                                          const float *panel, int n,
                                                          const float *inv, const int MR,
                                                          const int NV) {
    v8f a[PV_MR][2];
    for (int r = 0; r < MR; r++) a[r][0] = a[r][1] = (v8f){0};
    for (int j = 0; j < n; j++) {
        v8f x0 = *(const v8f_u *)(panel + (int64_t)j * 8 * NV);
        v8f x1 = x0;
        if (NV == 2) x1 = *(const v8f_u *)(panel + (int64_t)j * 16 + 8);
        for (int r = 0; r < MR; r++) {
            float pr = p[(int64_t)r * ldp + j];
            a[r][0] += x0 * pr;
            if (NV == 2) a[r][1] += x1 * pr;
        }
    }
    for (int r = 0; r < MR; r++) {
        *(v8f_u *)(o + (int64_t)r * ld) = a[r][0] * inv[r];
        if (NV == 2) *(v8f_u *)(o + (int64_t)r * ld + 8) = a[r][1] * inv[r];
    }
}

static void pv_block(float *out, int ld, const float *p, int ldp, const float *vp, int Lk, int rows,
                     int n, int D, const float *inv_sum) {
    for (int d0 = 0; d0 < D; d0 += 16) {
        const float *panel = vp + (int64_t)d0 * Lk;
        int two = D - d0 >= 16;
        int i = 0;
        for (; i + PV_MR <= rows; i += PV_MR) {
            float *o = out + (int64_t)i * ld + d0;
            const float *pp = p + (int64_t)i * ldp;
            if (two) pv_tile(o, ld, pp, ldp, panel, n, inv_sum + i, PV_MR, 2);
            else pv_tile(o, ld, pp, ldp, panel, n, inv_sum + i, PV_MR, 1);
        }
        for (; i < rows; i++) { // leftover rows
            float *o = out + (int64_t)i * ld + d0;
            const float *pp = p + (int64_t)i * ldp;
            if (two) pv_tile(o, ld, pp, ldp, panel, n, inv_sum + i, 1, 2);
            else pv_tile(o, ld, pp, ldp, panel, n, inv_sum + i, 1, 1);
        }
    }
}

static inline __attribute__((always_inline)) void attention_run(float *out, const float *q, const float *k,
                                                                const float *v, int B, int Lq, int Lk, int H,
                                                                int D, int causal, float *scratch,
                                                                size_t scratch_floats, const int round_p) {
    const int bq = att_block_rows(Lq, Lk);
    const int nblk = (Lq + bq - 1) / bq;
    const int64_t ntask = (int64_t)B * H * nblk;
    const int ld = H * D; // row stride of q, k, v, out
    const int ldk = att_ldk(Lk);
    const float scale = 1.0f / sqrtf((float)D);
    const int64_t per_thread = att_thread_floats(bq, Lk, D);
    if (ntask == 0 || Lk == 0) return;

    int nt = omp_get_max_threads();
    if ((int64_t)nt > (int64_t)(scratch_floats / (size_t)per_thread))
        nt = (int)(scratch_floats / (size_t)per_thread);
    if (nt < 1) nt = 1; // caller sized scratch for at least one thread
    if (nt > ntask) nt = (int)ntask;

#pragma omp parallel num_threads(nt)
    {
        float *kt = scratch + (int64_t)omp_get_thread_num() * per_thread; // (ldk/16, D, 16)
        float *vp = kt + round16((int64_t)D * ldk);                         // (D/16, Lk, 16)
        float *s = vp + round16((int64_t)Lk * D);                           // (bq, ldk)
        float *inv_sum = s + round16((int64_t)bq * ldk);                    // (bq)
        int64_t kt_head = -1; // (b*H + h) whose K^T and V are packed in kt, vp
        // static: contiguous runs of tasks, so a thread rebuilds Kt rarely
#pragma omp for schedule(static)
        for (int64_t task = 0; task < ntask; task++) {
            int blk = (int)(task % nblk);
            int64_t bh = task / nblk;
            int h = (int)(bh % H), b = (int)(bh / H);
            int q0 = blk * bq;
            int rows = Lq - q0 < bq ? Lq - q0 : bq;
            int lk_eff = Lk;
            if (causal && q0 + rows < lk_eff) lk_eff = q0 + rows; // later keys all masked
            const float *qb = q + ((int64_t)b * Lq + q0) * ld + (int64_t)h * D; // (rows, D) ld
            const float *kh = k + (int64_t)b * Lk * ld + (int64_t)h * D;        // (Lk, D) ld
            const float *vh = v + (int64_t)b * Lk * ld + (int64_t)h * D;        // (Lk, D) ld
            float *ob = out + ((int64_t)b * Lq + q0) * ld + (int64_t)h * D;     // (rows, D) ld
            if (kt_head != bh) {
                build_kt(kt, kh, Lk, D, ld, ldk);
                if (D % 8 == 0) build_vp(vp, vh, Lk, D, ld);
                kt_head = bh;
            }
            qk_block(s, ldk, qb, ld, kt, rows, D, att_ldk(lk_eff), scale);
            block_exp(s, inv_sum, rows, ldk, q0, lk_eff, causal, round_p);
            if (D % 8 == 0) {
                pv_block(ob, ld, s, ldk, vp, Lk, rows, lk_eff, D, inv_sum);
            } else {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, D, lk_eff, 1.0f, s,
                            ldk, vh, ld, 0.0f, ob, ld);
                for (int i = 0; i < rows; i++) {
                    float *o = ob + (int64_t)i * ld; // (D)
#pragma omp simd
                    for (int d = 0; d < D; d++) o[d] *= inv_sum[i];
                }
            }
        }
    }
}

void cpu_attention(float *out, const float *q, const float *k, const float *v, int B, int Lq,
                   int Lk, int H, int D, int causal, float *scratch, size_t scratch_floats) {
    attention_run(out, q, k, v, B, Lq, Lk, H, D, causal, scratch, scratch_floats, 0);
}

void cpu_attention_bf16p(float *out, const float *q, const float *k, const float *v, int B, int Lq,
                         int Lk, int H, int D, int causal, float *scratch, size_t scratch_floats) {
    attention_run(out, q, k, v, B, Lq, Lk, H, D, causal, scratch, scratch_floats, 1);
}
