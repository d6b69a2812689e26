// mpi_check.h: the one way sdc checks an MPI call. Every call's status goes
// through MPI_TRY (return the error) or MPI_TRY_GOTO (jump to a cleanup
// label); on failure the SdcError in scope (err) gets the caller's context,
// MPI's own message, the call and its site, and a hint:
//   "pipeline: send to stage 1: MPI: MPI_ERR_PROC_FAILED: ... [MPI_Send(...) failed
//    at mpi/pp.c:210] ---> did a rank die or the network drop? ..."
// The communicators sdc makes return errors (MPI_ERRORS_RETURN) instead of
// aborting, so a rank can report and stop cleanly. Used by mpi/ and data/
// (parallel HDF5 needs MPI; data/h5util.h's MPI_TRY is this one).
#ifndef SDC_MPI_CHECK_H
#define SDC_MPI_CHECK_H

#include <mpi.h>

#include "core/error.h"

#define MPI_TRY(call, ...)                                                                          \
    do {                                                                                            \
        int mpi_rc_ = (call);                                                                       \
        if (mpi_rc_ != MPI_SUCCESS) return mpi_fail(err, __FILE__, __LINE__, #call, mpi_rc_, __VA_ARGS__); \
    } while (0)

#define MPI_TRY_GOTO(label, call, ...)                                                              \
    do {                                                                                            \
        int mpi_rc_ = (call);                                                                       \
        if (mpi_rc_ != MPI_SUCCESS) {                                                               \
            mpi_fail(err, __FILE__, __LINE__, #call, mpi_rc_, __VA_ARGS__);                         \
            goto label;                                                                             \
        }                                                                                           \
    } while (0)

// For the few calls with no error path (storage helpers over
// MPI_COMM_WORLD, whose handler ends the job anyway): on failure the same
// message on stderr, then MPI_Abort(comm) with a non-zero status.
#define MPI_TRY_FATAL(comm, call, ...)                                                              \
    do {                                                                                            \
        int mpi_rc_ = (call);                                                                       \
        if (mpi_rc_ != MPI_SUCCESS) mpi_fatal((comm), __FILE__, __LINE__, #call, mpi_rc_, __VA_ARGS__); \
    } while (0)

// Fills err (SDC_ERR_IO) and returns its code.
int mpi_fail(SdcError *err, const char *file, int line, const char *call, int rc, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
_Noreturn void mpi_fatal(MPI_Comm comm, const char *file, int line, const char *call, int rc, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

#endif
