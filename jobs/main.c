// main.c: the sdc command. Parses the command line into a job manifest and
// hands it to the runner. Only main decides to exit.
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/h5util.h"
#include "jobs/cli.h"
#include "jobs/manifest.h"
#include "jobs/runner.h"
#include "jobs/stop.h"
#include "jobs/submit.h"
#include "mpi/mpi_check.h"

static int sdc_main(int argc, char **argv);

// Under mpiexec / srun (their environment says so) sdc is one rank of a job
// and initialises MPI; run by hand it stays a plain process with no MPI.
static int launched_by_mpi(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

int main(int argc, char **argv) {
    h5_lib_start(); // before any HDF5 call: no atexit close of files (data/h5util.h)
    int use_mpi = launched_by_mpi();
    // MPI_COMM_WORLD keeps MPI's default handler (a failed call on it ends
    // the job); the communicators sdc makes return errors (mpi/mpi_check.h)
    if (use_mpi) MPI_TRY_FATAL(MPI_COMM_WORLD, MPI_Init(&argc, &argv), "starting MPI");
    int rc = sdc_main(argc, argv);
    h5_lib_finish(rc == 0 || rc == SDC_EXIT_RESUMABLE);
    if (use_mpi) {
        // a failed rank ends the whole job now rather than leaving the others
        // waiting in a collective call (a stop on a signal is agreed by all)
        if (rc && rc != SDC_EXIT_RESUMABLE) MPI_Abort(MPI_COMM_WORLD, rc);
        MPI_TRY_FATAL(MPI_COMM_WORLD, MPI_Finalize(), "ending MPI");
    }
    return rc;
}

static int sdc_main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "submit")) return submit_main(argc, argv);
    SdcError err = {0};
    Sdc__Job *job = NULL;
    CliOptions opt;
    int rc = cli_parse(argc, argv, &job, &opt, &err);
    if (rc == SDC_ERR_OOM) { // not a bad command line
        fprintf(stderr, "sdc: error: %s\n", err.msg);
        return 1;
    }
    if (rc) {
        fprintf(stderr, "sdc: %s\n", err.msg);
        return 2;
    }
    if (opt.help) return 0;
    if (opt.dump_manifest) {
        manifest_print_text(stdout, &job->base, 0);
        cli_job_free(job);
        return 0;
    }
    RunOptions ro = {.quiet = opt.quiet};
    rc = runner_run(job, &ro, &err);
    cli_job_free(job);
    if (rc == SDC_ERR_STOPPED) {
        fprintf(stderr, "sdc: stopped: %s\n", err.msg);
        return SDC_EXIT_RESUMABLE;
    }
    if (rc) {
        fprintf(stderr, "sdc: error: %s\n", err.msg[0] ? err.msg : sdc_err_name(rc));
        return 1;
    }
    return 0;
}
