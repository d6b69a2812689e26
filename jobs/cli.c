// cli.c: argv -> Job manifest (see cli.h).
#include <stdio.h>

#include "data/synth.h"
#include "io/lora.h"
#include "jobs/cli.h"
#include "jobs/manifest.h"
#include "sampling/sched_config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

// Manifest strings are heap copies so the Job can be freed in one place;
// NULL when out of memory (cli_oom).
static char *dup_str(const char *s) { return strdup(s ? s : ""); }

static int cli_oom(SdcError *err) {
    return sdc_err(err, SDC_ERR_OOM, "out of memory while reading the command line ---> free memory on this machine");
}

static int parse_int(const char *flag, const char *v, long long lo, long long hi, long long *out, SdcError *err) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return sdc_err(err, SDC_ERR_ARG, "%s: expected an integer from %lld to %lld, got '%s'", flag, lo, hi, v);
    *out = x;
    return 0;
}

static int parse_float(const char *flag, const char *v, float *out, SdcError *err) {
    char *end;
    errno = 0;
    float x = strtof(v, &end);
    if (errno || end == v || *end)
        return sdc_err(err, SDC_ERR_ARG, "%s: expected a number, got '%s'", flag, v);
    *out = x;
    return 0;
}

// a is the short flag s (may be NULL) or the long flag l
static int flag_is(const char *a, const char *s, const char *l) { return (s && !strcmp(a, s)) || !strcmp(a, l); }

static void cli_print_usage_storage(FILE *f, const char *sub);
static int cli_parse_storage(int argc, char **argv, Sdc__Job **out, CliOptions *opt, SdcError *err);
static int cli_parse_train(int argc, char **argv, Sdc__Job **out, CliOptions *opt, SdcError *err);
static int cli_parse_init(int argc, char **argv, Sdc__Job **out, CliOptions *opt, SdcError *err);
static void cli_print_usage_train(FILE *f);
static void cli_print_usage_train_t2i(FILE *f);

// "L,T,R,B" pixels to add on each side
static int parse_outpaint(const char *flag, const char *v, Sdc__Generate *g, SdcError *err) {
    long long x[4];
    const char *p = v;
    for (int k = 0; k < 4; k++) {
        char *end;
        errno = 0;
        x[k] = strtoll(p, &end, 10);
        if (errno || end == p || x[k] < 0 || x[k] > 8192 || (k < 3 ? *end != ',' : *end != 0))
            return sdc_err(err, SDC_ERR_ARG,
                           "%s: expected LEFT,TOP,RIGHT,BOTTOM pixels (4 numbers 0..8192), got '%s'", flag, v);
        p = end + 1;
    }
    free(g->outpaint);
    g->outpaint = malloc(4 * sizeof(int32_t));
    if (!g->outpaint) return cli_oom(err);
    for (int k = 0; k < 4; k++) g->outpaint[k] = (int32_t)x[k];
    g->n_outpaint = 4;
    return 0;
}

// SDXL micro-conditioning: "A,B" (height,width or top,left) into a repeated
// manifest field of two values
static int parse_pair(const char *flag, const char *v, int min, int32_t **out, size_t *n, SdcError *err) {
    long long x[2];
    const char *p = v;
    for (int k = 0; k < 2; k++) {
        char *end;
        errno = 0;
        x[k] = strtoll(p, &end, 10);
        if (errno || end == p || x[k] < min || x[k] > 65536 || (k == 0 ? *end != ',' : *end != 0))
            return sdc_err(err, SDC_ERR_ARG, "%s: expected two numbers %d..65536 as %s, got '%s'", flag, min,
                           strstr(flag, "crops") ? "TOP,LEFT" : "HEIGHT,WIDTH (diffusers' order)", v);
        p = end + 1;
    }
    free(*out);
    *out = malloc(2 * sizeof(int32_t));
    if (!*out) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", flag);
    (*out)[0] = (int32_t)x[0], (*out)[1] = (int32_t)x[1];
    *n = 2;
    return 0;
}

void cli_print_usage(FILE *f, const char *sub) {
    if (sub && !strcmp(sub, "run")) {
        fprintf(f, "usage: sdc run MANIFEST [--shard I/N] [--dump-manifest] [-q]\n\n"
                   "Runs a job manifest: protobuf text format (what --dump-manifest prints; see jobs/sdc.proto)\n"
                   "or the binary form `protoc --encode=sdc.Job jobs/sdc.proto` writes.\n"
                   "  --shard I/N   a generation sweep's part I (0-based) of N (Slurm array tasks)\n"
                   "On SIGUSR1, SIGTERM or Ctrl-C a generation or training job finishes its step, saves its state\n"
                   "and exits with status 75; running it again resumes (sdc submit renders such Slurm jobs).\n");
        return;
    }
    if (sub && (!strcmp(sub, "dataset") || !strcmp(sub, "convert"))) {
        cli_print_usage_storage(f, sub);
        return;
    }
    if (!sub || strcmp(sub, "generate")) {
        fprintf(f, "usage: sdc COMMAND [options]\n\n"
                   "commands:\n"
                   "  generate   text to image (sdc generate --help)\n"
                   "  run        run a job manifest file (sdc run --help)\n"
                   "  dataset    dataset import: images -> HDF5 dataset (sdc dataset import --help);\n"
                   "             dataset synth: procedural captioned shapes, dataset score: what generated images\n"
                   "             show of their synth prompts (sdc dataset synth --help)\n"
                   "  convert    convert a model between layouts (sdc convert --help)\n"
                   "  init-model a model initialised from scratch from configs (sdc init-model --help)\n"
                   "  train      DreamBooth fine-tuning, full or LoRA (sdc train dreambooth --help);\n"
                   "             text-to-image on a captioned dataset (sdc train text-to-image --help);\n"
                   "             an AutoencoderKL on a dataset (sdc train vae --help)\n"
                   "  submit     render a manifest's Slurm batch script and sbatch it (sdc submit --help)\n\n"
                   "Every command builds a job manifest (jobs/sdc.proto); --dump-manifest prints it.\n");
        return;
    }
    fprintf(f,
            "usage: sdc generate -m MODEL -p PROMPT [options]\n\n"
            "  -m, --model PATH          .safetensors single file (SD 1.x/2.x original layout), diffusers folder, or an\n"
            "                            sdc .h5 checkpoint (converted once to PATH.sdc-cache/); a training run's\n"
            "                            checkpoint-N.h5: its base model with the weights trained to step N\n"
            "      --config DIR          diffusers folder describing a single file's architecture (optional)\n"
            "      --prediction-type T   epsilon | v_prediction (default: from the model)\n"
            "      --lora FILE[:W]       merge a LoRA (kohya or diffusers .safetensors) at weight W (default 1.0)\n"
            "                            into the weights; repeat for several\n"
            "      --vae PATH            the VAE from this file instead (A1111 VAE .safetensors, an SD checkpoint,\n"
            "                            a diffusers AutoencoderKL file or vae/ folder)\n"
            "      --lora-model-dir DIR  where <lora:NAME:WEIGHT> in a prompt finds NAME.safetensors (A1111 /\n"
            "                            stable-diffusion.cpp syntax; the same tags in every prompt of a run)\n"
            "  -p, --prompt TEXT         the prompt\n"
            "  -n, --negative-prompt T   the negative prompt (default: empty)\n"
            "      --steps N             denoising steps (default 20)\n"
            "      --cfg-scale F         classifier-free guidance scale; <= 1 turns guidance off (default 7.0)\n"
            "      --sampler NAME        euler (default), euler_a, heun, lms, ddim, pndm, ddpm, dpm++2m,\n"
            "                            dpm++2m_karras, dpm++2m_sde, dpm++2m_sde_karras, unipc, euler_karras,\n"
            "                            heun_karras, lms_karras (A1111 names work too)\n"
            "                            sweeps: --steps, --cfg-scale and --sampler take lists (A,B,C); every\n"
            "                            prompt is made with every combination, on the same seeds\n"
            "      --from-file FILE      more prompts, one per line ('#' lines skipped), each with kohya's options:\n"
            "                            PROMPT --n NEGATIVE --d SEED --s STEPS --l CFG --ss SAMPLER\n"
            "      --shard I/N           make only part I (0-based) of N of the sweep (Slurm array tasks)\n"
            "      --eta F               DDIM eta (default 0)\n"
            "      --timestep-spacing S  leading | trailing | linspace: the timesteps' spacing (default: the\n"
            "                            model's scheduler_config.json, as diffusers reads it)\n"
            "      --karras              Karras sigmas (A1111's schedule type) with euler, heun, lms, dpm++2m,\n"
            "                            dpm++2m_sde or unipc (default: the model's scheduler_config.json)\n"
            "  -s, --seed N              seed; item i of a batch uses seed + i (default 42)\n"
            "  -W, --width N             width in pixels, multiple of 8 (default: the model's size)\n"
            "  -H, --height N            height in pixels, multiple of 8 (default: the model's size)\n"
            "  -b, --batch-count N       images to generate per prompt (default 1)\n"
            "      --batch-size N        images denoised together in one UNet batch (default 1)\n"
            "  -i, --init-img FILE       img2img: start from this PNG/JPEG (its size unless -W/-H)\n"
            "      --strength F          how much to change the init image, 0..1 (default 0.75; 1.0 inpainting)\n"
            "      --mask FILE           inpaint: white = repaint, black = keep (same size as --init-img)\n"
            "      --outpaint L,T,R,B    outpaint: extend --init-img by these pixels and fill them in\n"
            "      --original-size H,W   SDXL micro-conditioning (diffusers' arguments, height first):\n"
            "      --crops-coords-top-left T,L   the original size, crop and target size the model is told\n"
            "      --target-size H,W     (default: the image's size, 0,0, the image's size)\n"
            "      --negative-original-size H,W, --negative-crops-coords-top-left T,L,\n"
            "      --negative-target-size H,W    the same for the negative half (both sizes, or none)\n"
            "      --refiner PATH        SDXL: finish with this SDXL refiner (file or folder), diffusers' ensemble\n"
            "                            of experts: the base (-m) denoises up to --refiner-start, the refiner the rest\n"
            "      --refiner-start F     the fraction of the schedule the base denoises, 0..1 (default 0.8)\n"
            "      --aesthetic-score F   the SDXL refiner's aesthetic score (default 6.0); the negative half's:\n"
            "      --negative-aesthetic-score F  (default 2.5). -m REFINER alone refines --init-img\n"
            "      --clip-skip N         use the text encoder's N-th layer from the end (default: model's)\n"
            "      --vae-tiling          decode the image in 512-pixel tiles (less memory; default: only when\n"
            "                            the untiled decode would need over 1 GiB, i.e. above 640x640)\n"
            "      --vae-tile-size N     VAE tile in pixels, multiple of 8 (implies --vae-tiling); -1 = never tile\n"
            "  -o, --output PATH         output PNG (default output.png; a batch adds _2, _3, ...)\n"
            "      --skip-existing       keep output PNGs that exist and decode (resume a stopped PNG sweep)\n"
            "      --output-h5 FILE      write all images to an HDF5 generation output instead (resumes a sweep;\n"
            "                            under mpiexec / srun the ranks share the work)\n"
            "  -t, --threads N           CPU threads (default: OMP_NUM_THREADS, else all cores)\n"
            "      --device cpu|cuda     compute device (default cpu)\n"
            "      --pipeline-stages P   under mpiexec / srun: cut the UNet into P stages, one rank each (ranks =\n"
            "                            P x replicas; CPU backend)\n"
            "      --pipeline-cut B,...  the first block of stages 1 to P-1 (default: cut by measured block times)\n"
            "      --micro-batches M     runs of --batch-size items in flight along the pipeline (default 2 x P)\n"
            "      --precision P         fp32 | fp16 | bf16 (default: fp32 on the CPU, bf16 on a GPU; the CPU: fp32 or bf16)\n"
            "      --dump-manifest       print the job manifest in protobuf text format and exit\n"
            "  -q, --quiet               no progress output\n"
            "  -h, --help                this help\n");
}

