// pp.h: pipeline parallelism for the UNet's forward pass over MPI ranks
// (DESIGN "Distribution"): the block list (src/models/unet.h) is cut into
// contiguous stages of near-equal cost, stage s on rank s of the pipeline
// communicator. A pass's rows are split into micro-batches that flow
// through the stages GPipe style: stage 0 starts micro-batch j+1 while
// stage 1 runs j. At a cut the running activation and every open skip
// tensor travel to the next stage (layout (a) of the DESIGN: a linear cut
// with the skips sent along); the last stage sends the UNet output back to
// stage 0, which runs the sampler. Stage 0 keeps several passes in flight
// (pp_submit / pp_wait_any), one per generation run, each run a micro-batch
// whose rows are never split: while the later stages work on one run's
// pass, stage 0 runs its blocks for another run's, so the pipeline stays
// busy across denoising steps (a bubble only when a round of runs starts
// and ends), and every image is the one a single process makes.
//
// CPU backend only (tensors in host memory, MPI over them); a GPU version
// goes behind the same calls with NCCL.
#ifndef SDC_PP_H
#define SDC_PP_H

#include <mpi.h>

#include "core/error.h"
#include "core/tensor.h"
#include "models/unet.h"

typedef struct PpStage {
    MPI_Comm comm;      // the pipeline, a duplicate of the caller's: stage s = rank s
    int stage, stages;
    int micro;          // micro-batches in flight (stage 0 keeps that many generation runs going)
    int *bounds;        // (stages + 1) stage s runs blocks [bounds[s], bounds[s+1])
    double *block_s;    // (blocks) the measured seconds of each block (one row)
    Unet *unet;
    char *send[2], *recv; // host buffers (grown on demand); two sends in flight
    size_t send_cap[2], recv_cap;
    MPI_Request send_req[4]; // header + payload of each send buffer
    MPI_Request out_req[64]; // stage 0: the outputs in flight, by tag (PP_MAX_INFLIGHT)
    double busy_s, wait_s;   // time in blocks / waiting for the previous stage (stages > 0)
    long long passes;
} PpStage;

// Cuts nb blocks of the given costs into `stages` contiguous ranges of
// near-equal cost: bounds (stages + 1 ints), bounds[0] = 0, bounds[stages] =
// nb, every stage at least one block. Fails when there are fewer blocks than
// stages.
int pp_partition_costs(const double *cost, int nb, int stages, int *bounds, SdcError *err);
// The blocks a training run updates (nb flags): with LoRA the transformers
// (the adapters sit on their attention projections), else every block (each
// kind has weights; a layout's param_count is only filled at load). Returns
// how many.
int pp_trainable_blocks(const UnetBlockInfo *bl, int nb, int lora, unsigned char *trainable);
// pp_partition_costs where every stage must hold a trainable block: each
// trainable block and the untrained ones before it (after the last one: the
// rest) are one unit, and the units are cut. Fails with fewer trainable
// blocks than stages, naming both counts.
int pp_partition_trainable(const double *cost, const unsigned char *trainable, int nb, int stages, int *bounds,
                           SdcError *err);
// Refuses a cut given by hand that leaves a stage no block to train, naming
// the stage, its blocks and the first and last trainable block.
int pp_cut_check_trainable(const char *spec, const int *bounds, int stages, const unsigned char *trainable, int nb,
                           SdcError *err);
// The same with the FLOP model as the cost (unet_block_flops for one row at
// latent h x w with ctx_len tokens).
int pp_partition(const Unet *u, int stages, int h, int w, int ctx_len, int *bounds, SdcError *err);
// A cut the user gives (--pipeline-cut "9,13": the first block of stages 1 to
// stages - 1, increasing) into bounds (stages + 1 ints); refused unless it
// names stages - 1 blocks in 1 .. nb - 1, each after the one before.
int pp_cut_parse(const char *spec, int nb, int stages, int *bounds, SdcError *err);

// Collective over comm. micro >= 1. The cut is by measured time: stage 0
// runs one row at latent h x w through the blocks once, timing each (the
// FLOP model misjudges the low-resolution blocks, which run at half the
// GFLOP/s of the others on a CPU), and every stage gets the times; a
// non-empty cut (pp_cut_parse) is taken as it is, nothing timed (block_s 0).
int pp_init(PpStage *p, MPI_Comm comm, Unet *u, const Backend *be, int micro, int h, int w, int ctx_len,
            const char *cut, SdcError *err);
void pp_free(PpStage *p);

#define PP_MAX_INFLIGHT 64

// Stage 0: starts one UNet pass (as unet_forward(u, out, x, timesteps,
// ctx)) through the pipeline without waiting for it: runs this stage's
// blocks on all of x's rows (one micro-batch) and sends the state on; the
// last stage's output lands in out. tag (0 .. PP_MAX_INFLIGHT-1) names the
// pass until pp_wait_any returns it; one pass per tag at a time.
int pp_submit(PpStage *p, Tensor *out, const Tensor *x, const float *timesteps, const Tensor *ctx, int tag,
              SdcError *err);
// Stage 0: waits until any submitted pass's output is in; its tag.
int pp_wait_any(PpStage *p, int *tag, SdcError *err);
// Stages > 0: run passes as they come until stage 0 calls pp_finish.
int pp_serve(PpStage *p, SdcError *err);
// Stage 0: ends every other stage's pp_serve.
int pp_finish(PpStage *p, SdcError *err);


#endif
