// pp_train.c: see pp_train.h.
//
// Messages between neighbours, per micro-batch j (tags keep the directions
// apart; within one, MPI's non-overtaking order matches sends to receives):
//   forward  s -> s+1  header {j, rows} | x | skip 0 .. skip k-1 | temb | ctx
//   backward s+1 -> s  header {j, rows} | dx | dskip 0 .. k-1 | [dtemb] | [dctx]
// Each tensor is its own message, straight from the tape or the backward
// arenas (no packing); the receiver knows every shape from the layout
// (unet_train_cut_in / unet_train_grad_in) and checks each count.
#include "mpi/pp_train.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mpi/mpi_check.h"
#include "mpi/pp.h"

enum { TAG_FWD = 7300, TAG_BWD = 7400 };

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int pp_schedule_parse(const char *name, PpSchedule *s, SdcError *err) {
    if (!name || !name[0] || !strcmp(name, "1f1b")) *s = PP_SCHED_1F1B;
    else if (!strcmp(name, "gpipe")) *s = PP_SCHED_GPIPE;
    else return sdc_err(err, SDC_ERR_ARG, "--pipeline-schedule %s: expected 1f1b or gpipe", name);
    return 0;
}

int pp_train_tapes(PpSchedule s, int stage, int stages, int micro) {
    if (micro < 1) micro = 1;
    if (s == PP_SCHED_GPIPE) return micro;
    const int w = stages - stage;
    return w < micro ? w : micro;
}

int pp_train_init(PpTrain *p, MPI_Comm pipe, Unet *u, PpSchedule s, int micro, SdcError *err) {
    memset(p, 0, sizeof *p);
    p->comm = MPI_COMM_NULL;
    for (int k = 0; k < PP_CUT_MSGS + 1; k++) p->bwd_req[k] = MPI_REQUEST_NULL;
    MPI_TRY(MPI_Comm_dup(pipe, &p->comm), "training pipeline: communicator");
    MPI_TRY(MPI_Comm_set_errhandler(p->comm, MPI_ERRORS_RETURN), "training pipeline: error handler");
    MPI_TRY(MPI_Comm_rank(p->comm, &p->stage), "training pipeline: stage");
    MPI_TRY(MPI_Comm_size(p->comm, &p->stages), "training pipeline: stages");
    p->sched = s;
    p->unet = u;
    p->tapes = pp_train_tapes(s, p->stage, p->stages, micro);
    p->tape_req = malloc((size_t)p->tapes * PP_CUT_MSGS * sizeof *p->tape_req);
    p->fwd_hdr = calloc((size_t)p->tapes, sizeof *p->fwd_hdr);
    if (!p->tape_req || !p->fwd_hdr) return sdc_err(err, SDC_ERR_OOM, "training pipeline: requests");
    for (int k = 0; k < p->tapes * PP_CUT_MSGS; k++) p->tape_req[k] = MPI_REQUEST_NULL;
    return 0;
}

void pp_train_free(PpTrain *p) {
    if (p->comm != MPI_COMM_NULL) {
        if (p->tape_req) MPI_Waitall(p->tapes * PP_CUT_MSGS, p->tape_req, MPI_STATUSES_IGNORE);
        MPI_Waitall(PP_CUT_MSGS + 1, p->bwd_req, MPI_STATUSES_IGNORE);
        MPI_Comm_free(&p->comm);
    }
    free(p->tape_req);
    free(p->fwd_hdr);
    memset(p, 0, sizeof *p);
    p->comm = MPI_COMM_NULL;
}

// ---------------------------------------------------------------------------
// moving a cut
// ---------------------------------------------------------------------------

// The tensors of a cut in message order; ndim 0 ones are absent (x only in
// the gradients handed back to a stage of the time block alone).
static int cut_tensors(const UnetCut *c, const Tensor **t) {
    int n = 0;
    if (c->x.ndim) t[n++] = &c->x;
    for (int k = 0; k < c->n_skips; k++) t[n++] = &c->skips[k];
    if (c->temb.ndim) t[n++] = &c->temb;
    if (c->ctx.ndim) t[n++] = &c->ctx;
    return n;
}