void cli_job_free(Sdc__Job *job) {
    if (job) protobuf_c_message_free_unpacked(&job->base, NULL);
}

// Allocates an empty Job with its sub-messages at their .proto defaults
// (freed by protobuf_c_message_free_unpacked with the default allocator);
// NULL when out of memory.
static Sdc__Job *job_new(void) {
    Sdc__Job *job = calloc(1, sizeof *job);
    Sdc__Model *model = calloc(1, sizeof *model);
    Sdc__Runtime *rt = calloc(1, sizeof *rt);
    Sdc__Generate *gen = calloc(1, sizeof *gen);
    if (!job || !model || !rt || !gen) {
        free(job), free(model), free(rt), free(gen);
        return NULL;
    }
    sdc__job__init(job);
    sdc__model__init(model);
    sdc__runtime__init(rt);
    sdc__generate__init(gen);
    job->model = model;
    job->runtime = rt;
    job->generate = gen;
    return job;
}

static int set_str(void *msg, const char *field, const char *v, SdcError *err) {
    int rc = manifest_set_string(msg, field, v);
    if (rc == SDC_ERR_OOM) return cli_oom(err);
    SDC_CHECK(rc == 0); // field names are this file's: a wrong one is a bug
    return 0;
}

// A comma-separated flag value: its items (at most 64), each a heap copy.
static int split_list(const char *flag, const char *v, char ***items, int *n, SdcError *err) {
    *items = NULL, *n = 0;
    char **out = calloc(64, sizeof(char *));
    if (!out) return cli_oom(err);
    const char *p = v;
    for (;;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        if (len == 0 || *n == 64) {
            for (int i = 0; i < *n; i++) free(out[i]);
            free(out);
            return sdc_err(err, SDC_ERR_ARG, "%s: expected one value or a list like A,B,C (at most 64), got '%s'",
                           flag, v);
        }
        out[*n] = strndup(p, len);
        if (!out[*n]) {
            for (int i = 0; i < *n; i++) free(out[i]);
            free(out);
            *n = 0;
            return cli_oom(err);
        }
        (*n)++;
        if (!c) break;
        p = c + 1;
    }
    *items = out;
    return 0;
}

static void free_list(char **items, int n) {
    for (int i = 0; i < n; i++) free(items[i]);
    free(items);
}

// --steps N or a sweep N1,N2,...
static int parse_steps_flag(const char *flag, const char *v, Sdc__Generate *g, SdcError *err) {
    char **it;
    int n;
    SDC_TRY(split_list(flag, v, &it, &n, err));
    int32_t *x = malloc((size_t)n * sizeof *x);
    if (!x) return free_list(it, n), cli_oom(err);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        long long ll = 0;
        rc = parse_int(flag, it[i], 1, 1000, &ll, err);
        x[i] = (int32_t)ll;
    }
    free_list(it, n);
    if (!rc && n == 1) g->steps = x[0], g->has_steps = 1;
    if (!rc && n > 1) free(g->sweep_steps), g->sweep_steps = x, g->n_sweep_steps = (size_t)n, x = NULL;
    free(x);
    return rc;
}

// --cfg-scale F or a sweep F1,F2,...
static int parse_cfg_flag(const char *flag, const char *v, Sdc__Generate *g, SdcError *err) {
    char **it;
    int n;
    SDC_TRY(split_list(flag, v, &it, &n, err));
    float *x = malloc((size_t)n * sizeof *x);
    if (!x) return free_list(it, n), cli_oom(err);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) rc = parse_float(flag, it[i], &x[i], err);
    free_list(it, n);
    if (!rc && n == 1) g->cfg_scale = x[0], g->has_cfg_scale = 1;
    if (!rc && n > 1) free(g->sweep_cfg_scale), g->sweep_cfg_scale = x, g->n_sweep_cfg_scale = (size_t)n, x = NULL;
    free(x);
    return rc;
}

// --shard I/N: part I (0-based) of N
static int parse_shard_flag(const char *flag, const char *v, Sdc__Generate *g, SdcError *err) {
    char *end;
    errno = 0;
    long long i = strtoll(v, &end, 10), n = -1;
    if (!errno && end != v && *end == '/') {
        const char *q = end + 1;
        n = strtoll(q, &end, 10);
        if (errno || end == q || *end) n = -1;
    }
    if (n < 1 || n > 1000000 || i < 0 || i >= n)
        return sdc_err(err, SDC_ERR_ARG, "%s: expected I/N with 0 <= I < N (part I of N, e.g. "
                       "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT), got '%s'", flag, v);
    g->shard_index = (int32_t)i, g->has_shard_index = 1;
    g->shard_count = (int32_t)n, g->has_shard_count = 1;
    return 0;
}

