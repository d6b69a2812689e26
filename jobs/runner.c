// runner.c: executes a Job (see runner.h): picks the backend, loads the
// model, runs the task, writes the outputs.
#include "jobs/runner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "io/image.h"
#include "jobs/manifest.h"
#include "pipeline/sd.h"

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct Progress {
    int tty, quiet, item, items;
    double t0;
} Progress;

// A progress bar on a terminal (step, it/s, ETA); plain lines otherwise.
static void progress_cb(void *user, int step, int total) {
    Progress *p = user;
    if (p->quiet) return;
    double el = mono_s() - p->t0, rate = step / (el > 1e-9 ? el : 1e-9), eta = (total - step) / rate;
    if (p->tty) {
        char bar[31];
        int fill = step * 30 / total;
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '-';
        bar[30] = 0;
        fprintf(stderr, "\r  image %d/%d |%s| step %d/%d  %.2f it/s  ETA %.0fs ", p->item, p->items, bar, step,
                total, rate, eta);
        if (step == total) fputc('\n', stderr);
    } else if (step == total || step % 5 == 0) {
        fprintf(stderr, "  image %d/%d step %d/%d %.2f it/s eta %.0fs\n", p->item, p->items, step, total, rate,
                eta);
    }
}

// output.png -> output_2.png for the second image (stable-diffusion.cpp's naming)
static void item_path(char *buf, size_t n, const char *out, int i) {
    if (i == 0) {
        snprintf(buf, n, "%s", out);
        return;
    }
    const char *dot = strrchr(out, '.'), *slash = strrchr(out, '/');
    if (!dot || (slash && dot < slash)) dot = out + strlen(out);
    snprintf(buf, n, "%.*s_%d%s", (int)(dot - out), out, i + 1, dot);
}

// Pixels of the generation's inputs at the output size: init image (3, H, W)
// and mask (H, W), as the diffusers pipelines prepare them.
typedef struct GenInputs {
    GenMode mode;
    int width, height;
    float *image; // (3, H, W) in [-1, 1] or NULL
    float *mask;  // (H, W) in {0, 1} or NULL
} GenInputs;

static void inputs_free(GenInputs *in) {
    free(in->image);
    free(in->mask);
    memset(in, 0, sizeof *in);
}

// Resizes (Lanczos, as diffusers' image processor) when the size differs.
static int fit_image(Image *im, int w, int h, SdcError *err) {
    if (im->width == w && im->height == h) return 0;
    Image r = {0};
    SDC_TRY(image_resize(im, &r, w, h, IMAGE_LANCZOS, err));
    image_free(im);
    *im = r;
    return 0;
}