static int isend_cut(PpTrain *p, const UnetCut *c, int64_t hdr[2], int peer, int tag, MPI_Request *req,
                     const char *what, SdcError *err) {
    const Tensor *t[PP_CUT_MSGS];
    const int n = cut_tensors(c, t);
    MPI_TRY(MPI_Isend(hdr, 2, MPI_INT64_T, peer, tag, p->comm, &req[0]), "pipeline: %s header to stage %d", what,
            peer);
    for (int i = 0; i < n; i++) {
        const size_t b = tensor_bytes(t[i]);
        if (b > INT_MAX)
            return sdc_err(err, SDC_ERR_ARG, "pipeline: a %.0f MiB tensor over MPI's 2 GiB message ---> raise "
                           "--micro-batches", b / 1048576.0);
        MPI_TRY(MPI_Isend(t[i]->data, (int)b, MPI_BYTE, peer, tag, p->comm, &req[1 + i]), "pipeline: %s to stage %d",
                what, peer);
    }
    return 0;
}

// Receives into c's tensors (allocated by the caller); the header must name
// micro-batch j of `rows` rows.
static int recv_cut(PpTrain *p, UnetCut *c, int64_t j, int rows, int peer, int tag, const char *what,
                    SdcError *err) {
    int64_t hdr[2];
    MPI_TRY(MPI_Recv(hdr, 2, MPI_INT64_T, peer, tag, p->comm, MPI_STATUS_IGNORE), "pipeline: stage %d: %s header "
            "from stage %d", p->stage, what, peer);
    if (hdr[0] != j || hdr[1] != rows)
        return sdc_err(err, SDC_ERR_INTERNAL, "pipeline: stage %d expected micro-batch %lld of %d rows from stage %d, "
                       "got %lld of %lld", p->stage, (long long)j, rows, peer, (long long)hdr[0], (long long)hdr[1]);
    const Tensor *t[PP_CUT_MSGS];
    const int n = cut_tensors(c, t);
    MPI_Request req[PP_CUT_MSGS];
    for (int i = 0; i < n; i++)
        MPI_TRY(MPI_Irecv(t[i]->data, (int)tensor_bytes(t[i]), MPI_BYTE, peer, tag, p->comm, &req[i]),
                "pipeline: stage %d: %s from stage %d", p->stage, what, peer);
    MPI_Status st[PP_CUT_MSGS];
    MPI_TRY(MPI_Waitall(n, req, st), "pipeline: stage %d: %s from stage %d", p->stage, what, peer);
    for (int i = 0; i < n; i++) {
        int got = 0;
        MPI_Get_count(&st[i], MPI_BYTE, &got);
        if ((size_t)got != tensor_bytes(t[i]))
            return sdc_err(err, SDC_ERR_INTERNAL, "pipeline: stage %d: %s tensor %d from stage %d has %d bytes, "
                           "expected %zu (do the stages cut the same model?)", p->stage, what, i, peer, got,
                           tensor_bytes(t[i]));
    }
    return 0;
}

// ---------------------------------------------------------------------------
// one micro-batch forward / backward on this stage
// ---------------------------------------------------------------------------

static int forward(PpTrain *p, DbTrainer *t, int j, int M, int rows, SdcError *err) {
    Unet *u = p->unet;
    const int tape = j % p->tapes, last = p->stage == p->stages - 1;
    int r0, n;
    db_micro_rows(rows, M, j, &r0, &n);
    MPI_Request *req = &p->tape_req[tape * PP_CUT_MSGS];
    double t0 = now_s();
    MPI_TRY(MPI_Waitall(PP_CUT_MSGS, req, MPI_STATUSES_IGNORE), "pipeline: stage %d: an earlier forward send",
            p->stage);
    UnetCut in, out;
    SDC_TRY(unet_train_cut_in(u, tape, n, &in, err));
    const float *ts = NULL;
    if (p->stage == 0) SDC_TRY(db_stage_inputs(t, r0, n, &in, &ts, err));
    else SDC_TRY(recv_cut(p, &in, j, n, p->stage - 1, TAG_FWD, "activations", err));
    double t1 = now_s();
    SDC_TRY(unet_train_stage_forward(u, tape, ts, &out, err));
    p->fwd_s += now_s() - t1;
    p->wait_s += t1 - t0;
    if (!last) {
        int64_t *hdr = p->fwd_hdr[tape]; // outlives the send
        hdr[0] = j, hdr[1] = n;
        SDC_TRY(isend_cut(p, &out, hdr, p->stage + 1, TAG_FWD, req, "activations", err));
    }
    return 0;
}

