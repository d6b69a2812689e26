// mpi_check.c: see mpi_check.h.
#include "mpi/mpi_check.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int vfail(SdcError *err, const char *file, int line, const char *call, int rc, const char *fmt, va_list ap) {
    char ctx[1024], msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    // the site without the build machine's path: from the project's top folder on
    const char *f = file;
    for (const char *top[] = {"/mpi/", "/data/", "/jobs/", "/src/"}, **t = top; t < top + 4; t++) {
        const char *p = strstr(file, *t);
        if (p) {
            f = p + 1;
            break;
        }
    }
    return sdc_err(err, SDC_ERR_IO, "%s: MPI: %s [%.200s failed at %s:%d]\n---> did a rank die or the network "
                   "drop? the job must end (mpiexec / srun end the other ranks); resume from the last checkpoint",
                   ctx, msg, call, f, line);
}

int mpi_fail(SdcError *err, const char *file, int line, const char *call, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    SdcError tmp;
    int code = vfail(err ? err : &tmp, file, line, call, rc, fmt, ap);
    va_end(ap);
    return code;
}

void mpi_fatal(MPI_Comm comm, const char *file, int line, const char *call, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    SdcError e;
    vfail(&e, file, line, call, rc, fmt, ap);
    va_end(ap);
    int rank = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    fprintf(stderr, "sdc: rank %d: %s\n", rank, e.msg);
    MPI_Abort(comm, SDC_ERR_IO);
    for (;;) // MPI_Abort does not return
        ;
}
