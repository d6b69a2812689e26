// pp.h: pipeline parallelism for the UNet's forward pass over MPI ranks
// (DESIGN "Distribution"): the block list (src/models/unet.h) is cut into
// contiguous stages of near-equal cost, stage s on rank s of the pipeline
// communicator. A pass's rows are split into micro-batches that flow
// through the stages GPipe style: stage 0 starts micro-batch j+1 while
// stage 1 runs j. At a cut the running activation and every open skip
// tensor travel to the next stage (layout (a) of the DESIGN: a linear cut
// with the skips sent along); the last stage sends the UNet output back to
// stage 0, which runs the sampler. Bubble per pass: (p-1)/(m+p-1).
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
    int micro;          // micro-batches per pass
    int *bounds;        // (stages + 1) stage s runs blocks [bounds[s], bounds[s+1])
    double *block_s;    // (blocks) the measured seconds of each block (one row)
    Unet *unet;
    char *send[2], *recv; // host buffers (grown on demand); two sends in flight
    size_t send_cap[2], recv_cap;
    MPI_Request send_req[4]; // header + payload of each send buffer
    double busy_s, wait_s;   // time in blocks / waiting for the previous stage (stages > 0)
    long long passes;
} PpStage;

// Cuts nb blocks of the given costs into `stages` contiguous ranges of
// near-equal cost: bounds (stages + 1 ints), bounds[0] = 0, bounds[stages] =
// nb, every stage at least one block. Fails when there are fewer blocks than
// stages.
int pp_partition_costs(const double *cost, int nb, int stages, int *bounds, SdcError *err);
// The same with the FLOP model as the cost (unet_block_flops for one row at
// latent h x w with ctx_len tokens).
int pp_partition(const Unet *u, int stages, int h, int w, int ctx_len, int *bounds, SdcError *err);

// Collective over comm. micro >= 1. The cut is by measured time: stage 0
// runs one row at latent h x w through the blocks once, timing each (the
// FLOP model misjudges the low-resolution blocks, which run at half the
// GFLOP/s of the others on a CPU), and every stage gets the times.
int pp_init(PpStage *p, MPI_Comm comm, Unet *u, const Backend *be, int micro, int h, int w, int ctx_len,
            SdcError *err);
void pp_free(PpStage *p);

// Stage 0: one UNet pass through the pipeline, as unet_forward(u, out, x,
// timesteps, ctx). The rows are cut into min(micro, N) micro-batches.
int pp_forward(PpStage *p, Tensor *out, const Tensor *x, const float *timesteps, const Tensor *ctx,
               SdcError *err);
// Stages > 0: run passes as they come until stage 0 calls pp_finish.
int pp_serve(PpStage *p, SdcError *err);
// Stage 0: ends every other stage's pp_serve.
int pp_finish(PpStage *p, SdcError *err);

// unet_forward's signature, for SdModel.unet_fn (user: a PpStage at stage 0).
int pp_unet_fn(void *user, Tensor *out, const Tensor *x, const float *timesteps, const Tensor *ctx,
               SdcError *err);

#endif