static int backward(PpTrain *p, DbTrainer *t, int j, int M, int rows, SdcError *err) {
    Unet *u = p->unet;
    const int tape = j % p->tapes, last = p->stage == p->stages - 1;
    int r0, n;
    db_micro_rows(rows, M, j, &r0, &n);
    double t0 = now_s();
    // the previous backward's send reads the arenas grad_in resets
    MPI_TRY(MPI_Waitall(PP_CUT_MSGS + 1, p->bwd_req, MPI_STATUSES_IGNORE), "pipeline: stage %d: the last gradient "
            "send", p->stage);
    UnetCut gin, gout;
    SDC_TRY(unet_train_grad_in(u, tape, &gin, err));
    double t1 = now_s();
    if (last) {
        UnetCut out;
        SDC_TRY(unet_train_tape_out(u, tape, &out, err));
        SDC_TRY(db_stage_loss(t, r0, n, &out.x, &gin.x, err));
    } else {
        SDC_TRY(recv_cut(p, &gin, j, n, p->stage + 1, TAG_BWD, "gradients", err));
        t1 = now_s();
    }
    if (j == M - 1) SDC_TRY(db_overlap_arm(t, err)); // the replicas' all-reduce runs during this backward
    SDC_TRY(unet_train_stage_backward(u, tape, &gout, err));
    p->bwd_s += now_s() - t1;
    p->wait_s += t1 - t0;
    if (p->stage > 0) {
        int64_t *hdr = p->bwd_hdr;
        hdr[0] = j, hdr[1] = n;
        int first, end, dx_back;
        unet_train_range(u, &first, &end, &dx_back);
        if (!gout.x.ndim != !dx_back)
            return sdc_err(err, SDC_ERR_INTERNAL, "pipeline: stage %d (blocks %d-%d) %s a gradient of its input to "
                           "send back", p->stage, first, end - 1, dx_back ? "has no" : "has");
        SDC_TRY(isend_cut(p, &gout, hdr, p->stage - 1, TAG_BWD, p->bwd_req, "gradients", err));
    } else if (t->cfg.train_text_encoder) {
        SDC_TRY(db_stage_dctx(t, r0, n, &gout.ctx, &gout.text, err));
    }
    return 0;
}

int pp_train_run(void *user, DbTrainer *t, int rows, SdcError *err) {
    PpTrain *p = user;
    const int M = db_micro_count(t, rows), P = p->stages, s = p->stage;
    if (pp_train_tapes(p->sched, s, P, M) > p->tapes)
        return sdc_err(err, SDC_ERR_INTERNAL, "pipeline: %d micro-batches need %d tapes, %d reserved", M,
                       pp_train_tapes(p->sched, s, P, M), p->tapes);
    const double t0 = now_s();
    int f = 0, b = 0; // forwards and backwards done
    if (p->sched == PP_SCHED_GPIPE) {
        for (; f < M; f++) SDC_TRY(forward(p, t, f, M, rows, err));
        for (; b < M; b++) SDC_TRY(backward(p, t, b, M, rows, err));
    } else {
        const int warm = P - s - 1 < M ? P - s - 1 : M;
        for (; f < warm; f++) SDC_TRY(forward(p, t, f, M, rows, err));
        for (; f < M; f++, b++) {
            SDC_TRY(forward(p, t, f, M, rows, err));
            SDC_TRY(backward(p, t, b, M, rows, err));
        }
        for (; b < M; b++) SDC_TRY(backward(p, t, b, M, rows, err));
    }
    // every send done before the step's gradients are reduced and the buffers reused
    MPI_TRY(MPI_Waitall(p->tapes * PP_CUT_MSGS, p->tape_req, MPI_STATUSES_IGNORE), "pipeline: stage %d: forward "
            "sends", s);
    MPI_TRY(MPI_Waitall(PP_CUT_MSGS + 1, p->bwd_req, MPI_STATUSES_IGNORE), "pipeline: stage %d: gradient sends", s);
    p->total_s += now_s() - t0;
    p->steps++;
    p->micro += M;
    return 0;
}

// ---------------------------------------------------------------------------
// the cut
// ---------------------------------------------------------------------------

