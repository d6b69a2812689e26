// train_runner.c: runs a DreamBooth job (Job.dreambooth, `sdc train
// dreambooth`): data in, trainer (src/train/dreambooth.h) with its hooks
// (MPI data parallel, checkpoints, metrics, validation), model out.
//
// What happens, in order:
//   1. the instance photos are imported into OUTPUT_DIR/instance.h5 with VAE
//      latents cached (an HDF5 dataset given instead is used as it is);
//   2. with prior preservation, class images missing from --class-data are
//      generated with the class prompt (PNGs in that folder, as diffusers
//      does), then imported into OUTPUT_DIR/class.h5 (reused while the folder
//      holds the same number of images);
//   3. the model is loaded for training, a checkpoint resumed if asked;
//   4. training, with checkpoint-<step>.h5 every --checkpointing-steps,
//      validation PNGs every --validation-steps and one JSON line of metrics
//      per step in OUTPUT_DIR/metrics.jsonl;
//   5. export: full fine-tuning writes OUTPUT_DIR/model.h5 (complete sdc
//      checkpoint), OUTPUT_DIR/model.safetensors (single file, original
//      layout) and OUTPUT_DIR/diffusers/; LoRA writes
//      OUTPUT_DIR/pytorch_lora_weights.safetensors (diffusers or kohya).
// Every rank runs the same steps on its share of each batch; rank 0 writes
// checkpoints, metrics, validation images and the export.
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "data/convert.h"
#include "data/dataset.h"
#include "data/fsutil.h"
#include "data/h5util.h"
#include "data/latent_cache.h"
#include "data/train_ckpt.h"
#include "io/image.h"
#include "io/lora.h"
#include "jobs/manifest.h"
#include "jobs/runner.h"
#include "jobs/stop.h"
#include "mpi/dp.h"
#include "mpi/grid.h"
#include "mpi/mpi_check.h"
#include "mpi/pp.h"
#include "mpi/pp_train.h"
#include "train/dreambooth.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ---------------------------------------------------------------------------
// data
// ---------------------------------------------------------------------------

// Imports `src` (a folder) into `out` with latents cached, unless out already
// holds exactly `expect` items (expect < 0: any) at this resolution.
// prompt NULL (--use-captions): FILE.txt beside each image, or fallback where there is none.
static int import_folder(const Sdc__Job *job, const char *src, const char *out, const char *prompt,
                         const char *fallback, int expect, const H5Par *par, int quiet, SdcError *err) {
    const Sdc__Dreambooth *d = job->dreambooth;
    if (access(out, F_OK) == 0) {
        Dataset ds;
        SdcError e2 = {0};
        if (dataset_open(&ds, out, &e2) == 0) {
            int ok = ds.resolution == d->resolution && ds.latents >= 0 && (expect < 0 || ds.n == expect) &&
                     ds.random_flip == (src == d->instance_data && d->random_flip) &&
                     (prompt || dataset_captions_current(&ds, fallback)); // --use-captions: edited FILE.txt
            dataset_close(&ds);
            if (ok) return 0;
        }
    }
    const char *srcs[1] = {src};
    DatasetImportOpts o = {.sources = srcs, .n_sources = 1, .output = out, .resolution = d->resolution,
                           .center_crop = d->center_crop, .seed = (uint64_t)d->seed, .prompt = prompt,
                           .caption_fallback = fallback,
                           .random_flip = src == d->instance_data && d->random_flip,
                           .cache_latents_model = job->model->path, .latents_dtype = DT_F32,
                           .threads = runner_threads(job, 1), .quiet = quiet};
    DatasetImportStats st;
    if (dataset_import(&o, par, &st, err)) // name the flag: its message only says "the sources"
        return sdc_err_wrap(err, "%s %s", src == d->instance_data ? "--instance-data" : "--class-data", src);
    if (st.written == 0)
        return sdc_err(err, SDC_ERR_ARG, "%s: no readable JPEG/PNG images (%lld found, %lld skipped)\n"
                       "---> point it at a folder of photos of the subject", src, (long long)st.candidates,
                       (long long)st.skipped);
    if (!quiet && par->rank == 0)
        fprintf(stderr, "sdc: imported %lld images of %s into %s (latents cached)\n", (long long)st.written, src, out);
    return 0;
}

// All latents of an HDF5 dataset (times its scaling factor, as stored).
// With time_ids (SDXL), each item's six time ids too: its original height,
// width, crop top, left (the dataset's size_crop) and the target size
// (resolution, resolution), as train_dreambooth_lora_sdxl.py's compute_time_ids.
static int read_latents(const char *path, int resolution, float **out, int *n, int *lh, int *lw, float **time_ids,
                        SdcError *err) {
    Dataset ds;
    SDC_TRY(dataset_open(&ds, path, err));
    int rc = 0;
    if (ds.resolution != resolution)
        rc = sdc_err(err, SDC_ERR_ARG, "%s: images at %d px, training at --resolution %d\n"
                     "---> re-import it at %d (sdc dataset import --resolution %d --cache-latents) or pass a folder",
                     path, ds.resolution, resolution, resolution, resolution);
    else if (ds.latents < 0)
        rc = sdc_err(err, SDC_ERR_ARG, "%s: no cached latents\n---> re-import it with --cache-latents -m MODEL",
                     path);
    else if (ds.n < 1)
        rc = sdc_err(err, SDC_ERR_ARG, "%s: the dataset is empty", path);
    if (!rc) {
        size_t lat = (size_t)ds.latent_shape[0] * ds.latent_shape[1] * ds.latent_shape[2];
        *out = malloc((size_t)ds.n * lat * sizeof(float));
        if (!*out) rc = sdc_err(err, SDC_ERR_OOM, "out of memory for %lld latents", (long long)ds.n);
        for (int64_t i = 0; !rc && i < ds.n; i++) rc = dataset_read_latent(&ds, i, *out + i * lat, err);
        if (!rc && time_ids && !(*time_ids = malloc((size_t)ds.n * 6 * sizeof(float))))
            rc = sdc_err(err, SDC_ERR_OOM, "out of memory for %lld time ids", (long long)ds.n);
        for (int64_t i = 0; !rc && time_ids && i < ds.n; i++) {
            int32_t g[4];
            rc = dataset_read_size_crop(&ds, i, g, err);
            float *ti = *time_ids + i * 6;
            ti[0] = (float)g[0], ti[1] = (float)g[1], ti[2] = (float)g[2], ti[3] = (float)g[3];
            ti[4] = ti[5] = (float)resolution;
        }
        *n = (int)ds.n;
        *lh = ds.latent_shape[1];
        *lw = ds.latent_shape[2];
    }
    dataset_close(&ds);
    return rc;
}

// dir/class-00001.png -> dir/class-00001.txt holding text (kohya's caption
// file), written as .tmp and renamed, so a killed run leaves none half-written.
static int write_caption(const char *png, const char *text, SdcError *err) {
    char p[1200], tmp[1210];
    size_t n = strlen(png);
    if (n < 4 || n + 1 > sizeof p) return sdc_err(err, SDC_ERR_ARG, "%s: path too long", png);
    snprintf(p, sizeof p, "%.*s.txt", (int)(n - 4), png);
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    FILE *f = fopen(tmp, "wb");
    if (!f) return sdc_err(err, SDC_ERR_IO, "%s: %s ---> %s", tmp, strerror(errno), fs_write_hint(errno));
    int bad = fputs(text, f) < 0 || fputc('\n', f) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, p)) {
        int e = errno;
        remove(tmp);
        return sdc_err(err, SDC_ERR_IO, "%s: %s ---> %s", p, strerror(e), fs_write_hint(e));
    }
    return 0;
}

// --use-captions without --instance-prompt: every photo needs its FILE.txt
// (kohya), named here with the training flags rather than the import's hint.
static int captions_present(const char *dir, SdcError *err) {
    DIR *dd = opendir(dir);
    if (!dd) return 0; // the import names a missing folder
    int missing = 0;
    char first[1200] = "";
    struct dirent *e;
    while ((e = readdir(dd))) {
        if (e->d_name[0] == '.' || !fs_is_image_name(e->d_name)) continue;
        char p[1200];
        const char *dot = strrchr(e->d_name, '.');
        snprintf(p, sizeof p, "%s/%.*s.txt", dir, (int)(dot - e->d_name), e->d_name);
        if (access(p, R_OK) == 0) continue;
        if (!missing++) snprintf(first, sizeof first, "%s", p);
    }
    closedir(dd);
    if (!missing) return 0;
    return sdc_err(err, SDC_ERR_ARG, "--use-captions: %d image%s in %s %s no caption file (the first: %s)\n"
                   "---> write one FILE.txt per image (kohya style), or give --instance-prompt for the images "
                   "without one", missing, missing == 1 ? "" : "s", dir, missing == 1 ? "has" : "have", first);
}

// --use-captions: the first n captions of an HDF5 dataset as token ids,
// (n, L); an empty caption takes fallback (refused when there is none).
static int caption_ids(const char *h5, int n, const char *fallback, const char *flag, const SdModel *m,
                       int32_t **ids, int64_t *truncated, SdcError *err) {
    const ClipConfig *cc = clip_config(m->clip);
    const int L = cc->max_positions;
    Dataset ds;
    SDC_TRY(dataset_open(&ds, h5, err));
    int rc = ds.n < n ? sdc_err(err, SDC_ERR_FORMAT, "%s: %lld items, %d expected", h5, (long long)ds.n, n) : 0;
    if (!rc && !(*ids = malloc((size_t)n * L * sizeof(int32_t))))
        rc = sdc_err(err, SDC_ERR_OOM, "out of memory for %d captions", n);
    for (int i = 0; !rc && i < n; i++) {
        const char *c = ds.captions[i] && ds.captions[i][0] ? ds.captions[i] : fallback;
        if (!c || !c[0]) {
            rc = sdc_err(err, SDC_ERR_ARG, "%s: item %d (%s) has no caption and there is no %s to take its place\n"
                         "---> write its caption (FILE.txt beside the photo) or give %s", h5, i,
                         ds.sources[i] ? ds.sources[i] : "?", flag, flag);
            break;
        }
        int dropped = 0;
        rc = clip_tok_encode(m->tok, c, *ids + (size_t)i * L, L, cc->pad_token, &dropped, err);
        *truncated += dropped > 0;
    }
    dataset_close(&ds);
    return rc;
}

// diffusers: class images generated with the class prompt until the folder
// holds num_class_images (the pipeline's default sampler, PNDM, for SD 1.x).
// Rank r makes the missing images i with i % R == r.
static int make_class_images(const Sdc__Job *job, const Backend *be, const char *dir, int have, const H5Par *par,
                             int quiet, SdcError *err) {
    const Sdc__Dreambooth *d = job->dreambooth;
    int want = d->num_class_images, missing = want - have;
    if (missing <= 0) return 0;
    if (!quiet && par->rank == 0)
        fprintf(stderr, "sdc: generating %d class images of \"%s\" into %s (%d steps, cfg %.1f)\n", missing,
                d->class_prompt, dir, d->class_inference_steps, d->class_guidance_scale);
    SdModel m;
    SDC_TRY(sd_model_load(&m, job->model->path, job->model->config && job->model->config[0] ? job->model->config : NULL,
                          runner_prediction(job), be, err));
    // the pipeline's default sampler: PNDM for SD 1.x / 2.x, Euler (the folder's spacing) for SDXL
    const int xl = model_files_info(m.files)->family == SD_FAMILY_XL;
    float *ctx = malloc(sd_cond_floats(&m) * sizeof(float));
    size_t img = (size_t)3 * d->resolution * d->resolution;
    int bs = d->sample_batch_size > 0 ? d->sample_batch_size : 1;
    float *pix = malloc((size_t)bs * img * sizeof(float));
    uint8_t *rgb = malloc(img);
    int rc = !ctx || !pix || !rgb ? sdc_err(err, SDC_ERR_OOM, "out of memory generating class images") : 0;
    if (!rc) rc = sd_encode_prompt(&m, d->class_prompt, "", 0, ctx, err);
    double t0 = now_s();
    int done = 0;
    // this rank's images, in batches of consecutive seeds
    for (int i = have + par->rank; !rc && i < want; i += par->size * bs) {
        int nb = 0;
        while (nb < bs && i + nb * par->size < want) nb++;
        // one batch = consecutive items of this rank's stride; seeds = seed + item
        for (int k = 0; !rc && k < nb; k++) {
            int item = i + k * par->size;
            GenParams p = {.mode = GEN_TXT2IMG, .steps = d->class_inference_steps,
                           .cfg_scale = d->class_guidance_scale, .sampler = xl ? SAMPLER_EULER : SAMPLER_PNDM,
                           .seed = (uint64_t)d->seed + 1000003u + (uint64_t)item, .width = d->resolution,
                           .height = d->resolution, .batch = 1};
            if (stop_signal()) {
                rc = sdc_err(err, SDC_ERR_STOPPED, "%s while generating class images (%d of %d in %s; the rest "
                             "are made on the next run)", stop_signal_name(stop_signal()), have + done, want, dir);
                break;
            }
            rc = sd_generate(&m, &p, ctx, NULL, pix, NULL, NULL, err);
            if (rc) break;
            char path[1200];
            snprintf(path, sizeof path, "%s/class-%05d.png", dir, item);
            image_from_vae(rgb, pix, 0, d->resolution, d->resolution); // item 0 of pix
            rc = image_write_png(path, rgb, d->resolution, d->resolution, d->class_prompt, err);
            if (!rc) rc = write_caption(path, d->class_prompt, err); // kohya's FILE.txt (--use-captions reads it)
            done++;
            if (!quiet && par->rank == 0)
                fprintf(stderr, "\r  class images %d/%d (rank 0)  %.1f s/image ", done, (missing + par->size - 1) / par->size,
                        (now_s() - t0) / done);
        }
    }
    if (!quiet && par->rank == 0) fputc('\n', stderr);
    free(ctx), free(pix), free(rgb);
    sd_model_free(&m);
    return rc;
}