int cli_parse(int argc, char **argv, Sdc__Job **out, CliOptions *opt, SdcError *err) {
    memset(opt, 0, sizeof *opt);
    *out = NULL;
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        opt->help = 1;
        cli_print_usage(stdout, NULL);
        return 0;
    }
    if (!strcmp(argv[1], "run")) { // sdc run MANIFEST [--shard I/N] [--dump-manifest] [-q]
        const char *path = NULL, *shard = NULL;
        for (int i = 2; i < argc; i++) {
            if (!strcmp(argv[i], "--dump-manifest")) opt->dump_manifest = 1;
            else if (!strcmp(argv[i], "-q") || !strcmp(argv[i], "--quiet")) opt->quiet = 1;
            else if (!strcmp(argv[i], "--shard")) { // a Slurm array task's part of a generation sweep
                if (i + 1 >= argc) return sdc_err(err, SDC_ERR_ARG, "--shard needs a value I/N ---> sdc run --help");
                shard = argv[++i];
            }
            else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
                opt->help = 1;
                cli_print_usage(stdout, "run");
                return 0;
            } else if (!path && argv[i][0] != '-') path = argv[i];
            else return sdc_err(err, SDC_ERR_ARG, "sdc run: unexpected argument '%s' ---> sdc run --help", argv[i]);
        }
        if (!path) return sdc_err(err, SDC_ERR_ARG, "sdc run needs a manifest file ---> sdc run job.txtpb");
        SDC_TRY(manifest_read_file(path, out, err));
        if (!shard) return 0;
        int rc = (*out)->task != SDC__TASK__TASK_GENERATE || !(*out)->generate
                     ? sdc_err(err, SDC_ERR_ARG, "--shard: %s is not a generation job (only sweeps are split)", path)
                     : parse_shard_flag("--shard", shard, (*out)->generate, err);
        if (rc) cli_job_free(*out), *out = NULL;
        return rc;
    }
    if (!strcmp(argv[1], "dataset") || !strcmp(argv[1], "convert")) return cli_parse_storage(argc, argv, out, opt, err);
    if (!strcmp(argv[1], "train")) return cli_parse_train(argc, argv, out, opt, err);
    if (!strcmp(argv[1], "init-model")) return cli_parse_init(argc, argv, out, opt, err);
    if (strcmp(argv[1], "generate"))
        return sdc_err(err, SDC_ERR_ARG, "unknown command '%s' ---> run 'sdc --help'", argv[1]);

    Sdc__Job *job = job_new();
    if (!job) return cli_oom(err);
    job->task = SDC__TASK__TASK_GENERATE;
    job->has_task = 1;
    Sdc__Generate *g = job->generate;
    int rc = 0;
    for (int i = 2; i < argc && !rc; i++) {
        const char *a = argv[i];
#define FLAG(s, l) flag_is(a, s, l)
#define VALUE()                                                                        \
    (i + 1 < argc ? argv[++i]                                                          \
                  : (rc = sdc_err(err, SDC_ERR_ARG, "%s needs a value ---> sdc generate --help", a), \
                     (const char *)NULL))
        long long ll = 0;
        if (FLAG("-h", "--help")) {
            opt->help = 1;
            cli_print_usage(stdout, "generate");
            cli_job_free(job);
            return 0;
        } else if (FLAG("-m", "--model")) {
            const char *v = VALUE();
            if (v) rc = set_str(job->model, "path", v, err);
        } else if (FLAG(NULL, "--config")) {
            const char *v = VALUE();
            if (v) rc = set_str(job->model, "config", v, err);
        } else if (FLAG(NULL, "--lora")) {
            const char *v = VALUE();
            LoraSpec spec;
            if (v && !(rc = lora_spec_parse(v, &spec, err))) {
                Sdc__Model *md = job->model;
                char **l = realloc(md->lora, (md->n_lora + 1) * sizeof(char *));
                if (l) md->lora = l;
                if (!l || !(md->lora[md->n_lora] = dup_str(v))) rc = cli_oom(err);
                else md->n_lora++;
            }
        } else if (FLAG(NULL, "--vae")) {
            const char *v = VALUE();
            if (v) rc = set_str(job->model, "vae", v, err);
        } else if (FLAG(NULL, "--lora-model-dir")) {
            const char *v = VALUE();
            if (v) rc = set_str(g, "lora_model_dir", v, err);
        } else if (FLAG(NULL, "--prediction-type")) {
            const char *v = VALUE();
            if (v) rc = set_str(job->model, "prediction_type", v, err);
        } else if (FLAG("-p", "--prompt")) {
            const char *v = VALUE();
            if (v) {
                char **l = realloc(g->prompts, (g->n_prompts + 1) * sizeof(char *));
                if (l) g->prompts = l;
                if (!l || !(g->prompts[g->n_prompts] = dup_str(v))) rc = cli_oom(err);
                else g->n_prompts++;
            }
        } else if (FLAG("-n", "--negative-prompt")) {
            const char *v = VALUE();
            if (v) rc = set_str(g, "negative_prompt", v, err);
        } else if (FLAG(NULL, "--steps")) {
            const char *v = VALUE();
            if (v) rc = parse_steps_flag(a, v, g, err);
        } else if (FLAG(NULL, "--cfg-scale")) {
            const char *v = VALUE();
            if (v) rc = parse_cfg_flag(a, v, g, err);
        } else if (FLAG(NULL, "--sampler")) {
            const char *v = VALUE();
            char **it;
            int n;
            if (v && !(rc = split_list(a, v, &it, &n, err))) {
                if (n == 1) rc = set_str(g, "sampler", v, err);
                else free_list(g->sweep_sampler, (int)g->n_sweep_sampler), g->sweep_sampler = it,
                     g->n_sweep_sampler = (size_t)n, it = NULL;
                if (it) free_list(it, n);
            }
        } else if (FLAG(NULL, "--from-file")) {
            const char *v = VALUE();
            if (v) rc = set_str(g, "prompts_file", v, err);
        } else if (FLAG(NULL, "--shard")) {
            const char *v = VALUE();
            if (v) rc = parse_shard_flag(a, v, g, err);
        } else if (FLAG(NULL, "--skip-existing")) {
            g->skip_existing = 1, g->has_skip_existing = 1;
        } else if (FLAG("-s", "--seed")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, 0, INT64_MAX, &ll, err))) g->seed = ll, g->has_seed = 1;
        } else if (FLAG("-W", "--width")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, 8, 16384, &ll, err))) g->width = (int32_t)ll, g->has_width = 1;
        } else if (FLAG("-H", "--height")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, 8, 16384, &ll, err))) g->height = (int32_t)ll, g->has_height = 1;
        } else if (FLAG("-b", "--batch-count")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, 1, 1000000, &ll, err))) g->batch_count = (int32_t)ll, g->has_batch_count = 1;
        } else if (FLAG(NULL, "--clip-skip")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, 0, 64, &ll, err))) job->model->clip_skip = (int32_t)ll, job->model->has_clip_skip = 1;
        } else if (FLAG("-o", "--output")) {
            const char *v = VALUE();
            if (v) rc = set_str(g, "output", v, err);
        } else if (FLAG(NULL, "--output-h5")) {
            const char *v = VALUE();
            if (v) rc = set_str(g, "output_h5", v, err);
        } else if (FLAG("-t", "--threads")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, 0, 1024, &ll, err))) job->runtime->threads = (int32_t)ll, job->runtime->has_threads = 1;
        } else if (FLAG(NULL, "--device")) {
            const char *v = VALUE();
            if (v) rc = set_str(job->runtime, "device", v, err);
        } else if (FLAG(NULL, "--pipeline-stages")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, 1, 64, &ll, err)))
                job->runtime->pipeline_stages = (int32_t)ll, job->runtime->has_pipeline_stages = 1;
        } else if (FLAG(NULL, "--pipeline-cut")) {
            const char *v = VALUE();
            if (v) rc = set_str(job->runtime, "pipeline_cut", v, err);
        } else if (FLAG(NULL, "--micro-batches")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, 1, 64, &ll, err)))
                job->runtime->micro_batches = (int32_t)ll, job->runtime->has_micro_batches = 1;
        } else if (FLAG(NULL, "--precision")) {
            const char *v = VALUE();
            if (v) {
                if (!strcmp(v, "fp32")) job->runtime->precision = SDC__PRECISION__PRECISION_FP32;
                else if (!strcmp(v, "fp16")) job->runtime->precision = SDC__PRECISION__PRECISION_FP16;
                else if (!strcmp(v, "bf16")) job->runtime->precision = SDC__PRECISION__PRECISION_BF16;
                else rc = sdc_err(err, SDC_ERR_ARG, "--precision: expected fp32, fp16 or bf16, got '%s'", v);
                if (!rc) job->runtime->has_precision = 1;
            }
        } else if (FLAG("-i", "--init-img")) {
            const char *v = VALUE();
            if (v) rc = set_str(g, "init_image", v, err);
        } else if (FLAG(NULL, "--mask")) {
            const char *v = VALUE();
            if (v) rc = set_str(g, "mask", v, err);
        } else if (FLAG(NULL, "--strength")) {
            const char *v = VALUE();
            if (v && !(rc = parse_float(a, v, &g->strength, err))) g->has_strength = 1;
        } else if (FLAG(NULL, "--eta")) {
            const char *v = VALUE();
            if (v && !(rc = parse_float(a, v, &g->eta, err))) g->has_eta = 1;
        } else if (FLAG(NULL, "--timestep-spacing")) {
            const char *v = VALUE();
            if (v && sched_spacing_parse(v) < 0)
                rc = sdc_err(err, SDC_ERR_ARG, "--timestep-spacing %s ---> use leading, trailing or linspace", v);
            else if (v)
                rc = set_str(g, "timestep_spacing", v, err);
        } else if (FLAG(NULL, "--karras")) {
            g->karras = 1, g->has_karras = 1;
        } else if (FLAG(NULL, "--batch-size")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, 1, 256, &ll, err))) g->batch_size = (int32_t)ll, g->has_batch_size = 1;
        } else if (FLAG(NULL, "--vae-tiling")) {
            if (g->vae_tile_size <= 0) g->vae_tile_size = 512, g->has_vae_tile_size = 1;
        } else if (FLAG(NULL, "--vae-tile-size")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, -1, 16384, &ll, err))) {
                if (ll > 0 && ll % 8)
                    rc = sdc_err(err, SDC_ERR_ARG, "--vae-tile-size %lld: expected a multiple of 8, or -1 (never tile)",
                                 ll);
                else
                    g->vae_tile_size = (int32_t)ll, g->has_vae_tile_size = 1;
            }
        } else if (FLAG(NULL, "--outpaint")) {
            const char *v = VALUE();
            if (v) rc = parse_outpaint(a, v, g, err);
        } else if (FLAG(NULL, "--original-size")) {
            const char *v = VALUE();
            if (v) rc = parse_pair(a, v, 1, &g->original_size, &g->n_original_size, err);
        } else if (FLAG(NULL, "--crops-coords-top-left")) {
            const char *v = VALUE();
            if (v) rc = parse_pair(a, v, 0, &g->crops_coords_top_left, &g->n_crops_coords_top_left, err);
        } else if (FLAG(NULL, "--target-size")) {
            const char *v = VALUE();
            if (v) rc = parse_pair(a, v, 1, &g->target_size, &g->n_target_size, err);
        } else if (FLAG(NULL, "--negative-original-size")) {
            const char *v = VALUE();
            if (v) rc = parse_pair(a, v, 1, &g->negative_original_size, &g->n_negative_original_size, err);
        } else if (FLAG(NULL, "--negative-crops-coords-top-left")) {
            const char *v = VALUE();
            if (v)
                rc = parse_pair(a, v, 0, &g->negative_crops_coords_top_left, &g->n_negative_crops_coords_top_left,
                                err);
        } else if (FLAG(NULL, "--negative-target-size")) {
            const char *v = VALUE();
            if (v) rc = parse_pair(a, v, 1, &g->negative_target_size, &g->n_negative_target_size, err);
        } else if (FLAG(NULL, "--refiner")) {
            const char *v = VALUE();
            if (v) rc = set_str(g, "refiner", v, err);
        } else if (FLAG(NULL, "--refiner-start")) {
            const char *v = VALUE();
            char *end;
            errno = 0;
            double x = v ? strtod(v, &end) : 0;
            if (v && (errno || end == v || *end))
                rc = sdc_err(err, SDC_ERR_ARG, "--refiner-start: expected a number, got '%s'", v);
            else if (v)
                g->refiner_start = x, g->has_refiner_start = 1;
        } else if (FLAG(NULL, "--aesthetic-score")) {
            const char *v = VALUE();
            if (v && !(rc = parse_float(a, v, &g->aesthetic_score, err))) g->has_aesthetic_score = 1;
        } else if (FLAG(NULL, "--negative-aesthetic-score")) {
            const char *v = VALUE();
            if (v && !(rc = parse_float(a, v, &g->negative_aesthetic_score, err))) g->has_negative_aesthetic_score = 1;
        } else if (FLAG(NULL, "--dump-manifest")) {
            opt->dump_manifest = 1;
        } else if (FLAG("-q", "--quiet")) {
            opt->quiet = 1;
        } else {
            rc = sdc_err(err, SDC_ERR_ARG, "unknown option '%s' ---> sdc generate --help", a);
        }
