// runner.h: runs a Job manifest. The command line, manifest files and (later)
// Slurm array tasks all end here.
#ifndef SDC_RUNNER_H
#define SDC_RUNNER_H

#include "core/error.h"
#include "sdc.pb-c.h"

typedef struct RunOptions {
    int quiet;
} RunOptions;

// `sdc train dreambooth` (jobs/train_runner.c).
int run_dreambooth(const Sdc__Job *job, const RunOptions *opt, SdcError *err);
int runner_run(const Sdc__Job *job, const RunOptions *opt, SdcError *err);

#endif