// ---------------------------------------------------------------------------
// hooks
// ---------------------------------------------------------------------------

typedef struct TrainRun {
    const Sdc__Job *job;
    RankGrid grid;    // stages x replicas
    DataParallel dp;  // over this stage's replicas (the gradients)
    PpTrain pp;       // the pipeline of this rank's replica (stages > 1)
    int *bounds;      // (stages + 1) the cut: stage s trains blocks [bounds[s], bounds[s+1])
    H5Par par;
    int quiet, tty;
    FILE *metrics;
    char metrics_path[1200];
    double t0;
    int64_t first_step;
    int xl;           // an SDXL model (text-encoder training: two encoders, three param groups)
    const Sdc__TextToImage *t2i; // a text-to-image job (its Dreambooth view is job->dreambooth), else NULL
    ParamTable ema;              // --use-ema: the EMA shadow's table (checkpoints), views into the trainer's
} TrainRun;

static int hook_mean(void *u, float *buf, size_t n, SdcError *err) {
    return dp_allreduce_mean(&((TrainRun *)u)->dp, buf, n, err);
}

static int hook_reduce_scatter(void *u, float *buf, const int *counts, const int *displs, SdcError *err) {
    return dp_reduce_scatter_mean(&((TrainRun *)u)->dp, buf, counts, displs, err);
}

static int hook_allgather(void *u, float *buf, const int *counts, const int *displs, SdcError *err) {
    return dp_allgather(&((TrainRun *)u)->dp, buf, counts, displs, err);
}

static int hook_gather(void *u, const float *mine, float *all, const int *counts, const int *displs, SdcError *err) {
    return dp_gather(&((TrainRun *)u)->dp, mine, all, counts, displs, err);
}

static int hook_dp_sum(void *u, double *v, int n, SdcError *err) {
    return dp_allreduce_sum_double(&((TrainRun *)u)->dp, v, n, err);
}

static int hook_sum(void *u, double *v, int n, SdcError *err) { return grid_sum(&((TrainRun *)u)->grid, v, n, err); }

static int hook_stage_allgather(void *u, const double *mine, int n, double *all, int cap, int *n_all, SdcError *err) {
    return grid_stage_allgather(&((TrainRun *)u)->grid, mine, n, all, cap, n_all, err);
}

static int hook_stage_bcast(void *u, double *v, int n, int root, SdcError *err) {
    return grid_stage_bcast(&((TrainRun *)u)->grid, v, n, root, err);
}

static int hook_ov_begin(void *u, float *buf, size_t n, SdcError *err) {
    return dp_overlap_begin(&((TrainRun *)u)->dp, buf, n, err);
}
static int hook_ov_ready(void *u, size_t lo, SdcError *err) { return dp_overlap_ready(&((TrainRun *)u)->dp, lo, err); }
static int hook_ov_end(void *u, SdcError *err) { return dp_overlap_end(&((TrainRun *)u)->dp, err); }

// An environment switch: set to anything but "" or "0".
static int env_flag(const char *name) {
    const char *v = getenv(name);
    return v && v[0] && strcmp(v, "0");
}

static int hook_pipeline(void *u, DbTrainer *t, int rows, SdcError *err) {
    return pp_train_run(&((TrainRun *)u)->pp, t, rows, err);
}

// This rank's step failed where the others cannot learn of it (src/train/
// dreambooth.h, DbHooks.failed_alone): they wait on it in a pipeline receive
// or a collective, and the agreement after the step (a collective too) and
// the way out (parallel HDF5 closes are collective) would wait on them. The
// error and the checkpoint to go on from, then the job ends here, as
// mpi_fatal ends it: a job that hangs until the allocation runs out loses
// the rest of that allocation too.
static _Noreturn void hook_failed_alone(void *u, const SdcError *err) {
    TrainRun *r = u;
    const RankGrid *g = &r->grid;
    char where[128], path[1200] = "", go_on[1400];
    if (g->stages > 1 && g->replicas > 1)
        snprintf(where, sizeof where, "pipeline stage %d of %d, replica %d of %d", g->stage, g->stages, g->replica,
                 g->replicas);
    else if (g->stages > 1)
        snprintf(where, sizeof where, "pipeline stage %d of %d", g->stage, g->stages);
    else
        snprintf(where, sizeof where, "data-parallel replica %d of %d", g->replica, g->replicas);
    int64_t step = -1;
    SdcError e2 = {0};
    if (!train_ckpt_latest(r->job->dreambooth->output_dir, path, sizeof path, &step, &e2) && path[0])
        snprintf(go_on, sizeof go_on, "run the same job again with --resume-from-checkpoint latest to go on from %s "
                 "(step %lld)", path, (long long)step);
    else
        snprintf(go_on, sizeof go_on, "no checkpoint was written yet: the job starts over when run again");
    fprintf(stderr, "%ssdc: error: rank %d of %d (%s): %s\n---> the other ranks wait on this one mid-step: "
            "ending the job; %s\n", r->tty ? "\n" : "", g->rank, g->size, where, err->msg, go_on);
    fflush(stderr);
    MPI_Abort(g->world, 1);
    for (;;) // MPI_Abort does not return
        ;
}

// rank 0: the step's metrics line and the progress bar
static void log_step(TrainRun *r, const DbStepInfo *s) {
    if (r->metrics) {
        fprintf(r->metrics,
                "{\"step\": %lld, \"loss\": %.8g, \"loss_prior\": %.8g, \"lr\": %.8g, \"grad_norm\": %.8g, "
                "\"images_per_s\": %.4g, \"step_s\": %.4g, \"ranks\": %d}\n",
                (long long)s->step, s->loss, s->loss_prior, s->lr, s->grad_norm, s->items_per_s, s->seconds,
                r->par.size);
        if (fflush(r->metrics) || ferror(r->metrics)) { // a full disk: say so once; the run goes on
            fprintf(stderr, "%ssdc: warning: %s: write failed (%s): no metrics logged after step %lld; training goes "
                    "on (checkpoints will fail too if the disk is full)\n", r->tty ? "\n" : "", r->metrics_path,
                    strerror(errno), (long long)s->step - 1);
            fclose(r->metrics);
            r->metrics = NULL;
        }
    }
    if (r->quiet) return;
    double el = now_s() - r->t0, done = (double)(s->step - r->first_step);
    double rate = done / (el > 1e-9 ? el : 1e-9), eta = (s->max_steps - s->step) / (rate > 0 ? rate : 1);
    if (r->tty) {
        char bar[31];
        int fill = (int)(s->step * 30 / s->max_steps);
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '-';
        bar[30] = 0;
        fprintf(stderr, "\r  |%s| step %lld/%lld  loss %.4f  lr %.3g  %.2f it/s  ETA %.0fs ", bar,
                (long long)s->step, (long long)s->max_steps, s->loss, s->lr, rate, eta);
        if (s->step == s->max_steps) fputc('\n', stderr);
    } else if (s->step == s->max_steps || s->step % 10 == 0 || s->step == r->first_step + 1) {
        fprintf(stderr, "  step %lld/%lld loss %.4f lr %.3g %.2f it/s eta %.0fs\n", (long long)s->step,
                (long long)s->max_steps, s->loss, s->lr, rate, eta);
    }
}

static int hook_step(void *u, const DbStepInfo *s, SdcError *err) {
    TrainRun *r = u;
    if (r->par.rank == 0) log_step(r, s);
    // every rank, after every step: all stop at the same step when any was signalled
    const int sig = stop_agree(&r->par);
    if (sig) {
        if (r->tty && !r->quiet && r->par.rank == 0) fputc('\n', stderr);
        return sdc_err(err, SDC_ERR_STOPPED, "%s at step %lld of %lld", stop_signal_name(sig), (long long)s->step,
                       (long long)s->max_steps);
    }
    return 0;
}

// ---------------------------------------------------------------------------
// checkpoints and export
// ---------------------------------------------------------------------------

typedef struct CkptParts {
    TrainCkptComponent comps[DB_MAX_GROUPS + 1]; // the groups, and the UNet's EMA
    TrainCkptKey keys[7];
    char vals[7][64];
    TrainCkptSpec spec;
} CkptParts;

// ema: the EMA shadow's table, a component of its own ("unet_ema"), or NULL
static void ckpt_parts(CkptParts *p, const Sdc__Job *job, DbTrainer *t, char *manifest, const ParamTable *ema) {
    const Sdc__Dreambooth *d = job->dreambooth;
    memset(p, 0, sizeof *p);
    int lora = d->lora_rank > 0, nc = 0;
    p->comps[nc++] = (TrainCkptComponent){.group = lora ? "unet_lora" : "unet",
                                          .table = unet_train_table(t->model->unet), .opt_group = 0};
    if (d->train_text_encoder && t->train_te) // (stage 0's)
        p->comps[nc++] = (TrainCkptComponent){.group = lora ? "text_encoder_lora" : "text_encoder",
                                              .table = clip_train_table(t->model->clip), .opt_group = 1};
    if (d->train_text_encoder && t->train_te && t->n_groups > 2) // SDXL's second encoder
        p->comps[nc++] = (TrainCkptComponent){.group = lora ? "text_encoder_2_lora" : "text_encoder_2",
                                              .table = clip_train_table(t->model->clip2), .opt_group = 2};
    if (ema && ema->n)
        p->comps[nc++] = (TrainCkptComponent){.group = lora ? "unet_lora_ema" : "unet_ema", .table = ema,
                                              .opt_group = -1};
    static const char *const keys[7] = {"model", "lora_rank", "train_text_encoder", "resolution",
                                        "with_prior_preservation", "seed", "lora_alpha"};
    snprintf(p->vals[0], sizeof p->vals[0], "%.63s", job->model->path);
    snprintf(p->vals[1], sizeof p->vals[1], "%d", d->lora_rank);
    snprintf(p->vals[2], sizeof p->vals[2], "%d", d->train_text_encoder ? 1 : 0);
    snprintf(p->vals[3], sizeof p->vals[3], "%d", d->resolution);
    snprintf(p->vals[4], sizeof p->vals[4], "%d", d->with_prior_preservation ? 1 : 0);
    snprintf(p->vals[5], sizeof p->vals[5], "%lld", (long long)d->seed);
    snprintf(p->vals[6], sizeof p->vals[6], "%.9g", t->cfg.lora_alpha); // the effective alpha (rank when 0)
    for (int i = 0; i < 7; i++) p->keys[i] = (TrainCkptKey){.key = keys[i], .value = p->vals[i]};
    p->spec = (TrainCkptSpec){.comps = p->comps, .n_comps = nc, .opt = &t->opt, .job = p->keys, .n_job = 7,
                              .manifest = manifest};
}

// This stage's part of a file the stages write in turn (replica 0's ranks;
// one stage: the whole file). Returns this stage's status; the caller
// agrees it over the job (the first failing stage's message wins).
static int write_in_turn(TrainRun *r, const char *path, TrainCkptSpec *spec, const TrainCkptState *st, SdcError *err) {
    const RankGrid *g = &r->grid;
    int rc = 0;
    SDC_TRY(grid_turn_wait(g, &rc, err));
    if (rc) { // an earlier stage failed (it reports why): pass it on
        SDC_TRY(grid_turn_pass(g, rc, err));
        return sdc_err(err, rc, "an earlier pipeline stage could not write %s", path);
    }
    spec->part = g->stages == 1 ? TRAIN_CKPT_WHOLE : g->stage == 0 ? TRAIN_CKPT_FIRST
                 : g->stage == g->stages - 1 ? TRAIN_CKPT_LAST : TRAIN_CKPT_MIDDLE;
    if (g->stage > 0) spec->base = NULL, spec->n_frozen = 0; // stage 0 copied the frozen groups
    rc = train_ckpt_save(path, spec, st, err);
    const int turn = grid_turn_pass(g, rc, err);
    return rc ? rc : turn;
}