#undef FLAG
#undef VALUE
    }
    if (rc) {
        cli_job_free(job);
        return rc;
    }
    *out = job;
    return 0;
}

// ----------------------------------------------------------------------------
// storage commands: `sdc dataset import` and `sdc convert` (data/)

static void cli_print_usage_storage(FILE *f, const char *sub) {
    if (!strcmp(sub, "dataset")) {
        fprintf(f,
                "usage: sdc dataset import -o OUT.h5 [options] SOURCES...\n\n"
                "Preprocesses photos for DreamBooth into one HDF5 dataset (layout: data/README.md).\n"
                "SOURCES are folders (their .jpg/.jpeg/.png files) or image files; they are never modified.\n\n"
                "  -o, --output FILE       the dataset file (.h5)\n"
                "      --resolution N      square side in pixels (default 512): short side resized (bilinear), cropped\n"
                "      --center-crop       centre crop (default: random crop drawn from --seed and the item)\n"
                "      --random-flip       mirror each image left-right with probability 1/2 (from --seed, the item)\n"
                "  -s, --seed N            seed of the random crops (default 42)\n"
                "      --no-upscale        skip images smaller than the resolution (default: upscale with a warning)\n"
                "  -p, --prompt TEXT       caption of every image (default: FILE.txt beside each image, kohya style)\n"
                "      --cache-latents     also store VAE latents (mean x scaling_factor) of each image; needs -m\n"
                "  -m, --model PATH        the model whose VAE encodes (.safetensors, diffusers folder or .h5)\n"
                "      --latents-dtype T   f32 (default) or f16\n"
                "      --dump-manifest     print the job manifest and exit\n"
                "  -q, --quiet             no progress output\n");
    } else {
        fprintf(f,
                "usage: sdc convert -m MODEL -o OUT [--dtype f32|f16|bf16]\n\n"
                "  -m, --model PATH        .safetensors (original layout), diffusers folder, or sdc checkpoint .h5\n"
                "      --config DIR        diffusers folder describing a single file's architecture (optional)\n"
                "  -o, --output OUT        OUT.h5: sdc checkpoint; OUT.safetensors: single file, original names\n"
                "                          (A1111 / ComfyUI); anything else: a diffusers folder\n"
                "      --dtype T           cast float tensors to f32, f16 or bf16 (default: keep)\n"
                "      --dump-manifest     print the job manifest and exit\n"
                "  -q, --quiet             no progress output\n");
    }
}