// Reads --init-img / --mask / --outpaint into tensors; picks the output size:
// -W/-H when given, else the init image's (outpaint canvas's) size rounded
// down to a multiple of 8, else the model's native size.
static int load_inputs(const Sdc__Generate *g, const ModelInfo *info, GenInputs *in, SdcError *err) {
    memset(in, 0, sizeof *in);
    const int has_img = g->init_image && g->init_image[0], has_mask = g->mask && g->mask[0];
    const int outpaint = g->n_outpaint > 0;
    if (outpaint && g->n_outpaint != 4)
        return sdc_err(err, SDC_ERR_ARG, "--outpaint takes 4 numbers LEFT,TOP,RIGHT,BOTTOM (got %zu)",
                       g->n_outpaint);
    if ((has_mask || outpaint) && !has_img)
        return sdc_err(err, SDC_ERR_ARG, "%s needs --init-img ---> the picture to %s",
                       outpaint ? "--outpaint" : "--mask", outpaint ? "extend" : "inpaint");
    if (has_mask && outpaint)
        return sdc_err(err, SDC_ERR_ARG, "--outpaint makes its own mask: give --mask or --outpaint, not both");
    in->mode = outpaint || has_mask ? GEN_INPAINT : has_img ? GEN_IMG2IMG : GEN_TXT2IMG;
    Image img = {0}, mask = {0};
    int rc = 0;
    if (has_img) rc = image_read(&img, g->init_image, 3, err);
    if (!rc && has_mask) {
        rc = image_read(&mask, g->mask, 1, err);
        if (!rc) rc = image_check_same_size(&mask, g->mask, &img, g->init_image, err);
    }
    if (!rc && outpaint) {
        for (int k = 0; k < 4 && !rc; k++)
            if (g->outpaint[k] < 0 || g->outpaint[k] > 8192)
                rc = sdc_err(err, SDC_ERR_ARG, "--outpaint: %d pixels is out of range 0..8192", g->outpaint[k]);
        Image canvas = {0};
        // 16 pixels of overlap: after binarising, ~8 pixels of the original
        // next to each new side are repainted, which hides the seam
        if (!rc)
            rc = image_outpaint_canvas(&img, g->outpaint[0], g->outpaint[1], g->outpaint[2], g->outpaint[3], 16,
                                       &canvas, &mask, err);
        if (!rc) {
            image_free(&img);
            img = canvas;
        }
    }
    int W = g->width, H = g->height;
    if (!W) W = has_img ? img.width / 8 * 8 : info->unet.sample_size * 8;
    if (!H) H = has_img ? img.height / 8 * 8 : info->unet.sample_size * 8;
    if (!rc && (W < 8 || H < 8))
        rc = sdc_err(err, SDC_ERR_ARG, "%s is smaller than 8x8 pixels", g->init_image);
    in->width = W, in->height = H;
    if (!rc && has_img) {
        in->image = malloc((size_t)3 * W * H * sizeof(float));
        rc = in->image ? fit_image(&img, W, H, err) : sdc_err(err, SDC_ERR_OOM, "init image");
        if (!rc) rc = image_to_tensor(&img, in->image, err);
    }
    if (!rc && mask.data) {
        in->mask = malloc((size_t)W * H * sizeof(float));
        rc = in->mask ? fit_image(&mask, W, H, err) : sdc_err(err, SDC_ERR_OOM, "mask");
        if (!rc) rc = mask_to_tensor(&mask, in->mask, err);
    }
    image_free(&img);
    image_free(&mask);
    if (rc) inputs_free(in);
    return rc;
}

static const char *mode_name(GenMode m) {
    return m == GEN_TXT2IMG ? "txt2img" : m == GEN_IMG2IMG ? "img2img" : "inpaint";
}