static int save_checkpoint(TrainRun *r, DbTrainer *t, char *manifest, SdcError *err) {
    const Sdc__Dreambooth *d = r->job->dreambooth;
    AdamW full; // with ZeRO-1 the replicas' slices of the moments, gathered on replica 0 of each stage
    int grc = db_opt_full(t, &full, err);
    if ((grc = h5_par_agree(&r->par, grc, err))) {
        db_opt_full_free(t, &full);
        return grc;
    }
    char path[1200];
    int rc = train_ckpt_path(d->output_dir, t->st.global_step, path, sizeof path, err);
    if (!rc && r->grid.rank == 0) rc = train_ckpt_rotate(d->output_dir, d->checkpoints_total_limit, NULL, err);
    if ((rc = h5_par_agree(&r->par, rc, err))) {
        db_opt_full_free(t, &full);
        return rc;
    }
    if (r->grid.replica == 0) {
        CkptParts p;
        ckpt_parts(&p, r->job, t, manifest, &r->ema);
        p.spec.opt = &full;
        TrainCkptState st = {.step = t->st.global_step, .epoch = t->st.epoch, .micro_step = t->st.batch_in_epoch,
                             .loss = t->st.last_loss};
        rc = write_in_turn(r, path, &p.spec, &st, err);
    }
    db_opt_full_free(t, &full);
    if (!rc && r->grid.rank == 0 && d->checkpoints_total_limit > 0)
        rc = train_ckpt_rotate(d->output_dir, d->checkpoints_total_limit + 1, NULL, err);
    if (!rc && r->grid.rank == 0 && !r->quiet) fprintf(stderr, "%ssdc: saved %s\n", r->tty ? "\n" : "", path);
    return h5_par_agree(&r->par, rc, err);
}

// After a step failed for want of memory or on the device (err says how),
// with the trainer back at its last complete step: that step is saved as a
// checkpoint when no checkpoint holds it yet, so a run that stops this way
// loses no finished step (as a stop on a signal). err gets what happened to
// the save; the failure's code is kept.
static void save_after_failure(TrainRun *r, DbTrainer *t, char *manifest, SdcError *err) {
    const Sdc__Dreambooth *d = r->job->dreambooth;
    SdcError e2 = {0};
    int64_t latest = -1;
    char path[1200];
    int rc = h5_par_agree(&r->par, t->updating, &e2); // any rank mid-update: no consistent state
    if (!rc && t->st.global_step > r->first_step && !train_ckpt_latest(d->output_dir, path, sizeof path, &latest, &e2) &&
        latest < t->st.global_step) {
        rc = save_checkpoint(r, t, manifest, &e2);
        const size_t n = strlen(err->msg);
        if (!rc)
            snprintf(err->msg + n, sizeof err->msg - n, "\n---> checkpoint-%lld.h5 (the last complete step) saved in "
                     "%s: run the same job again with --resume-from-checkpoint latest to go on", (long long)t->st.global_step,
                     d->output_dir);
        else
            snprintf(err->msg + n, sizeof err->msg - n, "\n(step %lld could not be checkpointed either: %.600s)",
                     (long long)t->st.global_step, e2.msg);
    }
}

// DreamBooth: --num-validation-images of --validation-prompt; text-to-image:
// one image of each --validation-prompts (train_text_to_image.py's), seeded
// with --seed. Rank 0 renders them; OUTPUT_DIR/validation/step-N-i.png.
static int validate(TrainRun *r, DbTrainer *t, SdcError *err) {
    const Sdc__Dreambooth *d = r->job->dreambooth;
    const int n_prompts = r->t2i ? (int)r->t2i->n_validation_prompts : 1;
    const int per = r->t2i ? 1 : d->num_validation_images > 0 ? d->num_validation_images : 1;
    const int steps = r->t2i ? r->t2i->validation_inference_steps : d->validation_inference_steps;
    int rc = 0;
    if (r->par.rank == 0) {
        const int H = t->data.lat_h * t->px_per_latent, W = t->data.lat_w * t->px_per_latent;
        size_t img = (size_t)3 * H * W;
        float *pix = malloc((size_t)per * img * sizeof(float));
        uint8_t *rgb = malloc(img);
        char dir[1100];
        snprintf(dir, sizeof dir, "%s/validation", d->output_dir);
        rc = !pix || !rgb ? sdc_err(err, SDC_ERR_OOM, "out of memory for validation images") : fs_mkdir_p(dir, err);
        for (int q = 0; !rc && q < n_prompts; q++) {
            const char *prompt = r->t2i ? r->t2i->validation_prompts[q] : d->validation_prompt;
            rc = db_validate(t, prompt, per, steps, 7.5f, (uint64_t)d->seed, pix, err);
            for (int i = 0; !rc && i < per; i++) {
                char path[1200];
                snprintf(path, sizeof path, "%s/step-%06lld-%d.png", dir, (long long)t->st.global_step,
                         r->t2i ? q : i);
                image_from_vae(rgb, pix, i, H, W); // item i of pix
                rc = image_write_png(path, rgb, W, H, prompt, err);
            }
        }
        if (!rc && !r->quiet)
            fprintf(stderr, "%ssdc: %d validation images in %s\n", r->tty ? "\n" : "", n_prompts * per, dir);
        free(pix), free(rgb);
    }
    return h5_par_agree(&r->par, rc, err);
}

// LoRA: the adapter file (diffusers or kohya names). With stages the stages
// write their adapters into one file in turn and rank 0 makes the LoRA file
// from it (LoRA tensors are small; no stage holds another's).
static int export_lora(TrainRun *r, DbTrainer *t, char *manifest, SdcError *err) {
    const Sdc__Dreambooth *d = r->job->dreambooth;
    LoraFormat fmt = d->lora_format && !strcmp(d->lora_format, "kohya") ? LORA_FORMAT_KOHYA : LORA_FORMAT_DIFFUSERS;
    char path[1200], tmp[1200];
    snprintf(path, sizeof path, "%s/pytorch_lora_weights.safetensors", d->output_dir);
    int rc = 0;
    if (r->grid.stages > 1) {
        snprintf(tmp, sizeof tmp, "%s/.lora-export.h5", d->output_dir);
        if (r->grid.replica == 0) {
            CkptParts p;
            ckpt_parts(&p, r->job, t, manifest, NULL);
            p.spec.opt = NULL;
            for (int i = 0; i < p.spec.n_comps; i++) p.comps[i].opt_group = -1;
            TrainCkptState st = {.step = t->st.global_step, .epoch = t->st.epoch, .micro_step = t->st.batch_in_epoch,
                                 .loss = t->st.last_loss};
            rc = write_in_turn(r, tmp, &p.spec, &st, err);
        }
        if ((rc = h5_par_agree(&r->par, rc, err))) return rc;
        if (r->grid.rank == 0) {
            rc = train_ckpt_export_lora(tmp, path, fmt, err);
            unlink(tmp);
        }
    } else if (r->grid.rank == 0) {
        LoraTensor *lt[DB_MAX_GROUPS] = {NULL};
        int n[DB_MAX_GROUPS] = {0}, total = 0;
        rc = lora_tensors_from_table(unet_train_table(t->model->unet), COMP_UNET, t->cfg.lora_alpha, &lt[0], &n[0], err);
        if (!rc && d->train_text_encoder)
            rc = lora_tensors_from_table(clip_train_table(t->model->clip), COMP_TEXT_ENCODER, t->cfg.lora_alpha, &lt[1],
                                         &n[1], err);
        if (!rc && d->train_text_encoder && t->n_groups > 2) // SDXL: text_encoder_2's
            rc = lora_tensors_from_table(clip_train_table(t->model->clip2), COMP_TEXT_ENCODER_2, t->cfg.lora_alpha,
                                         &lt[2], &n[2], err);
        for (int g = 0; g < DB_MAX_GROUPS; g++) total += n[g];
        LoraTensor *all = rc ? NULL : malloc((size_t)(total + 1) * sizeof *all);
        if (!rc && !all) rc = sdc_err(err, SDC_ERR_OOM, "out of memory writing the LoRA");
        if (!rc) {
            for (int g = 0, k = 0; g < DB_MAX_GROUPS; k += n[g], g++)
                if (n[g]) memcpy(all + k, lt[g], (size_t)n[g] * sizeof *all);
            rc = lora_save(path, fmt, all, total, err);
        }
        free(all);
        for (int g = 0; g < DB_MAX_GROUPS; g++) free(lt[g]);
    }
    if (!rc && r->grid.rank == 0 && !r->quiet)
        fprintf(stderr, "sdc: LoRA (%s format, rank %d) written to %s ---> sdc generate -m %s --lora %s\n",
                fmt == LORA_FORMAT_KOHYA ? "kohya" : "diffusers", d->lora_rank, path, r->job->model->path, path);
    return h5_par_agree(&r->par, rc, err);
}

// Full fine-tuning: a complete checkpoint (the frozen parts from the base
// model, converted once; the stages' UNet blocks written in turn), then the
// single file and the diffusers folder, converted from it by rank 0.
static int export_full(TrainRun *r, DbTrainer *t, char *manifest, SdcError *err) {
    const Sdc__Dreambooth *d = r->job->dreambooth;
    char path[1200], base[1200], out[1200];
    snprintf(base, sizeof base, "%s/.base.h5", d->output_dir);
    snprintf(path, sizeof path, "%s/model.h5", d->output_dir);
    ConvertOpts co = {.model = r->job->model->path,
                      .config = r->job->model->config && r->job->model->config[0] ? r->job->model->config : NULL,
                      .output = base, .dtype = -1, .manifest = manifest, .quiet = 1};
    int rc = r->grid.rank == 0 ? convert_run(&co, err) : 0;
    if ((rc = h5_par_agree(&r->par, rc, err))) return rc;
    if (r->grid.replica == 0) {
        CkptParts p;
        ckpt_parts(&p, r->job, t, manifest, NULL);
        p.spec.opt = NULL;
        for (int i = 0; i < p.spec.n_comps; i++) { // a text encoder whole (SDXL's first trains all but its last layer)
            p.comps[i].opt_group = -1;
            if (!strcmp(p.comps[i].group, "text_encoder")) p.comps[i].table = clip_param_table(t->model->clip);
            if (!strcmp(p.comps[i].group, "text_encoder_2")) p.comps[i].table = clip_param_table(t->model->clip2);
        }
        // the frozen rest from the base: the VAE, and the text encoders unless trained (SDXL: both)
        const char *frozen[3] = {"vae", "text_encoder", "text_encoder_2"};
        p.spec.base = base;
        p.spec.frozen = frozen;
        p.spec.n_frozen = d->train_text_encoder ? 1 : t->model->clip2 ? 3 : 2;
        TrainCkptState st = {.step = t->st.global_step, .epoch = t->st.epoch, .micro_step = t->st.batch_in_epoch,
                             .loss = t->st.last_loss};
        rc = write_in_turn(r, path, &p.spec, &st, err);
    }
    if ((rc = h5_par_agree(&r->par, rc, err))) return rc;
    if (r->grid.rank == 0) {
        unlink(base);
        snprintf(out, sizeof out, "%s/model.safetensors", d->output_dir);
        co = (ConvertOpts){.model = path, .output = out, .dtype = -1, .manifest = manifest, .quiet = 1};
        rc = convert_run(&co, err);
        snprintf(out, sizeof out, "%s/diffusers", d->output_dir);
        co.output = out;
        // the tokenizers of a diffusers base (or of the config folder of a single file): a folder of its own
        // tokenizers (SDXL: tokenizer/ and tokenizer_2/) keeps them; else the shipped CLIP vocab
        const char *src = r->job->model->path, *cfg = r->job->model->config;
        co.tokenizer_from = fs_is_dir(src) ? src : cfg && cfg[0] ? cfg : NULL;
        if (!rc) rc = convert_run(&co, err);
        if (!rc && !r->quiet)
            fprintf(stderr, "sdc: fine-tuned model written to %s/model.h5, %s/model.safetensors and %s/\n",
                    d->output_dir, d->output_dir, out);
    }
    return h5_par_agree(&r->par, rc, err);
}

static int export_model(TrainRun *r, DbTrainer *t, char *manifest, SdcError *err) {
    return r->job->dreambooth->lora_rank > 0 ? export_lora(r, t, manifest, err) : export_full(r, t, manifest, err);
}

// ---------------------------------------------------------------------------
// text-to-image data
// ---------------------------------------------------------------------------

