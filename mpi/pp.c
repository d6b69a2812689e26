// pp.c: see pp.h.
//
// Messages from stage s to s+1, per micro-batch: a header of int64
// (PP_HDR_LEN), then one payload of bytes:
//   time embedding (n, T) | context (n, L, D) | x | skip 0 | ... | skip k-1
// in the backend's activation dtype. The last stage sends the micro-batch's
// output rows (n, Cout, h, w) to stage 0 with tag PP_TAG_OUT + j. A header
// with op PP_OP_QUIT ends pp_serve and is passed on.
#include "mpi/pp.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/arena.h"
#include "mpi/mpi_check.h"

enum { PP_OP_QUIT = 0, PP_OP_FORWARD = 1 };
enum { PP_TAG_HDR = 7100, PP_TAG_DATA = 7101, PP_TAG_OUT = 7200 };
// op, micro-batch j, rows n, h, w, L, D, out channels, n_skips, x shape (4), skip shapes (4 each)
#define PP_HDR_FIXED 13
#define PP_HDR_LEN (PP_HDR_FIXED + 4 * UNET_MAX_SKIPS)

static double pp_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define PP_MPI(call, what) MPI_TRY(call, "pipeline: %s", what)

int pp_partition(const Unet *u, int stages, int h, int w, int ctx_len, int *bounds, SdcError *err) {
    const int nb = unet_block_count(u);
    double *cost = malloc((size_t)(nb > 0 ? nb : 1) * sizeof *cost);
    if (!cost) return sdc_err(err, SDC_ERR_OOM, "pipeline: partition");
    for (int i = 0; i < nb; i++) cost[i] = unet_block_flops(u, i, 1, h, w, ctx_len);
    int rc = pp_partition_costs(cost, nb, stages, bounds, err);
    free(cost);
    return rc;
}

int pp_cut_parse(const char *spec, int nb, int stages, int *bounds, SdcError *err) {
#define CUT_HINT "---> --pipeline-cut B1,B2,... : the first block of each stage after the first, increasing, " \
                 "%d value%s in 1 to %d (a run without it prints the cut it measures)"
    bounds[0] = 0, bounds[stages] = nb;
    const char *s = spec;
    int k = 1;
    while (*s) {
        char *end = NULL;
        errno = 0;
        const long b = strtol(s, &end, 10);
        if (end == s || errno || (*end && *end != ','))
            return sdc_err(err, SDC_ERR_ARG, "--pipeline-cut \"%s\": not a list of block numbers\n" CUT_HINT, spec,
                           stages - 1, stages == 2 ? "" : "s", nb - 1);
        if (k >= stages)
            return sdc_err(err, SDC_ERR_ARG, "--pipeline-cut \"%s\": more than the %d cut%s of %d stages\n" CUT_HINT,
                           spec, stages - 1, stages == 2 ? "" : "s", stages, stages - 1, stages == 2 ? "" : "s",
                           nb - 1);
        if (b <= bounds[k - 1] || b >= nb)
            return sdc_err(err, SDC_ERR_ARG, "--pipeline-cut \"%s\": block %ld %s\n" CUT_HINT, spec, b,
                           b >= nb ? "is past the last block" : k > 1 ? "is not after the cut before it"
                                                                      : "leaves the first stage no block",
                           stages - 1, stages == 2 ? "" : "s", nb - 1);
        bounds[k++] = (int)b;
        s = *end ? end + 1 : end;
    }
    if (k != stages)
        return sdc_err(err, SDC_ERR_ARG, "--pipeline-cut \"%s\": %d cut%s for %d stages\n" CUT_HINT, spec, k - 1,
                       k == 2 ? "" : "s", stages, stages - 1, stages == 2 ? "" : "s", nb - 1);
#undef CUT_HINT
    return 0;
}

