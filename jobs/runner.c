// runner.c: executes a Job (see runner.h): picks the thread count, runs the
// task (generation: generate_runner.c; DreamBooth: train_runner.c; dataset
// import and convert here), and converts an .h5 model once for the others.
#define _GNU_SOURCE // sched_getaffinity, CPU_COUNT
#include "jobs/runner.h"

#include <mpi.h>
#include <sched.h>
#include <errno.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/backend.h"
#include "jobs/manifest.h"
#include "jobs/stop.h"
#include "data/convert.h"
#include "data/dataset.h"
#include "data/model_init.h"
#include "data/synth_score.h"
#include "data/fsutil.h"
#include "data/train_ckpt.h"
#include "mpi/mpi_check.h"

int runner_prediction(const Sdc__Job *job) {
    const char *pt = job->model ? job->model->prediction_type : NULL;
    if (pt && !strcmp(pt, "epsilon")) return PRED_EPSILON;
    if (pt && !strcmp(pt, "v_prediction")) return PRED_V;
    return -1;
}

int runner_threads(const Sdc__Job *job, int quiet) {
    int t = job->runtime ? job->runtime->threads : 0;
    int cores = 0, local = 1, rank = 0, inited = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) cores = CPU_COUNT(&set); // Slurm's binding, if any
    if (cores < 1) cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1) cores = 1;
    MPI_TRY_FATAL(MPI_COMM_WORLD, MPI_Initialized(&inited), "threads: MPI state");
    if (inited) {
        MPI_Comm node;
        MPI_TRY_FATAL(MPI_COMM_WORLD, MPI_Comm_rank(MPI_COMM_WORLD, &rank), "threads: rank");
        MPI_TRY_FATAL(MPI_COMM_WORLD, MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
                      "threads: the ranks of this node");
        MPI_TRY_FATAL(MPI_COMM_WORLD, MPI_Comm_size(node, &local), "threads: the ranks of this node");
        MPI_TRY_FATAL(MPI_COMM_WORLD, MPI_Comm_free(&node), "threads: the ranks of this node");
    }
    // Ranks bound to their own cores see only those; ranks that share the
    // node's cores split them (torchrun's OMP_NUM_THREADS, done for you).
    int shared = local > 1 && cores >= (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (t == 0) t = backend_cpu_env_threads(); // OMP_NUM_THREADS, as torchrun's users set it
    if (t == 0) t = shared ? (cores / local > 0 ? cores / local : 1) : cores;
    if (!quiet && rank == 0 && shared && t * local > cores)
        fprintf(stderr, "sdc: warning: %d ranks x %d threads on %d cores: OpenMP threads will spin-wait on each "
                "other ---> pass -t %d (or set OMP_WAIT_POLICY=passive)\n", local, t, cores,
                cores / local > 0 ? cores / local : 1);
    return t;
}