// A text-to-image dataset as the trainer takes it: every caption as token
// ids, and every image's latent distribution (mean and std, times the VAE's
// scaling factor), and with --random-flip its mirror image's. The VAE runs
// once per item (twice with flips) instead of every step, and the trainer
// samples mean + std * randn each step as latent_dist.sample() does. The
// distributions are held in memory (kohya's --cache_latents), or with
// --cache-latents-to-disk in OUTPUT_DIR/latents_cache.h5 and read a batch at
// a time (kohya's --cache_latents_to_disk): then a rank's memory does not
// grow with the dataset.
typedef struct T2iData {
    int n, lh, lw, res;
    int32_t *ids;                       // (n, L)
    float *mean, *std, *fmean, *fstd;   // (n, C, lh, lw) in memory; fmean / fstd NULL without flips
    int on_disk;                        // else: cache, open for reading, holds them
    LatentCache cache;
} T2iData;

static void t2i_data_free(T2iData *x) {
    free(x->ids), free(x->mean), free(x->std), free(x->fmean), free(x->fstd);
    if (x->on_disk) latent_cache_close(&x->cache);
    memset(x, 0, sizeof *x);
}

// DbData.read_latents of an on-disk T2iData.
static int t2i_read_row(void *user, int64_t item, int flip, float *mean, float *std, SdcError *err) {
    return latent_cache_get(&((T2iData *)user)->cache, item, flip, mean, std, err);
}

// In-place sum over every rank of the job (each rank filled its own items, zeros elsewhere).
static int world_sum(const TrainRun *r, float *buf, size_t n, SdcError *err) {
    if (r->grid.size <= 1) return 0;
    for (size_t o = 0; o < n; o += (size_t)1 << 28) {
        const int k = (int)(n - o < ((size_t)1 << 28) ? n - o : (size_t)1 << 28);
        MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, buf + o, k, MPI_FLOAT, MPI_SUM, r->grid.world), "text-to-image latents");
    }
    return 0;
}


// The VAE encoding of t2i_data: T2I_ENCODE_BATCH images per pass, each item's
// latent distribution scaled into its rows of a T2iData.
#define T2I_ENCODE_BATCH 8
typedef struct T2iEnc {
    int res, C, lh;
    float sf;
    Vae *vae;
    uint8_t *rgb;                // one image
    float *pix, *mu, *lv, *tmp;  // a batch: images, means, logvars; one item's mean + std, encoded and read
} T2iEnc;

static void t2i_enc_close(T2iEnc *e) {
    if (e->vae) vae_free(e->vae);
    free(e->rgb), free(e->pix), free(e->mu), free(e->lv), free(e->tmp);
    e->vae = NULL, e->rgb = NULL, e->pix = e->mu = e->lv = e->tmp = NULL;
}

static int t2i_enc_open(T2iEnc *e, SdModel *m, const Backend *be, SdcError *err) {
    const size_t px = (size_t)e->res * e->res * 3, lat = (size_t)e->C * e->lh * e->lh;
    e->rgb = malloc(px);
    e->pix = malloc(T2I_ENCODE_BATCH * px * sizeof(float));
    e->mu = malloc(T2I_ENCODE_BATCH * lat * sizeof(float));
    e->lv = malloc(T2I_ENCODE_BATCH * lat * sizeof(float));
    e->tmp = malloc(4 * lat * sizeof(float));
    int rc = !e->rgb || !e->pix || !e->mu || !e->lv || !e->tmp ? sdc_err(err, SDC_ERR_OOM, "out of memory for images")
                                                               : vae_load(&e->vae, m->files, be, err);
    if (!rc) rc = vae_reserve(e->vae, T2I_ENCODE_BATCH, e->res, e->res, err);
    if (rc) t2i_enc_close(e);
    return rc;
}

// Items idx[0..k) of ds (their mirror images when flip; k <= T2I_ENCODE_BATCH)
// through the VAE, item i's mean and std into rows i - base of mean, std.
static int t2i_enc_batch(T2iEnc *e, Dataset *ds, const int64_t *idx, int k, int flip, float *mean, float *std,
                         int64_t base, SdcError *err) {
    const int res = e->res;
    const size_t px = (size_t)res * res * 3, lat = (size_t)e->C * e->lh * e->lh;
    int rc = 0;
    for (int b = 0; !rc && b < k; b++) {
        rc = dataset_read_image(ds, idx[b], e->rgb, err);
        Image im = {res, res, 3, e->rgb};
        if (!rc && flip && !(rc = image_orient(&im, 2, err))) e->rgb = im.data; // EXIF's 2: the mirror (a new buffer)
        if (!rc) rc = image_to_tensor(&im, e->pix + b * px, err);
    }
    int64_t ish[4] = {k, 3, res, res}, lsh[4] = {k, e->C, e->lh, e->lh};
    Tensor ti = tensor_f32(e->pix, 4, ish), tm = tensor_f32(e->mu, 4, lsh), tl = tensor_f32(e->lv, 4, lsh);
    if (!rc) rc = vae_encode(e->vae, &ti, &tm, &tl, err);
    for (int b = 0; !rc && b < k; b++) {
        float *mu = mean + (size_t)(idx[b] - base) * lat, *sd = std + (size_t)(idx[b] - base) * lat;
        for (size_t j = 0; j < lat; j++) { // DiagonalGaussianDistribution: logvar clamped to [-30, 20]
            const float l = e->lv[b * lat + j] < -30.0f ? -30.0f : e->lv[b * lat + j] > 20.0f ? 20.0f : e->lv[b * lat + j];
            mu[j] = e->mu[b * lat + j] * e->sf;
            sd[j] = expf(0.5f * l) * e->sf;
        }
    }
    return rc;
}

// The largest difference between a cache's rows of items idx[0..k) (mirrors
// too when flip) and those items encoded now, relative to their scale.
static int t2i_enc_probe(T2iEnc *e, Dataset *ds, const int64_t *idx, int k, int flip, LatentCache *c, float *diff,
                         SdcError *err) {
    const size_t lat = (size_t)e->C * e->lh * e->lh;
    float *ref = e->tmp + 2 * lat;
    int rc = 0;
    *diff = 0;
    for (int i = 0; i < k && !rc; i++)
        for (int f = 0; f <= flip && !rc; f++) {
            rc = latent_cache_get(c, idx[i], f, ref, ref + lat, err);
            if (!rc) rc = t2i_enc_batch(e, ds, idx + i, 1, f, e->tmp, e->tmp + lat, idx[i], err);
            for (size_t j = 0; !rc && j < lat; j++) {
                const float dm = fabsf(ref[j] - e->tmp[j]) / (1.0f + fabsf(e->tmp[j]));
                const float ds_ = fabsf(ref[lat + j] - e->tmp[lat + j]) / (1.0f + fabsf(e->tmp[lat + j]));
                if (!isnan(*diff) && !(dm <= *diff)) *diff = dm; // a NaN stays
                if (!isnan(*diff) && !(ds_ <= *diff)) *diff = ds_;
            }
        }
    return rc;
}

// Items [c0, c0 + cn) of ds through the VAE, this rank's batches of them:
// batches of T2I_ENCODE_BATCH consecutive items from c0 (a multiple of R x
// T2I_ENCODE_BATCH), batch b on rank b % R, so the same batches whatever the
// rank count (a batch's results depend on what else is in it, in the last
// bits) and the same latents; item i's rows go to rows i - c0 of rows[0..1]
// (its mirror image's to rows[2..3] when flip). Stops at a stop signal.
static int t2i_encode_range(const TrainRun *r, T2iEnc *e, Dataset *ds, int64_t c0, int64_t cn, int64_t n, int flip,
                            float *const rows[LATENT_CACHE_ARRAYS], SdcError *err) {
    int64_t idx[T2I_ENCODE_BATCH];
    int rc = 0;
    for (int64_t b0 = c0 + (int64_t)r->par.rank * T2I_ENCODE_BATCH; !rc && b0 < c0 + cn;
         b0 += (int64_t)r->par.size * T2I_ENCODE_BATCH) {
        if (stop_signal()) // no step to finish yet: stop now (a cache is made only when complete)
            return sdc_err(err, SDC_ERR_STOPPED, "%s while encoding the dataset, before the first step",
                           stop_signal_name(stop_signal()));
        int k = 0;
        for (; k < T2I_ENCODE_BATCH && b0 + k < c0 + cn; k++) idx[k] = b0 + k;
        for (int f = 0; !rc && f <= flip; f++) rc = t2i_enc_batch(e, ds, idx, k, f, rows[2 * f], rows[2 * f + 1], c0, err);
        if (!rc && r->par.rank == 0 && !r->quiet && r->tty)
            fprintf(stderr, "\r  %lld/%lld", (long long)(idx[k - 1] + 1), (long long)n);
    }
    return rc;
}

// --cache-latents-to-disk without a usable cache: the dataset encoded into
// path a chunk at a time (about 16 MiB of rows), each chunk's batches shared
// over the ranks as the in-memory encoding shares them (batch b on rank b %
// R: the same latents whatever the rank count), summed to rank 0, which
// writes them. Every rank returns the same status.
static int t2i_encode_to_cache(TrainRun *r, T2iEnc *e, Dataset *ds, const char *path, const LatentCacheKey *key,
                               SdcError *err) {
    const int64_t n = key->n, R = r->par.size, round = R * T2I_ENCODE_BATCH;
    const size_t lat = (size_t)key->c * key->lh * key->lw;
    const int na = key->flip ? 4 : 2;
    int64_t ch = ((int64_t)16 << 20) / (int64_t)(lat * sizeof(float) * (size_t)na) / round * round;
    const char *env = getenv("SDC_T2I_CACHE_CHUNK_ITEMS"); // (tests: several chunks of a small dataset)
    if (env && atoll(env) > 0) ch = (atoll(env) + round - 1) / round * round;
    if (ch < round) ch = round;
    if (ch > n) ch = (n + round - 1) / round * round; // a small dataset: one chunk
    float *buf = malloc((size_t)ch * lat * (size_t)na * sizeof(float));
    float *rows[LATENT_CACHE_ARRAYS] = {0};
    for (int a = 0; buf && a < na; a++) rows[a] = buf + (size_t)a * ch * lat;
    LatentCache w;
    int rc = buf ? 0 : sdc_err(err, SDC_ERR_OOM, "out of memory for %lld latent rows", (long long)ch);
    if (!rc && r->par.rank == 0) rc = latent_cache_create(&w, path, key, err);
    rc = h5_par_agree(&r->par, rc, err);
    for (int64_t c0 = 0; !rc && c0 < n; c0 += ch) {
        const int64_t cn = n - c0 < ch ? n - c0 : ch;
        memset(buf, 0, (size_t)ch * lat * (size_t)na * sizeof(float));
        rc = h5_par_agree(&r->par, t2i_encode_range(r, e, ds, c0, cn, n, (int)key->flip, rows, err), err);
        for (int a = 0; !rc && a < na; a++) rc = world_sum(r, rows[a], (size_t)cn * lat, err);
        // rows[a] hold ch rows each: the first cn are this chunk's
        if (!rc && r->par.rank == 0) rc = latent_cache_put(&w, c0, cn, (const float *const *)rows, err);
        rc = h5_par_agree(&r->par, rc, err);
    }
    if (r->par.rank == 0 && buf) {
        if (!rc) rc = latent_cache_commit(&w, err);
        else latent_cache_abort(&w);
    }
    free(buf);
    return h5_par_agree(&r->par, rc, err);
}

