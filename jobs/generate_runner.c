// generate_runner.c: runs a generation Job (`sdc generate`, `sdc run` of a
// generate manifest): the backend and model, the init image / mask inputs,
// the sweep (prompts x settings x seeds, sharded, shared by MPI ranks),
// pipeline stages when asked (mpi/pp.h), and the outputs (PNGs or an HDF5
// generation output, data/genout.h). Stops cleanly on a signal (jobs/stop.h).
//
// Read in order: progress and inputs, the sweep, writing items, the
// pipelined runs, the sweep loop, the pipeline set-up, run_generate.
#define _GNU_SOURCE // getline, strcasecmp, realpath
#include "jobs/runner.h"

#include <mpi.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "io/image.h"
#include "io/lora.h"
#include "jobs/manifest.h"
#include "jobs/stop.h"
#include "mpi/grid.h"
#include "mpi/pp.h"
#include "pipeline/sd.h"
#include "data/fsutil.h"
#include "data/genout.h"
#include "data/train_ckpt.h"

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct Progress {
    int tty, quiet, item, items;
    double t0;
    double t_step; // when the last model evaluation ended: the decode starts there
    int steps;     // evaluations seen in the current item
    double t_all;  // when this process's first item started (0: not yet)
    int done;      // items finished before the current run
    int batch;     // items in the current run
} Progress;

// "1h02m", "4m05s", "12s"
static void fmt_eta(char *buf, size_t n, double s) {
    if (!(s >= 0) || s > 1e7) snprintf(buf, n, "?");
    else if (s >= 3600) snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
    else if (s >= 60) snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else snprintf(buf, n, "%.0fs", s);
}

