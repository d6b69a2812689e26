// submit.c: `sdc submit` (see submit.h). The script is plain bash that a
// user can read, edit and sbatch by hand; everything it needs is frozen at
// render time: the sdc binary's absolute path, the working directory, and a
// copy of the manifest (so editing the manifest later does not change a
// queued job). A DreamBooth job's copy says resume_from_checkpoint "latest",
// so a requeued run picks up its own last checkpoint (a first run with no
// checkpoint starts fresh); a PNG generation's says skip_existing, so it
// keeps the images it made.
#define _GNU_SOURCE // realpath
#include "jobs/submit.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "jobs/manifest.h"
#include "jobs/stop.h"

typedef struct SubmitOpts {
    const char *manifest, *script, *job_name, *time_limit, *partition, *account, *qos, *mem, *sdc, *mpi;
    const char *log_dir;
    const char *prologue[16];
    int n_prologue;
    int nodes, ntasks_per_node, gpus_per_node, cpus_per_task, array, array_parallel, signal_lead, requeue;
    int dry_run;
} SubmitOpts;

static void submit_usage(FILE *f) {
    fprintf(f,
            "usage: sdc submit MANIFEST [options]\n\n"
            "Renders the Slurm batch script of a job manifest (`sdc generate ... --dump-manifest > job.txtpb`,\n"
            "or a hand-written one) next to it as MANIFEST.sbatch, with a frozen copy of the manifest, and\n"
            "submits it with sbatch. The job runs `srun --mpi=pmix sdc run`: one rank per GPU on --device cuda,\n"
            "else --ntasks-per-node ranks. SECONDS before the time limit the ranks are told to stop: they finish\n"
            "the step, save (training checkpoint / HDF5 done mask), exit with 75, and the job requeues itself\n"
            "and resumes.\n\n"
            "  -N, --nodes N             nodes (default 1)\n"
            "      --gpus-per-node G     GPUs per node, one rank each (default 1 for --device cuda, else 0)\n"
            "      --ntasks-per-node N   ranks per node on CPUs (default 1; with GPUs: G)\n"
            "  -c, --cpus-per-task C     cores per rank (default: Slurm's)\n"
            "  -t, --time T              time limit, as sbatch takes it (e.g. 04:00:00; default: the partition's)\n"
            "  -p, --partition P         partition\n"
            "  -A, --account A           account\n"
            "  -q, --qos Q               quality of service\n"
            "      --mem M               memory per node (e.g. 64G)\n"
            "  -J, --job-name NAME       (default sdc-TASK)\n"
            "      --array N[%%M]         generation sweeps: N array tasks, task I makes shard I of N (at most M at\n"
            "                            once); each writes OUTPUT-0000K-of-0000N.h5\n"
            "      --signal-lead S       seconds before the time limit to stop and save (default 300)\n"
            "      --no-requeue          exit when stopped instead of requeueing\n"
            "      --prologue LINE       a shell line run before srun (e.g. 'module load cuda'); repeatable\n"
            "      --mpi TYPE            srun --mpi type (default pmix)\n"
            "      --log-dir DIR         where Slurm writes the job's log (default: the manifest's folder)\n"
            "  -o, --script PATH         the script to write (default MANIFEST.sbatch)\n"
            "      --sdc PATH            the sdc binary the job runs (default: this one)\n"
            "      --dry-run             write the script and its manifest copy, do not call sbatch\n"
            "  -h, --help                this help\n");
}

static int parse_pos(const char *flag, const char *v, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "sdc submit: %s: expected an integer from %d to %d, got '%s'\n", flag, lo, hi, v);
        return 2;
    }
    *out = (int)x;
    return 0;
}

// a is the short flag s (may be NULL) or the long flag l
static int flag_is(const char *a, const char *s, const char *l) { return (s && !strcmp(a, s)) || !strcmp(a, l); }