int pp_partition_costs(const double *cost, int nb, int stages, int *bounds, SdcError *err) {
    if (stages < 1 || stages > nb)
        return sdc_err(err, SDC_ERR_ARG, "pipeline: %d stages for a UNet of %d blocks ---> at most %d", stages, nb,
                       nb);
    double *cum = malloc((size_t)(nb + 1) * sizeof *cum), floor = 0;
    if (!cum) return sdc_err(err, SDC_ERR_OOM, "pipeline: partition");
    for (int i = 0; i < nb; i++) floor = cost[i] > floor ? cost[i] : floor;
    floor *= 1e-6; // a floor per block: nothing is free
    cum[0] = 0;
    for (int i = 0; i < nb; i++) cum[i + 1] = cum[i] + (cost[i] > floor ? cost[i] : floor);
    // cut s goes where the cumulative cost crosses s/stages of the total,
    // leaving at least one block to every stage on either side
    bounds[0] = 0, bounds[stages] = nb;
    for (int s = 1; s < stages; s++) {
        const double target = cum[nb] * s / stages;
        int b = bounds[s - 1] + 1;
        while (b < nb - (stages - s) && cum[b] < target) b++;
        if (b > bounds[s - 1] + 1 && target - cum[b - 1] < cum[b] - target) b--; // the nearer boundary
        bounds[s] = b;
    }
    free(cum);
    return 0;
}

int pp_trainable_blocks(const UnetBlockInfo *bl, int nb, int lora, unsigned char *trainable) {
    int n = 0;
    for (int i = 0; i < nb; i++)
        n += trainable[i] = lora ? bl[i].kind == UNET_BLOCK_TRANSFORMER : 1; // (every kind has weights)
    return n;
}

int pp_partition_trainable(const double *cost, const unsigned char *trainable, int nb, int stages, int *bounds,
                           SdcError *err) {
    int k = 0;
    for (int i = 0; i < nb; i++) k += trainable[i] != 0;
    if (k < stages)
        return sdc_err(err, SDC_ERR_ARG, "pipeline: %d stages, but this run trains only %d of the UNet's %d blocks "
                       "(a LoRA run trains the attention blocks) ---> at most %d stages", stages, k, nb, k);
    double *unit = malloc((size_t)k * sizeof *unit);
    int *start = malloc((size_t)(k + 1) * sizeof *start), *ub = malloc((size_t)(stages + 1) * sizeof *ub);
    int rc = unit && start && ub ? 0 : sdc_err(err, SDC_ERR_OOM, "pipeline: partition");
    for (int i = 0, j = 0; !rc && i < nb; i++) { // unit j: blocks [start[j], start[j + 1])
        if (i == 0 || (trainable[i - 1] && j < k)) start[j] = i, unit[j++] = 0;
        unit[j - 1] += cost[i];
    }
    if (!rc) start[k] = nb, rc = pp_partition_costs(unit, k, stages, ub, err);
    for (int s = 0; !rc && s <= stages; s++) bounds[s] = start[ub[s]];
    free(unit), free(start), free(ub);
    return rc;
}

int pp_cut_check_trainable(const char *spec, const int *bounds, int stages, const unsigned char *trainable, int nb,
                           SdcError *err) {
    int first = -1, last = -1;
    for (int i = 0; i < nb; i++)
        if (trainable[i]) last = i, first = first < 0 ? i : first;
    for (int s = 0; s < stages; s++) {
        int any = 0;
        for (int i = bounds[s]; i < bounds[s + 1]; i++) any |= trainable[i];
        if (!any)
            return sdc_err(err, SDC_ERR_ARG, "--pipeline-cut \"%s\": stage %d (blocks %d-%d) has no block to train: "
                           "the blocks this run trains lie from %d to %d (a LoRA run trains the attention blocks "
                           "only) ---> cut so that every stage holds one of them, or leave --pipeline-cut out (the "
                           "measured cut does)", spec, s, bounds[s], bounds[s + 1] - 1, first, last);
    }
    return 0;
}

