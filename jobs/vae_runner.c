// vae_runner.c: `sdc train vae` (TASK_TRAIN_VAE): an AutoencoderKL trained on
// the images of an sdc HDF5 dataset with src/train/vae_train.c's step. This
// file is the job around the step: the init (a model's VAE, or a fresh model
// of a config.json), the data order and the noise (both functions of the
// seed and the step, so a resumed run draws what an uninterrupted one does),
// checkpoints (data/train_ckpt.h, group "vae"), the progress lines, the
// reconstruction PSNR before / after, and the diffusers vae/ folder written
// at the end. One process; the CPU backend (training ops are CPU-only).
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/backend.h"
#include "data/dataset.h"
#include "data/fsutil.h"
#include "data/train_ckpt.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "jobs/manifest.h"
#include "jobs/stop.h"
#include "jobs/runner.h"
#include "mpi/dp.h"
#include "sampling/rng.h"
#include "train/vae_train.h"

#define HINT "---> sdc train vae --help"

static int is_file(const char *p) {
    struct stat s;
    return !stat(p, &s) && S_ISREG(s.st_mode);
}

// Items [first, first + n) of d (or of an order) as (n, 3, R, R) f32 in [-1, 1].
static int read_images(const Dataset *d, const int64_t *items, int n, float *out, uint8_t *rgb, SdcError *err) {
    const int R = d->resolution;
    const size_t plane = (size_t)R * R;
    for (int j = 0; j < n; j++) {
        SDC_TRY(dataset_read_image(d, items[j], rgb, err));
        float *o = out + (size_t)j * 3 * plane;
        for (size_t p = 0; p < plane; p++)
            for (int c = 0; c < 3; c++) o[c * plane + p] = rgb[p * 3 + c] / 127.5f - 1.0f;
    }
    return 0;
}

// A horizontal flip of one (3, R, R) image in place.
static void flip_h(float *x, int R) {
    for (int r = 0; r < 3 * R; r++) {
        float *row = x + (size_t)r * R;
        for (int i = 0; i < R / 2; i++) {
            float t = row[i];
            row[i] = row[R - 1 - i];
            row[R - 1 - i] = t;
        }
    }
}

// diffusers' AutoencoderKL config.json for c.
static int write_config(const char *path, const VaeConfig *c, SdcError *err) {
    FILE *f = fopen(path, "w");
    if (!f) return sdc_err(err, SDC_ERR_IO, "%s: cannot write (%s)", path, strerror(errno));
    fprintf(f, "{\n  \"_class_name\": \"AutoencoderKL\",\n  \"_diffusers_version\": \"0.42.1\",\n"
               "  \"act_fn\": \"silu\",\n  \"block_out_channels\": [");
    for (int i = 0; i < c->n_levels; i++) fprintf(f, "%s%d", i ? ", " : "", c->block_out[i]);
    fprintf(f, "],\n  \"down_block_types\": [");
    for (int i = 0; i < c->n_levels; i++) fprintf(f, "%s\"DownEncoderBlock2D\"", i ? ", " : "");
    fprintf(f, "],\n  \"force_upcast\": true,\n  \"in_channels\": %d,\n  \"latent_channels\": %d,\n"
               "  \"latents_mean\": null,\n  \"latents_std\": null,\n  \"layers_per_block\": %d,\n"
               "  \"mid_block_add_attention\": true,\n  \"norm_num_groups\": %d,\n  \"out_channels\": %d,\n"
               "  \"sample_size\": %d,\n  \"scaling_factor\": %.9g,\n  \"shift_factor\": null,\n  \"up_block_types\": [",
            c->in_channels, c->latent_channels, c->layers_per_block, c->norm_groups, c->out_channels, c->sample_size,
            c->scaling_factor);
    for (int i = 0; i < c->n_levels; i++) fprintf(f, "%s\"UpDecoderBlock2D\"", i ? ", " : "");
    fprintf(f, "],\n  \"use_post_quant_conv\": true,\n  \"use_quant_conv\": true\n}\n");
    if (fclose(f)) return sdc_err(err, SDC_ERR_IO, "%s: write failed (%s)", path, strerror(errno));
    return 0;
}