// The dataset's captions through m's tokenizer (loaded here) and its images
// through m's VAE (rank-sharded), or from the latent cache.
static int t2i_data(TrainRun *r, const Sdc__TextToImage *x, SdModel *m, const Backend *be, T2iData *out,
                    SdcError *err) {
    memset(out, 0, sizeof *out);
    Dataset ds;
    SDC_TRY(dataset_open(&ds, x->train_data, err));
    const ModelInfo *info = model_files_info(m->files);
    const int L = info->clip.max_positions, levels = info->vae.n_levels;
    int rc = 0;
    int64_t n = ds.n;
    if (x->max_train_samples > 0 && n > x->max_train_samples) n = x->max_train_samples;
    if (x->resolution > 0 && x->resolution != ds.resolution)
        rc = sdc_err(err, SDC_ERR_ARG, "%s: images at %d px, training at --resolution %d\n---> re-import the dataset "
                     "at %d (sdc dataset import / synth --resolution %d) or drop --resolution", x->train_data,
                     ds.resolution, x->resolution, x->resolution, x->resolution);
    else if (n < 1)
        rc = sdc_err(err, SDC_ERR_ARG, "%s: the dataset is empty", x->train_data);
    else if (n > INT32_MAX / 2)
        rc = sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: %lld items", x->train_data, (long long)n);
    else if (levels < 1 || ds.resolution % (1 << (levels - 1)))
        rc = sdc_err(err, SDC_ERR_ARG, "%s: %d px images do not divide into the VAE's %d x %d px latent cells",
                     x->train_data, ds.resolution, 1 << (levels - 1), 1 << (levels - 1));
    const int res = ds.resolution, f = levels >= 1 ? 1 << (levels - 1) : 1, lh = res / f, C = info->vae.latent_channels;
    const size_t lat = (size_t)C * lh * lh;
    out->n = (int)n, out->lh = out->lw = lh, out->res = res;
    if (!rc) rc = m->tok ? 0 : sd_tokenizer_load(&m->tok, info, err);
    const int disk = x->cache_latents_to_disk;
    const double held = (double)n * (double)lat * sizeof(float) * (x->random_flip ? 4 : 2);
    const double phys = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (!rc && !disk && phys > 0 && held > phys / 4 && r->par.rank == 0 && !r->quiet)
        fprintf(stderr, "sdc: warning: the encoded dataset takes %.1f GiB on every rank (%.0f %% of this machine's "
                "memory) ---> --cache-latents-to-disk keeps it in a file, read a batch at a time\n",
                held / (1 << 30), 100.0 * held / phys);
    if (!rc) {
        out->ids = malloc((size_t)n * L * sizeof(int32_t));
        if (!disk) {
            out->mean = calloc((size_t)n * lat, sizeof(float));
            out->std = calloc((size_t)n * lat, sizeof(float));
            if (x->random_flip) out->fmean = calloc((size_t)n * lat, sizeof(float));
            if (x->random_flip) out->fstd = calloc((size_t)n * lat, sizeof(float));
        }
        if (!out->ids || (!disk && (!out->mean || !out->std || (x->random_flip && (!out->fmean || !out->fstd)))))
            rc = sdc_err(err, SDC_ERR_OOM, "out of memory for %lld items' latents (%zu floats each)%s", (long long)n,
                         lat * (x->random_flip ? 4 : 2), disk ? "" : "\n---> --cache-latents-to-disk keeps them in a "
                         "file, read a batch at a time");
    }
    int64_t truncated = 0;
    for (int64_t i = 0; !rc && i < n; i++) {
        int dropped = 0;
        rc = clip_tok_encode(m->tok, ds.captions[i] ? ds.captions[i] : "", out->ids + i * L, L, info->clip.pad_token,
                             &dropped, err);
        truncated += dropped > 0;
    }
    if (!rc && truncated && r->par.rank == 0 && !r->quiet)
        fprintf(stderr, "sdc: warning: %lld captions are longer than %d tokens and were truncated (as diffusers)\n",
                (long long)truncated, L);
    // --cache-latents-to-disk: OUTPUT_DIR/latents_cache.h5 is taken (rank 0 checks it) when its key matches and
    // three items encoded now (first, middle, last, mirrors too) equal what it holds (another VAE or other images
    // fail that); else it is made anew. Every rank then reads its batches' rows from it.
    char cache[1200] = "";
    LatentCacheKey key = {.n = n, .res = res, .c = C, .lh = lh, .lw = lh, .flip = x->random_flip,
                          .scaling_factor = info->vae.scaling_factor};
    if (disk) snprintf(cache, sizeof cache, "%s/latents_cache.h5", x->output_dir ? x->output_dir : ".");
    if (!rc && disk) rc = latent_cache_key(&key, x->train_data, err);
    T2iEnc enc = {.res = res, .C = C, .lh = lh, .sf = info->vae.scaling_factor};
    const double t0 = now_s();
    if (!rc) rc = t2i_enc_open(&enc, m, be, err);
    int64_t cached = 0;
    if (!rc && disk && r->par.rank == 0) {
        char why[400] = "";
        LatentCache c;
        cached = latent_cache_open(&c, cache, &key, why, sizeof why);
        if (cached) {
            const int64_t probe[3] = {0, n / 2, n - 1};
            float diff = 0;
            rc = t2i_enc_probe(&enc, &ds, probe, 3, x->random_flip, &c, &diff, err);
            if (!rc && !(diff <= 1e-3f)) {
                cached = 0;
                snprintf(why, sizeof why, "items 0, %lld, %lld encode %g away from it now (another VAE, or other "
                         "images)", (long long)(n / 2), (long long)(n - 1), diff);
            }
            latent_cache_close(&c);
        }
        if (!r->quiet && cached) fprintf(stderr, "sdc: %lld latents from %s\n", (long long)n, cache);
        if (!r->quiet && !cached) fprintf(stderr, "sdc: %s: %s\n", cache, why);
    }
    rc = h5_par_agree(&r->par, rc, err);
    cached = h5_par_max(&r->par, cached);
    if (!rc && !cached && r->par.rank == 0 && !r->quiet)
        fprintf(stderr, "sdc: encoding %lld images%s of %s with the VAE (%d rank%s)%s\n", (long long)n,
                x->random_flip ? " and their mirror images" : "", x->train_data, r->par.size,
                r->par.size == 1 ? "" : "s", disk ? " into the cache" : "");
    if (!rc && !cached && disk) {
        rc = t2i_encode_to_cache(r, &enc, &ds, cache, &key, err);
        if (rc) sdc_err_wrap(err, "encoding %s", x->train_data);
    } else if (!rc && !cached) { // one range of every item, into the arrays
        float *const rows[LATENT_CACHE_ARRAYS] = {out->mean, out->std, out->fmean, out->fstd};
        rc = t2i_encode_range(r, &enc, &ds, 0, n, n, x->random_flip, rows, err);
        if (rc) sdc_err_wrap(err, "encoding %s", x->train_data);
        rc = h5_par_agree(&r->par, rc, err);
        if (!rc) rc = world_sum(r, out->mean, (size_t)n * lat, err);
        if (!rc) rc = world_sum(r, out->std, (size_t)n * lat, err);
        if (!rc && x->random_flip) rc = world_sum(r, out->fmean, (size_t)n * lat, err);
        if (!rc && x->random_flip) rc = world_sum(r, out->fstd, (size_t)n * lat, err);
    }
    if (!rc && !cached && r->par.rank == 0 && !r->quiet)
        fprintf(stderr, "%ssdc: %lld latents (%d x %d x %d) in %.1f s%s%s\n", r->tty ? "\r" : "", (long long)n, C, lh,
                lh, now_s() - t0, disk ? ", cached in " : "", disk ? cache : "");
    if (!rc && disk) { // every rank reads its rows from the file from now on
        char why[400] = "";
        if (latent_cache_open(&out->cache, cache, &key, why, sizeof why)) out->on_disk = 1;
        else rc = sdc_err(err, SDC_ERR_IO, "%s: %s\n---> is OUTPUT_DIR on a file system every rank sees?", cache, why);
    }
    rc = h5_par_agree(&r->par, rc, err);
    t2i_enc_close(&enc);
    dataset_close(&ds);
    if (rc) t2i_data_free(out);
    return rc;
}

// ---------------------------------------------------------------------------
// the job
// ---------------------------------------------------------------------------

// Stages load their own tensors of a checkpoint: together they must have
// taken every tensor of each trained group.
static int check_stage_union(TrainRun *r, const char *path, const CkptParts *p, SdcError *err) {
    const Sdc__Dreambooth *d = r->job->dreambooth;
    const int lora = d->lora_rank > 0;
    const char *groups[DB_MAX_GROUPS] = {lora ? "unet_lora" : "unet", lora ? "text_encoder_lora" : "text_encoder",
                                         lora ? "text_encoder_2_lora" : "text_encoder_2"};
    double mine[DB_MAX_GROUPS] = {0}; // replica 0's counts, one sum for every group (every rank joins it)
    for (int i = 0; i < p->spec.n_comps && r->grid.replica == 0; i++)
        for (int g = 0; g < DB_MAX_GROUPS; g++)
            if (!strcmp(p->comps[i].group, groups[g]))
                mine[g] = p->comps[i].table ? p->comps[i].table->n : p->comps[i].n_tensors;
    SDC_TRY(grid_sum(&r->grid, mine, DB_MAX_GROUPS, err));
    const int ng = !d->train_text_encoder ? 1 : r->xl ? 3 : 2;
    for (int g = 0; g < ng; g++) {
        int in_file = 0;
        SDC_TRY(train_ckpt_group_count(path, groups[g], &in_file, err));
        if ((int)mine[g] != in_file)
            return sdc_err(err, SDC_ERR_SHAPE, "%s: /%s holds %d tensors, this job's %d stages train %d of them\n"
                           "---> was it written by another job (other LoRA targets, other model)?", path, groups[g],
                           in_file, r->grid.stages, (int)mine[g]);
    }
    return 0;
}

// The cut, each stage's measured forward + backward time per micro-batch and
// the predicted balance (the slowest stage over the mean: a step's pipeline
// runs at the slowest stage's pace).
static void print_cut(const TrainRun *r, const double *fwd, const double *bwd, int rows) {
    const int P = r->grid.stages;
    double sum = 0, worst = 0;
    fprintf(stderr, "sdc: pipeline cut (%d stages x %d replica%s; measured forward + backward of %d row%s per "
            "block):", P, r->grid.replicas, r->grid.replicas == 1 ? "" : "s", rows, rows == 1 ? "" : "s");
    for (int s = 0; s < P; s++) {
        double t = 0;
        for (int b = r->bounds[s]; b < r->bounds[s + 1]; b++) t += fwd[b] + bwd[b];
        sum += t;
        if (t > worst) worst = t;
        fprintf(stderr, " stage %d blocks %d-%d %.0f ms%s", s, r->bounds[s], r->bounds[s + 1] - 1, t * 1e3,
                s + 1 < P ? "," : "");
    }
    fprintf(stderr, "; predicted balance %.2f (slowest / mean)\n", worst / (sum / P));
}

static int check_job(const Sdc__Job *job, SdcError *err) {
    const Sdc__Dreambooth *d = job->dreambooth;
#define NEED(cond, ...) \
    if (!(cond)) return sdc_err(err, SDC_ERR_ARG, __VA_ARGS__)
    NEED(d, "no dreambooth section in the job ---> sdc train dreambooth --help");
    NEED(job->model && job->model->path && job->model->path[0],
         "no model to fine-tune ---> --pretrained-model MODEL (.safetensors, diffusers folder or .h5)");
    NEED(d->instance_data && d->instance_data[0], "no instance data ---> --instance-data FOLDER (photos of the subject)");
    NEED(d->use_captions || (d->instance_prompt && d->instance_prompt[0]),
         "no instance prompt ---> --instance-prompt \"a photo of sks dog\", or --use-captions (FILE.txt beside each "
         "photo)");
    NEED(!d->with_prior_preservation || (d->class_data && d->class_data[0] && d->class_prompt && d->class_prompt[0]),
         "--with-prior-preservation needs --class-data FOLDER and --class-prompt \"a photo of dog\"");
    NEED(d->resolution >= 8 && d->resolution % 8 == 0, "--resolution %d: a positive multiple of 8 is needed", d->resolution);
    NEED(d->train_batch_size >= 1 && d->gradient_accumulation_steps >= 1 && d->max_train_steps >= 0 &&
             d->num_train_epochs >= 1,
         "--train-batch-size, --gradient-accumulation-steps, --num-train-epochs must be >= 1 and "
         "--max-train-steps >= 0");
    NEED(d->learning_rate > 0 && isfinite(d->learning_rate), "--learning-rate %g must be positive", d->learning_rate);
    NEED(!d->has_text_encoder_lr || (d->text_encoder_lr >= 0 && isfinite(d->text_encoder_lr)),
         "--text-encoder-lr %g must be >= 0 ---> 0 means --learning-rate; train_dreambooth_lora_sdxl.py's default "
         "is 5e-6", d->text_encoder_lr);
    NEED(!d->has_adam_weight_decay_text_encoder ||
             (d->adam_weight_decay_text_encoder >= 0 && isfinite(d->adam_weight_decay_text_encoder)),
         "--adam-weight-decay-text-encoder %g must be >= 0 ---> train_dreambooth_lora_sdxl.py's default is 1e-3",
         d->adam_weight_decay_text_encoder);
    NEED(d->train_text_encoder || (!d->has_text_encoder_lr && !d->has_adam_weight_decay_text_encoder),
         "--text-encoder-lr / --adam-weight-decay-text-encoder without --train-text-encoder set nothing ---> add "
         "--train-text-encoder or drop them");
    NEED(d->lora_rank >= 0 && d->lora_alpha >= 0, "--lora-rank and --lora-alpha must be >= 0");
    NEED(d->checkpointing_steps >= 1 && d->validation_steps >= 1, "--checkpointing-steps and --validation-steps must be >= 1");
    NEED(d->zero_stage == 0 || d->zero_stage == 1, "--zero-stage %d: 0 (off) or 1 (optimizer state sharded over the "
         "ranks) ---> stages 2 and 3 are not implemented", d->zero_stage);
    NEED(!d->with_prior_preservation || d->num_class_images >= 1, "--num-class-images must be >= 1");
    NEED(!d->lora_format || !strcmp(d->lora_format, "diffusers") || !strcmp(d->lora_format, "kohya"),
         "--lora-format %s: expected diffusers or kohya", d->lora_format);
    NEED(!job->runtime || !job->runtime->device || !strcmp(job->runtime->device, "cpu"),
         "training runs on the CPU backend (fp32) ---> drop --device %s", job->runtime->device);
    const int stages = job->runtime ? job->runtime->pipeline_stages : 1;
    NEED(stages <= 1 || !(d->validation_prompt && d->validation_prompt[0]),
         "--validation-prompt with --pipeline-stages %d: validation images need the whole UNet on one rank, "
         "which pipeline stages split ---> drop --validation-prompt and render from a checkpoint with sdc generate "
         "(a LoRA checkpoint works as --lora)", stages);
#undef NEED
    return 0;
}

