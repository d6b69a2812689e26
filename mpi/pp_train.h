// pp_train.h: pipeline-parallel DreamBooth (DESIGN "Distribution"): the
// UNet's blocks cut into the stages of one replica (mpi/grid.h's pipe), a
// batch's share run as M micro-batches through them on a schedule:
//   GPipe  every forward, then every backward (each stage holds M micro-batches)
//   1F1B   PipeDream-flush: stage s runs min(P - s - 1, M) forwards, then
//          alternates one forward and one backward, then the rest of the
//          backwards (stage s holds at most min(P - s, M) micro-batches)
// Both have the bubble (P - 1) / (M + P - 1) of a step; 1F1B bounds the
// activation memory. Backwards run in micro-batch order 0, 1, ... under both
// schedules, so the parameter gradients are added in the same order whatever
// the schedule and stage count: P = 1 and P = 3 with the same M give the
// same bits (the stages run the one-process arithmetic).
//
// At a cut the running activation, the open skips, the time embedding and
// the context go to the next stage (UnetCut), and their gradients come back;
// the sums of the time embedding's and the context's gradients are continued
// stage by stage in the one-process order. Stage 0 takes each micro-batch's
// inputs from the trainer (db_stage_inputs), the last stage computes the loss
// and its gradient (db_stage_loss), stage 0 hands the context's gradient to
// the text encoder (db_stage_dctx).
//
// CPU backend: the tensors are in host memory and go over MPI directly. A GPU
// version goes behind the same calls with NCCL (src/core/backend.h tensors).
#ifndef SDC_PP_TRAIN_H
#define SDC_PP_TRAIN_H

#include <mpi.h>

#include "core/error.h"
#include "io/weights.h"
#include "models/unet.h"
#include "train/dreambooth.h"

typedef enum { PP_SCHED_1F1B = 0, PP_SCHED_GPIPE = 1 } PpSchedule;

#define PP_CUT_MSGS (3 + UNET_MAX_SKIPS) // header, x, skips, time embedding, context (each a message)

typedef struct PpTrain {
    MPI_Comm comm;      // the pipeline (a duplicate): stage s = rank s
    int stage, stages;
    PpSchedule sched;
    int tapes;          // micro-batches this stage holds at once
    Unet *unet;
    MPI_Request *tape_req; // (tapes x PP_CUT_MSGS) each tape's forward sends (its tensors), done before reuse
    int64_t (*fwd_hdr)[2]; // (tapes) their headers {micro-batch, rows}
    int64_t bwd_hdr[2];
    MPI_Request bwd_req[PP_CUT_MSGS + 1]; // the last backward send (its tensors live in the backward arenas)
    // time this stage spent, summed over run calls: in forward and backward
    // blocks (and the loss), waiting for a neighbour, and in all
    double fwd_s, bwd_s, wait_s, total_s;
    long long steps, micro;
} PpTrain;

// How many micro-batches stage `stage` of `stages` holds at once with M per
// batch under schedule s.
int pp_train_tapes(PpSchedule s, int stage, int stages, int micro);
// Collective over pipe. The UNet holds this stage's blocks, trained with
// pp_train_tapes tapes (unet_train_reserve).
int pp_train_init(PpTrain *p, MPI_Comm pipe, Unet *u, PpSchedule s, int micro, SdcError *err);
void pp_train_free(PpTrain *p);
// DbHooks.pipeline (user = the PpTrain): one batch share of `rows` rows.
int pp_train_run(void *user, DbTrainer *t, int rows, SdcError *err);
int pp_schedule_parse(const char *name, PpSchedule *s, SdcError *err);

// The cut for training (collective over world): rank 0 loads the UNet of mf
// for inference (mapped views), runs `rows` rows at latent h x w through
// every block forward and backward with the options of the run (LoRA,
// checkpointing; parameter gradients to scratch), twice (the first pass
// warms up), and times each block; every rank gets the times (fwd, bwd: the
// model's block count) and the cut: `stages` ranges of near-equal forward +
// backward time, each holding a block the run trains (pp_partition_trainable),
// bounds (stages + 1).
int pp_train_cut(MPI_Comm world, const ModelFiles *mf, const Backend *be, const UnetTrainOpts *o, int rows, int h,
                 int w, int ctx_len, int stages, int *bounds, double *fwd, double *bwd, SdcError *err);

#endif