static int parse_opts(int argc, char **argv, SubmitOpts *o) {
    memset(o, 0, sizeof *o);
    o->nodes = 1, o->gpus_per_node = -1, o->ntasks_per_node = 0, o->signal_lead = 300, o->requeue = 1;
    o->mpi = "pmix";
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define IS(s, l) flag_is(a, s, l)
#define NEED()                                                                            \
    do {                                                                                  \
        if (!v) {                                                                         \
            fprintf(stderr, "sdc submit: %s needs a value ---> sdc submit --help\n", a); \
            return 2;                                                                     \
        }                                                                                 \
        i++;                                                                              \
    } while (0)
        int rc = 0;
        if (IS("-h", "--help")) {
            submit_usage(stdout);
            return 1;
        } else if (IS(NULL, "--dry-run")) {
            o->dry_run = 1;
        } else if (IS(NULL, "--no-requeue")) {
            o->requeue = 0;
        } else if (IS("-N", "--nodes")) {
            NEED();
            rc = parse_pos(a, v, 1, 100000, &o->nodes);
        } else if (IS(NULL, "--gpus-per-node")) {
            NEED();
            rc = parse_pos(a, v, 0, 64, &o->gpus_per_node);
        } else if (IS(NULL, "--ntasks-per-node")) {
            NEED();
            rc = parse_pos(a, v, 1, 4096, &o->ntasks_per_node);
        } else if (IS("-c", "--cpus-per-task")) {
            NEED();
            rc = parse_pos(a, v, 1, 4096, &o->cpus_per_task);
        } else if (IS(NULL, "--signal-lead")) {
            NEED();
            rc = parse_pos(a, v, 10, 65535, &o->signal_lead);
        } else if (IS(NULL, "--array")) {
            NEED();
            char buf[64];
            snprintf(buf, sizeof buf, "%s", v);
            char *pct = strchr(buf, '%');
            if (pct) *pct++ = 0;
            rc = parse_pos(a, buf, 1, 1000000, &o->array);
            if (!rc && pct) rc = parse_pos(a, pct, 1, 1000000, &o->array_parallel);
        } else if (IS("-t", "--time")) {
            NEED();
            o->time_limit = v;
        } else if (IS("-p", "--partition")) {
            NEED();
            o->partition = v;
        } else if (IS("-A", "--account")) {
            NEED();
            o->account = v;
        } else if (IS("-q", "--qos")) {
            NEED();
            o->qos = v;
        } else if (IS(NULL, "--mem")) {
            NEED();
            o->mem = v;
        } else if (IS("-J", "--job-name")) {
            NEED();
            o->job_name = v;
        } else if (IS(NULL, "--prologue")) {
            NEED();
            if (o->n_prologue == 16) {
                fprintf(stderr, "sdc submit: at most 16 --prologue lines\n");
                return 2;
            }
            o->prologue[o->n_prologue++] = v;
        } else if (IS(NULL, "--mpi")) {
            NEED();
            o->mpi = v;
        } else if (IS(NULL, "--log-dir")) {
            NEED();
            o->log_dir = v;
        } else if (IS("-o", "--script")) {
            NEED();
            o->script = v;
        } else if (IS(NULL, "--sdc")) {
            NEED();
            o->sdc = v;
        } else if (a[0] != '-' && !o->manifest) {
            o->manifest = a;
        } else {
            fprintf(stderr, "sdc submit: unexpected argument '%s' ---> sdc submit --help\n", a);
            return 2;
        }
        if (rc) return rc;
#undef IS
#undef NEED
    }
    if (!o->manifest) {
        fprintf(stderr, "sdc submit: needs a job manifest ---> sdc generate ... --dump-manifest > job.txtpb; "
                        "sdc submit job.txtpb\n");
        return 2;
    }
    return 0;
}

// Single-quoted for bash: ' becomes '\''.
static void sh_quote(FILE *f, const char *s) {
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'') fputs("'\\''", f);
        else fputc(*s, f);
    }
    fputc('\'', f);
}

// A value for an #SBATCH line: those are not parsed by a shell, so refuse
// what would break the line.
static int sbatch_value_ok(const char *flag, const char *v) {
    if (!v) return 1;
    if (!v[0] || strpbrk(v, "\n\r \t#'\"")) {
        fprintf(stderr, "sdc submit: %s '%s': spaces, quotes, '#' and line breaks cannot go into an #SBATCH line\n",
                flag, v);
        return 0;
    }
    return 1;
}