// Rank 0 times every block (one row at latent h x w over zero inputs:
// the time does not depend on the values) and every rank gets the times.
static int measure_blocks(PpStage *p, const Backend *be, int h, int w, int ctx_len, double *t, SdcError *err) {
    Unet *u = p->unet;
    const int nb = unet_block_count(u);
    int rc = 0;
    if (p->stage == 0) {
        const UnetConfig *c = unet_config(u);
        Arena a = {0};
        const size_t bytes = 4 * ARENA_ALIGN + sizeof(float) * ((size_t)(c->in_channels + c->out_channels) * h * w +
                                                                (size_t)ctx_len * c->cross_dim + (size_t)c->add_in_dim);
        rc = arena_init(&a, be, bytes, err);
        float ids[8] = {0};
        if (!rc) {
            Tensor x = ARENA_DT(&a, be->act_dtype, 1, c->in_channels, h, w);
            Tensor out = ARENA_DT(&a, be->act_dtype, 1, c->out_channels, h, w);
            Tensor ctx = ARENA_DT(&a, be->act_dtype, 1, ctx_len, c->cross_dim);
            memset(x.data, 0, tensor_bytes(&x)), memset(ctx.data, 0, tensor_bytes(&ctx));
            if (c->add_time_dim) { // SDXL: zero added conditioning (its time does not depend on the values either)
                Tensor text = ARENA_DT(&a, be->act_dtype, 1, c->add_in_dim - unet_n_time_ids(u) * c->add_time_dim);
                memset(text.data, 0, tensor_bytes(&text));
                rc = unet_set_added_cond(u, &text, ids, err);
            }
            const float ts = 500.0f;
            // twice: the first pass pays the page faults of the mapped
            // weights, which a stage pays once and the cut should not see
            for (int pass = 0; !rc && pass < 2; pass++) {
                UnetState s;
                rc = unet_begin(u, &s, &out, &x, &ts, &ctx, err);
                for (int i = 0; !rc && i < nb; i++) {
                    const double t0 = pp_now();
                    rc = unet_block_forward(u, i, &s, err);
                    t[i] = pp_now() - t0;
                }
            }
        }
        arena_free(&a);
    }
    int ok = !rc;
    PP_MPI(MPI_Bcast(&ok, 1, MPI_INT, 0, p->comm), "MPI_Bcast (block timing status)");
    if (!ok) return rc ? rc : sdc_err(err, SDC_ERR_INTERNAL, "pipeline: stage 0 could not time the blocks");
    PP_MPI(MPI_Bcast(t, nb, MPI_DOUBLE, 0, p->comm), "MPI_Bcast (block times)");
    return 0;
}

