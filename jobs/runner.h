// runner.h: runs a Job manifest. The command line, manifest files and (later)
// Slurm array tasks all end here.
#ifndef SDC_RUNNER_H
#define SDC_RUNNER_H

#include "core/error.h"
#include "sdc.pb-c.h"

typedef struct RunOptions {
    int quiet;
} RunOptions;

// The CPU threads this process uses: runtime.threads, or when 0 the cores
// this process may run on, split over the MPI ranks sharing them on this
// node (as torchrun sets OMP_NUM_THREADS). Warns (unless quiet) when ranks x
// threads exceed the cores. Collective under MPI: every rank calls it.
int runner_threads(const Sdc__Job *job, int quiet);
// model.prediction_type as model_files_open takes it (-1: from the model).
int runner_prediction(const Sdc__Job *job);
// The run's peak memory on stderr: the resident set on the CPU; device
// memory in use on a GPU, taken at the end of the run (arenas are allocated
// up front and kept until the model is freed).
struct Backend;
void runner_print_peak_memory(const struct Backend *be);
// `sdc generate` (jobs/generate_runner.c).
int run_generate(const Sdc__Job *job, const RunOptions *opt, SdcError *err);
// `sdc train dreambooth` (jobs/train_runner.c).
int run_dreambooth(const Sdc__Job *job, const RunOptions *opt, SdcError *err);
// `sdc train vae` (jobs/vae_runner.c).
// jobs/train_runner.c: the DreamBooth trainer on a captioned HDF5 dataset
int run_text_to_image(const Sdc__Job *job, const RunOptions *opt, SdcError *err);
int run_train_vae(const Sdc__Job *job, const RunOptions *opt, SdcError *err);
int runner_run(const Sdc__Job *job, const RunOptions *opt, SdcError *err);

#endif