void runner_print_peak_memory(const Backend *be) {
    size_t fr = 0, tot = 0;
    if (be->device != DEV_CPU) {
        // every arena is allocated up front and kept until the model is
        // freed, so what is in use at the end of the run is its peak
        if (be->mem_info && be->mem_info(be, &fr, &tot) == 0)
            fprintf(stderr, "sdc: peak device memory: %.0f MiB in use of %.0f MiB on %s (device-wide: weights, "
                    "activation arenas, workspaces, the CUDA context)\n", (tot - fr) / 1048576.0, tot / 1048576.0,
                    be->name);
        return;
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        fprintf(stderr, "sdc: peak memory: %.0f MiB resident (mapped weight files included)\n",
                ru.ru_maxrss / 1024.0);
    char info[768]; // --precision bf16: what computed it (AMX, AVX512-BF16, or sdc's emulation)
    backend_cpu_bf16_info(be, info, sizeof info);
    if (info[0]) fprintf(stderr, "sdc: bf16 ops: %s\n", info);
}

// ----------------------------------------------------------------------------
// storage tasks (data/)

static int run_dataset_import(const Sdc__Job *job, const RunOptions *opt, SdcError *err) {
    const Sdc__DatasetImport *d = job->dataset_import;
    if (!d || !d->n_sources)
        return sdc_err(err, SDC_ERR_ARG, "dataset import: no sources ---> sdc dataset import -o out.h5 FOLDER...");
    if (!d->output || !d->output[0])
        return sdc_err(err, SDC_ERR_ARG, "dataset import: no output ---> pass -o out.h5");
    const char *model = job->model && job->model->path && job->model->path[0] ? job->model->path : NULL;
    if (d->cache_latents && !model)
        return sdc_err(err, SDC_ERR_ARG, "--cache-latents needs the model whose VAE encodes: -m MODEL");
    DatasetImportOpts o = {.sources = (const char *const *)d->sources, .n_sources = (int)d->n_sources,
                           .output = d->output, .resolution = d->resolution, .center_crop = d->center_crop,
                           .seed = (uint64_t)d->seed, .no_upscale = d->no_upscale, .random_flip = d->random_flip,
                           .prompt = d->prompt && d->prompt[0] ? d->prompt : NULL,
                           .cache_latents_model = d->cache_latents ? model : NULL,
                           .threads = runner_threads(job, opt->quiet),
                           .latents_dtype = d->latents_dtype && !strcmp(d->latents_dtype, "f16") ? DT_F16 : DT_F32,
                           .quiet = opt->quiet};
    const H5Par par = h5_par_world();
    DatasetImportStats st;
    SDC_TRY(dataset_import(&o, &par, &st, err));
    if (!opt->quiet && par.rank == 0)
        fprintf(stderr, "sdc: imported %lld of %lld images into %s in %.2fs (%.1f images/s; %lld skipped, %lld "
                "upscaled%s)\n", (long long)st.written, (long long)st.candidates, d->output, st.seconds,
                st.written / (st.seconds > 1e-9 ? st.seconds : 1e-9), (long long)st.skipped, (long long)st.upscaled,
                o.cache_latents_model ? ", latents cached" : "");
    return 0;
}

static int write_captions(const char *path, uint64_t seed, SynthSplit split, int64_t count, SdcError *err);

static int run_dataset_synth(const Sdc__Job *job, const RunOptions *opt, SdcError *err) {
    const Sdc__DatasetSynth *d = job->dataset_synth;
    const int have_caps = d && d->captions_file && d->captions_file[0];
    if (!d || ((!d->output || !d->output[0]) && !have_caps))
        return sdc_err(err, SDC_ERR_ARG, "dataset synth: no output ---> pass -o out.h5 (or --captions-file F)");
    SynthSplit split;
    if (synth_split_parse(d->split ? d->split : "train", &split))
        return sdc_err(err, SDC_ERR_ARG, "dataset synth: split '%s' ---> train, heldout, all, subject or varied", d->split);
    if (d->count < 1) return sdc_err(err, SDC_ERR_ARG, "dataset synth: count %lld ---> at least 1", (long long)d->count);
    if (have_caps && h5_par_world().rank == 0)
        SDC_TRY(write_captions(d->captions_file, (uint64_t)d->seed, split, d->count, err));
    if (!d->output || !d->output[0]) return 0;
    const char *model = job->model && job->model->path && job->model->path[0] ? job->model->path : NULL;
    if (d->cache_latents && !model)
        return sdc_err(err, SDC_ERR_ARG, "--cache-latents needs the model whose VAE encodes: -m MODEL");
    DatasetImportOpts o = {.output = d->output, .resolution = d->resolution, .center_crop = 1,
                           .seed = (uint64_t)d->seed, .cache_latents_model = d->cache_latents ? model : NULL,
                           .threads = runner_threads(job, opt->quiet),
                           .latents_dtype = d->latents_dtype && !strcmp(d->latents_dtype, "f16") ? DT_F16 : DT_F32,
                           .quiet = opt->quiet, .synth_count = d->count, .synth_split = split};
    const H5Par par = h5_par_world();
    DatasetImportStats st;
    SDC_TRY(dataset_import(&o, &par, &st, err));
    if (!opt->quiet && par.rank == 0)
        fprintf(stderr, "sdc: drew %lld %s items into %s in %.2fs (%.1f images/s%s)\n", (long long)st.written,
                synth_split_name(split), d->output, st.seconds, st.written / (st.seconds > 1e-9 ? st.seconds : 1e-9),
                o.cache_latents_model ? ", latents cached" : "");
    return 0;
}

static int write_captions(const char *path, uint64_t seed, SynthSplit split, int64_t count, SdcError *err) {
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return sdc_err(err, SDC_ERR_ARG, "%s: path too long", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return sdc_err(err, SDC_ERR_IO, "%s: cannot create (%s)", tmp, strerror(errno));
    for (int64_t i = 0; i < count; i++) {
        SynthLabel l;
        char cap[SYNTH_CAPTION_MAX];
        synth_label(seed, i, split, &l);
        synth_caption(&l, cap, sizeof cap);
        fprintf(f, "%s\n", cap);
    }
    int bad = ferror(f);
    if (fclose(f) || bad) {
        unlink(tmp);
        return sdc_err(err, SDC_ERR_IO, "%s: write failed (%s) ---> is the disk full?", tmp, strerror(errno));
    }
    if (rename(tmp, path)) {
        unlink(tmp);
        return sdc_err(err, SDC_ERR_IO, "%s: cannot rename to %s (%s)", tmp, path, strerror(errno));
    }
    return 0;
}

static int run_dataset_score(const Sdc__Job *job, const RunOptions *opt, SdcError *err) {
    const Sdc__DatasetScore *d = job->dataset_score;
    SynthScore s = {0};
    FILE *items = NULL;
    if (d->items && d->items[0] && !(items = fopen(d->items, "w")))
        return sdc_err(err, SDC_ERR_IO, "%s: cannot create (%s)", d->items, strerror(errno));
    if (items) fprintf(items, "file\titem\theld_out\tshape\tcolour\tbackground\tshape_iou\tprompt\n");
    int rc = 0;
    for (size_t i = 0; i < d->n_inputs && !rc; i++) rc = synth_score_file(d->inputs[i], &s, items, err);
    if (items && (fclose(items) || rc)) {
        if (!rc) rc = sdc_err(err, SDC_ERR_IO, "%s: write failed ---> is the disk full?", d->items);
    }
    if (rc) return rc;
    if (!s.scored && !s.subject_items && !s.class_items)
        return sdc_err(err, SDC_ERR_ARG, "no image to score (%lld items: %lld not done, %lld prompts that are not "
                       "synth captions) ---> generate from `sdc dataset synth --captions-file` prompts",
                       (long long)s.items, (long long)s.not_done, (long long)s.unparsed);
    (void)opt;
    printf("scored %lld of %lld images (%lld not done, %lld prompts not synth captions); %lld of held-out triples\n",
           (long long)s.scored, (long long)s.items, (long long)s.not_done, (long long)s.unparsed, (long long)s.heldout);
    if (s.scored) printf("  %-11s %8s %10s\n", "attribute", "all", "held-out");
    for (int k = 0; s.scored && k < SYNTH_SCORE_N; k++) {
        printf("  %-11s %7.1f%%", synth_score_names[k], 100.0 * s.hit[k] / s.scored);
        if (s.heldout) printf(" %9.1f%%\n", 100.0 * s.heldout_hit[k] / s.heldout);
        else printf(" %10s\n", "-");
    }
    const double si = s.subject_items ? (double)s.subject_items : 1, ci = s.class_items ? (double)s.class_items : 1;
    if (s.subject_items)
        printf("subject prompts (\"sks\"): %lld images: subject found %.1f%%, background as prompted %.1f%%\n",
               (long long)s.subject_items, 100.0 * s.subject_found / si, 100.0 * s.subject_bg / si);
    if (s.class_items)
        printf("class prompts (\"shape\"): %lld images: drawn as the subject %.1f%% (language drift), one of the six "
               "shapes %.1f%%, background as prompted %.1f%%\n", (long long)s.class_items,
               100.0 * s.class_as_subject / ci, 100.0 * s.class_shape / ci, 100.0 * s.class_bg / ci);
    if (d->json && d->json[0]) {
        FILE *f = fopen(d->json, "w");
        if (!f) return sdc_err(err, SDC_ERR_IO, "%s: cannot create (%s)", d->json, strerror(errno));
        fprintf(f, "{\"scored\": %lld, \"items\": %lld, \"not_done\": %lld, \"unparsed\": %lld, \"heldout\": %lld",
                (long long)s.scored, (long long)s.items, (long long)s.not_done, (long long)s.unparsed,
                (long long)s.heldout);
        for (int k = 0; k < SYNTH_SCORE_N; k++)
            fprintf(f, ", \"%s\": %.6f, \"heldout_%s\": %.6f", synth_score_names[k],
                    s.scored ? (double)s.hit[k] / s.scored : 0.0, synth_score_names[k],
                    s.heldout ? (double)s.heldout_hit[k] / s.heldout : 0.0);
        fprintf(f, ", \"subject_items\": %lld, \"subject_fidelity\": %.6f, \"subject_prompt_fidelity\": %.6f, "
                "\"class_items\": %lld, \"class_drawn_as_subject\": %.6f, \"class_shape\": %.6f, \"class_bg\": %.6f",
                (long long)s.subject_items, s.subject_found / si, s.subject_bg / si, (long long)s.class_items,
                s.class_as_subject / ci, s.class_shape / ci, s.class_bg / ci);
        fprintf(f, "}\n");
        if (fclose(f)) return sdc_err(err, SDC_ERR_IO, "%s: write failed ---> is the disk full?", d->json);
    }
    return 0;
}

static int run_init_model(const Sdc__Job *job, const RunOptions *opt, SdcError *err) {
    const Sdc__InitModel *m = job->init_model;
    ModelInitOpts o = {.config_dir = m->config_dir, .vae = m->vae, .output = m->output, .seed = (uint64_t)m->seed,
                       .quiet = opt->quiet};
    return model_init_folder(&o, err);
}

static int train_ckpt_base(const char *p, int quiet, int depth, char **base, char **cfg, SdcError *err);

static int run_convert(const Sdc__Job *job, const RunOptions *opt, SdcError *err) {
    const Sdc__Convert *c = job->convert;
    if (!job->model || !job->model->path || !job->model->path[0])
        return sdc_err(err, SDC_ERR_ARG, "convert: no model ---> pass -m MODEL (.safetensors, diffusers folder, .h5)");
    if (!c || !c->output || !c->output[0])
        return sdc_err(err, SDC_ERR_ARG, "convert: no output ---> pass -o OUT.h5, OUT.safetensors or a folder");
    const char *dt = c->dtype ? c->dtype : "";
    char *manifest = manifest_to_text(job);
    ConvertOpts o = {.model = job->model->path, .config = job->model->config && job->model->config[0] ?
                     job->model->config : NULL, .output = c->output,
                     .dtype = !strcmp(dt, "f32") ? DT_F32 : !strcmp(dt, "f16") ? DT_F16 : !strcmp(dt, "bf16") ?
                     DT_BF16 : -1, .manifest = manifest, .quiet = opt->quiet};
    char *base = NULL, *cfg = NULL; // a training checkpoint: its base model with its weights
    int rc = fs_ends_with(o.model, ".h5") ? train_ckpt_base(o.model, opt->quiet, 0, &base, &cfg, err) : 0;
    o.base = base, o.base_config = cfg; // (the base's tokenizer comes with it)
    if (!rc) rc = convert_run(&o, err);
    free(base);
    free(cfg);
    free(manifest);
    return rc;
}

static int h5_convert_cached(const char *p, char *cache, size_t cap, const char *manifest, int quiet, int depth,
                             SdcError *err);

// The base model of a training checkpoint p that holds trained weights only
// (checkpoint-N.h5 of a full fine-tuning run): *base (malloc'd; NULL when p
// is a complete model) the model of the job that wrote it, *cfg (malloc'd or
// NULL) its config folder. A base that is an .h5 is given as its converted
// folder (rank 0 converts it). The path is as the training job was given it.
static int train_ckpt_base(const char *p, int quiet, int depth, char **base, char **cfg, SdcError *err) {
    *base = *cfg = NULL;
    char *text = NULL;
    int rc = convert_train_ckpt(p, &text, err);
    if (rc || !text) return rc; // an error, or a complete model
    Sdc__Job *j = NULL;
    rc = manifest_parse_text(&sdc__job__descriptor, text, strlen(text), p, (ProtobufCMessage **)&j, err);
    free(text);
    if (rc) return sdc_err_wrap(err, "%s: the manifest of the job that wrote it", p);
    const char *b = j->model && j->model->path ? j->model->path : "";
    struct stat st;
    if (j->dreambooth && j->dreambooth->lora_rank > 0)
        rc = sdc_err(err, SDC_ERR_ARG, "%s: a LoRA training checkpoint, not a model\n---> generate with its base "
                     "model and --lora %s (sdc generate -m %s --lora %s)", p, p, b[0] ? b : "BASE", p);
    else if (!b[0])
        rc = sdc_err(err, SDC_ERR_FORMAT, "%s: a training checkpoint whose job names no model", p);
    else if (stat(b, &st))
        rc = sdc_err(err, SDC_ERR_IO, "%s holds the trained weights only; the rest is its base model %s, not found "
                     "here (%s)\n---> run sdc from the folder the training ran in (the path is relative to it), "
                     "or use the run's exported model.h5 / diffusers/", p, b, strerror(errno));
    else if (depth > 8)
        rc = sdc_err(err, SDC_ERR_ARG, "%s: more than 8 training checkpoints each trained from the next", p);
    if (!rc && fs_ends_with(b, ".h5")) {
        char c[1200];
        rc = h5_convert_cached(b, c, sizeof c, NULL, quiet, depth + 1, err);
        if (!rc && !(*base = strdup(c))) rc = sdc_err(err, SDC_ERR_OOM, "out of memory");
    } else if (!rc) {
        const char *c = j->model->config && j->model->config[0] ? j->model->config : NULL;
        *base = strdup(b);
        *cfg = c ? strdup(c) : NULL;
        if (!*base || (c && !*cfg)) rc = sdc_err(err, SDC_ERR_OOM, "out of memory");
    }
    if (!rc && !quiet)
        fprintf(stderr, "sdc: %s holds the trained weights of a run on %s: the model is that with them\n", p, b);
    protobuf_c_message_free_unpacked(&j->base, NULL);
    if (rc) {
        free(*base), free(*cfg);
        *base = *cfg = NULL;
    }
    return rc;
}

// Rank 0's part of h5_model_cache: p converted into cache (PATH.sdc-cache)
// unless a cache newer than p is there; a training checkpoint with its base.
static int h5_convert_cached(const char *p, char *cache, size_t cap, const char *manifest, int quiet, int depth,
                             SdcError *err) {
    if ((size_t)snprintf(cache, cap, "%s.sdc-cache", p) >= cap) return sdc_err(err, SDC_ERR_ARG, "%s: path too long", p);
    struct stat sh, sc;
    char idx[1200], tmp[1200];
    snprintf(idx, sizeof idx, "%s/model_index.json", cache);
    if (stat(p, &sh)) return sdc_err(err, SDC_ERR_IO, "%s: cannot open (%s)", p, strerror(errno));
    if (!stat(idx, &sc) && sc.st_mtime >= sh.st_mtime) return 0;
    char *base = NULL, *cfg = NULL;
    SDC_TRY(train_ckpt_base(p, quiet, depth, &base, &cfg, err));
    snprintf(tmp, sizeof tmp, "%s.tmp", cache);
    ConvertOpts o = {.model = p, .output = tmp, .dtype = -1, .manifest = manifest, .quiet = 1, .base = base,
                     .base_config = cfg};
    if (!quiet) fprintf(stderr, "sdc: %s is an HDF5 checkpoint: converting it once to %s/\n", p, cache);
    int rc = 0;
    // a stale cache or a killed conversion goes first
    if (fs_rm_tree(tmp) || fs_rm_tree(cache)) rc = sdc_err(err, SDC_ERR_IO, "cannot remove %s", cache);
    if (!rc) rc = convert_run(&o, err);
    if (!rc && rename(tmp, cache))
        rc = sdc_err(err, SDC_ERR_IO, "cannot rename %s to %s (%s)", tmp, cache, strerror(errno));
    free(base);
    free(cfg);
    return rc;
}

// The models of src/ are read from safetensors files; an sdc HDF5
// checkpoint given as the model of a generation or training job is converted
// once into a diffusers folder beside it, X.h5.sdc-cache/ (reused while it is
// newer than X.h5; written as .tmp and renamed, by rank 0). *cache gets its
// path, or "" when the model is not an .h5 file. A training checkpoint
// (checkpoint-N.h5) becomes its base model with its trained weights.
static int h5_model_cache(const Sdc__Job *job, char *cache, size_t cap, int quiet, SdcError *err) {
    cache[0] = 0;
    const char *p = job->model && job->model->path ? job->model->path : "";
    int loads = job->task == SDC__TASK__TASK_GENERATE || job->task == SDC__TASK__TASK_DREAMBOOTH ||
                job->task == SDC__TASK__TASK_TRAIN_TEXT_TO_IMAGE ||
                (job->task == SDC__TASK__TASK_DATASET_IMPORT && job->dataset_import &&
                 job->dataset_import->cache_latents) ||
                (job->task == SDC__TASK__TASK_DATASET_SYNTH && job->dataset_synth && job->dataset_synth->cache_latents);
    if (!fs_ends_with(p, ".h5") || !loads) return 0;
    const H5Par par = h5_par_world();
    int rc = 0;
    if ((size_t)snprintf(cache, cap, "%s.sdc-cache", p) >= cap)
        rc = sdc_err(err, SDC_ERR_ARG, "%s: path too long", p);
    if (!rc && par.rank == 0) {
        char *manifest = manifest_to_text(job);
        rc = h5_convert_cached(p, cache, cap, manifest, quiet, 0, err);
        free(manifest);
    }
    return h5_par_agree(&par, rc, err);
}

int runner_run(const Sdc__Job *job, const RunOptions *opt, SdcError *err) {
    SDC_TRY(manifest_validate(job, err));
    char cache[1200];
    SDC_TRY(h5_model_cache(job, cache, sizeof cache, opt->quiet, err));
    char *given = NULL;
    if (cache[0]) { // run the job on the converted folder (the caller's Job is restored after)
        given = job->model->path;
        job->model->path = cache;
    }
    int rc;
    if (job->task == SDC__TASK__TASK_GENERATE || job->task == SDC__TASK__TASK_DREAMBOOTH ||
        job->task == SDC__TASK__TASK_TRAIN_TEXT_TO_IMAGE || job->task == SDC__TASK__TASK_TRAIN_VAE)
        stop_install();
    switch (job->task) {
    case SDC__TASK__TASK_GENERATE: rc = run_generate(job, opt, err); break;
    case SDC__TASK__TASK_DATASET_IMPORT: rc = run_dataset_import(job, opt, err); break;
    case SDC__TASK__TASK_DATASET_SYNTH: rc = run_dataset_synth(job, opt, err); break;
    case SDC__TASK__TASK_DATASET_SCORE: rc = run_dataset_score(job, opt, err); break;
    case SDC__TASK__TASK_INIT_MODEL: rc = run_init_model(job, opt, err); break;
    case SDC__TASK__TASK_CONVERT: rc = run_convert(job, opt, err); break;
    case SDC__TASK__TASK_DREAMBOOTH: rc = run_dreambooth(job, opt, err); break;
    case SDC__TASK__TASK_TRAIN_TEXT_TO_IMAGE: rc = run_text_to_image(job, opt, err); break;
    case SDC__TASK__TASK_TRAIN_VAE: rc = run_train_vae(job, opt, err); break;
    default: rc = sdc_err(err, SDC_ERR_UNSUPPORTED, "task %d is not implemented yet", job->task);
    }
    if (given) job->model->path = given;
    return rc;
}