// Rank 0's timing runs (every block: forward, then backward).
static int time_blocks(const ModelFiles *mf, const Backend *be, const UnetTrainOpts *o, int rows, int h, int w,
                       int ctx_len, double *fwd, double *bwd, int nb, SdcError *err) {
    Unet *u = NULL;
    SDC_TRY(unet_load(&u, mf, be, err));
    UnetTrainOpts to = *o;
    to.tapes = 1, to.time_blocks = 1, to.want_dctx = 1;
    int rc = unet_train_reserve(u, &to, rows, h, w, ctx_len, err);
    float *ts = calloc((size_t)rows, sizeof *ts);
    if (!rc && !ts) rc = sdc_err(err, SDC_ERR_OOM, "pipeline cut: timesteps");
    for (int i = 0; i < rows && ts; i++) ts[i] = 500.0f + i;
    // SDXL: zero pooled embeddings and time ids (values do not change the time)
    const int nid = unet_n_time_ids(u), td = unet_text_dim(u);
    float *ids = nid ? calloc((size_t)rows * nid, sizeof *ids) : NULL;
    Arena text = {0};
    if (!rc && nid) {
        rc = !ids ? sdc_err(err, SDC_ERR_OOM, "pipeline cut: time ids")
                  : arena_init(&text, be, (size_t)rows * td * dtype_size(be->act_dtype) + ARENA_ALIGN, err);
        Tensor tt = {0};
        if (!rc) tt = ARENA_DT(&text, be->act_dtype, rows, td), be->zero(be, tt.data, tensor_bytes(&tt));
        if (!rc) rc = unet_set_added_cond(u, &tt, ids, err);
    }
    for (int pass = 0; !rc && pass < 2; pass++) {
        UnetCut in, out, gin, gout;
        rc = unet_train_cut_in(u, 0, rows, &in, err);
        if (!rc) { // values do not change the time: zeros in, ones as the gradient
            be->zero(be, in.x.data, tensor_bytes(&in.x));
            be->zero(be, in.ctx.data, tensor_bytes(&in.ctx));
        }
        if (!rc) rc = unet_train_stage_forward(u, 0, ts, &out, err);
        if (!rc) rc = unet_train_grad_in(u, 0, &gin, err);
        if (!rc) be->zero(be, gin.x.data, tensor_bytes(&gin.x));
        if (!rc) rc = unet_train_stage_backward(u, 0, &gout, err);
        if (!rc && pass == 0) { // the warm-up pass paid the page faults of the mapped weights: drop it
            memcpy(fwd, unet_train_block_times(u, 0), (size_t)nb * sizeof *fwd);
            memcpy(bwd, unet_train_block_times(u, 1), (size_t)nb * sizeof *bwd);
        }
    }
    if (!rc) {
        const double *f = unet_train_block_times(u, 0), *b = unet_train_block_times(u, 1);
        for (int i = 0; i < nb; i++) fwd[i] = f[i] - fwd[i], bwd[i] = b[i] - bwd[i];
    }
    free(ts), free(ids);
    unet_free(u);
    arena_free(&text);
    return rc;
}

int pp_train_cut(MPI_Comm world, const ModelFiles *mf, const Backend *be, const UnetTrainOpts *o, int rows, int h,
                 int w, int ctx_len, int stages, int *bounds, double *fwd, double *bwd, SdcError *err) {
    UnetBlockInfo *blocks = malloc(UNET_MAX_BLOCKS * sizeof *blocks);
    unsigned char trainable[UNET_MAX_BLOCKS];
    int nb = 0, rank = 0, rc = blocks ? 0 : sdc_err(err, SDC_ERR_OOM, "pipeline cut");
    if (!rc) rc = unet_layout(&model_files_info(mf)->unet, blocks, &nb, err);
    if (!rc) pp_trainable_blocks(blocks, nb, o->lora_rank > 0, trainable);
    free(blocks);
    if (rc) return rc;
    MPI_TRY(MPI_Comm_rank(world, &rank), "pipeline cut: rank");
    rc = rank == 0 ? time_blocks(mf, be, o, rows, h, w, ctx_len, fwd, bwd, nb, err) : 0;
    int ok = !rc;
    MPI_TRY(MPI_Bcast(&ok, 1, MPI_INT, 0, world), "pipeline cut: timing status");
    if (!ok) return rc ? rc : sdc_err(err, SDC_ERR_INTERNAL, "pipeline cut: rank 0 could not time the blocks");
    MPI_TRY(MPI_Bcast(fwd, nb, MPI_DOUBLE, 0, world), "pipeline cut: forward times");
    MPI_TRY(MPI_Bcast(bwd, nb, MPI_DOUBLE, 0, world), "pipeline cut: backward times");
    double *cost = malloc((size_t)nb * sizeof *cost);
    if (!cost) return sdc_err(err, SDC_ERR_OOM, "pipeline cut");
    for (int i = 0; i < nb; i++) cost[i] = fwd[i] + bwd[i];
    rc = pp_partition_trainable(cost, trainable, nb, stages, bounds, err); // (every stage trains something)
    free(cost);
    return rc;
}