static const char *task_name(const Sdc__Job *job) {
    switch (job->task) {
    case SDC__TASK__TASK_GENERATE: return "generate";
    case SDC__TASK__TASK_DREAMBOOTH: return "dreambooth";
    case SDC__TASK__TASK_TRAIN_TEXT_TO_IMAGE: return "text-to-image";
    case SDC__TASK__TASK_CONVERT: return "convert";
    case SDC__TASK__TASK_DATASET_IMPORT: return "dataset-import";
    case SDC__TASK__TASK_DATASET_SYNTH: return "dataset-synth";
    case SDC__TASK__TASK_DATASET_SCORE: return "dataset-score";
    case SDC__TASK__TASK_INIT_MODEL: return "init-model";
    case SDC__TASK__TASK_TRAIN_VAE: return "train-vae";
    default: return "job";
    }
}

// path without its last extension (".txtpb", ".pb", ...) + suffix
static void with_suffix(char *buf, size_t n, const char *path, const char *suffix) {
    const char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');
    if (!dot || (slash && dot < slash) || dot == path || (slash && dot == slash + 1)) dot = path + strlen(path);
    snprintf(buf, n, "%.*s%s", (int)(dot - path), path, suffix);
}

// GPUs per node (default 1 for a CUDA job) and ranks per node (one per GPU, else --ntasks-per-node)
static int gpus_per_node(const SubmitOpts *o, const Sdc__Job *job) {
    const int cuda = job->runtime && job->runtime->device && !strcmp(job->runtime->device, "cuda");
    return o->gpus_per_node >= 0 ? o->gpus_per_node : cuda ? 1 : 0;
}

static int ranks_per_node(const SubmitOpts *o, const Sdc__Job *job) {
    const int gpus = gpus_per_node(o, job);
    return gpus > 0 ? gpus : o->ntasks_per_node > 0 ? o->ntasks_per_node : 1;
}