// A progress bar on a terminal (step, it/s, ETA); plain lines otherwise.
static void progress_cb(void *user, int step, int total) {
    Progress *p = user;
    p->t_step = mono_s();
    p->steps = step;
    if (p->quiet) return;
    double el = mono_s() - p->t0, rate = step / (el > 1e-9 ? el : 1e-9), eta = (total - step) / rate;
    // the whole run's ETA, from the items done so far (this one in part)
    char all[48] = "";
    if (p->t_all > 0 && p->items > 1) {
        const double frac = (p->done + (double)(p->batch > 0 ? p->batch : 1) * step / total) / p->items;
        const double el_all = mono_s() - p->t_all;
        char e[16];
        fmt_eta(e, sizeof e, frac > 0 ? el_all / frac - el_all : -1);
        snprintf(all, sizeof all, "  all %d/%d ETA %s", p->done, p->items, e);
    }
    if (p->tty) {
        char bar[31];
        int fill = step * 30 / total;
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '-';
        bar[30] = 0;
        fprintf(stderr, "\r  image %d/%d |%s| step %d/%d  %.2f it/s  ETA %.0fs%s ", p->item, p->items, bar, step,
                total, rate, eta, all);
        if (step == total) fputc('\n', stderr);
    } else if (step == total || step % 5 == 0) {
        fprintf(stderr, "  image %d/%d step %d/%d %.2f it/s eta %.0fs%s\n", p->item, p->items, step, total, rate,
                eta, all);
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
    // diffusers' default: the UNet's sample_size times the VAE's scale factor
    const int f = vae_scale_factor(&info->vae);
    if (!W) W = has_img ? img.width / 8 * 8 : info->unet.sample_size * f;
    if (!H) H = has_img ? img.height / 8 * 8 : info->unet.sample_size * f;
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

// The request a Generate message and its loaded inputs describe, for one
// item (callers set seed and batch).
// SDXL's micro-conditioning from the manifest (pairs checked by manifest.c)
static SdxlCond xl_cond(const Sdc__Generate *g) {
    SdxlCond c = {0};
    if (g->n_original_size == 2) c.original_h = g->original_size[0], c.original_w = g->original_size[1];
    if (g->n_crops_coords_top_left == 2)
        c.crop_top = g->crops_coords_top_left[0], c.crop_left = g->crops_coords_top_left[1];
    if (g->n_target_size == 2) c.target_h = g->target_size[0], c.target_w = g->target_size[1];
    if (g->n_negative_original_size == 2)
        c.neg_original_h = g->negative_original_size[0], c.neg_original_w = g->negative_original_size[1];
    if (g->n_negative_crops_coords_top_left == 2)
        c.neg_crop_top = g->negative_crops_coords_top_left[0], c.neg_crop_left = g->negative_crops_coords_top_left[1];
    if (g->n_negative_target_size == 2)
        c.neg_target_h = g->negative_target_size[0], c.neg_target_w = g->negative_target_size[1];
    c.aesthetic_score = g->aesthetic_score, c.neg_aesthetic_score = g->negative_aesthetic_score; // > 0 (manifest.c)
    return c;
}

// --refiner: SDXL's ensemble of experts. The refiner model, its text
// embeddings of the current prompt, and the base's latents at the cut.
typedef struct Refiner {
    SdModel m;
    float *ctx;   // (sd_cond_floats of the refiner)
    float *lat;   // (batch, 4, h, w) the base's latents at --refiner-start
    double start; // --refiner-start: the base's denoising_end, the refiner's denoising_start
} Refiner;

// One run with the refiner: the base (txt2img, img2img or inpainting) stops
// at the cut with its latents (diffusers' output_type="latent"), the refiner
// goes on from them and decodes; inpainting: the refiner keeps the mask,
// as StableDiffusionXLInpaintPipeline given the base's latents as its image.
static int generate_refined(SdModel *m, Refiner *rf, const GenParams *p, const float *ctx, float *images,
                            ProgressFn progress, void *user, SdcError *err) {
    GenParams pb = *p;
    pb.denoising_end = rf->start;
    SDC_TRY(sd_generate(m, &pb, ctx, rf->lat, NULL, progress, user, err));
    GenParams pr = *p;
    pr.mode = p->mode == GEN_INPAINT ? GEN_INPAINT : GEN_IMG2IMG, pr.init_image = NULL;
    if (pr.mode != GEN_INPAINT) pr.mask = NULL;
    pr.denoising_start = rf->start, pr.init_latents = rf->lat;
    return sd_generate(&rf->m, &pr, rf->ctx, NULL, images, progress, user, err);
}

static GenParams gen_params(const Sdc__Generate *g, const GenInputs *in, SamplerKind sk, double strength,
                            const SdModel *m) {
    return (GenParams){.mode = in->mode, .steps = g->steps, .cfg_scale = g->cfg_scale, .sampler = sk,
                       .eta = g->eta, .seed = (uint64_t)g->seed, .width = in->width, .height = in->height,
                       .batch = 1, .strength = strength, .init_image = in->image, .mask = in->mask,
                       // --vae-tile-size is in pixels (-1 = never tile, 0 = auto); the pipeline counts latent px
                       .vae_tile = g->vae_tile_size > 0 ? g->vae_tile_size / sd_latent_factor(m) : g->vae_tile_size,
                       .timestep_spacing = g->timestep_spacing, .karras = g->karras, .xl = xl_cond(g)};
}

// The dtype a run computes in: --precision, else fp32 on the CPU and bf16 on a
// GPU. On the CPU, fp32 is the reference and bf16 the oneDNN variant
// (backend_cpu_create_bf16: bf16 weights and matmuls, fp32 activations);
// fp16 is a GPU format only.
static int run_dtype(const Sdc__Runtime *rt, int cuda, DType *dt, SdcError *err) {
    Sdc__Precision pr = rt ? rt->precision : SDC__PRECISION__PRECISION_DEFAULT;
    *dt = pr == SDC__PRECISION__PRECISION_FP32   ? DT_F32
          : pr == SDC__PRECISION__PRECISION_FP16 ? DT_F16
          : pr == SDC__PRECISION__PRECISION_BF16 ? DT_BF16
          : cuda                                 ? DT_BF16
                                                 : DT_F32;
    if (!cuda && *dt == DT_F16)
        return sdc_err(err, SDC_ERR_ARG, "--precision fp16: the CPU backend computes in fp32 or bf16 ---> "
                                         "--precision bf16 or fp32, or --device cuda");
    return 0;
}

static const char *mode_name(GenMode m) {
    return m == GEN_TXT2IMG ? "txt2img" : m == GEN_IMG2IMG ? "img2img" : "inpaint";
}

// ----------------------------------------------------------------------------
// the sweep: every item a generation job makes

// A prompt file line's own settings (kohya's sample-prompt options:
// "PROMPT --n NEGATIVE --d SEED --s STEPS --l CFG --ss SAMPLER --w W --h H").
typedef struct PromptOpts {
    char *negative;         // NULL: the job's
    int has_seed, steps;    // steps 0: the job's
    int64_t seed;
    float cfg;              // < 0: the job's
    int has_sampler;
    SamplerKind sampler;
} PromptOpts;

typedef struct Sweep {
    const char **prompts; // the manifest's prompts, then prompts_file's lines
    char **own;           // prompts_file's lines (owned), the prompt part once options are parsed
    int64_t *own_line;    // their line numbers
    PromptOpts *opts;     // (n_prompts) per prompt: the file's options (zeroed for the manifest's)
    char **clean;         // (n_prompts) the prompts without their <lora:...> tags: what the text encoder sees
    int64_t n_prompts, n_own;
    int64_t n;            // items in the whole sweep
    int64_t lo, hi;       // this shard's items [lo, hi)
    GenItem *items;       // (hi - lo); .index = the item's number in the sweep
    int64_t *prompt_of;   // (hi - lo) prompt index
    SamplerKind *kind;    // (hi - lo)
    float max_cfg;        // the largest guidance scale (the memory plan)
} Sweep;

static void sweep_free(Sweep *sw) {
    for (int64_t i = 0; i < sw->n_own; i++) free(sw->own[i]);
    for (int64_t i = 0; sw->opts && i < sw->n_prompts; i++) free(sw->opts[i].negative);
    for (int64_t i = 0; sw->clean && i < sw->n_prompts; i++) free(sw->clean[i]);
    free(sw->clean);
    free(sw->own), free(sw->own_line), free(sw->prompts), free(sw->items), free(sw->prompt_of), free(sw->kind), free(sw->opts);
    memset(sw, 0, sizeof *sw);
}

// prompts_file: one prompt a line; empty, all-blank and '#' lines skipped
static int read_prompts_file(const char *path, Sweep *sw, SdcError *err) {
    FILE *f = fopen(path, "r");
    if (!f) return sdc_err(err, SDC_ERR_IO, "--from-file %s: cannot open (%s)", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, have = 0;
    ssize_t len;
    int rc = 0;
    int64_t lineno = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if ((size_t)len != strlen(line)) {
            rc = sdc_err(err, SDC_ERR_FORMAT, "--from-file %s: line %lld holds a NUL byte (not a text file?)", path,
                         (long long)sw->n_own + 1);
            break;
        }
        lineno++;
        const size_t lead = strspn(line, " \t");
        if (lead == (size_t)len || line[lead] == '#') continue; // blank, or a comment (as kohya's files have)
        if (sw->n_own == (int64_t)have) {
            have = have ? 2 * have : 64;
            char **o = realloc(sw->own, have * sizeof *o);
            if (o) sw->own = o;
            int64_t *ln = realloc(sw->own_line, have * sizeof *ln);
            if (ln) sw->own_line = ln;
            if (!o || !ln) {
                rc = sdc_err(err, SDC_ERR_OOM, "--from-file %s: out of memory at line %lld", path, (long long)lineno);
                break;
            }
        }
        if (!(sw->own[sw->n_own] = strdup(line + lead))) {
            rc = sdc_err(err, SDC_ERR_OOM, "--from-file %s: out of memory at line %lld", path, (long long)lineno);
            break;
        }
        sw->own_line[sw->n_own] = lineno;
        sw->n_own++;
    }
    if (!rc && ferror(f)) rc = sdc_err(err, SDC_ERR_IO, "--from-file %s: read error", path);
    if (!rc && sw->n_own == 0) rc = sdc_err(err, SDC_ERR_ARG, "--from-file %s: no prompts in it", path);
    free(line);
    fclose(f);
    return rc;
}

// Splits a prompt file line at " --" into the prompt (kept in place) and
// kohya's options, into o; the line number and file name for messages. An
// option for a setting the job sweeps, or a size other than the run's, is
// refused; unknown options are refused too (a typo would silently change
// nothing).
static int parse_prompt_options(char *line, const char *path, int64_t lineno, const Sdc__Generate *g, int W, int H,
                                PromptOpts *o, SdcError *err) {
    memset(o, 0, sizeof *o);
    o->cfg = -1;
    char *cut = strstr(line, " --");
    if (!cut) return 0;
    char *opts = cut + 3;
    *cut = 0;
    for (char *q = cut - 1; q >= line && (*q == ' ' || *q == '\t'); q--) *q = 0; // trailing blanks of the prompt
    while (opts && *opts) {
        char *next = strstr(opts, " --");
        if (next) *next = 0;
        char *sp = strchr(opts, ' ');
        const char *key = opts, *val = sp ? sp + 1 : "";
        if (sp) *sp = 0;
        while (*val == ' ') val++;
        char *end = (char *)val + strlen(val);
        while (end > val && (end[-1] == ' ' || end[-1] == '\t')) *--end = 0;
        char *e = NULL;
        errno = 0;
        int bad = !*val;
        if (!bad && !strcasecmp(key, "n")) {
            free(o->negative);
            if (!(o->negative = strdup(val)))
                return sdc_err(err, SDC_ERR_OOM, "--from-file %s: out of memory at line %lld", path, (long long)lineno);
        } else if (!bad && !strcasecmp(key, "d")) {
            long long v = strtoll(val, &e, 10);
            bad = errno || *e || v < 0;
            o->seed = v, o->has_seed = 1;
        } else if (!bad && !strcasecmp(key, "s")) {
            long v = strtol(val, &e, 10);
            bad = errno || *e || v < 1 || v > 1000 || g->n_sweep_steps;
            o->steps = (int)v;
        } else if (!bad && !strcasecmp(key, "l")) {
            float v = strtof(val, &e);
            bad = errno || *e || !(v >= 0 && v <= 100) || g->n_sweep_cfg_scale;
            o->cfg = v;
        } else if (!bad && !strcasecmp(key, "ss")) {
            SdcError e2 = {0};
            bad = sampler_parse(val, &o->sampler, &e2) || g->n_sweep_sampler;
            o->has_sampler = 1;
        } else if (!bad && (!strcasecmp(key, "w") || !strcasecmp(key, "h"))) {
            long v = strtol(val, &e, 10);
            bad = errno || *e || v != (!strcasecmp(key, "w") ? W : H);
            if (bad)
                return sdc_err(err, SDC_ERR_ARG, "--from-file %s line %lld: --%s %s, but this run makes %dx%d images "
                               "(one size per run) ---> run the lines of another size with -W/-H of their own", path,
                               (long long)lineno, key, val, W, H);
        } else {
            bad = 1;
        }
        if (bad)
            return sdc_err(err, SDC_ERR_ARG, "--from-file %s line %lld: option --%s%s%s not understood ---> kohya's "
                           "options: --n NEGATIVE, --d SEED, --s STEPS, --l CFG, --ss SAMPLER, --w/--h (the run's "
                           "size); a setting the job sweeps cannot be set per line", path, (long long)lineno, key,
                           *val ? " " : "", val);
        opts = next ? next + 3 : NULL;
    }
    return 0;
}

// A1111's and stable-diffusion.cpp's LoRA tags in a prompt, "<lora:NAME>" or
// "<lora:NAME:WEIGHT>": the prompt without them into clean (what the text
// encoder sees; the item keeps the prompt as written, so its PNG and HDF5
// metadata name the LoRAs), the tags into tags[0..*n) as DIR/NAME.safetensors
// (or NAME.h5, an sdc LoRA checkpoint) at WEIGHT, sorted by path.
#define MAX_PROMPT_LORAS 16
static int prompt_lora_tags(const char *text, const char *dir, char *clean, size_t cap, LoraSpec *tags, int *n,
                            SdcError *err) {
    size_t o = 0;
    *n = 0;
    for (const char *q = text; *q;) {
        const char *tag = strstr(q, "<lora:");
        const size_t keep = tag ? (size_t)(tag - q) : strlen(q);
        if (o + keep >= cap) return sdc_err(err, SDC_ERR_ARG, "prompt too long (%zu bytes)", strlen(text));
        memcpy(clean + o, q, keep), o += keep;
        if (!tag) break;
        const char *end = strchr(tag, '>');
        if (!end || end == tag + 6)
            return sdc_err(err, SDC_ERR_ARG, "prompt \"%.80s\": a <lora:NAME:WEIGHT> tag is not closed", text);
        if (*n == MAX_PROMPT_LORAS)
            return sdc_err(err, SDC_ERR_ARG, "prompt \"%.80s\": more than %d LoRA tags", text, MAX_PROMPT_LORAS);
        char name[512];
        snprintf(name, sizeof name, "%.*s", (int)(end - tag - 6), tag + 6);
        float w = 1.0f;
        char *colon = strrchr(name, ':');
        if (colon) {
            char *e;
            errno = 0;
            w = strtof(colon + 1, &e);
            if (errno || e == colon + 1 || *e)
                return sdc_err(err, SDC_ERR_ARG, "prompt tag <lora:%s>: '%s' is not a weight", name, colon + 1);
            *colon = 0;
        }
        if (!dir || !dir[0])
            return sdc_err(err, SDC_ERR_ARG, "the prompt names <lora:%s> ---> pass --lora-model-dir DIR (the folder "
                           "of NAME.safetensors), or --lora FILE:WEIGHT", name);
        LoraSpec *t = &tags[(*n)++];
        snprintf(t->path, sizeof t->path, "%s/%s.safetensors", dir, name);
        if (access(t->path, R_OK)) {
            char h5[2048];
            const int len = snprintf(h5, sizeof h5, "%s/%s.h5", dir, name);
            if (len > 0 && len < (int)sizeof t->path && !access(h5, R_OK)) memcpy(t->path, h5, (size_t)len + 1);
            else return sdc_err(err, SDC_ERR_IO, "<lora:%s>: neither %s nor %s.h5 is readable", name, t->path, name);
        }
        t->weight = w;
        q = end + 1;
    }
    while (o > 0 && (clean[o - 1] == ' ' || clean[o - 1] == ',')) o--; // "a cat, <lora:x:1>" -> "a cat"
    clean[o] = 0;
    for (int i = 1; i < *n; i++) // insertion sort by path: the set, in one order
        for (int j = i; j > 0 && strcmp(tags[j - 1].path, tags[j].path) > 0; j--) {
            LoraSpec x = tags[j];
            tags[j] = tags[j - 1], tags[j - 1] = x;
        }
    return 0;
}

// The LoRAs the prompts name (every prompt the same set: they are merged
// into the weights once, at load), appended to *loras / *n_loras.
static int collect_prompt_loras(const Sdc__Generate *g, LoraSpec **loras, size_t *n_loras, SdcError *err) {
    Sweep tmp;
    memset(&tmp, 0, sizeof tmp);
    int rc = g->prompts_file && g->prompts_file[0] ? read_prompts_file(g->prompts_file, &tmp, err) : 0;
    const int64_t np = (int64_t)g->n_prompts + tmp.n_own;
    LoraSpec first[MAX_PROMPT_LORAS], cur[MAX_PROMPT_LORAS];
    int n_first = 0, any = 0;
    char clean[8192];
    for (int64_t i = 0; !rc && i < np; i++) {
        char *text = i < (int64_t)g->n_prompts ? g->prompts[i] : tmp.own[i - (int64_t)g->n_prompts];
        char *cut = i < (int64_t)g->n_prompts ? NULL : strstr(text, " --"); // a file line's options
        if (cut) *cut = 0;
        int n = 0;
        rc = prompt_lora_tags(text, g->lora_model_dir, clean, sizeof clean, i ? cur : first, &n, err);
        if (rc) break;
        if (i == 0) n_first = n;
        any |= n > 0;
        int same = i == 0 || n == n_first;
        for (int k = 0; same && i > 0 && k < n; k++)
            same = !strcmp(cur[k].path, first[k].path) && cur[k].weight == first[k].weight;
        if (!same)
            rc = sdc_err(err, SDC_ERR_UNSUPPORTED, "prompt %lld names other LoRAs than prompt 1 (\"%.60s\") ---> "
                         "LoRAs are merged into the weights once per run: give every prompt the same <lora:...> "
                         "tags, or run the others as a job of their own", (long long)i + 1, text);
    }
    if (!rc && any) {
        LoraSpec *l = realloc(*loras, (*n_loras + (size_t)n_first) * sizeof *l);
        if (!l) rc = sdc_err(err, SDC_ERR_OOM, "LoRA list");
        else {
            memcpy(l + *n_loras, first, (size_t)n_first * sizeof *l);
            *loras = l, *n_loras += (size_t)n_first;
        }
    }
    sweep_free(&tmp);
    return rc;
}

// Items ordered prompt, cfg scale, sampler, steps, then the batch_count
// seeds (jobs/sdc.proto): item i = ((((p * C + c) * S + s) * T + t) * B + b),
// seed = seed + p * B + b. Only this shard's range is built.
static int sweep_build(const Sdc__Generate *g, GenMode mode, double strength, int W, int H, Sweep *sw,
                       SdcError *err) {
    memset(sw, 0, sizeof *sw);
    if (g->prompts_file && g->prompts_file[0]) SDC_TRY(read_prompts_file(g->prompts_file, sw, err));
    sw->n_prompts = (int64_t)g->n_prompts + sw->n_own;
    sw->prompts = malloc((size_t)sw->n_prompts * sizeof *sw->prompts);
    sw->opts = calloc((size_t)sw->n_prompts, sizeof *sw->opts);
    sw->clean = calloc((size_t)sw->n_prompts, sizeof *sw->clean);
    if (!sw->prompts || !sw->opts || !sw->clean)
        return sdc_err(err, SDC_ERR_OOM, "out of memory for the sweep's %lld prompts", (long long)sw->n_prompts);
    for (int64_t i = 0; i < sw->n_prompts; i++) {
        sw->opts[i].cfg = -1;
        sw->prompts[i] = i < (int64_t)g->n_prompts ? g->prompts[i] : sw->own[i - (int64_t)g->n_prompts];
        if (i >= (int64_t)g->n_prompts)
            SDC_TRY(parse_prompt_options(sw->own[i - (int64_t)g->n_prompts], g->prompts_file, sw->own_line[i - (int64_t)g->n_prompts],
                                         g, W, H, &sw->opts[i], err));
        // the tags were checked and their LoRAs merged at load (collect_prompt_loras)
        char clean[8192];
        LoraSpec tags[MAX_PROMPT_LORAS];
        int nt = 0;
        SDC_TRY(prompt_lora_tags(sw->prompts[i], g->lora_model_dir, clean, sizeof clean, tags, &nt, err));
        if (!(sw->clean[i] = strdup(clean)))
            return sdc_err(err, SDC_ERR_OOM, "out of memory for the sweep's prompts");
    }
    const int64_t C = g->n_sweep_cfg_scale ? (int64_t)g->n_sweep_cfg_scale : 1;
    const int64_t S = g->n_sweep_sampler ? (int64_t)g->n_sweep_sampler : 1;
    const int64_t T = g->n_sweep_steps ? (int64_t)g->n_sweep_steps : 1, B = g->batch_count;
    SamplerKind kinds[64];
    if (S > 64) return sdc_err(err, SDC_ERR_ARG, "generate.sweep_sampler: %lld samplers; at most 64", (long long)S);
    for (int64_t s = 0; s < S; s++)
        SDC_TRY(sampler_parse(g->n_sweep_sampler ? g->sweep_sampler[s] : g->sampler, &kinds[s], err));
    const double n = (double)sw->n_prompts * C * S * T * B;
    if (n > 1e9) return sdc_err(err, SDC_ERR_ARG, "the sweep has %.3g items; at most 1e9 ---> split it", n);
    sw->n = (int64_t)n;
    sw->lo = sw->n * g->shard_index / g->shard_count;
    sw->hi = sw->n * (g->shard_index + 1) / g->shard_count;
    const int64_t m = sw->hi - sw->lo;
    sw->items = calloc((size_t)m + 1, sizeof *sw->items);
    sw->prompt_of = calloc((size_t)m + 1, sizeof *sw->prompt_of);
    sw->kind = calloc((size_t)m + 1, sizeof *sw->kind);
    if (!sw->items || !sw->prompt_of || !sw->kind) return sdc_err(err, SDC_ERR_OOM, "out of memory for a sweep of %lld items", (long long)m);
    sw->max_cfg = g->cfg_scale;
    for (int64_t c = 0; c < C; c++)
        if (g->n_sweep_cfg_scale && (c == 0 || g->sweep_cfg_scale[c] > sw->max_cfg)) sw->max_cfg = g->sweep_cfg_scale[c];
    for (int64_t i = 0; i < sw->n_prompts; i++)
        if (sw->opts[i].cfg > sw->max_cfg) sw->max_cfg = sw->opts[i].cfg;
    for (int64_t j = 0; j < m; j++) {
        const int64_t i = sw->lo + j, b = i % B;
        int64_t r = i / B;
        const int64_t t = r % T;
        r /= T;
        const int64_t s = r % S;
        r /= S;
        const int64_t c = r % C, p = r / C;
        const PromptOpts *o = &sw->opts[p];
        sw->prompt_of[j] = p;
        sw->kind[j] = o->has_sampler ? o->sampler : kinds[s];
        if (g->karras) { // euler + --karras is euler_karras (and so named in the outputs)
            if (!sampler_has_karras(sw->kind[j]))
                return sdc_err(err, SDC_ERR_ARG, "--karras with sampler %s: diffusers' %s has no Karras sigmas "
                               "---> use euler, heun, lms, dpm++2m, dpm++2m_sde or unipc with --karras",
                               sampler_name(sw->kind[j]), sampler_class_name(sw->kind[j]));
            sw->kind[j] = sampler_karras_twin(sw->kind[j]);
        }
        sw->items[j] = (GenItem){.prompt = sw->prompts[p], .negative_prompt = o->negative ? o->negative
                                                                                          : g->negative_prompt,
                                 .sampler = sampler_display_name(sw->kind[j]), .index = i,
                                 .seed = (o->has_seed ? o->seed : g->seed + p * B) + b,
                                 .steps = o->steps ? o->steps : g->n_sweep_steps ? g->sweep_steps[t] : g->steps,
                                 .cfg = o->cfg >= 0 ? o->cfg : g->n_sweep_cfg_scale ? g->sweep_cfg_scale[c] : g->cfg_scale,
                                 .strength = mode == GEN_TXT2IMG ? 1.0f : (float)strength};
    }
    return 0;
}

// out.h5 -> out-00003-of-00008.h5 for shard index 2 of 8
static void shard_path(char *buf, size_t n, const char *out, int index, int count) {
    if (count <= 1) {
        snprintf(buf, n, "%s", out);
        return;
    }
    const char *dot = strrchr(out, '.'), *slash = strrchr(out, '/');
    if (!dot || (slash && dot < slash)) dot = out + strlen(out);
    snprintf(buf, n, "%.*s-%05d-of-%05d%s", (int)(dot - out), out, index + 1, count, dot);
}

// A1111's "parameters" text of a PNG: prompt, "Negative prompt: ..." (only
// when given), then the settings.
static void png_parameters(char *buf, size_t cap, const Sdc__Job *job, const GenItem *it, GenMode mode, int W, int H) {
    const char *name = strrchr(job->model->path, '/');
    size_t len = (size_t)snprintf(buf, cap, "%s\n", it->prompt);
    if (it->negative_prompt && it->negative_prompt[0] && len < cap)
        len += (size_t)snprintf(buf + len, cap - len, "Negative prompt: %s\n", it->negative_prompt);
    if (len < cap)
        len += (size_t)snprintf(buf + len, cap - len, "Steps: %d, Sampler: %s, CFG scale: %g, Seed: %lld, Size: %dx%d, "
                                "Model: %s", it->steps, it->sampler, it->cfg, (long long)it->seed, W, H,
                                name ? name + 1 : job->model->path);
    if (mode != GEN_TXT2IMG && len < cap)
        len += (size_t)snprintf(buf + len, cap - len, ", Denoising strength: %g", it->strength);
    if (job->model->clip_skip && len < cap)
        len += (size_t)snprintf(buf + len, cap - len, ", Clip skip: %d", job->model->clip_skip);
    const Sdc__Generate *g = job->generate;
    if (g->karras && !strstr(it->sampler, "Karras") && len < cap) // A1111 1.9's key
        len += (size_t)snprintf(buf + len, cap - len, ", Schedule type: Karras");
    if (g->timestep_spacing && g->timestep_spacing[0] && len < cap)
        len += (size_t)snprintf(buf + len, cap - len, ", Timestep spacing: %s", g->timestep_spacing);
    if (g->refiner && g->refiner[0] && len < cap) { // A1111's keys
        const char *rn = strrchr(g->refiner, '/');
        len += (size_t)snprintf(buf + len, cap - len, ", Refiner: %s, Refiner switch at: %g", rn ? rn + 1 : g->refiner,
                                g->refiner_start);
    }
    if (len < cap) snprintf(buf + len, cap - len, ", Version: sdc %s", SDC_VERSION);
}

// --skip-existing: the item's PNG is there, whole, at the run's size (every
// rank sees the same files, so the runs stay the same on every rank)
static int png_done(const char *output, const GenItem *it, int W, int H) {
    char path[4096];
    item_path(path, sizeof path, output, (int)it->index);
    if (access(path, R_OK)) return 0;
    Image im = {0};
    SdcError e = {0};
    const int ok = !image_read(&im, path, 3, &e) && im.width == W && im.height == H;
    image_free(&im);
    return ok;
}

static int write_item_png(const Sdc__Job *job, const GenInputs *in, const GenItem *it, const uint8_t *rgb, int W,
                          int H, const RunOptions *opt, SdcError *err) {
    char path[4096], params[8192];
    item_path(path, sizeof path, job->generate->output, (int)it->index);
    png_parameters(params, sizeof params, job, it, in->mode, W, H);
    SDC_TRY(image_write_png(path, rgb, W, H, params, err));
    if (!opt->quiet)
        fprintf(stderr, "sdc: wrote %s (%s %dx%d, seed %lld, %s, %d steps, cfg %g)\n", path, mode_name(in->mode), W,
                H, (long long)it->seed, it->sampler, it->steps, it->cfg);
    return 0;
}

// Stage 0 of a pipeline: nq runs (run q: items start[q] .. start[q] +
// len[q] - 1 of the shard, one prompt and setting) all in flight at once,
// each a micro-batch of its own (its 2 x len rows never split, so every
// image is the one a single process makes with the same --batch-size):
// while the later stages work on some, stage 0 runs its blocks for
// another, so the pipeline stays busy across denoising steps, not only
// within one. images: (nq, micro, 3, H, W).
static int pipeline_runs(const Sdc__Job *job, SdModel *m, const GenInputs *in, const Sweep *sw, double strength,
                         PpStage *pp, const int64_t *start, const int *len, int nq, float *ctxs, float *images,
                         Progress *pr, int64_t made, const RunOptions *opt, SdcError *err) {
    const Sdc__Generate *g = job->generate;
    const size_t nctx = sd_cond_floats(m), npix = (size_t)in->width * in->height;
    const int micro = g->batch_size > 0 ? (g->batch_size < 64 ? g->batch_size : 64) : 1;
    SdRun *run[PP_MAX_INFLIGHT] = {0};
    int rc = nq > PP_MAX_INFLIGHT ? sdc_err(err, SDC_ERR_ARG, "--micro-batches %d: at most %d runs in flight", nq,
                                             PP_MAX_INFLIGHT)
                                  : 0;
    int active = 0;
    const double t0 = mono_s();
    if (pr->t_all == 0) pr->t_all = t0;
    for (int q = 0; !rc && q < nq; q++) {
        const GenItem *it = &sw->items[start[q]];
        float *ctx = ctxs + (size_t)q * nctx;
        rc = sd_encode_prompt(m, sw->clean[sw->prompt_of[start[q]]], it->negative_prompt, job->model->clip_skip, ctx,
                              err);
        GenParams p = gen_params(g, in, sw->kind[start[q]], strength, m);
        p.seed = (uint64_t)it->seed, p.batch = len[q], p.steps = it->steps, p.cfg_scale = it->cfg;
        if (!rc) rc = sd_run_begin(m, &p, ctx, &run[q], err);
        Tensor *x, *c, *out;
        const float *ts;
        if (!rc && !sd_run_next(run[q], &x, &ts, &c, &out)) {
            rc = pp_submit(pp, out, x, ts, c, q, err);
            active++;
        }
    }
    int finished = 0;
    while (!rc && active > 0) {
        int q = -1;
        rc = pp_wait_any(pp, &q, err);
        if (!rc) rc = sd_run_step(run[q], NULL, NULL, err);
        Tensor *x, *c, *out;
        const float *ts;
        if (!rc && !sd_run_next(run[q], &x, &ts, &c, &out)) {
            rc = pp_submit(pp, out, x, ts, c, q, err);
            continue;
        }
        active--;
        if (!rc) rc = sd_run_finish(run[q], NULL, images + (size_t)q * micro * 3 * npix, err);
        finished += len[q];
        if (!rc && !opt->quiet) {
            const double el = mono_s() - pr->t_all, done = (double)(made + finished);
            char e[16];
            fmt_eta(e, sizeof e, done > 0 ? el / done * (pr->items - done) : -1);
            fprintf(stderr, "  images %lld-%lld of %d done (%d in flight through %d stages)  all ETA %s\n",
                    (long long)(made + finished - len[q] + 1), (long long)(made + finished), pr->items, active,
                    pp->stages, e);
        }
    }
    for (int q = 0; q < nq; q++) sd_run_free(run[q]);
    return rc;
}

// Makes this shard's items: PNGs (-o, numbered by sweep item) or rows of an
// HDF5 generation output (--output-h5; items already done there are
// skipped, so a re-run resumes). Consecutive items of one prompt and setting
// form runs of up to batch_size images denoised together; under MPI rank r
// makes runs k % R == r, so the runs, and with them the images, do not
// depend on the rank count. par: the ranks sharing the work (with pipeline
// stages, the first stage of every pipeline). Between runs all ranks check for a stop signal
// (jobs/stop.h) and stop together.
static int generate_sweep(const Sdc__Job *job, const RunOptions *opt, SdModel *m, const GenInputs *in,
                          const Sweep *sw, double strength, float *ctx, const H5Par *parp, PpStage *pp, Refiner *rf,
                          SdcError *err) {
    const Sdc__Generate *g = job->generate;
    const H5Par par = *parp;
    const int W = in->width, H = in->height, use_h5 = g->output_h5 && g->output_h5[0];
    const int64_t n = sw->hi - sw->lo, B = g->batch_count;
    const size_t npix = (size_t)W * H;
    int micro = g->batch_size > 0 ? g->batch_size : 1;
    if (micro > 64) micro = 64;
    // with pipeline stages, K runs are in flight at once (each run one
    // micro-batch of the pipeline), taken K at a time
    const int K = pp ? pp->micro : 1;
    const size_t nctx = sd_cond_floats(m);
    int64_t *run_start = calloc((size_t)n + 1, sizeof(int64_t)), idx[64];
    int *run_len = calloc((size_t)n + 1, sizeof(int));
    float *images = malloc((size_t)K * micro * 3 * npix * sizeof(float));
    uint8_t *rgb = malloc((size_t)K * micro * 3 * npix);
    float *ctxs = pp ? malloc((size_t)K * nctx * sizeof(float)) : NULL;
    if (!run_start || !run_len || !images || !rgb || (pp && !ctxs)) {
        free(run_start), free(run_len), free(images), free(rgb), free(ctxs);
        return sdc_err(err, SDC_ERR_OOM, "generation buffers");
    }
    GenOut go = {.file = -1, .images = -1, .done = -1};
    char h5path[1100] = "";
    int rc = 0;
    if (use_h5) {
        char hash[11] = "", full[65];
        char *manifest = manifest_to_text(job);
        if (!manifest) rc = sdc_err(err, SDC_ERR_OOM, "manifest text");
        if (!rc && par.rank == 0) rc = genout_model_hash(job->model->path, hash, full, err);
        rc = h5_par_agree(&par, rc, err);
        shard_path(h5path, sizeof h5path, g->output_h5, g->shard_index, g->shard_count);
        if (!rc) rc = genout_open(&go, h5path, sw->items, n, W, H, hash, manifest, &par, err);
        free(manifest);
    }
    // the runs, the same on every rank
    int64_t n_runs = 0, skipped = 0;
    for (int64_t j = 0; !rc && j < n; j++) {
        if ((use_h5 && go.done_mask[j]) || (!use_h5 && g->skip_existing && png_done(g->output, &sw->items[j], W, H))) {
            skipped++;
            continue;
        }
        const int64_t r = n_runs - 1;
        if (r >= 0 && run_start[r] + run_len[r] == j && run_len[r] < micro &&
            sw->items[run_start[r]].index / B == sw->items[j].index / B)
            run_len[r]++;
        else run_start[n_runs] = j, run_len[n_runs++] = 1;
    }
    const int64_t groups = (n_runs + K - 1) / K, rounds = (groups + par.size - 1) / par.size;
    int64_t mine = 0;
    for (int64_t gi = par.rank; gi < groups; gi += par.size)
        for (int64_t kr = gi * K; kr < n_runs && kr < gi * K + K; kr++) mine += run_len[kr];
    Progress pr = {.tty = isatty(2), .quiet = opt->quiet, .items = (int)mine};
    int64_t last_prompt = -1, made = 0;
    int shown_memory = 0;
    for (int64_t round = 0; !rc && round < rounds; round++) {
        const int sig = stop_agree(&par);
        if (sig) {
            rc = sdc_err(err, SDC_ERR_STOPPED, "%s after %lld of %lld items%s%s ---> run the same job again%s to "
                         "make the rest", stop_signal_name(sig), (long long)(h5_par_sum(&par, made) + skipped),
                         (long long)n, use_h5 ? "; done items are marked in " : "", use_h5 ? h5path : "",
                         use_h5 || g->skip_existing ? "" : " with --skip-existing");
            break;
        }
        const int64_t kr = round * par.size + par.rank;
        int k = 0, lrc = 0;
        double text_s = 0;
        if (pp) { // K runs through the pipeline, then K collective writes
            const int64_t k0 = kr * K;
            const int nq = (int)(n_runs - k0 < K ? (n_runs - k0 > 0 ? n_runs - k0 : 0) : K);
            lrc = pipeline_runs(job, m, in, sw, strength, pp, run_start + k0, run_len + k0, nq, ctxs, images, &pr,
                                made, opt, err);
            for (int q = 0; !lrc && q < nq; q++) {
                const int64_t s0 = run_start[k0 + q];
                for (int j = 0; !lrc && j < run_len[k0 + q]; j++) {
                    uint8_t *px = rgb + ((size_t)q * micro + j) * 3 * npix;
                    image_from_vae(px, images + (size_t)q * micro * 3 * npix, j, H, W);
                    if (!use_h5) lrc = write_item_png(job, in, &sw->items[s0 + j], px, W, H, opt, err);
                }
            }
            if ((rc = h5_par_agree(&par, lrc, err))) break;
            for (int q = 0; !rc && q < K; q++) {
                const int kq = q < nq ? run_len[k0 + q] : 0;
                for (int j = 0; j < kq; j++) idx[j] = run_start[k0 + q] + j;
                if (use_h5) rc = genout_write(&go, idx, kq, rgb + (size_t)q * micro * 3 * npix, err);
                made += kq;
            }
            continue;
        }
        if (kr < n_runs) {
            const int64_t s0 = run_start[kr];
            const GenItem *it = &sw->items[s0];
            k = run_len[kr];
            if (sw->prompt_of[s0] != last_prompt) {
                const double t = mono_s();
                lrc = sd_encode_prompt(m, sw->clean[sw->prompt_of[s0]], it->negative_prompt, job->model->clip_skip,
                                       ctx, err);
                if (!lrc && rf)
                    lrc = sd_encode_prompt(&rf->m, sw->clean[sw->prompt_of[s0]], it->negative_prompt,
                                           job->model->clip_skip, rf->ctx, err);
                last_prompt = sw->prompt_of[s0];
                text_s = mono_s() - t;
            }
            GenParams p = gen_params(g, in, sw->kind[s0], strength, m);
            p.seed = (uint64_t)it->seed, p.batch = k, p.steps = it->steps, p.cfg_scale = it->cfg;
            pr.item = (int)made + 1;
            pr.t0 = mono_s();
            pr.steps = 0;
            pr.done = (int)made, pr.batch = k;
            if (pr.t_all == 0) pr.t_all = pr.t0;
            if (!lrc && rf) lrc = generate_refined(m, rf, &p, ctx, images, progress_cb, &pr, err);
            else if (!lrc) lrc = sd_generate(m, &p, ctx, NULL, images, progress_cb, &pr, err);
            if (!lrc && !opt->quiet && !use_h5 && pr.steps > 0) {
                // denoise includes the setup before the first step; decode is the VAE of all k items
                const double den = pr.t_step - pr.t0, dec = mono_s() - pr.t_step;
                fprintf(stderr, "sdc: timing: text %.2fs, denoise %.1fs (%.2f s/step), decode %.1fs\n", text_s, den,
                        den / pr.steps, dec);
                if (!shown_memory++)
                    fprintf(stderr, "sdc: memory: activations planned: unet %.0f MiB, vae %.0f MiB, clip %.0f MiB; "
                            "weights %.0f MiB (f32 files are mapped, not copied)\n",
                            unet_activation_bytes(m->unet) / 1048576.0, vae_activation_bytes(m->vae) / 1048576.0,
                            clip_activation_bytes(m->clip ? m->clip : m->clip2) / 1048576.0,
                            (unet_param_bytes(m->unet) + vae_param_bytes(m->vae) +
                             (m->clip ? clip_param_bytes(m->clip) : 0) + (m->clip2 ? clip_param_bytes(m->clip2) : 0)) /
                                1048576.0);
            }
            for (int j = 0; !lrc && j < k; j++) {
                idx[j] = s0 + j;
                image_from_vae(rgb + (size_t)j * 3 * npix, images, j, H, W);
                if (!use_h5) lrc = write_item_png(job, in, &sw->items[s0 + j], rgb + (size_t)j * 3 * npix, W, H, opt,
                                                  err);
            }
        }
        if ((rc = h5_par_agree(&par, lrc, err))) break;
        if (use_h5) rc = genout_write(&go, idx, k, rgb, err);
        made += k;
    }
    if (use_h5) {
        int crc = genout_close(&go, rc ? NULL : err);
        if (!rc) rc = crc;
    }
    const int64_t total_made = rc ? 0 : h5_par_sum(&par, made);
    if (!rc && use_h5 && !opt->quiet && par.rank == 0)
        fprintf(stderr, "sdc: wrote %lld items to %s (%lld already done, %d rank%s)\n", (long long)total_made, h5path,
                (long long)skipped, par.size, par.size > 1 ? "s" : "");
    if (!rc && !use_h5 && skipped && !opt->quiet && par.rank == 0)
        fprintf(stderr, "sdc: --skip-existing: %lld of %lld PNGs were there already\n", (long long)skipped,
                (long long)n);
    free(run_start), free(run_len), free(images), free(rgb), free(ctxs);
    return rc;
}

// Refuses, before any work, a request whose planned activations do not fit
// in the memory the device has free (weights are already loaded), naming
// both sizes; prints the plan otherwise.
static int check_fits(SdModel *m, const GenParams *p, const RunOptions *opt, SdcError *err) {
    size_t need = 0, free_b = 0, total_b = 0;
    SDC_TRY(sd_plan_bytes(m, p, &need, err));
    const int known = m->be->mem_info && m->be->mem_info(m->be, &free_b, &total_b) == 0;
    if (known && need > free_b)
        return sdc_err(err, SDC_ERR_OOM,
                       "%d image%s of %dx%d need %.0f MiB of activations on %s, but only %.0f MiB of %.0f MiB are "
                       "free ---> lower --batch-size, use --vae-tiling, or generate smaller images",
                       p->batch, p->batch > 1 ? "s" : "", p->width, p->height, need / 1048576.0, m->be->name,
                       free_b / 1048576.0, total_b / 1048576.0);
    if (!opt->quiet && known)
        fprintf(stderr, "sdc: plan: %.0f MiB of activations for %d image%s of %dx%d; %.0f MiB free on %s\n",
                need / 1048576.0, p->batch, p->batch > 1 ? "s" : "", p->width, p->height, free_b / 1048576.0,
                m->be->name);
    return 0;
}

// World = stages x replicas (mpi/grid.h): the stage-0 ranks (the ones that
// share the sweep and write its outputs) get the stage's data communicator
// as par.
static int pipeline_setup(const Sdc__Job *job, SdModel *m, const GenInputs *in, RankGrid *grid, PpStage *pp,
                          H5Par *par, const RunOptions *opt, SdcError *err) {
    const Sdc__Runtime *rt = job->runtime;
    if (m->be->device != DEV_CPU)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "--pipeline-stages runs on the CPU backend in this version ---> "
                       "--device cpu, or drop --pipeline-stages (each GPU rank then holds the whole UNet)");
    if (!h5_par_is_mpi(par))
        return sdc_err(err, SDC_ERR_ARG, "--pipeline-stages %d needs %d MPI ranks or a multiple ---> mpiexec -n %d "
                       "sdc ... (or srun -n)", rt->pipeline_stages, rt->pipeline_stages, rt->pipeline_stages);
    SDC_TRY(grid_init(grid, par->comm, rt->pipeline_stages, err));
    SDC_TRY(grid_check_blocks(grid, unet_block_count(m->unet), "UNet", err));
    const int micro = rt->micro_batches > 0 ? rt->micro_batches : 2 * grid->stages;
    const ClipConfig *cc = sd_text_config(m);
    const char *cut = rt->pipeline_cut && rt->pipeline_cut[0] ? rt->pipeline_cut : NULL;
    SDC_TRY(pp_init(pp, grid->pipe, m->unet, m->be, micro, in->height / sd_latent_factor(m), in->width / sd_latent_factor(m),
                    cc->max_positions, cut,
                    err));
    if (grid->stage == 0) *par = (H5Par){.comm = grid->data, .rank = grid->replica, .size = grid->replicas};
    if (!opt->quiet && grid->rank == 0) {
        fprintf(stderr, "sdc: pipeline: %d stages x %d replica%s, %d runs of --batch-size in flight; blocks",
                grid->stages, grid->replicas, grid->replicas == 1 ? "" : "s", micro);
        for (int s = 0; s < grid->stages; s++) {
            double t = 0;
            for (int b = pp->bounds[s]; b < pp->bounds[s + 1]; b++) t += pp->block_s[b];
            if (cut) fprintf(stderr, " %d-%d", pp->bounds[s], pp->bounds[s + 1] - 1);
            else fprintf(stderr, " %d-%d (%.0f ms/row)", pp->bounds[s], pp->bounds[s + 1] - 1, t * 1e3);
            fprintf(stderr, "%s", s + 1 < grid->stages ? "," : cut ? " (--pipeline-cut)\n" : "\n");
        }
    }
    return 0;
}

int run_generate(const Sdc__Job *job, const RunOptions *opt, SdcError *err) {
    const Sdc__Generate *g = job->generate;
    const Sdc__Runtime *rt = job->runtime;
    const char *dev = rt && rt->device && rt->device[0] ? rt->device : "cpu";
    Backend *be = NULL;
    const int cuda = !strcmp(dev, "cuda");
    DType dt;
    int rc = run_dtype(rt, cuda, &dt, err);
    if (rc) return rc;
    rc = cuda              ? backend_cuda_create(&be, -1, dt, err)
         : dt == DT_BF16 ? backend_cpu_create_bf16(&be, runner_threads(job, opt->quiet), err)
                         : backend_cpu_create(&be, runner_threads(job, opt->quiet), err);
    if (rc) return rc;

    SamplerKind sk;
    rc = sampler_parse(g->sampler, &sk, err);
    for (size_t i = 0; !rc && i < g->n_sweep_sampler; i++) rc = sampler_parse(g->sweep_sampler[i], &sk, err);
    if (rc) {
        backend_destroy(be);
        return rc;
    }
    int prediction = runner_prediction(job);

    double t0 = mono_s();
    SdModel m;
    const char *cfg = job->model->config && job->model->config[0] ? job->model->config : NULL;
    // --lora FILE[:W]: merged into the weights at load
    size_t n_lora = job->model->n_lora;
    LoraSpec *loras = n_lora ? calloc(n_lora, sizeof *loras) : NULL;
    if (n_lora && !loras) rc = sdc_err(err, SDC_ERR_OOM, "LoRA list");
    for (size_t i = 0; !rc && i < n_lora; i++) rc = lora_spec_parse(job->model->lora[i], &loras[i], err);
    // <lora:NAME:WEIGHT> in the prompts (A1111, stable-diffusion.cpp), from --lora-model-dir
    if (!rc && (rc = collect_prompt_loras(g, &loras, &n_lora, err))) {
        free(loras);
        backend_destroy(be);
        return rc;
    }
    // A LoRA training checkpoint (checkpoint-N.h5 of `sdc train dreambooth
    // --lora-rank R`) is written out as a LoRA file first (this process's own
    // temporary copy, removed after the load).
    char (*given)[1024] = n_lora ? calloc(n_lora, sizeof *given) : NULL;
    if (!rc && n_lora && !given) rc = sdc_err(err, SDC_ERR_OOM, "out of memory for the LoRA list");
    int n_tmp = 0;
    for (size_t i = 0; !rc && i < n_lora; i++) {
        if (!fs_ends_with(loras[i].path, ".h5")) continue;
        const char *tmpdir = getenv("TMPDIR") && getenv("TMPDIR")[0] ? getenv("TMPDIR") : "/tmp";
        snprintf(given[i], sizeof given[i], "%s", loras[i].path);
        snprintf(loras[i].path, sizeof loras[i].path, "%s/sdc-lora-%d-%zu.safetensors", tmpdir, (int)getpid(), i);
        rc = train_ckpt_export_lora(given[i], loras[i].path, LORA_FORMAT_DIFFUSERS, err);
        n_tmp++;
        if (rc) sdc_err_wrap(err, "--lora %s", given[i]);
    }
    const SdLoadOpts lo = {.loras = loras, .n_loras = (int)n_lora, .vae = job->model->vae};
    if (!rc) rc = sd_model_load_opts(&m, job->model->path, cfg, prediction, be, &lo, err);
    for (size_t i = 0; n_tmp && i < n_lora; i++)
        if (given[i][0]) unlink(loras[i].path);
    if (rc) {
        free(loras);
        free(given);
        backend_destroy(be);
        return sdc_err_wrap(err, "loading %s", job->model->path);
    }
    for (size_t i = 0; !opt->quiet && i < n_lora; i++)
        fprintf(stderr, "sdc: LoRA %s merged at weight %g\n", given[i][0] ? given[i] : loras[i].path, loras[i].weight);
    free(loras);
    const Sdc__Generate *gx = job->generate;
    if (!m.clip2 && (gx->n_original_size || gx->n_crops_coords_top_left || gx->n_target_size ||
                     gx->n_negative_original_size || gx->n_negative_crops_coords_top_left || gx->n_negative_target_size))
        rc = sdc_err(err, SDC_ERR_ARG, "%s is an SD %d.x model: --original-size, --crops-coords-top-left, "
                     "--target-size and their negative twins are SDXL's micro-conditioning ---> drop them, or use an "
                     "SDXL model", job->model->path, model_files_info(m.files)->family == SD_FAMILY_2 ? 2 : 1);
    free(given);
    const ModelInfo *info = model_files_info(m.files);
    // --refiner: an SDXL refiner after an SDXL base (manifest.c checked the rest)
    Refiner rf = {.start = g->refiner_start};
    const int has_refiner = g->refiner && g->refiner[0];
    if (!rc && has_refiner && (info->family != SD_FAMILY_XL || info->refiner))
        rc = sdc_err(err, SDC_ERR_ARG, "--refiner %s: %s is %s, but a refiner finishes what an SDXL base model "
                     "began ---> -m SDXL_BASE --refiner %s%s", g->refiner, job->model->path,
                     info->refiner ? "itself an SDXL refiner" : info->family == SD_FAMILY_2 ? "an SD 2.x model"
                                                                                            : "an SD 1.x model",
                     g->refiner, info->refiner ? ", or the refiner alone: -m REFINER --init-img IMAGE" : "");
    if (!rc && has_refiner) {
        const SdLoadOpts ro = {.vae = job->model->vae}; // LoRAs are the base's; --vae decodes the refiner's latents
        rc = sd_model_load_opts(&rf.m, g->refiner, NULL, -1, be, &ro, err);
        if (rc) {
            sdc_err_wrap(err, "loading the refiner %s", g->refiner);
        } else if (!model_files_info(rf.m.files)->refiner) {
            const ModelInfo *ri = model_files_info(rf.m.files);
            rc = sdc_err(err, SDC_ERR_ARG, "--refiner %s is not an SDXL refiner but %s ---> pass the SDXL refiner "
                         "(stable-diffusion-xl-refiner-1.0: text_encoder_2 alone, aesthetic-score conditioning)",
                         g->refiner, ri->family == SD_FAMILY_XL ? "an SDXL base model (two text encoders)"
                                     : ri->family == SD_FAMILY_2 ? "an SD 2.x model" : "an SD 1.x model");
        } else if (!opt->quiet) {
            fprintf(stderr, "sdc: refiner %s (SDXL refiner, %s layout) from %.0f%% of the schedule\n", g->refiner,
                    model_files_info(rf.m.files)->layout == LAYOUT_DIFFUSERS ? "diffusers" : "single-file",
                    100.0 * rf.start);
        }
    }
    if (!rc && !has_refiner && !info->refiner && (g->has_aesthetic_score || g->has_negative_aesthetic_score))
        rc = sdc_err(err, SDC_ERR_ARG, "%s is not an SDXL refiner: --aesthetic-score and --negative-aesthetic-score "
                     "condition the refiner ---> drop them, or add --refiner SDXL_REFINER", job->model->path);
    GenInputs in;
    if (!rc) rc = load_inputs(g, info, &in, err);
    if (!rc && has_refiner) {
        rf.ctx = malloc(sd_cond_floats(&rf.m) * sizeof(float));
        rf.lat = malloc((size_t)(g->batch_size > 0 ? g->batch_size : 1) * 4 *
                        (in.height / sd_latent_factor(&m)) * (in.width / sd_latent_factor(&m)) * sizeof(float));
        if (!rf.ctx || !rf.lat) rc = sdc_err(err, SDC_ERR_OOM, "refiner buffers");
        if (rc) inputs_free(&in);
    }
    if (rc) {
        free(rf.ctx), free(rf.lat);
        sd_model_free(&rf.m);
        sd_model_free(&m);
        backend_destroy(be);
        return rc;
    }
    // strength: as given, else A1111's 0.75 for img2img and diffusers' 1.0 for inpainting
    const double strength = g->has_strength ? g->strength : in.mode == GEN_INPAINT ? 1.0 : 0.75;
    const int micro = g->batch_size > 0 ? g->batch_size : 1;
    char nthr[32] = "";
    if (be->device == DEV_CPU) snprintf(nthr, sizeof nthr, " (%d thread%s)", be->threads, be->threads == 1 ? "" : "s");
    if (!opt->quiet)
        fprintf(stderr, "sdc: loaded %s (%s, %s layout, %s prediction, %d-channel UNet) in %.1fs on %s%s\n",
                job->model->path, info->family == SD_FAMILY_XL ? "SDXL" : info->family == SD_FAMILY_2 ? "SD 2.x" : "SD 1.x",
                info->layout == LAYOUT_DIFFUSERS ? "diffusers" : "single-file",
                info->unet.prediction == PRED_V ? "v" : "epsilon", info->unet.in_channels, mono_s() - t0, be->name,
                nthr);

    // pipeline stages: stage 0 of each pipeline generates (sharing the sweep
    // with the other pipelines' stage 0), the other stages serve UNet passes
    PpStage pp = {.comm = MPI_COMM_NULL};
    RankGrid grid = {.world = MPI_COMM_NULL, .pipe = MPI_COMM_NULL, .data = MPI_COMM_NULL};
    H5Par par = h5_par_world();
    const int stages = rt ? rt->pipeline_stages : 1;
    if (stages > 1) {
        rc = pipeline_setup(job, &m, &in, &grid, &pp, &par, opt, err);
        if (!rc && grid.stage > 0) { // serve until stage 0 is done
            backend_hold_params(be, 1); // a sampling loop's passes, as sd_run_begin holds them on stage 0
            rc = pp_serve(&pp, err);
            backend_hold_params(be, 0);
            if (!rc && !opt->quiet)
                fprintf(stderr, "sdc: pipeline stage %d (blocks %d-%d): %lld passes, %.1f s busy, %.1f s waiting\n",
                        pp.stage, pp.bounds[pp.stage], pp.bounds[pp.stage + 1] - 1, pp.passes, pp.busy_s, pp.wait_s);
            if (!rc && !opt->quiet) runner_print_peak_memory(be);
            pp_free(&pp);
            grid_free(&grid);
            inputs_free(&in);
            sd_model_free(&m);
            backend_destroy(be);
            return rc;
        }
    }
    Sweep sw;
    if (!rc) rc = sweep_build(g, in.mode, strength, in.width, in.height, &sw, err);
    else memset(&sw, 0, sizeof sw);
    if (!rc) { // refuse a request the model cannot serve, or that cannot fit, before any work
        GenParams chk = gen_params(g, &in, sk, strength, &m);
        chk.batch = micro < g->batch_count ? micro : g->batch_count;
        chk.cfg_scale = sw.max_cfg;
        rc = check_fits(&m, &chk, opt, err);
        if (!rc && has_refiner) { // the refiner's half: from the base's latents
            chk.mode = chk.mode == GEN_INPAINT ? GEN_INPAINT : GEN_IMG2IMG, chk.init_image = NULL;
            if (chk.mode != GEN_INPAINT) chk.mask = NULL;
            chk.denoising_start = rf.start, chk.init_latents = rf.lat;
            rc = check_fits(&rf.m, &chk, opt, err);
        }
    }
    if (!rc && !opt->quiet && (sw.n > 1 || g->shard_count > 1))
        fprintf(stderr, "sdc: sweep of %lld item%s (%lld prompt%s x %zu cfg x %zu sampler x %zu steps x %d seeds)%s\n",
                (long long)sw.n, sw.n == 1 ? "" : "s", (long long)sw.n_prompts, sw.n_prompts == 1 ? "" : "s",
                g->n_sweep_cfg_scale ? g->n_sweep_cfg_scale : 1, g->n_sweep_sampler ? g->n_sweep_sampler : 1,
                g->n_sweep_steps ? g->n_sweep_steps : 1, g->batch_count, "");
    if (!rc && !opt->quiet && g->shard_count > 1)
        fprintf(stderr, "sdc: shard %d of %d: items %lld to %lld\n", g->shard_index, g->shard_count,
                (long long)sw.lo, (long long)sw.hi - 1);
    float *ctx = NULL;
    if (!rc) {
        ctx = malloc(sd_cond_floats(&m) * sizeof(float));
        if (!ctx) rc = sdc_err(err, SDC_ERR_OOM, "text embeddings");
    }
    if (!rc) rc = generate_sweep(job, opt, &m, &in, &sw, strength, ctx, &par, pp.comm != MPI_COMM_NULL ? &pp : NULL,
                                 rf.m.unet ? &rf : NULL, err);
    sweep_free(&sw);
    if (pp.comm != MPI_COMM_NULL && (!rc || rc == SDC_ERR_STOPPED)) {
        SdcError e2 = {0};
        int frc = pp_finish(&pp, &e2); // the other stages return
        if (!rc && frc) rc = frc, *err = e2;
    }
    pp_free(&pp);
    grid_free(&grid); // (par's communicator was the grid's)
    if (!rc && !opt->quiet) runner_print_peak_memory(be);
    free(ctx);
    free(rf.ctx), free(rf.lat);
    inputs_free(&in);
    sd_model_free(&rf.m);
    sd_model_free(&m);
    backend_destroy(be);
    return rc;
}