static void cli_print_usage_synth(FILE *f) {
    fprintf(f,
            "usage: sdc dataset synth -o OUT.h5 [options]\n\n"
            "Draws the procedural captioned image set of data/synth.h into one HDF5 dataset: a shape (circle,\n"
            "square, triangle, star, cross, diamond) in one of 8 colours, small or large, in the center, left,\n"
            "right, top or bottom, on a plain, striped, dotted or checkered background of another colour, with\n"
            "its caption (\"a small red star on a blue striped background, on the left\") and its labels.\n"
            "Item i depends only on (seed, i). The held-out split draws a fixed set of (shape, colour,\n"
            "background) triples that the train split never does.\n\n"
            "  -o, --output FILE       the dataset file (.h5)\n"
            "  -n, --count N           items (default 10000)\n"
            "      --resolution N      square side in pixels (default 64)\n"
            "  -s, --seed N            seed (default 0)\n"
            "      --split S           train (default), heldout, all, subject (the DreamBooth\n"
            "                          subject of data/synth.h: a striped heart, \"a sks shape ...\"), or varied\n"
            "                          (the train items, two in three shapes patterned in two colours: for a VAE)\n"
            "      --cache-latents     also store VAE latents (mean x scaling_factor); needs -m\n"
            "  -m, --model PATH        the model whose VAE encodes\n"
            "      --latents-dtype T   f32 (default) or f16\n"
            "      --captions-file F   also the captions, one per line (for sdc generate --from-file); without -o,\n"
            "                          only this file\n"
            "      --dump-manifest     print the job manifest and exit\n"
            "  -q, --quiet             no progress output\n\n"
            "usage: sdc dataset score GEN.h5... [--items FILE.tsv] [--json FILE]\n\n"
            "Scores generation outputs (sdc generate --output-h5) whose prompts are synth captions: how often the\n"
            "image shows the shape, colour, background colour, size, position and texture the prompt asks for\n"
            "(fixed rules: palette distances, shape templates), over all images and over the held-out triples.\n"
            "  --items FILE.tsv        one line per image: what was found, the shape's IoU, the prompt\n"
            "  --json FILE             the totals as JSON\n");
}

static int cli_parse_score(int argc, char **argv, Sdc__Job **out, CliOptions *opt, SdcError *err) {
    Sdc__Job *job = job_new();
    Sdc__DatasetScore *ds = calloc(1, sizeof *ds);
    if (!job || !ds) {
        if (job) cli_job_free(job);
        free(ds);
        return cli_oom(err);
    }
    sdc__dataset_score__init(ds);
    job->dataset_score = ds;
    job->task = SDC__TASK__TASK_DATASET_SCORE;
    job->has_task = 1;
    const char *help = "sdc dataset synth --help";
    int rc = 0;
    for (int i = 3; i < argc && !rc; i++) {
        const char *a = argv[i];
#define VALUE() \
    (i + 1 < argc ? argv[++i] : (rc = sdc_err(err, SDC_ERR_ARG, "%s needs a value ---> %s", a, help), (const char *)NULL))
        if (flag_is(a, "-h", "--help")) {
            opt->help = 1;
            cli_print_usage_synth(stdout);
            cli_job_free(job);
            return 0;
        } else if (flag_is(a, NULL, "--items")) {
            const char *v = VALUE();
            if (v) rc = set_str(ds, "items", v, err);
        } else if (flag_is(a, NULL, "--json")) {
            const char *v = VALUE();
            if (v) rc = set_str(ds, "json", v, err);
        } else if (flag_is(a, NULL, "--dump-manifest")) {
            opt->dump_manifest = 1;
        } else if (flag_is(a, "-q", "--quiet")) {
            opt->quiet = 1;
        } else if (a[0] != '-') {
            char **l = realloc(ds->inputs, (ds->n_inputs + 1) * sizeof(char *));
            if (l) ds->inputs = l;
            if (!l || !(ds->inputs[ds->n_inputs] = dup_str(a))) rc = cli_oom(err);
            else ds->n_inputs++;
        } else {
            rc = sdc_err(err, SDC_ERR_ARG, "unknown option '%s' ---> %s", a, help);
        }
#undef VALUE
    }
    if (!rc && !ds->n_inputs)
        rc = sdc_err(err, SDC_ERR_ARG, "sdc dataset score: no generation output given ---> sdc dataset score GEN.h5");
    if (rc) {
        cli_job_free(job);
        return rc;
    }
    *out = job;
    return 0;
}

static int cli_parse_synth(int argc, char **argv, Sdc__Job **out, CliOptions *opt, SdcError *err) {
    Sdc__Job *job = job_new();
    Sdc__DatasetSynth *ds = calloc(1, sizeof *ds);
    if (!job || !ds) {
        if (job) cli_job_free(job);
        free(ds);
        return cli_oom(err);
    }
    sdc__dataset_synth__init(ds);
    job->dataset_synth = ds;
    job->task = SDC__TASK__TASK_DATASET_SYNTH;
    job->has_task = 1;
    const char *help = "sdc dataset synth --help";
    int rc = 0;
    for (int i = 3; i < argc && !rc; i++) {
        const char *a = argv[i];
        long long ll = 0;
#define FLAG(s, l) flag_is(a, s, l)
#define VALUE() \
    (i + 1 < argc ? argv[++i] : (rc = sdc_err(err, SDC_ERR_ARG, "%s needs a value ---> %s", a, help), (const char *)NULL))
        if (FLAG("-h", "--help")) {
            opt->help = 1;
            cli_print_usage_synth(stdout);
            cli_job_free(job);
            return 0;
        } else if (FLAG("-m", "--model")) {
            const char *v = VALUE();
            if (v) rc = set_str(job->model, "path", v, err);
        } else if (FLAG("-o", "--output")) {
            const char *v = VALUE();
            if (v) rc = set_str(ds, "output", v, err);
        } else if (FLAG("-n", "--count")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, 1, (long long)1 << 31, &ll, err))) ds->count = ll, ds->has_count = 1;
        } else if (FLAG(NULL, "--resolution")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, 8, 8192, &ll, err))) ds->resolution = (int32_t)ll, ds->has_resolution = 1;
        } else if (FLAG("-s", "--seed")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, 0, INT64_MAX, &ll, err))) ds->seed = ll, ds->has_seed = 1;
        } else if (FLAG(NULL, "--split")) {
            const char *v = VALUE();
            SynthSplit sp;
            if (v && synth_split_parse(v, &sp))
                rc = sdc_err(err, SDC_ERR_ARG, "--split: expected train, heldout, all, subject or varied, got '%s'", v);
            else if (v) rc = set_str(ds, "split", v, err);
        } else if (FLAG(NULL, "--cache-latents")) {
            ds->cache_latents = 1, ds->has_cache_latents = 1;
        } else if (FLAG(NULL, "--latents-dtype")) {
            const char *v = VALUE();
            if (v && strcmp(v, "f32") && strcmp(v, "f16"))
                rc = sdc_err(err, SDC_ERR_ARG, "--latents-dtype: expected f32 or f16, got '%s'", v);
            else if (v) rc = set_str(ds, "latents_dtype", v, err);
        } else if (FLAG(NULL, "--captions-file")) {
            const char *v = VALUE();
            if (v) rc = set_str(ds, "captions_file", v, err);
        } else if (FLAG(NULL, "--dump-manifest")) {
            opt->dump_manifest = 1;
        } else if (FLAG("-q", "--quiet")) {
            opt->quiet = 1;
        } else {
            rc = sdc_err(err, SDC_ERR_ARG, "unknown option '%s' ---> %s", a, help);
        }
#undef FLAG
#undef VALUE
    }
    if (rc) {
        cli_job_free(job);
        return rc;
    }
    *out = job;
    return 0;
}

static void cli_print_usage_init(FILE *f) {
    fprintf(f,
            "usage: sdc init-model --config DIR --vae MODEL -o OUT [--seed N]\n\n"
            "A diffusers folder whose UNet and text encoder are initialised from scratch, as the PyTorch modules\n"
            "of diffusers and transformers are (src/models/init.h), with a trained VAE: what training from\n"
            "scratch starts from (sdc train ... --pretrained-model OUT).\n\n"
            "  -c, --config DIR        unet/, vae/, text_encoder/ config.json, scheduler/scheduler_config.json,\n"
            "                          model_index.json (tokenizer/ copied when present; else the shipped CLIP vocab)\n"
            "      --vae MODEL         the VAE's weights: a model or a diffusers vae/ folder\n"
            "  -o, --output OUT        the new folder\n"
            "  -s, --seed N            seed (default 0)\n"
            "      --dump-manifest     print the job manifest and exit\n"
            "  -q, --quiet             no progress output\n");
}

