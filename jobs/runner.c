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
    int W = g->width ? g->width : info->unet.sample_size * 8;
    int H = g->height ? g->height : info->unet.sample_size * 8;
    if (!opt->quiet)
        fprintf(stderr, "sdc: loaded %s (SD %d.x, %s layout, %s prediction) in %.1fs on %s\n", job->model->path,
                info->family == SD_FAMILY_2 ? 2 : 1, info->layout == LAYOUT_DIFFUSERS ? "diffusers" : "single-file",
                info->unet.prediction == PRED_V ? "v" : "epsilon", mono_s() - t0, be->name);

    uint8_t *rgb = malloc((size_t)W * H * 3);
    if (!rgb) rc = sdc_err(err, SDC_ERR_OOM, "image buffer %dx%d", W, H);
    int items = g->batch_count * (int)g->n_prompts;
    Progress pr = {.tty = isatty(2), .quiet = opt->quiet, .items = items};
    for (int i = 0; !rc && i < items; i++) {
        const char *prompt = g->prompts[i % g->n_prompts];
        GenParams p = {.prompt = prompt, .negative_prompt = g->negative_prompt, .steps = g->steps,
                       .cfg_scale = g->cfg_scale, .sampler = sk, .seed = (uint64_t)g->seed + (uint64_t)i,
                       .width = W, .height = H, .clip_skip = job->model->clip_skip};
        pr.item = i + 1;
        pr.t0 = mono_s();
        rc = sd_txt2img(&m, &p, rgb, progress_cb, &pr, err);
        if (rc) break;
        char path[4096], params[8192];
        item_path(path, sizeof path, g->output, i);
        const char *name = strrchr(job->model->path, '/');
        // A1111's layout: prompt, "Negative prompt: ..." (only when given), then settings
        int len = snprintf(params, sizeof params, "%s\n", prompt);
        if (g->negative_prompt && g->negative_prompt[0] && len < (int)sizeof params)
            len += snprintf(params + len, sizeof params - len, "Negative prompt: %s\n", g->negative_prompt);
        if (len < (int)sizeof params)
            snprintf(params + len, sizeof params - len,
                     "Steps: %d, Sampler: %s, CFG scale: %g, Seed: %llu, Size: %dx%d, Model: %s, Version: sdc %s",
                     g->steps, sampler_display_name(sk), g->cfg_scale, (unsigned long long)p.seed, W, H,
                     name ? name + 1 : job->model->path, SDC_VERSION);
        if (job->model->clip_skip) {
            size_t len = strlen(params);
            snprintf(params + len, sizeof params - len, ", Clip skip: %d", job->model->clip_skip);
        }
        rc = image_write_png(path, rgb, W, H, params, err);
        if (!rc && !opt->quiet)
            fprintf(stderr, "sdc: wrote %s (%dx%d, seed %llu, %.1fs)\n", path, W, H, (unsigned long long)p.seed,
                    mono_s() - pr.t0);
    }
    free(rgb);
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