static int write_script(const SubmitOpts *o, const Sdc__Job *job, const char *script, const char *frozen,
                        const char *sdc, const char *cwd, const char *log_dir) {
    const int gpus = gpus_per_node(o, job), tasks = ranks_per_node(o, job);
    const int array = o->array > 0;
    char name[256];
    snprintf(name, sizeof name, "%s", o->job_name ? o->job_name : "");
    if (!name[0]) snprintf(name, sizeof name, "sdc-%s", task_name(job));
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", script);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "sdc submit: %s: cannot write (%s)\n", tmp, strerror(errno));
        return 1;
    }
    time_t now = time(NULL);
    char when[64];
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S %Z", localtime(&now));
    fprintf(f, "#!/bin/bash\n# Rendered by `sdc submit` (sdc %s) on %s from %s.\n", SDC_VERSION, when, o->manifest);
    fprintf(f, "# The job runs the frozen manifest copy %s; edit it or this script and sbatch it again by hand.\n",
            frozen);
    fprintf(f, "#SBATCH --job-name=%s\n#SBATCH --nodes=%d\n#SBATCH --ntasks-per-node=%d\n", name, o->nodes, tasks);
    if (gpus > 0) fprintf(f, "#SBATCH --gpus-per-node=%d\n", gpus);
    if (o->cpus_per_task) fprintf(f, "#SBATCH --cpus-per-task=%d\n", o->cpus_per_task);
    if (o->time_limit) fprintf(f, "#SBATCH --time=%s\n", o->time_limit);
    if (o->partition) fprintf(f, "#SBATCH --partition=%s\n", o->partition);
    if (o->account) fprintf(f, "#SBATCH --account=%s\n", o->account);
    if (o->qos) fprintf(f, "#SBATCH --qos=%s\n", o->qos);
    if (o->mem) fprintf(f, "#SBATCH --mem=%s\n", o->mem);
    if (array) {
        fprintf(f, "#SBATCH --array=0-%d", o->array - 1);
        if (o->array_parallel) fprintf(f, "%%%d", o->array_parallel);
        fputc('\n', f);
    }
    fprintf(f, "#SBATCH --chdir=%s\n#SBATCH --output=%s/%s-%s.log\n#SBATCH --open-mode=append\n", cwd, log_dir, name,
            array ? "%A_%a" : "%j");
    fprintf(f, "#SBATCH --signal=B:USR1@%d\n", o->signal_lead);
    fprintf(f, "#SBATCH --%s\n\n", o->requeue ? "requeue" : "no-requeue");
    fprintf(f, "set -u\nSDC=");
    sh_quote(f, sdc);
    fprintf(f, "\nJOB=");
    sh_quote(f, frozen);
    fprintf(f, "\n");
    if (o->cpus_per_task) fprintf(f, "export OMP_NUM_THREADS=\"$SLURM_CPUS_PER_TASK\"\n");
    for (int i = 0; i < o->n_prologue; i++) fprintf(f, "%s\n", o->prologue[i]);
    fprintf(f, "%s",
            "ID=\"${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}\"\n"
            "ID=\"${ID:-$SLURM_JOB_ID}\"\n"
            "echo \"sdc-submit: job $ID, run $(( ${SLURM_RESTART_COUNT:-0} + 1 )), on $SLURM_JOB_NODELIST, $(date -Is)\"\n\n"
            "# Slurm's warning before the time limit (--signal above) goes to this shell;\n"
            "# it passes SIGUSR1 on to the ranks, which finish their step, save and exit with 75.\n"
            "trap 'echo \"sdc-submit: time limit near: the ranks stop and save\"; "
            "scancel --signal=USR1 \"$SLURM_JOB_ID\"' USR1\n");
    if (array)
        fprintf(f, "srun --mpi=%s --kill-on-bad-exit=1 \"$SDC\" run \"$JOB\" --shard \"$SLURM_ARRAY_TASK_ID/%d\" &\n",
                o->mpi, o->array);
    else
        fprintf(f, "srun --mpi=%s --kill-on-bad-exit=1 \"$SDC\" run \"$JOB\" &\n", o->mpi);
    fprintf(f, "%s",
            "pid=$!\n"
            "while :; do  # a trapped signal interrupts wait: wait again until srun has ended\n"
            "  wait \"$pid\"; rc=$?\n"
            "  kill -0 \"$pid\" 2>/dev/null || break\n"
            "done\n");
    fprintf(f, "if [ \"$rc\" -eq %d ]; then\n", SDC_EXIT_RESUMABLE);
    if (o->requeue)
        fprintf(f, "  echo \"sdc-submit: state saved; requeueing $ID to resume\"\n"
                   "  trap '' TERM  # the requeue signals this shell too\n"
                   "  scontrol requeue \"$ID\" && exit 0\n"
                   "  echo \"sdc-submit: scontrol requeue failed: sbatch this script again to resume\"\n");
    else
        fprintf(f, "  echo \"sdc-submit: state saved; sbatch this script again to resume\"\n");
    fprintf(f, "fi\nexit \"$rc\"\n");
    int bad = ferror(f);
    if (fclose(f) || bad || chmod(tmp, 0755) || rename(tmp, script)) {
        fprintf(stderr, "sdc submit: %s: cannot write (%s)\n", script, strerror(errno));
        unlink(tmp);
        return 1;
    }
    return 0;
}