static int cli_parse_init(int argc, char **argv, Sdc__Job **out, CliOptions *opt, SdcError *err) {
    Sdc__Job *job = job_new();
    Sdc__InitModel *im = calloc(1, sizeof *im);
    if (!job || !im) {
        if (job) cli_job_free(job);
        free(im);
        return cli_oom(err);
    }
    sdc__init_model__init(im);
    job->init_model = im;
    job->task = SDC__TASK__TASK_INIT_MODEL;
    job->has_task = 1;
    const char *help = "sdc init-model --help";
    int rc = 0;
    for (int i = 2; i < argc && !rc; i++) {
        const char *a = argv[i];
        long long ll = 0;
#define VALUE() \
    (i + 1 < argc ? argv[++i] : (rc = sdc_err(err, SDC_ERR_ARG, "%s needs a value ---> %s", a, help), (const char *)NULL))
        if (flag_is(a, "-h", "--help")) {
            opt->help = 1;
            cli_print_usage_init(stdout);
            cli_job_free(job);
            return 0;
        } else if (flag_is(a, "-c", "--config")) {
            const char *v = VALUE();
            if (v) rc = set_str(im, "config_dir", v, err);
        } else if (flag_is(a, NULL, "--vae")) {
            const char *v = VALUE();
            if (v) rc = set_str(im, "vae", v, err);
        } else if (flag_is(a, "-o", "--output")) {
            const char *v = VALUE();
            if (v) rc = set_str(im, "output", v, err);
        } else if (flag_is(a, "-s", "--seed")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, 0, INT64_MAX, &ll, err))) im->seed = ll, im->has_seed = 1;
        } else if (flag_is(a, NULL, "--dump-manifest")) {
            opt->dump_manifest = 1;
        } else if (flag_is(a, "-q", "--quiet")) {
            opt->quiet = 1;
        } else {
            rc = sdc_err(err, SDC_ERR_ARG, "unknown option '%s' ---> %s", a, help);
        }
#undef VALUE
    }
    if (!rc && (!im->config_dir || !im->output))
        rc = sdc_err(err, SDC_ERR_ARG, "sdc init-model needs --config DIR and -o OUT ---> %s", help);
    if (rc) {
        cli_job_free(job);
        return rc;
    }
    *out = job;
    return 0;
}

static int cli_parse_storage(int argc, char **argv, Sdc__Job **out, CliOptions *opt, SdcError *err) {
    const int is_import = !strcmp(argv[1], "dataset");
    int first = 2;
    if (is_import) {
        if (argc >= 3 && !strcmp(argv[2], "synth")) return cli_parse_synth(argc, argv, out, opt, err);
        if (argc >= 3 && !strcmp(argv[2], "score")) return cli_parse_score(argc, argv, out, opt, err);
        if (argc < 3 || (strcmp(argv[2], "import") && argv[2][0] != '-'))
            return sdc_err(err, SDC_ERR_ARG, "sdc dataset: expected 'import', 'synth' or 'score' ---> sdc dataset "
                           "import --help, sdc dataset synth --help");
        if (!strcmp(argv[2], "import")) first = 3;
    }
    Sdc__Job *job = job_new();
    Sdc__DatasetImport *di = calloc(1, sizeof *di);
    Sdc__Convert *cv = calloc(1, sizeof *cv);
    if (!job || !di || !cv) {
        if (job) cli_job_free(job);
        free(di), free(cv);
        return cli_oom(err);
    }
    sdc__dataset_import__init(di);
    sdc__convert__init(cv);
    job->dataset_import = di;
    job->convert = cv;
    job->task = is_import ? SDC__TASK__TASK_DATASET_IMPORT : SDC__TASK__TASK_CONVERT;
    job->has_task = 1;
    const char *help = is_import ? "sdc dataset import --help" : "sdc convert --help";
    int rc = 0;
    for (int i = first; i < argc && !rc; i++) {
        const char *a = argv[i];
        long long ll = 0;
#define FLAG(s, l) flag_is(a, s, l)
#define VALUE() \
    (i + 1 < argc ? argv[++i] : (rc = sdc_err(err, SDC_ERR_ARG, "%s needs a value ---> %s", a, help), (const char *)NULL))
        if (FLAG("-h", "--help")) {
            opt->help = 1;
            cli_print_usage(stdout, argv[1]);
            cli_job_free(job);
            return 0;
        } else if (FLAG("-m", "--model")) {
            const char *v = VALUE();
            if (v) rc = set_str(job->model, "path", v, err);
        } else if (!is_import && FLAG(NULL, "--config")) {
            const char *v = VALUE();
            if (v) rc = set_str(job->model, "config", v, err);
        } else if (FLAG("-o", "--output")) {
            const char *v = VALUE();
            if (v) rc = set_str(is_import ? (void *)di : (void *)cv, "output", v, err);
        } else if (!is_import && FLAG(NULL, "--dtype")) {
            const char *v = VALUE();
            if (v && strcmp(v, "f32") && strcmp(v, "f16") && strcmp(v, "bf16"))
                rc = sdc_err(err, SDC_ERR_ARG, "--dtype: expected f32, f16 or bf16, got '%s'", v);
            else if (v) rc = set_str(cv, "dtype", v, err);
        } else if (is_import && FLAG(NULL, "--resolution")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, 8, 8192, &ll, err))) di->resolution = (int32_t)ll, di->has_resolution = 1;
        } else if (is_import && FLAG(NULL, "--center-crop")) {
            di->center_crop = 1, di->has_center_crop = 1;
        } else if (is_import && FLAG(NULL, "--random-flip")) {
            di->random_flip = 1, di->has_random_flip = 1;
        } else if (is_import && FLAG(NULL, "--no-upscale")) {
            di->no_upscale = 1, di->has_no_upscale = 1;
        } else if (is_import && FLAG(NULL, "--cache-latents")) {
            di->cache_latents = 1, di->has_cache_latents = 1;
        } else if (is_import && FLAG("-s", "--seed")) {
            const char *v = VALUE();
            if (v && !(rc = parse_int(a, v, 0, INT64_MAX, &ll, err))) di->seed = ll, di->has_seed = 1;
        } else if (is_import && FLAG("-p", "--prompt")) {
            const char *v = VALUE();
            if (v) rc = set_str(di, "prompt", v, err);
        } else if (is_import && FLAG(NULL, "--latents-dtype")) {
            const char *v = VALUE();
            if (v && strcmp(v, "f32") && strcmp(v, "f16"))
                rc = sdc_err(err, SDC_ERR_ARG, "--latents-dtype: expected f32 or f16, got '%s'", v);
            else if (v) rc = set_str(di, "latents_dtype", v, err);
        } else if (FLAG(NULL, "--dump-manifest")) {
            opt->dump_manifest = 1;
        } else if (FLAG("-q", "--quiet")) {
            opt->quiet = 1;
        } else if (is_import && a[0] != '-') {
            char **l = realloc(di->sources, (di->n_sources + 1) * sizeof(char *));
            if (l) di->sources = l;
            if (!l || !(di->sources[di->n_sources] = dup_str(a))) rc = cli_oom(err);
            else di->n_sources++;
        } else {
            rc = sdc_err(err, SDC_ERR_ARG, "unknown option '%s' ---> %s", a, help);
        }
#undef FLAG
#undef VALUE
    }
    if (rc) {
        cli_job_free(job);
        return rc;
    }
    *out = job;
    return 0;
}

// ----------------------------------------------------------------------------
// `sdc train dreambooth`: diffusers' flag names with '-' (or '_'), each one
// the Dreambooth field of the same name; a few go to Model and Runtime.

