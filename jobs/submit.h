// submit.h: `sdc submit MANIFEST [options]`: renders the Slurm batch script
// of a job and hands it to sbatch. One rank per GPU (or --ntasks-per-node
// ranks on CPUs), `srun --mpi=pmix`; before the time limit Slurm signals
// the script (`--signal=B:USR1@LEAD`), which passes SIGUSR1 on to the ranks:
// they finish their step, save (jobs/stop.h) and exit with 75, and the
// script requeues the job, which then resumes where it stopped. A
// generation sweep can be split into a job array (--array N: task I runs
// `sdc run --shard I/N`).
#ifndef SDC_SUBMIT_H
#define SDC_SUBMIT_H

// argv[1] is "submit". Returns the process exit status.
int submit_main(int argc, char **argv);

#endif