static int run_generate(const Sdc__Job *job, const RunOptions *opt, SdcError *err) {
    const Sdc__Generate *g = job->generate;
    const Sdc__Runtime *rt = job->runtime;
    const char *dev = rt && rt->device && rt->device[0] ? rt->device : "cpu";
    Backend *be = NULL;
    int rc = !strcmp(dev, "cuda") ? backend_cuda_create(&be, 0, DT_F32, err)
                                  : backend_cpu_create(&be, rt ? rt->threads : 0, err);
    if (rc) return rc;

    SamplerKind sk;
    if ((rc = sampler_parse(g->sampler, &sk, err))) {
        backend_destroy(be);
        return rc;
    }
    int prediction = -1;
    const char *pt = job->model->prediction_type;
    if (pt && !strcmp(pt, "epsilon")) prediction = PRED_EPSILON;
    if (pt && !strcmp(pt, "v_prediction")) prediction = PRED_V;

    double t0 = mono_s();
    SdModel m;
    const char *cfg = job->model->config && job->model->config[0] ? job->model->config : NULL;
    rc = sd_model_load(&m, job->model->path, cfg, prediction, be, err);
    if (rc) {
        backend_destroy(be);
        return sdc_err_wrap(err, "loading %s", job->model->path);
    }
    const ModelInfo *info = model_files_info(m.files);
    GenInputs in;
    rc = load_inputs(g, info, &in, err);
    if (rc) {
        sd_model_free(&m);
        backend_destroy(be);
        return rc;
    }
    const int W = in.width, H = in.height;
    // strength: as given, else A1111's 0.75 for img2img and diffusers' 1.0 for inpainting
    const double strength = g->has_strength ? g->strength : in.mode == GEN_INPAINT ? 1.0 : 0.75;
    const int micro = g->batch_size > 0 ? g->batch_size : 1;
    if (!opt->quiet)
        fprintf(stderr, "sdc: loaded %s (SD %d.x, %s layout, %s prediction, %d-channel UNet) in %.1fs on %s\n",
                job->model->path, info->family == SD_FAMILY_2 ? 2 : 1,
                info->layout == LAYOUT_DIFFUSERS ? "diffusers" : "single-file",
                info->unet.prediction == PRED_V ? "v" : "epsilon", info->unet.in_channels, mono_s() - t0, be->name);

    const ClipConfig *cc = clip_config(m.clip);
    const size_t npix = (size_t)W * H;
    float *ctx = malloc((size_t)2 * cc->max_positions * cc->hidden * sizeof(float));
    float *images = malloc((size_t)micro * 3 * npix * sizeof(float));
    uint8_t *rgb = malloc(npix * 3);
    if (!ctx || !images || !rgb) rc = sdc_err(err, SDC_ERR_OOM, "image buffers for %dx%d", W, H);
    const int items = g->batch_count * (int)g->n_prompts;
    Progress pr = {.tty = isatty(2), .quiet = opt->quiet, .items = items};
    int done = 0;
    if (!rc) { // refuse a request the model cannot serve before any work
        GenParams chk = {.mode = in.mode, .steps = g->steps, .width = W, .height = H, .batch = 1,
                         .strength = strength, .init_image = in.image, .mask = in.mask};
        rc = sd_check_params(&m, &chk, err);
    }
    for (size_t pi = 0; !rc && pi < g->n_prompts; pi++) {
        const char *prompt = g->prompts[pi];
        rc = sd_encode_prompt(&m, prompt, g->negative_prompt, job->model->clip_skip, ctx, err);
        for (int j = 0; !rc && j < g->batch_count; j += micro) {
            const int nb = g->batch_count - j < micro ? g->batch_count - j : micro;
            const uint64_t seed = (uint64_t)g->seed + (uint64_t)done;
            GenParams p = {.mode = in.mode, .steps = g->steps, .cfg_scale = g->cfg_scale, .sampler = sk,
                           .eta = g->eta, .seed = seed, .width = W, .height = H, .batch = nb,
                           .strength = strength, .init_image = in.image, .mask = in.mask};
            pr.item = done + 1;
            pr.t0 = mono_s();
            rc = sd_generate(&m, &p, ctx, NULL, images, progress_cb, &pr, err);
            for (int k = 0; !rc && k < nb; k++, done++) {
                char path[4096], params[8192];
                item_path(path, sizeof path, g->output, done);
                image_from_vae(rgb, images, k, H, W);
                const char *name = strrchr(job->model->path, '/');
                // A1111's layout: prompt, "Negative prompt: ..." (only when given), then settings
                int len = snprintf(params, sizeof params, "%s\n", prompt);
                if (g->negative_prompt && g->negative_prompt[0] && len < (int)sizeof params)
                    len += snprintf(params + len, sizeof params - len, "Negative prompt: %s\n", g->negative_prompt);
                if (len < (int)sizeof params)
                    len += snprintf(params + len, sizeof params - len,
                                    "Steps: %d, Sampler: %s, CFG scale: %g, Seed: %llu, Size: %dx%d, Model: %s",
                                    g->steps, sampler_display_name(sk), g->cfg_scale,
                                    (unsigned long long)(seed + (uint64_t)k), W, H,
                                    name ? name + 1 : job->model->path);
                if (in.mode != GEN_TXT2IMG && len < (int)sizeof params)
                    len += snprintf(params + len, sizeof params - len, ", Denoising strength: %g", strength);
                if (job->model->clip_skip && len < (int)sizeof params)
                    len += snprintf(params + len, sizeof params - len, ", Clip skip: %d", job->model->clip_skip);
                if (len < (int)sizeof params)
                    snprintf(params + len, sizeof params - len, ", Version: sdc %s", SDC_VERSION);
                rc = image_write_png(path, rgb, W, H, params, err);
                if (!rc && !opt->quiet)
                    fprintf(stderr, "sdc: wrote %s (%s %dx%d, seed %llu, %.1fs)\n", path, mode_name(in.mode), W, H,
                            (unsigned long long)(seed + (uint64_t)k), mono_s() - pr.t0);
            }
        }
    }
    free(ctx);
    free(images);
    free(rgb);
    inputs_free(&in);
    sd_model_free(&m);
    backend_destroy(be);
    return rc;
}

int runner_run(const Sdc__Job *job, const RunOptions *opt, SdcError *err) {
    SDC_TRY(manifest_validate(job, err));
    switch (job->task) {
    case SDC__TASK__TASK_GENERATE: return run_generate(job, opt, err);
    default: return sdc_err(err, SDC_ERR_UNSUPPORTED, "task %d is not implemented yet", job->task);
    }
}