static void cli_print_usage_train(FILE *f) {
    fprintf(f,
            "usage: sdc train dreambooth --pretrained-model MODEL --instance-data DIR|H5 --instance-prompt TEXT\n"
            "                            [options]    (diffusers train_dreambooth.py flags, '-' or '_')\n"
            "  --pretrained-model PATH         single .safetensors file, diffusers folder or sdc .h5 checkpoint\n"
            "  --instance-data DIR|H5          photos of the subject (imported to OUTPUT_DIR/instance.h5)\n"
            "  --instance-prompt TEXT          e.g. \"a photo of sks dog\"\n"
            "  --with-prior-preservation       prior-preservation loss on class images\n"
            "  --class-data DIR|H5             class images; missing ones are generated into DIR\n"
            "  --class-prompt TEXT             e.g. \"a photo of dog\"\n"
            "  --use-captions                  each image's own caption (FILE.txt beside each photo, kohya style,\n"
            "                                  or the HDF5 dataset's; none or empty: the instance / class prompt)\n"
            "  --num-class-images N            (100)      --prior-loss-weight W (1.0)\n"
            "  --resolution PX                 (512; an SDXL model: 1024)  --center-crop\n"
            "  --random-flip                   each instance image mirrored with probability 1/2 when imported\n"
            "  --train-batch-size N            (4)        --gradient-accumulation-steps N (1)\n"
            "  --learning-rate LR              (5e-6; a LoRA: 5e-4; SDXL: 1e-4)\n"
            "  --max-train-steps N             (0: --num-train-epochs (1) epochs)\n"
            "  --lr-scheduler NAME             constant | constant_with_warmup | linear | cosine |\n"
            "                                  cosine_with_restarts | polynomial   (constant)\n"
            "  --lr-warmup-steps N (500)       --lr-num-cycles N (1)  --lr-power P (1.0)\n"
            "  --max-grad-norm N               (1.0)      --adam-beta1/--adam-beta2/--adam-weight-decay/--adam-epsilon\n"
            "  --gradient-checkpointing        recompute block activations in the backward pass\n"
            "  --zero-stage 1                  under mpiexec / srun: each replica keeps 1/R of the AdamW state (ZeRO-1)\n"
            "  --pipeline-stages P             under mpiexec / srun: the UNet cut into P stages, one rank each;\n"
            "                                  ranks = P x replicas (data parallel)   (1)\n"
            "  --micro-batches M               each replica's share of a batch runs as M micro-batches\n"
            "                                  (0: 2 x stages with stages, else 1)\n"
            "  --pipeline-schedule S           1f1b (at most P micro-batches held) | gpipe   (1f1b)\n"
            "  --pipeline-cut B1,B2,...        the first block of stages 1 to P-1 (default: the cut that balances\n"
            "                                  measured forward + backward time; to balance memory instead)\n"
            "  --train-text-encoder            also train the CLIP text encoder\n"
            "  --lora-rank R                   train a LoRA of rank R instead of all weights (0)\n"
            "  --lora-alpha A                  LoRA alpha (the rank)  --lora-format diffusers|kohya\n"
            "  --offset-noise [S]              offset noise (0.1 when no value is given)\n"
            "  --snr-gamma G                   min-SNR loss weighting (5.0 recommended)\n"
            "  --checkpointing-steps N (500)   --checkpoints-total-limit N (keep all)\n"
            "  --resume-from-checkpoint PATH|latest\n"
            "  --validation-prompt TEXT        --num-validation-images N (4)  --validation-steps N (100)\n"
            "  --seed N (0)                    --output-dir DIR (dreambooth-model)\n"
            "  --mixed-precision no|bf16       bf16 compute, fp32 weights / AdamW / loss (no)\n"
            "  -t, --threads N                 CPU threads (OMP_NUM_THREADS, else all cores)\n"
            "  --dump-manifest                 print the job manifest and exit;  -q  no progress bar\n"
            "Training runs on the CPU backend (fp32; bf16 compute with --mixed-precision bf16); under mpiexec/srun\n"
            "each replica (a pipeline of P ranks) takes a share of every batch and the gradients are averaged\n"
            "(data parallel).\n");
}

static void cli_print_usage_train_vae(FILE *f) {
    fprintf(f,
            "usage: sdc train vae --dataset D.h5 (--pretrained-model MODEL | --vae-config FILE.json) [options]\n"
            "Trains an AutoencoderKL on the images of an sdc HDF5 dataset: L1 (or MSE) reconstruction in [-1, 1]\n"
            "+ kl weight x KL of the posterior, z = mean + std x eps sampled from (seed, step, item); AdamW.\n"
            "  --dataset H5                    sdc dataset import / sdc dataset synth output\n"
            "  --pretrained-model PATH         start from a model's VAE (model file or folder, or a vae/ folder)\n"
            "  --vae-config FILE.json          or from scratch: an AutoencoderKL config, torch's default init (seeded)\n"
            "  --output-dir DIR                (vae-model) DIR/vae/: config.json + diffusion_pytorch_model.safetensors;\n"
            "                                  DIR/checkpoint-<step>.h5\n"
            "  --train-batch-size N (4)        --max-train-steps N (1000)\n"
            "  --learning-rate LR (1e-4)       --lr-scheduler NAME (constant)  --lr-warmup-steps N (0)\n"
            "  --kl-weight W (1e-6)            --rec-loss l1|mse (l1)  --max-grad-norm N (1.0; 0: off)\n"
            "  --random-flip                   flip each image horizontally with probability 1/2\n"
            "  --train-decoder-only            the decoder alone (the encoder, so the latents, as they are: a UNet\n"
            "                                  trained on them still fits; as Stability's ft-MSE VAE)\n"
            "  --seed N (0)                    init, data order, noise and flips\n"
            "  --checkpointing-steps N (500)   --checkpoints-total-limit N (keep all)\n"
            "  --resume-from-checkpoint PATH|latest   (a resumed run is bit-identical to an uninterrupted one)\n"
            "  --eval-dataset H5               reconstruction PSNR of its first --eval-items N (32) before and after\n"
            "  --adam-beta1/--adam-beta2/--adam-weight-decay/--adam-epsilon   --log-every N (1)\n"
            "  -t, --threads N                 CPU threads (OMP_NUM_THREADS, else all cores)\n"
            "  --dump-manifest                 print the job manifest and exit;  -q  quiet\n"
            "Under mpiexec / srun each rank takes an equal share of every batch (data parallel).\n");
}

static void cli_print_usage_train_t2i(FILE *f) {
    fprintf(f,
            "usage: sdc train text-to-image --pretrained-model MODEL --train-data D.h5 [options]\n"
            "Fine-tunes (or trains from an `sdc init-model` start) the UNet on an sdc HDF5 dataset's images and\n"
            "captions (diffusers train_text_to_image.py flags, '-' or '_').\n"
            "  --pretrained-model PATH         single .safetensors file, diffusers folder or sdc .h5 checkpoint\n"
            "  --train-data H5                 sdc dataset import / sdc dataset synth output (images + captions)\n"
            "  --max-train-samples N           the first N items only (all)\n"
            "  --cache-latents-to-disk         keep the encoded images in OUTPUT_DIR/latents_cache.h5, read a batch\n"
            "                                  at a time (memory flat in the dataset size; without it every item's\n"
            "                                  latents are held in memory); a resumed or repeated run reads them\n"
            "                                  instead of running the VAE again\n"
            "  --resolution PX                 the dataset's (re-import to change it)   --random-flip\n"
            "  --train-batch-size N            (16)       --gradient-accumulation-steps N (1)\n"
            "  --learning-rate LR              (1e-4)     --scale-lr (lr x batch x accumulation)\n"
            "  --max-train-steps N             (0: --num-train-epochs (100) epochs)\n"
            "  --lr-scheduler NAME             constant | constant_with_warmup | linear | cosine |\n"
            "                                  cosine_with_restarts | polynomial   (constant)\n"
            "  --lr-warmup-steps N (500)       --lr-num-cycles N (1)  --lr-power P (1.0)\n"
            "  --max-grad-norm N (1.0)         --adam-beta1/--adam-beta2/--adam-weight-decay/--adam-epsilon\n"
            "  --snr-gamma G                   min-SNR loss weighting (5.0 recommended)\n"
            "  --noise-offset S (0)            --input-perturbation P (0; 0.1 in the paper)\n"
            "  --proportion-empty-prompts P    captions replaced by \"\" with probability P (0): classifier-free\n"
            "                                  guidance for a model trained from scratch\n"
            "  --use-ema                       keep an EMA of the UNet (--ema-decay 0.9999); exported and validated\n"
            "  --train-text-encoder            also train the CLIP text encoder\n"
            "  --lora-rank R                   a LoRA of rank R instead of all weights (0)  --lora-alpha A\n"
            "  --gradient-checkpointing        --zero-stage 1   --pipeline-stages P   --micro-batches M\n"
            "  --pipeline-schedule S           --pipeline-cut B1,B2,...   (as sdc train dreambooth)\n"
            "  --checkpointing-steps N (500)   --checkpoints-total-limit N (keep all)\n"
            "  --resume-from-checkpoint PATH|latest\n"
            "  --validation-prompts P1 P2 ...  one image each every --validation-epochs N (5) epochs\n"
            "                                  (--validation-inference-steps 20)\n"
            "  --seed N (0)                    --output-dir DIR (sd-model-finetuned)\n"
            "  --mixed-precision no|bf16       bf16 compute, fp32 weights / AdamW / loss (no)\n"
            "  -t, --threads N                 CPU threads (OMP_NUM_THREADS, else all cores)\n"
            "  --dump-manifest                 print the job manifest and exit;  -q  no progress bar\n"
            "Exports DIR/model.h5, DIR/model.safetensors and DIR/diffusers/ (EMA weights with --use-ema), or a\n"
            "LoRA file; checkpoints and data parallel / pipeline stages as sdc train dreambooth.\n");
}

