// grid.h: the rank grid (DESIGN "Distribution"): world = stages x replicas.
// Ranks [r * stages, (r + 1) * stages) form pipeline (replica) r, stage
// rank % stages: consecutive ranks, so a pipeline's stages sit on one node
// when the launcher fills nodes in order (srun's block distribution), where
// the activation traffic is, while the replicas exchange only gradients.
//   pipe   the ranks of this rank's replica, in stage order (activations)
//   data   the ranks of this rank's stage across the replicas (gradients)
// Both return errors (MPI_ERRORS_RETURN). Generation and training both make
// their communicators here. On GPUs each gets an NCCL communicator next to it
// (the unique id broadcast over MPI); on CPUs the same calls run over MPI.
#ifndef SDC_GRID_H
#define SDC_GRID_H

#include <mpi.h>

#include "core/error.h"

typedef struct RankGrid {
    MPI_Comm world;        // a duplicate of the caller's; MPI_COMM_NULL: one process without MPI
    int rank, size;        // in world
    int stages, replicas;  // size = stages x replicas
    int stage, replica;    // rank = replica * stages + stage
    MPI_Comm pipe;         // this replica's ranks (size stages); MPI_COMM_NULL without MPI
    MPI_Comm data;         // this stage's ranks across replicas (size replicas); MPI_COMM_NULL without MPI
} RankGrid;

// Collective over world (MPI_COMM_NULL: one process, a 1 x 1 grid). Refuses,
// before any work, a stage count below 1 or one that does not divide the
// ranks, naming both numbers.
int grid_init(RankGrid *g, MPI_Comm world, int stages, SdcError *err);
// Refuses more stages than a model has blocks to cut, naming both numbers.
int grid_check_blocks(const RankGrid *g, int blocks, const char *model, SdcError *err);
void grid_free(RankGrid *g);

// ---- collectives of a training step (DbHooks, src/train/dreambooth.h) ----
// Over this replica's stages: every stage's n doubles, concatenated in stage
// order, to all (*n_all, at most cap); n doubles from stage root to all.
int grid_stage_allgather(const RankGrid *g, const double *mine, int n, double *all, int cap, int *n_all,
                         SdcError *err);
int grid_stage_bcast(const RankGrid *g, double *v, int n, int root, SdcError *err);
// Over every rank: in-place sum of n doubles.
int grid_sum(const RankGrid *g, double *v, int n, SdcError *err);
// Stages taking turns (writing one file): grid_turn_wait returns the status
// the previous stage passed on (0 on stage 0), grid_turn_pass hands this
// stage's on to the next; the last stage's is every stage's after
// grid_turn_end (a broadcast from the last stage).
int grid_turn_wait(const RankGrid *g, int *status, SdcError *err);
int grid_turn_pass(const RankGrid *g, int status, SdcError *err);
int grid_turn_end(const RankGrid *g, int *status, SdcError *err);

#endif