// OUTPUT_DIR/vae/: config.json and diffusion_pytorch_model.safetensors (f32).
static int write_vae_folder(const char *output_dir, Vae *m, SdcError *err) {
    char dir[1100], path[1200];
    snprintf(dir, sizeof dir, "%s/vae", output_dir);
    SDC_TRY(fs_mkdir_p(dir, err));
    snprintf(path, sizeof path, "%s/config.json", dir);
    SDC_TRY(write_config(path, vae_config(m), err));
    const ParamTable *tb = vae_train_table(m);
    const char **names = malloc((size_t)tb->n * sizeof *names);
    Tensor *ts = malloc((size_t)tb->n * sizeof *ts);
    int rc = names && ts ? 0 : sdc_err(err, SDC_ERR_OOM, "out of memory writing %s", dir);
    for (int i = 0; i < tb->n && !rc; i++) names[i] = tb->e[i].name, ts[i] = tb->e[i].t;
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    if (!rc) rc = st_write(path, names, ts, tb->n, mk, mv, 1, err);
    free(names);
    free(ts);
    return rc;
}

// The VAE the job starts from: a fresh one of vae_config (initialised from
// the seed), a diffusers vae/ folder, or the VAE of a model.
static int open_init(const Sdc__Job *job, const Backend *be, ModelFiles **mf, Vae **m, SdcError *err) {
    const Sdc__TrainVae *v = job->train_vae;
    const char *model = job->model && job->model->path ? job->model->path : NULL;
    if (v->vae_config) {
        VaeConfig c;
        SDC_TRY(model_files_read_vae_config(&c, v->vae_config, err));
        SDC_TRY(vae_create(m, &c, be, err));
        return vae_init_params(*m, (uint64_t)v->seed, err);
    }
    char cfg[1200], sub[1200], unet[1200];
    snprintf(cfg, sizeof cfg, "%s/config.json", model);
    snprintf(sub, sizeof sub, "%s/vae/config.json", model);
    snprintf(unet, sizeof unet, "%s/unet", model);
    ModelLoadOpts lo = {.trainable = 1};
    if (fs_is_dir(model) && is_file(cfg)) { // a vae/ folder
        SDC_TRY(model_files_open_vae(mf, model, err));
    } else if (fs_is_dir(model) && is_file(sub) && !fs_is_dir(unet)) { // a train vae output folder
        snprintf(sub, sizeof sub, "%s/vae", model);
        SDC_TRY(model_files_open_vae(mf, sub, err));
    } else {
        SDC_TRY(model_files_open(mf, model, NULL, -1, err));
    }
    return vae_load_opts(m, *mf, be, &lo, err);
}

static int check_job(const Sdc__Job *job, SdcError *err) {
    const Sdc__TrainVae *v = job->train_vae;
    if (!v) return sdc_err(err, SDC_ERR_ARG, "manifest: TASK_TRAIN_VAE without a train_vae message");
    const char *model = job->model && job->model->path ? job->model->path : NULL;
    if (!v->dataset || !v->dataset[0])
        return sdc_err(err, SDC_ERR_ARG, "sdc train vae: no dataset\n---> pass --dataset D.h5 (sdc dataset import, "
                       "sdc dataset synth)");
    if (!!model == !!v->vae_config)
        return sdc_err(err, SDC_ERR_ARG, "sdc train vae: %s\n---> pass --pretrained-model MODEL (its VAE, or a vae/ "
                       "folder) or --vae-config FILE.json (from scratch)",
                       model ? "both --pretrained-model and --vae-config given" : "no init");
    if (v->train_batch_size < 1 || v->max_train_steps < 1 || v->checkpointing_steps < 1 || v->log_every < 1)
        return sdc_err(err, SDC_ERR_ARG, "sdc train vae: --train-batch-size %d, --max-train-steps %d, "
                       "--checkpointing-steps %d, --log-every %d: each must be at least 1",
                       v->train_batch_size, v->max_train_steps, v->checkpointing_steps, v->log_every);
    if (!(v->learning_rate > 0) || !(v->kl_weight >= 0) || !(v->max_grad_norm >= 0))
        return sdc_err(err, SDC_ERR_ARG, "sdc train vae: --learning-rate %g, --kl-weight %g, --max-grad-norm %g: "
                       "need lr > 0, kl weight >= 0, max grad norm >= 0 (0: off)",
                       v->learning_rate, v->kl_weight, v->max_grad_norm);
    if (strcmp(v->rec_loss, "l1") && strcmp(v->rec_loss, "mse"))
        return sdc_err(err, SDC_ERR_ARG, "sdc train vae: --rec-loss '%s'\n---> l1 or mse", v->rec_loss);
    if (v->train_decoder_only && v->vae_config)
        return sdc_err(err, SDC_ERR_ARG, "sdc train vae: --train-decoder-only with --vae-config: the encoder would stay "
                       "at its random initialisation\n---> --train-decoder-only fine-tunes a trained VAE: "
                       "--pretrained-model MODEL");
    return 0;
}