static int in_list(const char *const *l, const char *s) {
    for (; *l; l++)
        if (!strcmp(*l, s)) return 1;
    return 0;
}

// The flags after `sdc train KIND`: each --flag-name (or --flag_name) sets
// the field flag_name of msg, KIND's message; --pretrained-model
// (--pretrained-model-name-or-path) sets Model.path, the names listed in
// model_fields / runtime_fields the Model's / Runtime's; -t is --threads; a
// bool flag takes no value; diffusers' bare --offset_noise means 0.1. With
// --help: the usage printed, opt->help set, 0.
typedef struct TrainFlags {
    const char *kind;                  // "dreambooth", "vae"
    void (*usage)(FILE *f);
    const char *const *model_fields;   // NULL-terminated
    const char *const *runtime_fields; // NULL-terminated
} TrainFlags;

static int parse_train_flags(int argc, char **argv, Sdc__Job *job, ProtobufCMessage *kind_msg, const TrainFlags *tf,
                             CliOptions *opt, SdcError *err) {
    int rc = 0;
    for (int i = 3; i < argc && !rc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            opt->help = 1;
            tf->usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--dump-manifest")) {
            opt->dump_manifest = 1;
            continue;
        }
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            opt->quiet = 1;
            continue;
        }
        char name[64];
        if (!strcmp(a, "-t")) {
            snprintf(name, sizeof name, "threads");
        } else if (strncmp(a, "--", 2) || strlen(a) > 60) {
            return sdc_err(err, SDC_ERR_ARG, "sdc train %s: unexpected argument '%s' ---> sdc train %s --help",
                           tf->kind, a, tf->kind);
        } else {
            snprintf(name, sizeof name, "%s", a + 2);
            for (char *p = name; *p; p++)
                if (*p == '-') *p = '_';
        }
        ProtobufCMessage *msg = kind_msg;
        const char *field = name;
        if (!strcmp(name, "pretrained_model") || !strcmp(name, "pretrained_model_name_or_path")) {
            msg = &job->model->base;
            field = "path";
        } else if (in_list(tf->model_fields, name)) {
            msg = &job->model->base;
        } else if (in_list(tf->runtime_fields, name)) {
            msg = &job->runtime->base;
        }
        if (!strcmp(name, "mixed_precision") && in_list(tf->runtime_fields, name)) {
            // diffusers' --mixed_precision {no,fp16,bf16}: the Runtime's precision
            const char *v = i + 1 < argc ? argv[++i] : "";
            const char *pr = !strcmp(v, "no") || !strcmp(v, "fp32") ? "PRECISION_FP32"
                             : !strcmp(v, "bf16")                   ? "PRECISION_BF16"
                             : !strcmp(v, "fp16")                   ? "PRECISION_FP16"
                                                                    : NULL;
            if (!pr)
                return sdc_err(err, SDC_ERR_ARG, "%s: expected no, bf16 or fp16, got '%s' ---> sdc train %s --help", a,
                               v, tf->kind);
            rc = manifest_set_field(&job->runtime->base, "precision", pr, err);
            continue;
        }
        const ProtobufCFieldDescriptor *fd = protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, field);
        if (!fd) return sdc_err(err, SDC_ERR_ARG, "unknown option '%s' ---> sdc train %s --help", a, tf->kind);
        const char *v = NULL;
        if (fd->type == PROTOBUF_C_TYPE_BOOL) {
            v = "true";
        } else if (!strcmp(field, "offset_noise")) { // a bare flag in diffusers: 0.1
            char *end = NULL;
            if (i + 1 < argc) (void)strtod(argv[i + 1], &end);
            v = (i + 1 < argc && end && *end == 0 && end != argv[i + 1]) ? argv[++i] : "0.1";
        } else if (fd->label == PROTOBUF_C_LABEL_REPEATED && i + 1 < argc) {
            // nargs="+" as argparse: every value up to the next option
            while (!rc && i + 1 < argc && strncmp(argv[i + 1], "--", 2)) rc = manifest_set_field(msg, field, argv[++i], err);
            if (rc) sdc_err_wrap(err, "%s", a);
            continue;
        } else if (i + 1 < argc) {
            v = argv[++i];
        } else {
            return sdc_err(err, SDC_ERR_ARG, "%s needs a value ---> sdc train %s --help", a, tf->kind);
        }
        rc = manifest_set_field(msg, field, v, err);
        if (rc) sdc_err_wrap(err, "%s", a);
    }
    return rc;
}

// A training job of KIND around kind_msg (the job owns it from here), its
// flags parsed (parse_train_flags).
static int cli_parse_train_kind(int argc, char **argv, Sdc__Job **out, CliOptions *opt, Sdc__Task task,
                                ProtobufCMessage *kind_msg, const TrainFlags *tf, SdcError *err) {
    Sdc__Job *job = job_new();
    if (!job) {
        protobuf_c_message_free_unpacked(kind_msg, NULL);
        return cli_oom(err);
    }
    job->task = task;
    job->has_task = 1;
    sdc__generate__free_unpacked(job->generate, NULL); // a training job has no generate section
    job->generate = NULL;
    if (task == SDC__TASK__TASK_TRAIN_VAE) job->train_vae = (Sdc__TrainVae *)kind_msg;
    else if (task == SDC__TASK__TASK_TRAIN_TEXT_TO_IMAGE) job->text_to_image = (Sdc__TextToImage *)kind_msg;
    else job->dreambooth = (Sdc__Dreambooth *)kind_msg;
    int rc = parse_train_flags(argc, argv, job, kind_msg, tf, opt, err);
    if (rc || opt->help) {
        cli_job_free(job);
        return rc;
    }
    *out = job;
    return 0;
}

static int cli_parse_train(int argc, char **argv, Sdc__Job **out, CliOptions *opt, SdcError *err) {
    if (argc < 3 || !strcmp(argv[2], "-h") || !strcmp(argv[2], "--help")) {
        opt->help = 1;
        cli_print_usage_train(stdout);
        return 0;
    }
    static const char *const none[] = {NULL};
    static const char *const vae_runtime[] = {"threads", NULL};
    static const char *const db_model[] = {"config", "prediction_type", NULL};
    static const char *const db_runtime[] = {"threads", "pipeline_stages", "micro_batches", "pipeline_schedule",
                                             "pipeline_cut", "mixed_precision", NULL};
    if (!strcmp(argv[2], "vae")) {
        static const TrainFlags tf = {"vae", cli_print_usage_train_vae, none, vae_runtime};
        Sdc__TrainVae *v = calloc(1, sizeof *v);
        if (!v) return cli_oom(err);
        sdc__train_vae__init(v);
        return cli_parse_train_kind(argc, argv, out, opt, SDC__TASK__TASK_TRAIN_VAE, &v->base, &tf, err);
    }
    if (!strcmp(argv[2], "text-to-image") || !strcmp(argv[2], "text_to_image")) {
        static const TrainFlags tf = {"text-to-image", cli_print_usage_train_t2i, db_model, db_runtime};
        Sdc__TextToImage *x = calloc(1, sizeof *x);
        if (!x) return cli_oom(err);
        sdc__text_to_image__init(x);
        return cli_parse_train_kind(argc, argv, out, opt, SDC__TASK__TASK_TRAIN_TEXT_TO_IMAGE, &x->base, &tf, err);
    }
    if (strcmp(argv[2], "dreambooth"))
        return sdc_err(err, SDC_ERR_ARG, "sdc train: unknown kind '%s' ---> sdc train dreambooth --help, sdc train "
                       "text-to-image --help, sdc train vae --help", argv[2]);
    static const TrainFlags tf = {"dreambooth", cli_print_usage_train, db_model, db_runtime};
    Sdc__Dreambooth *d = calloc(1, sizeof *d);
    if (!d) return cli_oom(err);
    sdc__dreambooth__init(d);
    return cli_parse_train_kind(argc, argv, out, opt, SDC__TASK__TASK_DREAMBOOTH, &d->base, &tf, err);
}
