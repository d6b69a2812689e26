// stop.h: a graceful stop on a signal. Slurm warns a job before its time
// limit or a preemption (`#SBATCH --signal=B:USR1@SECONDS`, forwarded to the
// ranks by the batch script), and sends SIGTERM on `scancel`; a user presses
// Ctrl-C. sdc then finishes the step at hand, saves what a re-run needs
// (a training checkpoint; the `done` mask of an HDF5 generation output) and
// exits with SDC_EXIT_RESUMABLE, which the rendered sbatch script answers
// with `scontrol requeue`. A second signal of the same kind takes its
// default action (the process ends at once).
#ifndef SDC_STOP_H
#define SDC_STOP_H

#include "data/h5util.h"

// sysexits' EX_TEMPFAIL: stopped early, state saved, run the same job again
#define SDC_EXIT_RESUMABLE 75

// Catches SIGUSR1, SIGTERM and SIGINT (once each). Idempotent.
void stop_install(void);
// The first signal caught by this process, 0 if none.
int stop_signal(void);
// Collective over par's ranks (every rank must call it at the same point):
// the signal any rank caught, 0 if none, so that all ranks stop together.
int stop_agree(const H5Par *par);
// "SIGUSR1", "SIGTERM", "SIGINT" or "signal N".
const char *stop_signal_name(int sig);

#endif