static int dp_grad_mean(void *u, float *g, size_t n, SdcError *err) {
    return dp_allreduce_mean((DataParallel *)u, g, n, err);
}

// The mean of the ranks' (loss, rec, kl): each rank's are its share's means.
static int dp_loss_mean(void *u, double *v, int n, SdcError *err) {
    DataParallel *dp = u;
    SDC_TRY(dp_allreduce_sum_double(dp, v, n, err));
    for (int i = 0; i < n; i++) v[i] /= dp->size;
    return 0;
}

int run_train_vae(const Sdc__Job *job, const RunOptions *opt, SdcError *err) {
    SDC_TRY(check_job(job, err));
    const Sdc__TrainVae *v = job->train_vae;
    // Data parallel under mpiexec / srun: rank r of R takes items
    // [r N/R, (r+1) N/R) of every batch (their noise and flips seeded by their
    // place in the whole batch, as one process seeds them); the gradients are
    // averaged; rank 0 writes checkpoints, the log and the output.
    const H5Par par = h5_par_world();
    DataParallel dp = {0};
    SDC_TRY(dp_init(&dp, par.comm, 0, err));
    if (v->train_batch_size % par.size) {
        dp_free(&dp);
        return sdc_err(err, SDC_ERR_ARG, "sdc train vae: --train-batch-size %d over %d ranks\n---> a batch that "
                       "is a multiple of the rank count", v->train_batch_size, par.size);
    }
    const int quiet = opt->quiet || par.rank != 0, NG = v->train_batch_size, N = NG / par.size, j0 = par.rank * N;
    Backend *be = NULL;
    ModelFiles *mf = NULL;
    Vae *m = NULL;
    Dataset ds = {0}, ev = {0};
    int have_ds = 0, have_ev = 0;
    VaeTrainer tr = {0};
    int have_tr = 0;
    float *x = NULL, *eps = NULL, *ex = NULL;
    uint8_t *rgb = NULL;
    int64_t *order = NULL, *items = NULL;
    char *manifest = NULL;
    ParamTable dec = {0}; // --train-decoder-only: the decoder side's entries of the VAE's table
    int rc = backend_cpu_create(&be, runner_threads(job, quiet), err);
    if (rc) goto done;
    if ((rc = dataset_open(&ds, v->dataset, err))) {
        sdc_err_wrap(err, "sdc train vae: --dataset %s", v->dataset);
        goto done;
    }
    have_ds = 1;
    if (ds.n < NG) {
        rc = sdc_err(err, SDC_ERR_ARG, "sdc train vae: %s has %lld images, fewer than --train-batch-size %d\n---> "
                     "a smaller batch, or a dataset with images (sdc dataset import, sdc dataset synth)",
                     v->dataset, (long long)ds.n, NG);
        goto done;
    }
    if ((rc = open_init(job, be, &mf, &m, err))) goto done;
    const VaeConfig *vc = vae_config(m);
    const int R = ds.resolution, f = 1 << (vc->n_levels - 1);
    if (R % f) {
        rc = sdc_err(err, SDC_ERR_ARG, "sdc train vae: %s has %dx%d images; this VAE (%d levels) needs a multiple of "
                     "%d\n---> import the dataset again at a resolution that is a multiple of %d",
                     v->dataset, R, R, vc->n_levels, f, f);
        goto done;
    }
    LrScheduleKind kind;
    LrSchedule sched;
    if ((rc = lr_schedule_parse(v->lr_scheduler, &kind, err)) ||
        (rc = lr_schedule_init(&sched, kind, v->learning_rate, v->lr_warmup_steps, v->max_train_steps, 1, 1.0, err)))
        goto done;
    VaeTrainConfig tc = {.batch = N, .resolution = R, .learning_rate = v->learning_rate, .kl_weight = v->kl_weight,
                         .rec_loss = strcmp(v->rec_loss, "mse") ? VAE_REC_L1 : VAE_REC_MSE,
                         .max_grad_norm = v->max_grad_norm,
                         .adam = {.beta1 = v->adam_beta1, .beta2 = v->adam_beta2, .eps = v->adam_epsilon,
                                  .weight_decay = v->adam_weight_decay},
                         .decoder_only = v->train_decoder_only};
    if ((rc = vae_trainer_init(&tr, m, &tc, &sched, err))) goto done;
    have_tr = 1;
    if (par.size > 1) tr.grad_mean = dp_grad_mean, tr.loss_mean = dp_loss_mean, tr.user = &dp;
    const int L = vc->latent_channels;
    const size_t per_img = (size_t)3 * R * R, per_lat = (size_t)L * (R / f) * (R / f);
    const int64_t spe = ds.n / NG; // steps per epoch (the last partial batch of an epoch is dropped)
    x = malloc((size_t)N * per_img * sizeof *x);
    eps = malloc((size_t)N * per_lat * sizeof *eps);
    rgb = malloc(per_img);
    order = malloc((size_t)ds.n * sizeof *order);
    items = malloc((size_t)N * sizeof *items);
    if (!x || !eps || !rgb || !order || !items) {
        rc = sdc_err(err, SDC_ERR_OOM, "sdc train vae: out of host memory");
        goto done;
    }

    // checkpoints: the trained tensors and AdamW's state under "vae"; the
    // job's identity compared on resume
    char k_res[32], k_batch[32], k_seed[32];
    snprintf(k_res, sizeof k_res, "%d", R);
    snprintf(k_batch, sizeof k_batch, "%d", NG);
    snprintf(k_seed, sizeof k_seed, "%lld", (long long)v->seed);
    const TrainCkptKey keys[] = {{"task", "train_vae", NULL},
                                 {"resolution", k_res, NULL},
                                 {"train_batch_size", k_batch, NULL},
                                 {"seed", k_seed, NULL},
                                 // recorded since session 11; a checkpoint without it is a whole-VAE run's
                                 {"train_decoder_only", v->train_decoder_only ? "1" : "0", "0"}};
    // --train-decoder-only: the checkpoint holds the decoder side (the encoder is the pretrained model's)
    const ParamTable *full = vae_train_table(m);
    if (v->train_decoder_only) {
        dec.e = malloc((size_t)(full->n > 0 ? full->n : 1) * sizeof *dec.e);
        if (!dec.e) {
            rc = sdc_err(err, SDC_ERR_OOM, "sdc train vae: out of host memory");
            goto done;
        }
        for (int i = 0; i < full->n; i++)
            if (vae_decoder_param(full->e[i].name)) dec.e[dec.n++] = full->e[i];
        dec.cap = dec.n;
    }
    const TrainCkptComponent comp = {.group = "vae", .table = v->train_decoder_only ? &dec : full, .opt_group = 0};
    manifest = manifest_to_text(job);
    TrainCkptSpec spec = {.comps = &comp, .n_comps = 1, .opt = &tr.opt, .job = keys,
                          .n_job = 5, .manifest = manifest};
    uint64_t rng_word = (uint64_t)v->seed;
    int64_t step = 0;
    if (v->resume_from_checkpoint) {
        char path[1200];
        int64_t at = -1;
        if (!strcmp(v->resume_from_checkpoint, "latest")) {
            if ((rc = train_ckpt_latest(v->output_dir, path, sizeof path, &at, err))) goto done;
        } else {
            snprintf(path, sizeof path, "%s", v->resume_from_checkpoint);
        }
        if (path[0]) {
            TrainCkptState st = {.rng = &rng_word, .n_rng = 1, .data_order = order, .n_order = ds.n};
            if ((rc = train_ckpt_load(path, &spec, &st, err)) || (rc = vae_train_sync(m, err))) {
                sdc_err_wrap(err, "sdc train vae: resuming from %s", path);
                goto done;
            }
            step = st.step;
            if (!quiet) fprintf(stderr, "sdc train vae: resumed from %s at step %lld\n", path, (long long)step);
        } else if (!quiet) {
            fprintf(stderr, "sdc train vae: no checkpoint in %s: starting a new run\n", v->output_dir);
        }
    }
    // the held-out reconstruction before training (after a resume: at its step)
    int n_ev = 0;
    double psnr0 = 0, psnr1 = 0;
    if (v->eval_dataset) {
        if ((rc = dataset_open(&ev, v->eval_dataset, err))) {
            sdc_err_wrap(err, "sdc train vae: --eval-dataset %s", v->eval_dataset);
            goto done;
        }
        have_ev = 1;
        n_ev = (int)(ev.n < v->eval_items ? ev.n : v->eval_items);
        if (ev.resolution != R || n_ev < 1) {
            rc = sdc_err(err, SDC_ERR_ARG, "sdc train vae: --eval-dataset %s: %lld images of %d px, the training "
                         "set's are %d px\n---> an eval set of the same resolution", v->eval_dataset,
                         (long long)ev.n, ev.resolution, R);
            goto done;
        }
        ex = malloc((size_t)n_ev * per_img * sizeof *ex);
        int64_t *ids = malloc((size_t)n_ev * sizeof *ids);
        if (!ex || !ids) {
            free(ids);
            rc = sdc_err(err, SDC_ERR_OOM, "sdc train vae: out of host memory");
            goto done;
        }
        for (int i = 0; i < n_ev; i++) ids[i] = i;
        rc = read_images(&ev, ids, n_ev, ex, rgb, err);
        free(ids);
        if (!rc) rc = vae_psnr(m, ex, n_ev, R, R, &psnr0, NULL, err);
        if (rc) goto done;
        if (!quiet) fprintf(stderr, "sdc train vae: reconstruction PSNR on %d items of %s at step %lld: %.2f dB\n",
                            n_ev, v->eval_dataset, (long long)step, psnr0);
    }

    if ((rc = fs_mkdir_p(v->output_dir, err))) goto done;
    if (!quiet)
        fprintf(stderr, "sdc train vae: %lld images of %dx%d, batch %d, %d steps (%lld per epoch), lr %g (%s), "
                "kl weight %g, %s loss; %.1f MiB of training memory\n", (long long)ds.n, R, R, NG,
                v->max_train_steps, (long long)spe, v->learning_rate, v->lr_scheduler, v->kl_weight, v->rec_loss,
                (double)vae_train_bytes(m) / (1 << 20));

    int64_t order_epoch = -1;
    double t_start = 0, t_prev = 0;
    {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        t_start = t_prev = ts.tv_sec + ts.tv_nsec * 1e-9;
    }
    VaeStepStats st = {0};
    for (; step < v->max_train_steps; step++) {
        const int64_t epoch = step / spe, pos = (step % spe) * NG + j0;
        if (epoch != order_epoch) {
            vae_train_order((uint64_t)v->seed, epoch, order, ds.n);
            order_epoch = epoch;
        }
        for (int j = 0; j < N; j++) items[j] = order[pos + j];
        if ((rc = read_images(&ds, items, N, x, rgb, err))) goto done;
        for (int j = 0; j < N; j++) { // item j's noise, then its flip, from (seed, step, j)
            Rng r;
            rng_seed(&r, vae_train_sample_seed((uint64_t)v->seed, step, j0 + j));
            rng_normal(&r, eps + (size_t)j * per_lat, per_lat);
            float u;
            rng_uniform(&r, &u, 1);
            if (v->random_flip && u < 0.5f) flip_h(x + (size_t)j * per_img, R);
        }
        rc = vae_trainer_step(&tr, x, eps, &st, err);
        if (rc) {
            sdc_err_wrap(err, "sdc train vae: step %lld", (long long)step + 1);
            goto done;
        }
        const int64_t done_steps = step + 1;
        if (!quiet && (done_steps % v->log_every == 0 || done_steps == v->max_train_steps)) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            const double now = ts.tv_sec + ts.tv_nsec * 1e-9;
            const double dt = now - t_prev;
            t_prev = now;
            fprintf(stderr, "step %lld/%d  loss %.6f  rec %.6f  kl %.4g  lr %.3g  |g| %.3g  %.2f items/s  %.3f s/step\n",
                    (long long)done_steps, v->max_train_steps, st.loss, st.rec, st.kl, st.lr, st.grad_norm,
                    v->log_every * NG / (dt > 1e-9 ? dt : 1e-9), dt / v->log_every);
        }
        // every rank, after every step: all stop at the same step when any was signalled (Slurm's time-limit
        // warning, scancel, Ctrl-C), with a checkpoint of that step
        const int sig = stop_agree(&par);
        if ((sig || done_steps % v->checkpointing_steps == 0) && par.rank == 0) {
            char path[1200];
            if ((rc = train_ckpt_path(v->output_dir, done_steps, path, sizeof path, err)) ||
                (rc = train_ckpt_rotate(v->output_dir, v->checkpoints_total_limit, NULL, err)))
                goto done;
            // the order of the epoch the next step is in
            const int64_t next_epoch = done_steps / spe;
            if (next_epoch != order_epoch) {
                vae_train_order((uint64_t)v->seed, next_epoch, order, ds.n);
                order_epoch = next_epoch;
            }
            TrainCkptState cs = {.step = done_steps, .epoch = next_epoch, .micro_step = (done_steps % spe) * NG,
                                 .loss = st.loss, .rng = &rng_word, .n_rng = 1, .data_order = order,
                                 .n_order = ds.n};
            rc = train_ckpt_save(path, &spec, &cs, err);
            if (!rc && !quiet) fprintf(stderr, "sdc train vae: saved %s\n", path);
        }
        if (sig) rc = h5_par_agree(&par, rc, err);
        if (rc) goto done;
        if (sig) {
            rc = sdc_err(err, SDC_ERR_STOPPED, "%s at step %lld of %d; checkpoint-%lld.h5 saved in %s ---> run the "
                         "same job again with --resume-from-checkpoint latest to go on", stop_signal_name(sig),
                         (long long)done_steps, v->max_train_steps, (long long)done_steps, v->output_dir);
            goto done;
        }
    }
    {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        const double secs = ts.tv_sec + ts.tv_nsec * 1e-9 - t_start;
        if (par.rank == 0 && (rc = write_vae_folder(v->output_dir, m, err))) goto done;
        if (!quiet)
            fprintf(stderr, "sdc train vae: %s/vae written (%.1f s of training)\n", v->output_dir, secs);
    }
    if (n_ev) {
        double lstd = 0;
        if ((rc = vae_psnr(m, ex, n_ev, R, R, &psnr1, &lstd, err))) goto done;
        if (!quiet) fprintf(stderr, "sdc train vae: reconstruction PSNR on %d items of %s after: %.2f dB (at the "
                            "start %.2f dB)\n", n_ev, v->eval_dataset, psnr1, psnr0);
        if (!quiet && lstd > 0)
            fprintf(stderr, "sdc train vae: their latents (posterior means) have std %.4g: a UNet trained on this VAE "
                    "wants scaling_factor %.4g (1 / std; vae/config.json has %g)\n", lstd, 1.0 / lstd,
                    vae_config(m)->scaling_factor);
    }
done:
    free(dec.e);
    free(x), free(eps), free(ex), free(rgb), free(order), free(items), free(manifest);
    if (have_tr) vae_trainer_free(&tr);
    vae_free(m);
    model_files_close(mf);
    if (have_ds) dataset_close(&ds);
    if (have_ev) dataset_close(&ev);
    if (be) backend_destroy(be);
    dp_free(&dp);
    return rc;
}