// The DreamBooth job (x NULL), or a text-to-image job x given as its
// Dreambooth view job_in (orig: the job as given, for the manifest).
static int run_training(const Sdc__Job *job_in, const Sdc__Job *orig, const Sdc__TextToImage *x,
                        const RunOptions *opt, SdcError *err) {
    if (!x) SDC_TRY(check_job(job_in, err));
    // a copy whose resolution default follows the model (SDXL: 1024), set once the model is known
    Sdc__Dreambooth dcopy = *job_in->dreambooth;
    Sdc__Job jcopy = *job_in;
    jcopy.dreambooth = &dcopy;
    const Sdc__Job *job = &jcopy;
    const Sdc__Dreambooth *d = &dcopy;
    float *inst_ids = NULL; // SDXL: (n_inst, 6) time ids
    int32_t *cap_inst = NULL, *cap_cls = NULL; // --use-captions: (n, L) token ids of each image's caption
    T2iData td = {0};
    TrainRun run = {.job = job, .t2i = x, .par = h5_par_world(), .quiet = opt->quiet, .tty = isatty(2),
                    .dp = {.comm = MPI_COMM_NULL, .size = 1}, .pp = {.comm = MPI_COMM_NULL},
                    .grid = {.world = MPI_COMM_NULL, .pipe = MPI_COMM_NULL, .data = MPI_COMM_NULL}};
    const H5Par *par = &run.par;
    Backend *be = NULL;
    SdModel m = {0};
    DbTrainer t;
    memset(&t, 0, sizeof t);
    float *inst = NULL, *cls = NULL;
    char *manifest = NULL;
    const Sdc__Runtime *rt = job->runtime;
    const int stages = rt && rt->pipeline_stages > 1 ? rt->pipeline_stages : 1;
    // the rank grid and the model's block count first: a layout that cannot
    // work is refused before any work
    int rc = grid_init(&run.grid, h5_par_is_mpi(par) ? par->comm : MPI_COMM_NULL, stages, err);
    if (!rc) {
        const char *cfg = job->model->config && job->model->config[0] ? job->model->config : NULL;
        rc = model_files_open(&m.files, job->model->path, cfg, runner_prediction(job), err);
    }
    const int xl = !rc && model_files_info(m.files)->family == SD_FAMILY_XL;
    if (xl && !d->has_resolution) // train_dreambooth_lora_sdxl.py's defaults, written into the run's manifest
        dcopy.resolution = 1024, dcopy.has_resolution = 1;
    if (xl && !x && !d->has_learning_rate) dcopy.learning_rate = 1e-4, dcopy.has_learning_rate = 1;
    // train_dreambooth_lora.py's default for SD 1.x / 2.x LoRA (train_dreambooth.py's 5e-6 is for all weights)
    if (!xl && !x && d->lora_rank > 0 && !d->has_learning_rate) dcopy.learning_rate = 5e-4, dcopy.has_learning_rate = 1;
    if (xl && !x && !d->has_adam_weight_decay) dcopy.adam_weight_decay = 1e-4, dcopy.has_adam_weight_decay = 1;
    if (!rc && xl && !x && d->use_captions) // before any photo is imported
        rc = sdc_err(err, SDC_ERR_UNSUPPORTED, "--use-captions: not with an SDXL model yet ---> one "
                     "--instance-prompt, or an SD 1.x / 2.x model");
    if (!rc && xl && x)
        rc = sdc_err(err, SDC_ERR_UNSUPPORTED, "%s is an SDXL model: text-to-image training of SDXL is not supported "
                     "yet (captions through both encoders, time ids per item)\n---> train an SD 1.x / 2.x model, or "
                     "SDXL with sdc train dreambooth", job->model->path);
    run.xl = xl;
    // the text encoders' groups (train_dreambooth_lora_sdxl.py's defaults for SDXL; SD's scripts have one
    // group: the learning rate and --adam-weight-decay), written into the run's manifest
    if (xl && d->train_text_encoder && !d->has_text_encoder_lr)
        dcopy.text_encoder_lr = 5e-6, dcopy.has_text_encoder_lr = 1;
    if (xl && d->train_text_encoder && !d->has_adam_weight_decay_text_encoder)
        dcopy.adam_weight_decay_text_encoder = 1e-3, dcopy.has_adam_weight_decay_text_encoder = 1;
    if (!rc && stages > 1) {
        UnetBlockInfo *bl = malloc(UNET_MAX_BLOCKS * sizeof *bl);
        int nb = 0;
        rc = bl ? unet_layout(&model_files_info(m.files)->unet, bl, &nb, err) : sdc_err(err, SDC_ERR_OOM, "layout");
        unsigned char trainable[UNET_MAX_BLOCKS];
        const int n_train = rc ? 0 : pp_trainable_blocks(bl, nb, d->lora_rank > 0, trainable);
        free(bl);
        if (!rc) rc = grid_check_blocks(&run.grid, nb, "UNet", err);
        if (!rc && n_train < stages) // every stage must train something
            rc = sdc_err(err, SDC_ERR_ARG, "--pipeline-stages %d: a LoRA run trains only the %d attention blocks of "
                         "the UNet's %d ---> at most --pipeline-stages %d", stages, n_train, nb, n_train);
        int cut[UNET_MAX_BLOCKS + 1];
        if (!rc && rt->pipeline_cut && rt->pipeline_cut[0]) rc = pp_cut_parse(rt->pipeline_cut, nb, stages, cut, err);
        if (!rc && rt->pipeline_cut && rt->pipeline_cut[0])
            rc = pp_cut_check_trainable(rt->pipeline_cut, cut, stages, trainable, nb, err);
    }
    if ((rc = h5_par_agree(par, rc, err))) goto done;
    manifest = manifest_to_text(x ? orig : job); // with the resolution the model gave
    if ((rc = dp_init(&run.dp, run.grid.data, 0, err))) goto done;
    rc = par->rank == 0 ? fs_mkdir_p(d->output_dir, err) : 0;
    if ((rc = h5_par_agree(par, rc, err))) goto done;
    // --mixed-precision (diffusers' flag; the manifest's runtime.precision): bf16 compute with fp32 master
    // weights, AdamW state and loss on the CPU's mixed variant; refused before any work when not possible
    const int mixed = rt && rt->precision == SDC__PRECISION__PRECISION_BF16;
    if (rt && rt->precision == SDC__PRECISION__PRECISION_FP16) {
        rc = sdc_err(err, SDC_ERR_ARG, "--mixed-precision fp16: the CPU trains in fp32 or bf16 ---> --mixed-precision "
                     "bf16, or no");
        goto done;
    }
    if (mixed && !backend_cpu_bf16_available()) {
        rc = sdc_err(err, SDC_ERR_UNSUPPORTED, "--mixed-precision bf16: this sdc was built without oneDNN ---> "
                     "install it (tools/setup.sh: libdnnl-dev) and rebuild, or --mixed-precision no");
        goto done;
    }
    if ((rc = backend_cpu_create(&be, runner_threads(job, opt->quiet), err))) goto done;

    // 1-2. data
    char inst_h5[1200], cls_h5[1200];
    int n_inst = 0, n_cls = 0, lh = 0, lw = 0, ch = 0, cw = 0;
    if (x) { // text-to-image: the dataset's captions and latent distributions
        if ((rc = t2i_data(&run, x, &m, be, &td, err))) goto done;
        n_inst = td.n, lh = td.lh, lw = td.lw;
        dcopy.resolution = td.res;
    } else {
    if (fs_ends_with(d->instance_data, ".h5")) {
        snprintf(inst_h5, sizeof inst_h5, "%s", d->instance_data);
    } else {
        if (!fs_is_dir(d->instance_data)) {
            rc = sdc_err(err, SDC_ERR_ARG, "--instance-data %s: no such folder ---> a folder of JPEG/PNG photos "
                         "or an HDF5 dataset (sdc dataset import)", d->instance_data);
            goto done;
        }
        // --use-captions: each photo's FILE.txt (a file of its own: instance.h5 holds the one prompt)
        snprintf(inst_h5, sizeof inst_h5, "%s/instance%s.h5", d->output_dir, d->use_captions ? "-captions" : "");
        const char *fallback = d->instance_prompt && d->instance_prompt[0] ? d->instance_prompt : NULL;
        if (d->use_captions && !fallback && (rc = captions_present(d->instance_data, err))) goto done;
        if ((rc = import_folder(job, d->instance_data, inst_h5, d->use_captions ? NULL : d->instance_prompt,
                                fallback, fs_count_images(d->instance_data), par, opt->quiet, err)))
            goto done;
    }
    if ((rc = read_latents(inst_h5, d->resolution, &inst, &n_inst, &lh, &lw, xl ? &inst_ids : NULL, err))) goto done;
    if (d->with_prior_preservation) {
        if (fs_ends_with(d->class_data, ".h5")) {
            snprintf(cls_h5, sizeof cls_h5, "%s", d->class_data);
        } else {
            rc = par->rank == 0 ? fs_mkdir_p(d->class_data, err) : 0;
            if ((rc = h5_par_agree(par, rc, err))) goto done;
            int have = fs_count_images(d->class_data);
            rc = make_class_images(job, be, d->class_data, have, par, opt->quiet, err);
            if ((rc = h5_par_agree(par, rc, err))) goto done;
            snprintf(cls_h5, sizeof cls_h5, "%s/class%s.h5", d->output_dir, d->use_captions ? "-captions" : "");
            if ((rc = import_folder(job, d->class_data, cls_h5, d->use_captions ? NULL : d->class_prompt,
                                    d->class_prompt, fs_count_images(d->class_data), par, opt->quiet, err)))
                goto done;
        }
        if ((rc = read_latents(cls_h5, d->resolution, &cls, &n_cls, &ch, &cw, NULL, err))) goto done;
        if (n_cls > d->num_class_images) n_cls = d->num_class_images; // diffusers: min(files, num_class_images)
        if (n_cls < d->num_class_images && fs_ends_with(d->class_data, ".h5") && par->rank == 0 && !opt->quiet)
            fprintf(stderr, "sdc: warning: %s holds %d class images, fewer than --num-class-images %d\n", cls_h5, n_cls,
                    d->num_class_images);
    }
    }

    // 3. model
    // dataset_import's own VAE backend set the process-wide OpenMP / OpenBLAS
    // thread counts to all cores; a fresh backend applies -t again (under
    // mpiexec, R ranks of all-core thread pools would fight over the cores).
    backend_destroy(be);
    be = NULL;
    rc = mixed ? backend_cpu_create_bf16_mixed(&be, runner_threads(job, 1), err)
               : backend_cpu_create(&be, runner_threads(job, 1), err);
    if (rc) goto done;
    if (mixed && !opt->quiet && par->rank == 0)
        fprintf(stderr, "sdc: --mixed-precision bf16: conv2d, linear and attention in bf16 (forward and backward), "
                "fp32 master weights, AdamW state and loss\n");
    const int per_batch = d->train_batch_size * (d->with_prior_preservation ? 2 : 1);
    const int share_max = (per_batch + run.grid.replicas - 1) / run.grid.replicas;
    const int micro = rt && rt->micro_batches > 0 ? rt->micro_batches : stages > 1 ? 2 * stages : 1;
    const int mb_rows = (share_max + (micro < share_max ? micro : share_max) - 1) /
                        (micro < share_max ? micro : share_max);
    PpSchedule sched = PP_SCHED_1F1B;
    if ((rc = pp_schedule_parse(rt ? rt->pipeline_schedule : NULL, &sched, err))) goto done;
    {
        const ModelInfo *info = model_files_info(m.files);
        m.be = be;
        rc = m.tok ? 0 : sd_tokenizer_load(&m.tok, info, err); // (text-to-image loaded it for the captions)
        // the stage cut: measured forward + backward time of each block
        run.bounds = calloc((size_t)stages + 1, sizeof *run.bounds);
        const int nbmax = UNET_MAX_BLOCKS;
        double *fwd = calloc(nbmax, sizeof *fwd), *bwd = calloc(nbmax, sizeof *bwd);
        if (!rc && (!run.bounds || !fwd || !bwd)) rc = sdc_err(err, SDC_ERR_OOM, "pipeline cut");
        const char *given = rt && rt->pipeline_cut && rt->pipeline_cut[0] ? rt->pipeline_cut : NULL;
        if (!rc && stages > 1 && given) {
            int nb = 0;
            UnetBlockInfo *blocks = malloc(UNET_MAX_BLOCKS * sizeof *blocks);
            rc = blocks ? unet_layout(&info->unet, blocks, &nb, err) : sdc_err(err, SDC_ERR_OOM, "pipeline cut");
            free(blocks);
            if (!rc) rc = pp_cut_parse(given, nb, stages, run.bounds, err);
            if (!rc && !opt->quiet && par->rank == 0) {
                fprintf(stderr, "sdc: pipeline cut (%d stages x %d replica%s; --pipeline-cut %s):", stages,
                        run.grid.replicas, run.grid.replicas == 1 ? "" : "s", given);
                for (int s = 0; s < stages; s++)
                    fprintf(stderr, " stage %d blocks %d-%d%s", s, run.bounds[s], run.bounds[s + 1] - 1,
                            s + 1 < stages ? "," : "\n");
            }
        } else if (!rc && stages > 1) {
            UnetTrainOpts to = {.checkpointing = d->gradient_checkpointing, .lora_rank = d->lora_rank,
                                .lora_alpha = d->lora_alpha > 0 ? d->lora_alpha : (float)d->lora_rank,
                                .lora_seed = (uint64_t)d->seed};
            rc = pp_train_cut(run.grid.world, m.files, be, &to, mb_rows, lh, lw, info->clip.max_positions, stages,
                              run.bounds, fwd, bwd, err);
            if (!rc && !opt->quiet && par->rank == 0) print_cut(&run, fwd, bwd, mb_rows);
        } else if (!rc) {
            run.bounds[1] = 0; // one stage: every block
        }
        free(fwd), free(bwd);
        if (rc) goto done;
        // LoRA keeps the base UNet as read-only mmap views unless validation
        // images need the LoRA merged into writable copies (SD 1.5: 3.4 GB)
        int validating = x ? x->n_validation_prompts > 0 : d->validation_prompt && d->validation_prompt[0];
        ModelLoadOpts full = {.trainable = d->lora_rank == 0 || validating},
                      te = {.trainable = d->train_text_encoder && d->lora_rank == 0 && run.grid.stage == 0};
        if (stages > 1) full.first_block = run.bounds[run.grid.stage], full.end_block = run.bounds[run.grid.stage + 1];
        if (!rc) rc = clip_load_opts(&m.clip, m.files, be, &te, err);
        if (!rc && info->has_clip2) { // SDXL: the second encoder and its tokenizer
            ModelLoadOpts te2 = te;
            te2.second_text_encoder = 1;
            rc = info->tokenizer2_dir[0] ? clip_tok_load_dir(&m.tok2, info->tokenizer2_dir, err)
                 : info->clip2.pad_token == 0 ? clip_tok_load_default_sd2(&m.tok2, err)
                                              : clip_tok_load_default(&m.tok2, err);
            if (!rc) rc = clip_load_opts(&m.clip2, m.files, be, &te2, err);
        }
        if (!rc) rc = unet_load_opts(&m.unet, m.files, be, &full, err);
        if (!rc && stages == 1) rc = vae_load(&m.vae, m.files, be, err); // validation images
        if (!rc && stages > 1) rc = pp_train_init(&run.pp, run.grid.pipe, m.unet, sched, micro, err);
        if ((rc = h5_par_agree(par, rc, err))) goto done;
    }
    DbConfig cfg = {.train_batch_size = d->train_batch_size, .grad_accum = d->gradient_accumulation_steps,
                    .learning_rate = d->learning_rate, .lr_warmup_steps = d->lr_warmup_steps,
                    .lr_num_cycles = d->lr_num_cycles, .lr_power = d->lr_power, .max_grad_norm = d->max_grad_norm,
                    .adam = {.beta1 = d->adam_beta1, .beta2 = d->adam_beta2, .eps = d->adam_epsilon,
                             .weight_decay = d->adam_weight_decay},
                    .with_prior_preservation = d->with_prior_preservation, .prior_loss_weight = d->prior_loss_weight,
                    .train_text_encoder = d->train_text_encoder, .gradient_checkpointing = d->gradient_checkpointing,
                    .text_encoder_lr = d->has_text_encoder_lr ? d->text_encoder_lr : 0,
                    .has_te_weight_decay = d->has_adam_weight_decay_text_encoder,
                    .te_weight_decay = d->adam_weight_decay_text_encoder,
                    .lora_rank = d->lora_rank, .lora_alpha = d->lora_alpha, .offset_noise = d->offset_noise,
                    .snr_gamma = d->snr_gamma, .seed = (uint64_t)d->seed, .micro_batches = micro,
                    .input_perturbation = x ? x->input_perturbation : 0,
                    .proportion_empty = x ? x->proportion_empty_prompts : 0, .snr_v_plus_one = x != NULL,
                    .use_ema = x && x->use_ema, .ema = ema_config_default(),
                    .fault_step = getenv("SDC_FAULT_STEP") ? atoll(getenv("SDC_FAULT_STEP")) : 0};
    if (x) cfg.ema.decay = x->ema_decay;
    if ((rc = lr_schedule_parse(d->lr_scheduler, &cfg.lr_scheduler, err))) goto done;
    {   // diffusers: max_train_steps = num_train_epochs * updates per epoch when not given
        int items = d->with_prior_preservation && n_cls > n_inst ? n_cls : n_inst;
        int64_t batches = (items + d->train_batch_size - 1) / d->train_batch_size;
        int64_t per_epoch = (batches + d->gradient_accumulation_steps - 1) / d->gradient_accumulation_steps;
        cfg.max_train_steps = d->max_train_steps > 0 ? d->max_train_steps : d->num_train_epochs * per_epoch;
        if (x) dcopy.validation_steps = (int)(x->validation_epochs * per_epoch); // at the epochs' ends
        if (x && x->scale_lr) // diffusers: lr x accumulation x per-device batch x processes (= sdc's global batch)
            cfg.learning_rate *= (double)d->gradient_accumulation_steps * d->train_batch_size;
    }
    if (!x && d->use_captions) { // kohya's captioned DreamBooth: each image's own caption
        int64_t truncated = 0;
        if ((rc = caption_ids(inst_h5, n_inst, d->instance_prompt, "--instance-prompt", &m, &cap_inst, &truncated,
                              err)))
            goto done;
        if (d->with_prior_preservation &&
            (rc = caption_ids(cls_h5, n_cls, d->class_prompt, "--class-prompt", &m, &cap_cls, &truncated, err)))
            goto done;
        if (truncated && par->rank == 0 && !opt->quiet)
            fprintf(stderr, "sdc: warning: %lld captions are longer than %d tokens and were truncated (as "
                    "diffusers)\n", (long long)truncated, clip_config(m.clip)->max_positions);
    }
    DbData data = {.n_inst = n_inst, .n_class = n_cls, .inst_latents = inst, .class_latents = cls, .lat_h = lh,
                   .lat_w = lw, .instance_prompt = d->instance_prompt, .class_prompt = d->class_prompt,
                   .inst_time_ids = inst_ids, .item_ids = x ? td.ids : cap_inst, .class_item_ids = cap_cls,
                   .inst_std = td.std, .flip_latents = td.fmean,
                   .flip_std = td.fstd};
    if (x) data.inst_latents = td.mean;
    if (x && td.on_disk) // --cache-latents-to-disk: each batch's rows read from the cache
        data.read_latents = t2i_read_row, data.read_user = &td, data.has_flip = x->random_flip;
    const RankGrid *g = &run.grid;
    DbHooks hooks = {.user = &run, .rank = g->rank, .world = g->size, .replica = g->replica,
                     .replicas = g->replicas, .stage = g->stage, .stages = g->stages,
                     .allreduce_mean = g->replicas > 1 ? hook_mean : NULL,
                     .dp_sum = g->replicas > 1 ? hook_dp_sum : NULL,
                     .allreduce_sum = g->size > 1 ? hook_sum : NULL, .on_step = hook_step,
                     .stage_allgather = g->stages > 1 ? hook_stage_allgather : NULL,
                     .stage_bcast = g->stages > 1 ? hook_stage_bcast : NULL,
                     .pipeline = g->stages > 1 ? hook_pipeline : NULL, .tapes = run.pp.tapes,
                     .overlap_begin = g->replicas > 1 && !env_flag("SDC_NO_OVERLAP") ? hook_ov_begin : NULL,
                     .overlap_ready = hook_ov_ready, .overlap_end = hook_ov_end,
                     .zero = d->zero_stage == 1, .reduce_scatter_mean = hook_reduce_scatter,
                     .allgather = hook_allgather, .gather = hook_gather,
                     .failed_alone = g->size > 1 ? hook_failed_alone : NULL};
    if ((rc = db_init(&t, &m, &cfg, &data, &hooks, err))) goto done;
    if (t.ema && (rc = db_ema_table(&t, &run.ema, err))) goto done;
    if (!opt->quiet && par->rank == 0)
        fprintf(stderr, "sdc: %s %s%s: %d %s%s, %d class latents at %dx%d, batch %d x %d accumulation "
                "on %d rank%s, %lld steps; training memory %.1f MiB (unet) + %.1f MiB (text encoders)\n",
                x ? "text-to-image" : "DreamBooth", d->lora_rank ? "LoRA" : "full fine-tuning",
                !d->train_text_encoder ? "" : xl ? " + both text encoders" : " + text encoder", n_inst,
                x ? "item" : "instance", n_inst == 1 ? "" : "s", n_cls, lh, lw, d->train_batch_size,
                d->gradient_accumulation_steps, par->size,
                par->size == 1 ? "" : "s", (long long)cfg.max_train_steps,
                unet_train_bytes(m.unet) / 1048576.0,
                (clip_train_bytes(m.clip) + (m.clip2 ? clip_train_bytes(m.clip2) : 0)) / 1048576.0);
    if (!rc && !opt->quiet && par->rank == 0) {
        size_t mine = 0, all = 0;
        for (int gi = 0; gi < t.opt.n_groups; gi++) mine += t.opt.groups[gi].numel;
        for (int gi = 0; gi < t.opt.n_groups; gi++)
            for (int i = 0; i < t.full_n[gi]; i++) all += t.full_ot[gi][i].n;
        fprintf(stderr, "sdc: AdamW state %.1f MiB on each rank%s (%.1f MiB in all)\n", 2.0 * mine * 4 / 1048576.0,
                mine < all ? " with ZeRO-1" : "", 2.0 * all * 4 / 1048576.0);
    }

    // resume
    if (d->resume_from_checkpoint && d->resume_from_checkpoint[0]) {
        char path[1200];
        int64_t step = -1;
        if (!strcmp(d->resume_from_checkpoint, "latest")) {
            if ((rc = train_ckpt_latest(d->output_dir, path, sizeof path, &step, err))) goto done;
            if (!path[0] && par->rank == 0 && !opt->quiet)
                fprintf(stderr, "sdc: no checkpoint in %s: starting a new training run\n", d->output_dir);
        } else {
            snprintf(path, sizeof path, "%s", d->resume_from_checkpoint);
        }
        if (path[0]) {
            CkptParts p;
            ckpt_parts(&p, job, &t, manifest, &run.ema);
            TrainCkptState st = {0};
            AdamW full; // with ZeRO-1 every rank reads the whole state of its stage and keeps its slice
            if ((rc = db_opt_full_alloc(&t, &full, err))) goto done;
            p.spec.opt = &full;
            p.spec.partial = stages > 1; // each stage takes its own tensors
            rc = train_ckpt_load(path, &p.spec, &st, err);
            if (!rc) db_opt_take(&t, &full);
            db_opt_full_free(&t, &full);
            if (!rc && !t.ema) { // a run with --use-ema resumed without it would drop its EMA silently
                int ne = 0;
                SdcError e2 = {0};
                const char *g = d->lora_rank ? "unet_lora_ema" : "unet_ema";
                if (!train_ckpt_group_count(path, g, &ne, &e2) && ne > 0)
                    rc = sdc_err(err, SDC_ERR_ARG, "%s holds the EMA of the run it continues (/%s, %d tensors)\n"
                                 "---> resume it with --use-ema", path, g, ne);
            }
            if ((rc = h5_par_agree(par, rc, err))) goto done; // (every rank reaches the union's sum)
            if (stages > 1) rc = check_stage_union(&run, path, &p, err);
            if ((rc = h5_par_agree(par, rc, err))) goto done;
            t.st.global_step = st.step;
            t.st.epoch = st.epoch;
            t.st.batch_in_epoch = st.micro_step;
            t.st.last_loss = st.loss;
            if (!opt->quiet && par->rank == 0)
                fprintf(stderr, "sdc: resumed from %s at step %lld (epoch %lld)\n", path, (long long)st.step,
                        (long long)st.epoch);
        }
    }
    if (par->rank == 0) {
        char *mp = run.metrics_path;
        snprintf(mp, sizeof run.metrics_path, "%s/metrics.jsonl", d->output_dir);
        run.metrics = fopen(mp, t.st.global_step ? "a" : "w");
        if (!run.metrics) {
            rc = sdc_err(err, SDC_ERR_IO, "%s: cannot write (%s)", mp, strerror(errno));
        } else if (t.st.global_step) { // the steps after this one replace any logged by the killed run
            fprintf(run.metrics, "{\"event\": \"resume\", \"step\": %lld}\n", (long long)t.st.global_step);
            fflush(run.metrics);
        }
    }
    if ((rc = h5_par_agree(par, rc, err))) goto done;

    // 4. train
    run.t0 = now_s();
    run.first_step = t.st.global_step;
    int validating = x ? x->n_validation_prompts > 0 : d->validation_prompt && d->validation_prompt[0];
    while (t.st.global_step < cfg.max_train_steps) {
        int64_t s = t.st.global_step, next = (s / d->checkpointing_steps + 1) * d->checkpointing_steps;
        if (validating) {
            int64_t v = (s / d->validation_steps + 1) * d->validation_steps;
            if (v < next) next = v;
        }
        if (next > cfg.max_train_steps) next = cfg.max_train_steps;
        rc = db_train(&t, next, err);
        rc = h5_par_agree(par, rc, err);
        const int stopped = rc == SDC_ERR_STOPPED; // on a signal: checkpoint this step, then stop
        if (rc == SDC_ERR_OOM || rc == SDC_ERR_DEVICE) save_after_failure(&run, &t, manifest, err);
        if (rc && !stopped) goto done;
        s = t.st.global_step;
        if (stopped || s % d->checkpointing_steps == 0) {
            char why[256];
            snprintf(why, sizeof why, "%.200s", err->msg);
            if ((rc = save_checkpoint(&run, &t, manifest, err))) goto done;
            if (stopped) {
                rc = sdc_err(err, SDC_ERR_STOPPED, "%s; checkpoint-%lld.h5 saved in %s ---> run the same job "
                             "again with --resume-from-checkpoint latest to go on", why, (long long)s, d->output_dir);
                goto done;
            }
        }
        if (validating && s % d->validation_steps == 0 && (rc = validate(&run, &t, err))) goto done;
    }

    if (run.grid.replicas > 1 && !opt->quiet && run.grid.replica == 0 && t.st.global_step > run.first_step) {
        // the gradient reduction left after the backward, per step (measure it with SDC_NO_OVERLAP=1 too)
        const DataParallel *dp = &run.dp;
        const double steps = (double)(t.st.global_step - run.first_step);
        char how[256]; // one fprintf: the stages print at once
        if (dp->ov_steps)
            snprintf(how, sizeof how, "overlapped: %.0f%% of the UNet's gradients in flight before the backward "
                     "ended, %.1f ms posting during it", dp->ov_total > 0 ? 100 * dp->ov_early / dp->ov_total : 0.0,
                     dp->ov_post_s / steps * 1e3);
        else
            snprintf(how, sizeof how, "not overlapped%s", d->zero_stage ? ": ZeRO-1 reduce-scatters after it" : "");
        fprintf(stderr, "sdc: stage %d: gradient all-reduce over %d replicas: %.1f ms per step after the backward "
                "(%s)\n", run.grid.stage, run.grid.replicas, (dp->ov_exposed_s + dp->ar_s) / steps * 1e3, how);
    }
    if (!opt->quiet && run.grid.replica == 0) { // each stage's memory: parameters, optimizer, activations
        float *pb, *gb;
        size_t nn, opt_floats = 0;
        unet_trainables(m.unet, &pb, &gb, &nn);
        for (int gi = 0; gi < t.opt.n_groups; gi++) opt_floats += 2 * t.opt.groups[gi].numel;
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        const int tapes = stages > 1 ? run.pp.tapes : 1;
        fprintf(stderr, "sdc: stage %d memory: UNet parameters %.1f MiB, trained %.1f MiB (+ the same in gradients), "
                "AdamW %.1f MiB, activations %d x %.1f MiB (micro-batches held x kept per micro-batch), other "
                "training buffers %.1f MiB, text encoder training %.1f MiB; peak resident %.0f MiB\n",
                run.grid.stage, unet_param_bytes(m.unet) / 1048576.0, nn * 4 / 1048576.0, opt_floats * 4 / 1048576.0,
                tapes, unet_train_tape_bytes(m.unet) / 1048576.0,
                (unet_train_bytes(m.unet) - tapes * unet_train_tape_bytes(m.unet) - (d->lora_rank ? 0 : nn * 4)) /
                    1048576.0,
                clip_train_bytes(m.clip) / 1048576.0, ru.ru_maxrss / 1024.0);
    }
    if (stages > 1 && !opt->quiet && run.grid.replica == 0) { // each stage's time: where the bubble went
        const PpTrain *pp = &run.pp;
        fprintf(stderr, "sdc: stage %d (blocks %d-%d, %d micro-batch%s held): %lld steps, %.2f s forward, %.2f s "
                "backward, %.2f s waiting for neighbours (%.1f%% of %.2f s)\n", pp->stage, run.bounds[pp->stage],
                run.bounds[pp->stage + 1] - 1, pp->tapes, pp->tapes == 1 ? "" : "es", pp->steps, pp->fwd_s, pp->bwd_s,
                pp->wait_s, pp->total_s > 0 ? 100 * pp->wait_s / pp->total_s : 0.0, pp->total_s);
    }

    // 5. export: it needs only the trained tensors, so the AdamW state, the
    // gradients and the activations go first (SD 1.5 full fine-tuning: 13 of
    // the ~17 GB a rank holds; the conversions then fit beside the weights)
    if (t.ema) { // train_text_to_image.py: ema_unet.copy_to(unet.parameters()) before saving
        db_ema_swap(&t);
        if (!opt->quiet && par->rank == 0) fprintf(stderr, "sdc: exporting the EMA weights (--use-ema)\n");
    }
    adamw_free(&t.opt);
    unet_train_shrink(m.unet);
    rc = export_model(&run, &t, manifest, err);
    if (!rc && !opt->quiet && par->rank == 0) runner_print_peak_memory(be);
done:
    if (rc == SDC_ERR_NONFINITE) sdc_err_wrap(err, "training stopped");
    if (run.metrics) fclose(run.metrics);
    db_free(&t);
    if (m.vae) vae_free(m.vae);
    if (m.unet) unet_free(m.unet);
    if (m.clip) clip_free(m.clip);
    if (m.clip2) clip_free(m.clip2);
    if (m.tok) clip_tok_free(m.tok);
    if (m.tok2) clip_tok_free(m.tok2);
    if (m.files) model_files_close(m.files);
    free(inst), free(cls), free(manifest), free(inst_ids), free(cap_inst), free(cap_cls);
    t2i_data_free(&td);
    param_table_free(&run.ema);
    dp_free(&run.dp);
    pp_train_free(&run.pp);
    grid_free(&run.grid);
    free(run.bounds);
    backend_destroy(be);
    return rc;
}

