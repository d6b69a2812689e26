// grid.c: see grid.h.
#include "mpi/grid.h"

#include <string.h>

#include "mpi/mpi_check.h"

static int dup_comm(MPI_Comm src, MPI_Comm *out, SdcError *err) {
    MPI_TRY(MPI_Comm_dup(src, out), "rank grid: duplicating a communicator");
    MPI_TRY(MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN), "rank grid: error handler");
    return 0;
}

int grid_init(RankGrid *g, MPI_Comm world, int stages, SdcError *err) {
    memset(g, 0, sizeof *g);
    g->world = g->pipe = g->data = MPI_COMM_NULL;
    g->size = g->stages = g->replicas = 1;
    if (stages < 1) return sdc_err(err, SDC_ERR_ARG, "--pipeline-stages %d: at least 1 stage", stages);
    int size = 1, rank = 0;
    if (world != MPI_COMM_NULL) {
        MPI_TRY(MPI_Comm_size(world, &size), "rank grid: world size");
        MPI_TRY(MPI_Comm_rank(world, &rank), "rank grid: world rank");
    }
    if (size % stages)
        return sdc_err(err, SDC_ERR_ARG, "--pipeline-stages %d does not divide the %d rank%s of this job\n---> run "
                       "a multiple of %d ranks (mpiexec -n %d ..., or srun -n), or change --pipeline-stages",
                       stages, size, size == 1 ? "" : "s", stages, stages * (size / stages + 1));
    if (world == MPI_COMM_NULL) return 0;
    SDC_TRY(dup_comm(world, &g->world, err));
    g->rank = rank, g->size = size, g->stages = stages, g->replicas = size / stages;
    g->stage = rank % stages, g->replica = rank / stages;
    MPI_Comm c;
    MPI_TRY(MPI_Comm_split(g->world, g->replica, g->stage, &c), "rank grid: the pipeline of replica %d", g->replica);
    g->pipe = c;
    MPI_TRY(MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN), "rank grid: error handler");
    MPI_TRY(MPI_Comm_split(g->world, g->stage, g->replica, &c), "rank grid: the replicas of stage %d", g->stage);
    g->data = c;
    MPI_TRY(MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN), "rank grid: error handler");
    return 0;
}

int grid_check_blocks(const RankGrid *g, int blocks, const char *model, SdcError *err) {
    if (g->stages > blocks)
        return sdc_err(err, SDC_ERR_ARG, "--pipeline-stages %d: the %s has only %d blocks to cut\n---> at most %d "
                       "stages", g->stages, model, blocks, blocks);
    return 0;
}

void grid_free(RankGrid *g) {
    int fin = 0;
    if (MPI_Finalized(&fin) == MPI_SUCCESS && !fin) { // cleanup: nothing to report to
        if (g->pipe != MPI_COMM_NULL) MPI_Comm_free(&g->pipe);
        if (g->data != MPI_COMM_NULL) MPI_Comm_free(&g->data);
        if (g->world != MPI_COMM_NULL) MPI_Comm_free(&g->world);
    }
    memset(g, 0, sizeof *g);
    g->world = g->pipe = g->data = MPI_COMM_NULL;
}

// ---------------------------------------------------------------------------
// collectives of a training step
// ---------------------------------------------------------------------------

enum { TAG_TURN = 7500 };

int grid_stage_allgather(const RankGrid *g, const double *mine, int n, double *all, int cap, int *n_all,
                         SdcError *err) {
    if (g->stages == 1 || g->pipe == MPI_COMM_NULL) {
        if (n > cap) return sdc_err(err, SDC_ERR_INTERNAL, "stage gather: %d values, room for %d", n, cap);
        memcpy(all, mine, (size_t)n * sizeof *all);
        *n_all = n;
        return 0;
    }
    int counts[256], displs[256];
    if (g->stages > 256) return sdc_err(err, SDC_ERR_UNSUPPORTED, "%d pipeline stages: at most 256", g->stages);
    MPI_TRY(MPI_Allgather(&n, 1, MPI_INT, counts, 1, MPI_INT, g->pipe), "stage gather: counts");
    int total = 0;
    for (int s = 0; s < g->stages; s++) displs[s] = total, total += counts[s];
    if (total > cap) return sdc_err(err, SDC_ERR_INTERNAL, "stage gather: %d values, room for %d", total, cap);
    MPI_TRY(MPI_Allgatherv(mine, n, MPI_DOUBLE, all, counts, displs, MPI_DOUBLE, g->pipe), "stage gather: %d values",
            total);
    *n_all = total;
    return 0;
}

int grid_stage_bcast(const RankGrid *g, double *v, int n, int root, SdcError *err) {
    if (g->stages == 1 || g->pipe == MPI_COMM_NULL) return 0;
    MPI_TRY(MPI_Bcast(v, n, MPI_DOUBLE, root, g->pipe), "stage broadcast of %d values from stage %d", n, root);
    return 0;
}

int grid_sum(const RankGrid *g, double *v, int n, SdcError *err) {
    if (g->size == 1 || g->world == MPI_COMM_NULL) return 0;
    MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, g->world), "sum of %d values over the ranks", n);
    return 0;
}

int grid_turn_wait(const RankGrid *g, int *status, SdcError *err) {
    *status = 0;
    if (g->stage == 0 || g->pipe == MPI_COMM_NULL) return 0;
    MPI_TRY(MPI_Recv(status, 1, MPI_INT, g->stage - 1, TAG_TURN, g->pipe, MPI_STATUS_IGNORE),
            "stage %d waiting for stage %d's turn", g->stage, g->stage - 1);
    return 0;
}

int grid_turn_pass(const RankGrid *g, int status, SdcError *err) {
    if (g->stage == g->stages - 1 || g->pipe == MPI_COMM_NULL) return 0;
    MPI_TRY(MPI_Send(&status, 1, MPI_INT, g->stage + 1, TAG_TURN, g->pipe), "stage %d passing the turn to stage %d",
            g->stage, g->stage + 1);
    return 0;
}

int grid_turn_end(const RankGrid *g, int *status, SdcError *err) {
    if (g->stages == 1 || g->pipe == MPI_COMM_NULL) return 0;
    MPI_TRY(MPI_Bcast(status, 1, MPI_INT, g->stages - 1, g->pipe), "the stages' turns: the last stage's status");
    return 0;
}