int pp_init(PpStage *p, MPI_Comm comm, Unet *u, const Backend *be, int micro, int h, int w, int ctx_len,
            const char *cut, SdcError *err) {
    memset(p, 0, sizeof *p);
    p->comm = MPI_COMM_NULL;
    for (int k = 0; k < 4; k++) p->send_req[k] = MPI_REQUEST_NULL;
    for (int k = 0; k < PP_MAX_INFLIGHT; k++) p->out_req[k] = MPI_REQUEST_NULL;
    if (micro < 1 || micro > PP_MAX_INFLIGHT)
        return sdc_err(err, SDC_ERR_ARG, "pipeline: %d micro-batches in flight; expected 1 to %d", micro,
                       PP_MAX_INFLIGHT);
    PP_MPI(MPI_Comm_dup(comm, &p->comm), "MPI_Comm_dup");
    PP_MPI(MPI_Comm_set_errhandler(p->comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    PP_MPI(MPI_Comm_rank(p->comm, &p->stage), "MPI_Comm_rank");
    PP_MPI(MPI_Comm_size(p->comm, &p->stages), "MPI_Comm_size");
    p->micro = micro;
    p->unet = u;
    const int nb = unet_block_count(u);
    p->bounds = malloc((size_t)(p->stages + 1) * sizeof *p->bounds);
    p->block_s = calloc((size_t)nb, sizeof *p->block_s);
    if (!p->bounds || !p->block_s) return sdc_err(err, SDC_ERR_OOM, "pipeline: bounds");
    if (p->stages == 1) return pp_partition(u, 1, h, w, ctx_len, p->bounds, err);
    if (cut && cut[0]) return pp_cut_parse(cut, nb, p->stages, p->bounds, err);
    SDC_TRY(measure_blocks(p, be, h, w, ctx_len, p->block_s, err));
    return pp_partition_costs(p->block_s, nb, p->stages, p->bounds, err);
}

void pp_free(PpStage *p) {
    if (p->comm != MPI_COMM_NULL) {
        MPI_Waitall(4, p->send_req, MPI_STATUSES_IGNORE);
        for (int k = 0; k < PP_MAX_INFLIGHT; k++)
            if (p->out_req[k] != MPI_REQUEST_NULL) MPI_Cancel(&p->out_req[k]), MPI_Request_free(&p->out_req[k]);
        MPI_Comm_free(&p->comm);
    }
    free(p->bounds), free(p->block_s);
    free(p->send[0]), free(p->send[1]), free(p->recv);
    memset(p, 0, sizeof *p);
    p->comm = MPI_COMM_NULL;
}

static int grow(char **buf, size_t *cap, size_t need, SdcError *err) {
    if (need <= *cap) return 0;
    char *b = realloc(*buf, need);
    if (!b) return sdc_err(err, SDC_ERR_OOM, "pipeline: %zu-byte buffer", need);
    *buf = b, *cap = need;
    return 0;
}

// The state after this stage's blocks, packed into send buffer k and sent on
// (header + payload, both non-blocking; the buffer's previous send is
// waited for first).
static int send_state(PpStage *p, int k, int64_t j, const UnetState *s, const Tensor *ctx, SdcError *err) {
    PP_MPI(MPI_Waitall(2, &p->send_req[2 * k], MPI_STATUSES_IGNORE), "MPI_Wait (send)");
    const int64_t n = s->x.shape[0];
    const size_t ctx_b = tensor_bytes(ctx), temb_b = tensor_bytes(&s->temb);
    size_t bytes = temb_b + ctx_b + tensor_bytes(&s->x);
    for (int i = 0; i < s->n_skips; i++) bytes += tensor_bytes(&s->skips[i]);
    if (bytes > INT_MAX)
        return sdc_err(err, SDC_ERR_ARG, "pipeline: a micro-batch's state is %.0f MiB, over MPI's 2 GiB message "
                       "---> raise --micro-batches", bytes / 1048576.0);
    SDC_TRY(grow(&p->send[k], &p->send_cap[k], bytes + PP_HDR_LEN * sizeof(int64_t), err));
    int64_t *hdr = (int64_t *)p->send[k];
    char *q = p->send[k] + PP_HDR_LEN * sizeof(int64_t);
    memset(hdr, 0, PP_HDR_LEN * sizeof(int64_t));
    hdr[0] = PP_OP_FORWARD, hdr[1] = j, hdr[2] = n, hdr[3] = s->out.shape[2], hdr[4] = s->out.shape[3];
    hdr[5] = ctx->shape[1], hdr[6] = ctx->shape[2], hdr[7] = s->out.shape[1], hdr[8] = s->n_skips;
    for (int d = 0; d < 4; d++) hdr[9 + d] = s->x.shape[d];
    for (int i = 0; i < s->n_skips; i++)
        for (int d = 0; d < 4; d++) hdr[PP_HDR_FIXED + 4 * i + d] = s->skips[i].shape[d];
    memcpy(q, s->temb.data, temb_b), q += temb_b;
    memcpy(q, ctx->data, ctx_b), q += ctx_b;
    memcpy(q, s->x.data, tensor_bytes(&s->x)), q += tensor_bytes(&s->x);
    for (int i = 0; i < s->n_skips; i++) memcpy(q, s->skips[i].data, tensor_bytes(&s->skips[i])), q += tensor_bytes(&s->skips[i]);
    PP_MPI(MPI_Isend(hdr, PP_HDR_LEN, MPI_INT64_T, p->stage + 1, PP_TAG_HDR, p->comm, &p->send_req[2 * k]),
           "MPI_Isend (header)");
    PP_MPI(MPI_Isend(p->send[k] + PP_HDR_LEN * sizeof(int64_t), (int)bytes, MPI_BYTE, p->stage + 1, PP_TAG_DATA,
                     p->comm, &p->send_req[2 * k + 1]),
           "MPI_Isend (state)");
    return 0;
}

int pp_submit(PpStage *p, Tensor *out, const Tensor *x, const float *timesteps, const Tensor *ctx, int tag,
              SdcError *err) {
    Unet *u = p->unet;
    if (p->stage != 0 || p->stages < 2 || tag < 0 || tag >= PP_MAX_INFLIGHT || p->out_req[tag] != MPI_REQUEST_NULL)
        return sdc_err(err, SDC_ERR_INTERNAL, "pp_submit: stage %d of %d, tag %d", p->stage, p->stages, tag);
    if (x->device != DEV_CPU)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "pipeline parallelism runs on the CPU backend in this version "
                       "---> --device cpu, or one whole UNet per GPU rank (no --pipeline-stages)");
    // the output comes back from the last stage straight into out
    PP_MPI(MPI_Irecv(out->data, (int)tensor_bytes(out), MPI_BYTE, p->stages - 1, PP_TAG_OUT + tag, p->comm,
                     &p->out_req[tag]),
           "MPI_Irecv (output)");
    UnetState s;
    SDC_TRY(unet_begin(u, &s, out, x, timesteps, ctx, err));
    for (int b = 0; b < p->bounds[1]; b++) SDC_TRY(unet_block_forward(u, b, &s, err));
    SDC_TRY(send_state(p, (int)(p->passes++ & 1), tag, &s, ctx, err));
    return 0;
}

int pp_wait_any(PpStage *p, int *tag, SdcError *err) {
    int idx = MPI_UNDEFINED;
    PP_MPI(MPI_Waitany(PP_MAX_INFLIGHT, p->out_req, &idx, MPI_STATUS_IGNORE), "MPI_Waitany (outputs)");
    if (idx == MPI_UNDEFINED) return sdc_err(err, SDC_ERR_INTERNAL, "pp_wait_any: nothing in flight");
    *tag = idx;
    return 0;
}

int pp_finish(PpStage *p, SdcError *err) {
    if (p->stage != 0 || p->stages == 1) return 0;
    int64_t hdr[PP_HDR_LEN] = {PP_OP_QUIT};
    PP_MPI(MPI_Waitall(4, p->send_req, MPI_STATUSES_IGNORE), "MPI_Wait (send)");
    PP_MPI(MPI_Send(hdr, PP_HDR_LEN, MPI_INT64_T, 1, PP_TAG_HDR, p->comm), "MPI_Send (quit)");
    return 0;
}

int pp_serve(PpStage *p, SdcError *err) {
    Unet *u = p->unet;
    const Backend *be = NULL;
    const int last = p->stage == p->stages - 1, first = p->bounds[p->stage], end = p->bounds[p->stage + 1];
    char *outbuf[2] = {NULL, NULL};
    size_t outcap[2] = {0, 0};
    MPI_Request outreq[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
    int rc = 0;
    (void)be;
    for (int64_t count = 0;; count++) {
        int64_t hdr[PP_HDR_LEN];
        const double t0 = pp_now();
        int mrc = MPI_Recv(hdr, PP_HDR_LEN, MPI_INT64_T, p->stage - 1, PP_TAG_HDR, p->comm, MPI_STATUS_IGNORE);
        if (mrc != MPI_SUCCESS) {
            rc = mpi_fail(err, __FILE__, __LINE__, "MPI_Recv", mrc, "pipeline: stage %d: header from stage %d",
                          p->stage, p->stage - 1);
            break;
        }
        if (hdr[0] == PP_OP_QUIT) {
            if (!last) {
                MPI_Waitall(4, p->send_req, MPI_STATUSES_IGNORE);
                mrc = MPI_Send(hdr, PP_HDR_LEN, MPI_INT64_T, p->stage + 1, PP_TAG_HDR, p->comm);
                if (mrc != MPI_SUCCESS) rc = mpi_fail(err, __FILE__, __LINE__, "MPI_Send", mrc, "pipeline: quit");
            }
            break;
        }
        const int64_t j = hdr[1], n = hdr[2], h = hdr[3], w = hdr[4], L = hdr[5], D = hdr[6], cout = hdr[7];
        const int nsk = (int)hdr[8];
        if (n < 1 || nsk < 0 || nsk > UNET_MAX_SKIPS || hdr[0] != PP_OP_FORWARD) {
            rc = sdc_err(err, SDC_ERR_INTERNAL, "pipeline: stage %d got a bad header", p->stage);
            break;
        }
        const int64_t *xs = &hdr[9];
        const int64_t(*ss)[4] = (const int64_t(*)[4]) & hdr[PP_HDR_FIXED];
        const DType dt = DT_F32; // the CPU backend's activations
        Tensor xp = tensor_make(dt, DEV_CPU, NULL, 4, (int64_t[]){n, unet_config(u)->in_channels, h, w});
        const size_t temb_b = (size_t)n * 4 * unet_config(u)->block_out[0] * dtype_size(dt);
        size_t bytes = temb_b + (size_t)n * L * D * dtype_size(dt) +
                       (size_t)xs[0] * xs[1] * xs[2] * xs[3] * dtype_size(dt);
        for (int i = 0; i < nsk; i++) bytes += (size_t)ss[i][0] * ss[i][1] * ss[i][2] * ss[i][3] * dtype_size(dt);
        if ((rc = grow(&p->recv, &p->recv_cap, bytes, err))) break;
        mrc = MPI_Recv(p->recv, (int)bytes, MPI_BYTE, p->stage - 1, PP_TAG_DATA, p->comm, MPI_STATUS_IGNORE);
        if (mrc != MPI_SUCCESS) {
            rc = mpi_fail(err, __FILE__, __LINE__, "MPI_Recv", mrc, "pipeline: stage %d: state from stage %d",
                          p->stage, p->stage - 1);
            break;
        }
        const double t1 = pp_now();
        char *q = p->recv;
        const char *temb = q;
        q += temb_b;
        Tensor ctx = tensor_make(dt, DEV_CPU, q, 3, (int64_t[]){n, L, D});
        q += tensor_bytes(&ctx);
        // the last stage writes the output into a send buffer; the others never run OUT
        const int k = (int)(count & 1);
        Tensor out = tensor_make(dt, DEV_CPU, NULL, 4, (int64_t[]){n, cout, h, w});
        if (last) {
            mrc = MPI_Wait(&outreq[k], MPI_STATUS_IGNORE);
            if (mrc != MPI_SUCCESS) {
                rc = mpi_fail(err, __FILE__, __LINE__, "MPI_Wait", mrc, "pipeline: output send");
                break;
            }
            if ((rc = grow(&outbuf[k], &outcap[k], tensor_bytes(&out), err))) break;
            out.data = outbuf[k];
        }
        UnetState s;
        rc = unet_begin_at(u, &s, &out, &xp, &ctx, first, xs, nsk, ss, err);
        if (rc) break;
        memcpy(s.temb.data, temb, temb_b);
        memcpy(s.x.data, q, tensor_bytes(&s.x)), q += tensor_bytes(&s.x);
        for (int i = 0; i < nsk; i++) memcpy(s.skips[i].data, q, tensor_bytes(&s.skips[i])), q += tensor_bytes(&s.skips[i]);
        for (int b = first; !rc && b < end; b++) rc = unet_block_forward(u, b, &s, err);
        if (rc) break;
        if (last) {
            mrc = MPI_Isend(out.data, (int)tensor_bytes(&out), MPI_BYTE, 0, PP_TAG_OUT + (int)j, p->comm, &outreq[k]);
            if (mrc != MPI_SUCCESS) {
                rc = mpi_fail(err, __FILE__, __LINE__, "MPI_Isend", mrc, "pipeline: output to stage 0");
                break;
            }
        } else if ((rc = send_state(p, k, j, &s, &ctx, err))) {
            break;
        }
        p->wait_s += t1 - t0;
        p->busy_s += pp_now() - t1;
        p->passes++;
    }
    MPI_Waitall(2, outreq, MPI_STATUSES_IGNORE);
    free(outbuf[0]), free(outbuf[1]);
    return rc;
}