int run_dreambooth(const Sdc__Job *job, const RunOptions *opt, SdcError *err) {
    return run_training(job, job, NULL, opt, err);
}

// Text-to-image: the job's fields checked, then the DreamBooth runner on a
// Dreambooth view of them (the dataset as the instance data, no class
// images), with the text-to-image options on the side.
int run_text_to_image(const Sdc__Job *job, const RunOptions *opt, SdcError *err) {
    const Sdc__TextToImage *x = job->text_to_image;
#define NEED(cond, ...) \
    if (!(cond)) return sdc_err(err, SDC_ERR_ARG, __VA_ARGS__)
    NEED(x, "no text_to_image section in the job ---> sdc train text-to-image --help");
    NEED(job->model && job->model->path && job->model->path[0],
         "no model to train ---> --pretrained-model MODEL (.safetensors, diffusers folder or .h5; from scratch: "
         "sdc init-model)");
    NEED(x->train_data && x->train_data[0] && fs_ends_with(x->train_data, ".h5"),
         "no training data ---> --train-data D.h5 (sdc dataset import FOLDER -o D.h5, or sdc dataset synth)");
    NEED(x->resolution >= 0 && x->resolution % 8 == 0, "--resolution %d: a positive multiple of 8 (or 0: the "
         "dataset's) is needed", x->resolution);
    NEED(x->train_batch_size >= 1 && x->gradient_accumulation_steps >= 1 && x->max_train_steps >= 0 &&
             x->num_train_epochs >= 1 && x->max_train_samples >= 0,
         "--train-batch-size, --gradient-accumulation-steps, --num-train-epochs must be >= 1, --max-train-steps and "
         "--max-train-samples >= 0");
    NEED(x->learning_rate > 0 && isfinite(x->learning_rate), "--learning-rate %g must be positive", x->learning_rate);
    NEED(x->lora_rank >= 0 && x->lora_alpha >= 0, "--lora-rank and --lora-alpha must be >= 0");
    NEED(x->checkpointing_steps >= 1 && x->validation_epochs >= 1 && x->validation_inference_steps >= 1,
         "--checkpointing-steps, --validation-epochs and --validation-inference-steps must be >= 1");
    NEED(x->snr_gamma >= 0 && x->noise_offset >= 0 && x->input_perturbation >= 0,
         "--snr-gamma, --noise-offset and --input-perturbation must be >= 0");
    NEED(x->proportion_empty_prompts >= 0 && x->proportion_empty_prompts <= 1,
         "--proportion-empty-prompts %g: a probability (0 to 1)", x->proportion_empty_prompts);
    NEED(x->ema_decay >= 0 && x->ema_decay <= 1, "--ema-decay %g: 0 to 1 (EMAModel's 0.9999)", x->ema_decay);
    NEED(x->zero_stage == 0 || x->zero_stage == 1, "--zero-stage %d: 0 (off) or 1", x->zero_stage);
    NEED(!x->lora_format || !strcmp(x->lora_format, "diffusers") || !strcmp(x->lora_format, "kohya"),
         "--lora-format %s: expected diffusers or kohya", x->lora_format);
    NEED(!job->runtime || !job->runtime->device || !strcmp(job->runtime->device, "cpu"),
         "training runs on the CPU backend (fp32) ---> drop --device %s", job->runtime->device);
    const int stages = job->runtime ? job->runtime->pipeline_stages : 1;
    NEED(stages <= 1 || x->n_validation_prompts == 0,
         "--validation-prompts with --pipeline-stages %d: validation images need the whole UNet on one rank ---> "
         "drop --validation-prompts and render from a checkpoint with sdc generate", stages);
#undef NEED
    Sdc__Dreambooth d;
    sdc__dreambooth__init(&d);
    d.instance_data = x->train_data;
    d.instance_prompt = "";
    d.resolution = x->resolution, d.has_resolution = 1;
    d.train_batch_size = x->train_batch_size;
    d.gradient_accumulation_steps = x->gradient_accumulation_steps;
    d.learning_rate = x->learning_rate;
    d.lr_scheduler = x->lr_scheduler;
    d.lr_warmup_steps = x->lr_warmup_steps, d.lr_num_cycles = x->lr_num_cycles, d.lr_power = x->lr_power;
    d.max_train_steps = x->max_train_steps, d.num_train_epochs = x->num_train_epochs;
    d.max_grad_norm = x->max_grad_norm;
    d.gradient_checkpointing = x->gradient_checkpointing;
    d.train_text_encoder = x->train_text_encoder;
    d.lora_rank = x->lora_rank, d.lora_alpha = x->lora_alpha, d.lora_format = x->lora_format;
    d.offset_noise = x->noise_offset, d.snr_gamma = x->snr_gamma;
    d.checkpointing_steps = x->checkpointing_steps, d.checkpoints_total_limit = x->checkpoints_total_limit;
    d.resume_from_checkpoint = x->resume_from_checkpoint;
    d.validation_steps = 1; // set from --validation-epochs once the dataset's size is known
    d.seed = x->seed;
    d.output_dir = x->output_dir;
    d.adam_beta1 = x->adam_beta1, d.adam_beta2 = x->adam_beta2, d.adam_weight_decay = x->adam_weight_decay;
    d.adam_epsilon = x->adam_epsilon;
    d.zero_stage = x->zero_stage;
    Sdc__Job view = *job;
    view.dreambooth = &d;
    return run_training(&view, job, x, opt, err);
}