int submit_main(int argc, char **argv) {
    SubmitOpts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    SdcError err = {0};
    Sdc__Job *job = NULL;
    if (manifest_read_file(o.manifest, &job, &err) || manifest_validate(job, &err)) {
        fprintf(stderr, "sdc submit: %s\n", err.msg);
        if (job) protobuf_c_message_free_unpacked(&job->base, NULL);
        return 2;
    }
    if (!sbatch_value_ok("--job-name", o.job_name) || !sbatch_value_ok("--time", o.time_limit) ||
        !sbatch_value_ok("--partition", o.partition) || !sbatch_value_ok("--account", o.account) ||
        !sbatch_value_ok("--qos", o.qos) || !sbatch_value_ok("--mem", o.mem) || !sbatch_value_ok("--mpi", o.mpi))
        rc = 2;
    if (!rc && o.array && (job->task != SDC__TASK__TASK_GENERATE || !job->generate)) {
        fprintf(stderr, "sdc submit: --array splits generation sweeps; %s is a %s job\n", o.manifest,
                task_name(job));
        rc = 2;
    }
    if (!rc && o.array && job->generate->shard_count > 1) {
        fprintf(stderr, "sdc submit: --array: %s already names shard %d of %d ---> drop shard_index/shard_count\n",
                o.manifest, job->generate->shard_index, job->generate->shard_count);
        rc = 2;
    }
    { // pipeline stages need a multiple of P ranks (runner: pipeline_setup)
        const int stages = job->runtime ? job->runtime->pipeline_stages : 1, per_node = ranks_per_node(&o, job);
        if (!rc && stages > 1 && (o.nodes * per_node) % stages) {
            fprintf(stderr, "sdc submit: %s cuts the UNet into %d pipeline stages, but the job would have %d x %d "
                            "ranks ---> a multiple of %d (--nodes, --ntasks-per-node / --gpus-per-node)\n",
                    o.manifest, stages, o.nodes, per_node, stages);
            rc = 2;
        }
    }
    // a requeued PNG sweep keeps the PNGs it has (an HDF5 one has its done mask)
    if (!rc && job->task == SDC__TASK__TASK_GENERATE && !(job->generate->output_h5 && job->generate->output_h5[0]))
        job->generate->skip_existing = 1, job->generate->has_skip_existing = 1;
    // the frozen copy: a DreamBooth run resumes its own latest checkpoint
    if (!rc && job->task == SDC__TASK__TASK_DREAMBOOTH && job->dreambooth &&
        !(job->dreambooth->resume_from_checkpoint && job->dreambooth->resume_from_checkpoint[0]))
        manifest_set_string(&job->dreambooth->base, "resume_from_checkpoint", "latest");
    if (!rc && job->task == SDC__TASK__TASK_TRAIN_TEXT_TO_IMAGE && job->text_to_image &&
        !(job->text_to_image->resume_from_checkpoint && job->text_to_image->resume_from_checkpoint[0]))
        manifest_set_string(&job->text_to_image->base, "resume_from_checkpoint", "latest");
    char script[PATH_MAX], frozen[PATH_MAX], sdc[PATH_MAX], cwd[PATH_MAX], logs[PATH_MAX], abs_frozen[PATH_MAX];
    if (!rc) {
        if (o.script) snprintf(script, sizeof script, "%s", o.script);
        else with_suffix(script, sizeof script, o.manifest, ".sbatch");
        with_suffix(frozen, sizeof frozen, script, ".job.txtpb");
        if (!getcwd(cwd, sizeof cwd)) snprintf(cwd, sizeof cwd, ".");
        if (!realpath(o.sdc ? o.sdc : "/proc/self/exe", sdc)) {
            fprintf(stderr, "sdc submit: %s: %s\n", o.sdc ? o.sdc : "this sdc binary", strerror(errno));
            rc = 2;
        }
    }
    char *text = rc ? NULL : manifest_to_text(job);
    if (!rc && !text) rc = 1;
    if (!rc) { // the manifest copy, then the script
        FILE *f = fopen(frozen, "w");
        if (!f || fputs(text, f) < 0 || fclose(f)) {
            fprintf(stderr, "sdc submit: %s: cannot write (%s)\n", frozen, strerror(errno));
            rc = 1;
        }
    }
    if (!rc && !realpath(frozen, abs_frozen)) rc = 1;
    if (!rc) snprintf(frozen, sizeof frozen, "%s", abs_frozen);
    if (!rc) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", frozen);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        if (o.log_dir && !realpath(o.log_dir, logs)) {
            fprintf(stderr, "sdc submit: --log-dir %s: %s\n", o.log_dir, strerror(errno));
            rc = 2;
        } else if (!o.log_dir) {
            snprintf(logs, sizeof logs, "%s", dir);
        }
    }
    if (!rc) rc = write_script(&o, job, script, frozen, sdc, cwd, logs);
    free(text);
    protobuf_c_message_free_unpacked(&job->base, NULL);
    if (rc) return rc;
    fprintf(stderr, "sdc submit: wrote %s (runs %s)\n", script, frozen);
    if (o.dry_run) {
        fprintf(stderr, "sdc submit: --dry-run: submit with `sbatch %s`\n", script);
        return 0;
    }
    // sbatch prints "Submitted batch job N" itself
    pid_t pid = fork();
    if (pid == 0) {
        execlp("sbatch", "sbatch", script, (char *)NULL);
        fprintf(stderr, "sdc submit: cannot run sbatch (%s) ---> on a Slurm login node, or --dry-run and sbatch the "
                        "script where Slurm is\n", strerror(errno));
        _exit(127);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) < 0) return 1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
