// sd.c: the Stable Diffusion pipeline: text-to-image, image-to-image and
// inpainting, with diffusers' order of random draws so that the same seed
// gives the same image (see sd.h).
#include "pipeline/sd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <math.h>

#include "io/image.h"
#include "sampling/rng.h"

int sd_tokenizer_load(ClipTokenizer **out, const ModelInfo *info, SdcError *err) {
    if (info->tokenizer_dir[0]) return clip_tok_load_dir(out, info->tokenizer_dir, err);
    return info->clip.pad_token == 0 ? clip_tok_load_default_sd2(out, err) : clip_tok_load_default(out, err);
}

int sd_model_load(SdModel *m, const char *path, const char *config_dir, int prediction, const Backend *be,
                  SdcError *err) {
    return sd_model_load_opts(m, path, config_dir, prediction, be, NULL, err);
}

int sd_model_load_opts(SdModel *m, const char *path, const char *config_dir, int prediction, const Backend *be,
                       const SdLoadOpts *o, SdcError *err) {
    memset(m, 0, sizeof *m);
    m->be = be;
    int rc = model_files_open(&m->files, path, config_dir, prediction, err);
    if (rc) return rc;
    if (o && o->vae && o->vae[0] && (rc = model_files_set_vae(m->files, o->vae, err))) {
        sd_model_free(m);
        return rc;
    }
    const ModelInfo *info = model_files_info(m->files);
    // the LoRA files stay open only while the weights they update are loaded
    LoraSet loras = {0};
    if (o && o->n_loras > 0) rc = lora_set_open(&loras, o->loras, o->n_loras, m->files, err);
    const ModelLoadOpts lo = {.lora = loras.n ? &loras : NULL};
    if (!rc && !info->refiner) rc = sd_tokenizer_load(&m->tok, info, err);
    if (!rc && !info->refiner) rc = clip_load_opts(&m->clip, m->files, be, &lo, err);
    if (!rc && info->has_clip2) {
        const ModelLoadOpts lo2 = {.lora = loras.n ? &loras : NULL, .second_text_encoder = 1};
        if (!rc) rc = info->tokenizer2_dir[0] ? clip_tok_load_dir(&m->tok2, info->tokenizer2_dir, err)
                                              : info->clip2.pad_token == 0 ? clip_tok_load_default_sd2(&m->tok2, err)
                                                                           : clip_tok_load_default(&m->tok2, err);
        if (!rc) rc = clip_load_opts(&m->clip2, m->files, be, &lo2, err);
    }
    if (!rc) rc = unet_load_opts(&m->unet, m->files, be, &lo, err);
    if (!rc) rc = vae_load(&m->vae, m->files, be, err);
    lora_set_free(&loras);
    if (rc) sd_model_free(m);
    return rc;
}

void sd_model_free(SdModel *m) {
    if (m->be) backend_params_changed(m->be); // copies derived from these parameters go with them
    if (m->vae) vae_free(m->vae);
    if (m->unet) unet_free(m->unet);
    if (m->clip) clip_free(m->clip);
    if (m->tok) clip_tok_free(m->tok);
    if (m->clip2) clip_free(m->clip2);
    if (m->tok2) clip_tok_free(m->tok2);
    if (m->files) model_files_close(m->files);
    memset(m, 0, sizeof *m);
}

const ClipConfig *sd_text_config(const SdModel *m) { return clip_config(m->clip ? m->clip : m->clip2); }

int sd_latent_factor(const SdModel *m) { return vae_scale_factor(&model_files_info(m->files)->vae); }

// Tokenizes one prompt into ids (max_positions), warning when it is cut.
static int encode_prompt_ids(const ClipTokenizer *tok, const ClipConfig *cc, const char *text, int32_t *ids,
                             SdcError *err) {
    int dropped = 0;
    SDC_TRY(clip_tok_encode(tok, text, ids, cc->max_positions, cc->pad_token, &dropped, err));
    if (dropped > 0)
        fprintf(stderr, "sdc: warning: prompt is longer than %d tokens; %d tokens were cut: \"%.60s%s\"\n",
                cc->max_positions, dropped, text, strlen(text) > 60 ? "..." : "");
    return 0;
}

size_t sd_cond_floats(const SdModel *m) {
    const ClipConfig *c1 = sd_text_config(m);
    if (!m->clip2) return (size_t)2 * c1->max_positions * c1->hidden;
    const ClipConfig *c2 = clip_config(m->clip2);
    const size_t D1 = m->clip ? (size_t)c1->hidden : 0;
    return (size_t)2 * c1->max_positions * (D1 + c2->hidden) + (size_t)2 * c2->projection_dim;
}

// SDXL: both encoders' hidden states side by side, then the pooled rows
// (the refiner: the second encoder's alone, D1 = 0).
static int encode_xl(SdModel *m, const char *prompt, const char *negative, int clip_skip, float *ctx,
                     SdcError *err) {
    const ClipConfig *c1 = sd_text_config(m), *c2 = clip_config(m->clip2);
    const int L = c1->max_positions, D1 = m->clip ? c1->hidden : 0, D2 = c2->hidden, P = c2->projection_dim;
    if (c2->max_positions != L)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "SDXL text encoders with %d and %d positions", L, c2->max_positions);
    const int zero_neg = model_files_info(m->files)->force_zeros_negative && (!negative || !negative[0]);
    int32_t *ids = malloc((size_t)4 * L * sizeof(int32_t));
    float *h = malloc((size_t)2 * L * (D1 > D2 ? D1 : D2) * sizeof(float));
    Arena a = {0};
    int rc = !ids || !h ? sdc_err(err, SDC_ERR_OOM, "encoding the prompt") : 0;
    for (int e = m->clip ? 0 : 1; !rc && e < 2; e++) {
        const ClipTokenizer *tok = e ? m->tok2 : m->tok;
        const ClipConfig *cc = e ? c2 : c1;
        rc = encode_prompt_ids(tok, cc, negative ? negative : "", ids + (size_t)2 * e * L, err);
        if (!rc) rc = encode_prompt_ids(tok, cc, prompt ? prompt : "", ids + (size_t)(2 * e + 1) * L, err);
    }
    if (!rc) rc = arena_init(&a, m->be, ((size_t)2 * L * (D1 + D2) + 2 * (size_t)P) * sizeof(float) + 4 * ARENA_ALIGN,
                             err);
    if (!rc) {
        Tensor h1 = {0}, h2 = ARENA_DT(&a, m->be->act_dtype, 2, L, D2);
        if (D1) h1 = ARENA_DT(&a, m->be->act_dtype, 2, L, D1);
        Tensor pooled = ARENA_DT(&a, m->be->act_dtype, 2, P);
        if (m->clip) rc = clip_encode_xl(m->clip, ids, 2, clip_skip, &h1, NULL, err);
        if (!rc) rc = clip_encode_xl(m->clip2, ids + (size_t)2 * L, 2, clip_skip, &h2, &pooled, err);
        const size_t row = (size_t)D1 + D2;
        if (!rc && D1) {
            backend_download_f32(m->be, h, &h1, (size_t)2 * L * D1);
            for (size_t t = 0; t < (size_t)2 * L; t++) memcpy(ctx + t * row, h + t * D1, (size_t)D1 * sizeof(float));
        }
        if (!rc) {
            backend_download_f32(m->be, h, &h2, (size_t)2 * L * D2);
            for (size_t t = 0; t < (size_t)2 * L; t++)
                memcpy(ctx + t * row + D1, h + t * D2, (size_t)D2 * sizeof(float));
            backend_download_f32(m->be, ctx + 2 * L * row, &pooled, (size_t)2 * P);
            rc = backend_status(m->be, err); // the downloads
        }
        if (!rc && zero_neg) { // diffusers' force_zeros_for_empty_prompt with negative_prompt=None
            memset(ctx, 0, (size_t)L * row * sizeof(float));
            memset(ctx + 2 * L * row, 0, (size_t)P * sizeof(float));
        }
    }
    arena_free(&a);
    free(ids), free(h);
    return rc;
}

int sd_encode_prompt(SdModel *m, const char *prompt, const char *negative, int clip_skip, float *ctx,
                     SdcError *err) {
    if (m->clip2) return encode_xl(m, prompt, negative, clip_skip, ctx, err);
    const ClipConfig *cc = clip_config(m->clip);
    const int L = cc->max_positions, D = cc->hidden;
    int32_t ids[2 * 1024];
    SDC_CHECK(L <= 1024); // clip_load refuses more positions
    SDC_TRY(encode_prompt_ids(m->tok, cc, negative ? negative : "", ids, err));
    SDC_TRY(encode_prompt_ids(m->tok, cc, prompt ? prompt : "", ids + L, err));
    SDC_TRY(clip_reserve(m->clip, 2, err));
    Arena a;
    SDC_TRY(arena_init(&a, m->be, (size_t)2 * L * D * sizeof(float) + ARENA_ALIGN, err));
    // the models take tensors of the backend's activation dtype (F32 on the CPU,
    // BF16/F16 on a GPU); backend_upload_f32 / backend_download_f32 convert
    Tensor out = ARENA_DT(&a, m->be->act_dtype, 2, L, D); // (2, L, D) [negative, prompt]
    int rc = clip_encode(m->clip, ids, 2, clip_skip, &out, err);
    if (!rc) backend_download_f32(m->be, ctx, &out, (size_t)2 * L * D);
    if (!rc) rc = backend_status(m->be, err); // the download
    arena_free(&a);
    return rc;
}

// ----------------------------------------------------------------------------
// sd_generate

// Host-side buffers of one request, carved from one allocation.
typedef struct GenBuffers {
    float *lat;       // (B, 4, h, w) the running latents
    float *noise;     // (B, 4, h, w) each item's initial noise (inpaint blending re-noises with it)
    float *img_lat;   // (B, 4, h, w) sampled latents of the init image, times scaling_factor
    float *masked_lat;// (B, 4, h, w) sampled latents of the masked image (9-channel UNet)
    float *mask_lat;  // (h, w) the mask at latent size, {0, 1}
    float *mean, *logvar; // (4, h, w) VAE posterior of one image
    float *xin;       // (rows, Cin, h, w) UNet input
    float *eps;       // (rows, 4, h, w) UNet output
    float *guided;    // (4, h, w) guided model output of one item
    float *proper;    // (4, h, w) re-noised original of one item
    float *masked_img;// (3, H, W) init image with the repaint area zeroed
} GenBuffers;

// Device tensors of one request, in one arena on the backend.
typedef struct GenTensors {
    Tensor ctx;   // (rows, L, D)
    Tensor x;     // (rows, Cin, h, w)
    Tensor out;   // (rows, 4, h, w)
    Tensor image; // (1, 3, H, W) VAE input / output
    Tensor mean, logvar, z; // (1, 4, h, w)
} GenTensors;

// The run's schedule: the config (the model's unless the request gives one)
// with the UNet's prediction type and the request's overrides.
static void run_sched(const SdModel *m, const GenParams *p, SchedConfig *sc) {
    *sc = p->sched ? *p->sched : model_files_info(m->files)->sched;
    sc->prediction = unet_config(m->unet)->prediction;
    sc->have |= SCHED_HAS_PREDICTION;
    if (p->timestep_spacing && p->timestep_spacing[0]) {
        sc->spacing = (TimestepSpacing)sched_spacing_parse(p->timestep_spacing);
        sc->have |= SCHED_HAS_SPACING;
    }
    if (p->karras) {
        sc->use_karras_sigmas = 1;
        sc->have |= SCHED_HAS_KARRAS;
    }
}

int sd_check_params(const SdModel *m, const GenParams *p, SdcError *err) {
    const int cin = unet_config(m->unet)->in_channels;
    if (p->width <= 0 || p->height <= 0 || p->width % 8 || p->height % 8)
        return sdc_err(err, SDC_ERR_ARG, "width and height must be positive multiples of 8 (got %dx%d)", p->width,
                       p->height);
    if (p->batch < 1) return sdc_err(err, SDC_ERR_ARG, "batch must be at least 1 (got %d)", p->batch);
    const int from_latents = p->denoising_start > 0;
    if (!(p->denoising_start >= 0 && p->denoising_start < 1) || !(p->denoising_end >= 0 && p->denoising_end < 1))
        return sdc_err(err, SDC_ERR_ARG, "denoising_start %g, denoising_end %g: expected fractions in (0, 1), or 0 "
                       "(not given)", p->denoising_start, p->denoising_end);
    if (from_latents && (p->mode == GEN_TXT2IMG || !p->init_latents))
        return sdc_err(err, SDC_ERR_ARG, "denoising_start continues from given latents (image-to-image or "
                       "inpainting mode, init_latents): the refiner's half of SDXL's ensemble of experts");
    if (from_latents && p->mode == GEN_INPAINT && cin == 9)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "denoising_start with a 9-channel inpainting UNet: it needs the "
                       "masked image, which latents handed over from a base do not give (diffusers fails there too) "
                       "---> refine with a 4-channel model (the SDXL refiner)");
    if (model_files_info(m->files)->refiner && p->mode == GEN_TXT2IMG)
        return sdc_err(err, SDC_ERR_ARG, "%s is an SDXL refiner: it refines an image and cannot start from noise "
                       "(diffusers' refiner pipeline needs an image too) ---> pass --init-img FILE (and --strength), "
                       "or use an SDXL base model with --refiner %s", model_files_path(m->files),
                       model_files_path(m->files));
    if (p->mode != GEN_TXT2IMG && !from_latents) { // (handed-over latents stand for the image)
        if (!p->init_image)
            return sdc_err(err, SDC_ERR_ARG, "%s needs an init image ---> pass --init-img FILE",
                           p->mode == GEN_IMG2IMG ? "img2img" : "inpainting");
        if (!(p->strength >= 0.0 && p->strength <= 1.0))
            return sdc_err(err, SDC_ERR_ARG, "--strength must be between 0 and 1 (got %g)", p->strength);
    }
    if (p->mode == GEN_INPAINT && !p->mask)
        return sdc_err(err, SDC_ERR_ARG, "inpainting needs a mask ---> pass --mask FILE (white = repaint)");
    if (cin != 4 && cin != 9)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "UNet with %d input channels: expected 4, or 9 (inpainting)", cin);
    if (p->timestep_spacing && p->timestep_spacing[0] && sched_spacing_parse(p->timestep_spacing) < 0)
        return sdc_err(err, SDC_ERR_ARG, "--timestep-spacing %s ---> use leading, trailing or linspace",
                       p->timestep_spacing);
    if (p->karras && !sampler_has_karras(p->sampler))
        return sdc_err(err, SDC_ERR_ARG, "--karras with sampler %s: diffusers' %s has no Karras sigmas ---> use "
                       "euler, heun, lms, dpm++2m, dpm++2m_sde or unipc with --karras", sampler_name(p->sampler),
                       sampler_class_name(p->sampler));
    if (cin == 9 && p->mode != GEN_INPAINT)
        return sdc_err(err, SDC_ERR_ARG,
                       "this is an inpainting model (9-channel UNet): it needs an image and a mask ---> pass "
                       "--init-img and --mask, or use a regular SD model for %s",
                       p->mode == GEN_TXT2IMG ? "text-to-image" : "image-to-image");
    // the sampler on the run's schedule (a config field it cannot honour fails here, before any work)
    SchedConfig *sc = malloc(sizeof *sc);
    if (!sc) return sdc_err(err, SDC_ERR_OOM, "pipeline scheduler config");
    run_sched(m, p, sc);
    Sampler s;
    int rc = sampler_init_cfg(&s, p->sampler, p->steps, sc, p->eta, 1, err);
    free(sc);
    if (rc) return rc;
    // the ensemble's cut must leave each model a step (before the base runs)
    const int first = from_latents ? sampler_begin_for_denoising(&s, p->denoising_start)
                      : p->mode == GEN_TXT2IMG ? 0
                                               : sampler_begin_for_strength(&s, p->strength);
    const int end = p->denoising_end > 0 ? sampler_end_for_denoising(&s, first, p->denoising_end) : s.n_evals;
    if (first >= end && (from_latents || p->denoising_end > 0))
        rc = sdc_err(err, SDC_ERR_ARG, "--refiner-start %g with %d steps leaves the %s no denoising step ---> "
                     "raise --steps, or move --refiner-start %s", from_latents ? p->denoising_start : p->denoising_end,
                     p->steps, from_latents ? "refiner" : "base model", from_latents ? "down" : "up");
    sampler_free(&s);
    return rc;
}

// One sample of the VAE posterior of the image in g->image, as diffusers'
// latent_dist.sample(generator): mean + exp(logvar / 2) * randn, times
// scaling_factor. mean/logvar are cached by the caller across items.
static void posterior_sample(const SdModel *m, const GenBuffers *b, size_t nlat, Rng *rng, float *out) {
    const float sf = vae_config(m->vae)->scaling_factor;
    rng_normal(rng, out, nlat);
    for (size_t k = 0; k < nlat; k++) out[k] = (b->mean[k] + expf(0.5f * b->logvar[k]) * out[k]) * sf;
}

static int vae_posterior(SdModel *m, GenTensors *t, GenBuffers *b, const float *image, size_t npix, size_t nlat,
                         SdcError *err) {
    backend_upload_f32(m->be, &t->image, image, 3 * npix);
    SDC_TRY(vae_encode(m->vae, &t->image, &t->mean, &t->logvar, err));
    backend_download_f32(m->be, b->mean, &t->mean, nlat);
    backend_download_f32(m->be, b->logvar, &t->logvar, nlat);
    return backend_status(m->be, err);
}

// The VAE tiling of a request: --vae-tile-size, never (-1), or the automatic
// rule (tile when the untiled decode would need more than VAE_TILE_BUDGET).
static VaeTiling gen_tiling(const SdModel *m, const GenParams *p) {
    return p->vae_tile > 0   ? (VaeTiling){p->vae_tile, p->vae_tile / 4}
           : p->vae_tile < 0 ? (VaeTiling){0, 0}
                             : vae_tiling_auto(vae_config(m->vae), m->be->act_dtype, 1, p->height, p->width);
}

int sd_plan_bytes(SdModel *m, const GenParams *p, size_t *bytes, SdcError *err) {
    SDC_TRY(sd_check_params(m, p, err));
    const ClipConfig *cc = sd_text_config(m);
    const UnetConfig *uc = unet_config(m->unet);
    const int f = sd_latent_factor(m);
    const int rows = p->cfg_scale > 1.0f ? 2 * p->batch : p->batch, h = p->height / f, w = p->width / f;
    const size_t es = dtype_size(m->be->act_dtype), nlat = (size_t)4 * h * w, npix = (size_t)p->width * p->height;
    size_t unet = 0, enc = 0, dec = 0;
    SDC_TRY(unet_plan_bytes(m->unet, rows, h, w, cc->max_positions, &unet, err));
    const VaeTiling vt = gen_tiling(m, p);
    SDC_TRY(vae_plan_tiled(vae_config(m->vae), m->be->act_dtype, 1, p->height, p->width, &vt, &enc, &dec, err));
    // the pipeline's own device tensors (see sd_generate)
    size_t pipe = es * ((size_t)rows * cc->max_positions * uc->cross_dim + (size_t)rows * uc->add_in_dim +
                        (size_t)rows * uc->in_channels * h * w +
                        (size_t)rows * nlat + 3 * npix + 3 * nlat);
    *bytes = unet + (p->mode == GEN_TXT2IMG || p->init_latents ? dec : (enc > dec ? enc : dec)) + pipe;
    return 0;
}

// One generation in progress (sd_run_*): its samplers, generators, host
// buffers and device tensors, and where the denoising is.
struct SdRun {
    SdModel *m;
    GenParams p;
    Sampler *s;
    Rng *rng;
    float *host;
    GenBuffers b;
    GenTensors t;
    Arena a;
    int n_init, evals, begin, i; // evaluations [begin, evals), the next is i
    int rows, guided, cin, h, w;
    size_t nlat, npix, plane;
    float ts[64], *tsp;          // the timesteps of the evaluation sd_run_next gave
    Tensor add_text;             // SDXL: (rows, P) the pooled embeddings, [negative x B, prompt x B]
    float *time_ids;             // SDXL: (rows, n_time_ids) host
    int held;                    // holds the model's parameters (backend_hold_params) until freed
};

// SDXL's time ids of one row (diffusers' _get_add_time_ids): original size,
// crop top-left, target size (base) or aesthetic score (refiner). The
// negative rows (sd.h, SdxlCond): StableDiffusionXLPipeline swaps in all
// three negative values when both negative sizes are given; the img2img and
// inpainting pipelines each negative size given, the positive crop (base)
// or the negative one (refiner, (0, 0) unless given), the negative score.
static void xl_time_ids(const GenParams *p, int n_ids, int negative, float *out) {
    const SdxlCond *c = &p->xl;
    int oh = c->original_h, ow = c->original_w, top = c->crop_top, left = c->crop_left;
    int th = c->target_h, tw = c->target_w;
    const int neg_orig = c->neg_original_h > 0 && c->neg_original_w > 0;
    const int neg_target = c->neg_target_h > 0 && c->neg_target_w > 0;
    if (negative && p->mode == GEN_TXT2IMG && n_ids == 6) {
        if (neg_orig && neg_target) {
            oh = c->neg_original_h, ow = c->neg_original_w, top = c->neg_crop_top, left = c->neg_crop_left;
            th = c->neg_target_h, tw = c->neg_target_w;
        }
    } else if (negative) {
        if (neg_orig) oh = c->neg_original_h, ow = c->neg_original_w;
        if (neg_target) th = c->neg_target_h, tw = c->neg_target_w;
        if (n_ids == 5) top = c->neg_crop_top, left = c->neg_crop_left;
    }
    out[0] = (float)(oh > 0 ? oh : p->height);
    out[1] = (float)(ow > 0 ? ow : p->width);
    out[2] = (float)top;
    out[3] = (float)left;
    if (n_ids == 5) { // the refiner: negative rows always take the negative score
        out[4] = negative ? (c->neg_aesthetic_score > 0 ? c->neg_aesthetic_score : 2.5f)
                          : (c->aesthetic_score > 0 ? c->aesthetic_score : 6.0f);
        return;
    }
    out[4] = (float)(th > 0 ? th : p->height);
    out[5] = (float)(tw > 0 ? tw : p->width);
}

void sd_run_free(SdRun *r) {
    if (!r) return;
    if (r->held) backend_hold_params(r->m->be, 0);
    for (int i = 0; i < r->n_init; i++) sampler_free(&r->s[i]);
    free(r->s);
    free(r->rng);
    free(r->host);
    if (r->tsp != r->ts) free(r->tsp);
    free(r->time_ids);
    arena_free(&r->a);
    free(r);
}

int sd_run_begin(SdModel *m, const GenParams *p, const float *ctx, SdRun **out, SdcError *err) {
    *out = NULL;
    SDC_TRY(sd_check_params(m, p, err));
    const Backend *be = m->be;
    const ClipConfig *cc = sd_text_config(m);
    const UnetConfig *uc = unet_config(m->unet);
    SdRun *r = calloc(1, sizeof *r);
    if (!r) return sdc_err(err, SDC_ERR_OOM, "pipeline run");
    r->m = m, r->p = *p, r->tsp = r->ts;
    const int B = p->batch, cin = uc->in_channels, guided = p->cfg_scale > 1.0f;
    const int rows = guided ? 2 * B : B; // UNet rows: [uncond x B, cond x B] as diffusers
    const int L = cc->max_positions, D = uc->cross_dim; // SDXL: the two encoders side by side
    const int n_ids = unet_n_time_ids(m->unet), P = n_ids ? clip_config(m->clip2)->projection_dim : 0;
    const int H = p->height, W = p->width, h = H / sd_latent_factor(m), w = W / sd_latent_factor(m);
    const size_t nlat = (size_t)4 * h * w, npix = (size_t)H * W, plane = (size_t)h * w;
    const int inpaint = p->mode == GEN_INPAINT, blend = inpaint && cin == 4;
    r->rows = rows, r->guided = guided, r->cin = cin, r->h = h, r->w = w;
    r->nlat = nlat, r->npix = npix, r->plane = plane;
    GenBuffers *b = &r->b;
    GenTensors *t = &r->t;

    // ---- buffers: samplers (one per item: each has its own history and noise), host, device
    r->s = calloc((size_t)B, sizeof *r->s);
    r->rng = calloc((size_t)B, sizeof *r->rng);
    size_t nhost = 4 * (size_t)B * nlat + plane + 2 * nlat + (size_t)rows * cin * plane + (size_t)rows * nlat +
                   2 * nlat + 3 * npix;
    r->host = malloc(nhost * sizeof(float));
    r->tsp = rows <= 64 ? r->ts : malloc((size_t)rows * sizeof(float));
    r->time_ids = n_ids ? malloc((size_t)rows * n_ids * sizeof(float)) : NULL;
    int rc = (!r->s || !r->rng || !r->host || !r->tsp || (n_ids && !r->time_ids))
                 ? sdc_err(err, SDC_ERR_OOM, "pipeline buffers for %d items at %dx%d", B, W, H)
                 : 0;
    SchedConfig *sc = rc ? NULL : malloc(sizeof *sc);
    if (!rc && !sc) rc = sdc_err(err, SDC_ERR_OOM, "pipeline scheduler config");
    if (!rc) run_sched(m, p, sc);
    for (int i = 0; !rc && i < B; i++, r->n_init++)
        rc = sampler_init_cfg(&r->s[i], p->sampler, p->steps, sc, p->eta, nlat, err);
    free(sc);
    if (!rc) {
        float *q = r->host;
        b->lat = q, q += (size_t)B * nlat;
        b->noise = q, q += (size_t)B * nlat;
        b->img_lat = q, q += (size_t)B * nlat;
        b->masked_lat = q, q += (size_t)B * nlat;
        b->mask_lat = q, q += plane;
        b->mean = q, q += nlat;
        b->logvar = q, q += nlat;
        b->xin = q, q += (size_t)rows * cin * plane;
        b->eps = q, q += (size_t)rows * nlat;
        b->guided = q, q += nlat;
        b->proper = q, q += nlat;
        b->masked_img = q, q += 3 * npix;
        size_t bytes = 8 * ARENA_ALIGN + sizeof(float) * ((size_t)rows * L * D + (size_t)rows * cin * plane +
                                                          (size_t)rows * nlat + 3 * npix + 3 * nlat +
                                                          (size_t)rows * P);
        rc = arena_init(&r->a, be, bytes, err);
    }
    if (!rc) {
        Arena *a = &r->a;
        t->ctx = ARENA_DT(a, be->act_dtype, rows, L, D);
        t->x = ARENA_DT(a, be->act_dtype, rows, cin, h, w);
        t->out = ARENA_DT(a, be->act_dtype, rows, 4, h, w);
        t->image = ARENA_DT(a, be->act_dtype, 1, 3, H, W);
        t->mean = ARENA_DT(a, be->act_dtype, 1, 4, h, w);
        t->logvar = ARENA_DT(a, be->act_dtype, 1, 4, h, w);
        t->z = ARENA_DT(a, be->act_dtype, 1, 4, h, w);
        // context rows: [negative x B, prompt x B] with guidance, else [prompt x B]
        for (int k = 0; k < rows; k++) {
            const float *src = ctx + (size_t)(guided && k < B ? 0 : 1) * L * D;
            Tensor row = t->ctx;
            row.ndim = 2, row.shape[0] = L, row.shape[1] = D;
            row.data = (char *)t->ctx.data + (size_t)k * L * D * dtype_size(t->ctx.dtype);
            backend_upload_f32(be, &row, src, (size_t)L * D);
        }
        if (n_ids) { // SDXL: the pooled rows follow the contexts; the time ids per row
            r->add_text = ARENA_DT(a, be->act_dtype, rows, P);
            for (int k = 0; k < rows; k++) {
                const int negative = guided && k < B;
                Tensor row = r->add_text;
                row.ndim = 1, row.shape[0] = P;
                row.data = (char *)r->add_text.data + (size_t)k * P * dtype_size(be->act_dtype);
                backend_upload_f32(be, &row, ctx + (size_t)2 * L * D + (size_t)(negative ? 0 : 1) * P, (size_t)P);
                xl_time_ids(p, n_ids, negative, r->time_ids + (size_t)k * n_ids);
            }
        }
    }
    const int from_latents = p->denoising_start > 0;
    r->evals = r->n_init ? sampler_num_evals(&r->s[0]) : 0;
    r->begin = !r->n_init || p->mode == GEN_TXT2IMG ? 0
               : from_latents                       ? sampler_begin_for_denoising(&r->s[0], p->denoising_start)
                                                    : sampler_begin_for_strength(&r->s[0], p->strength);
    if (r->n_init && p->denoising_end > 0) r->evals = sampler_end_for_denoising(&r->s[0], r->begin, p->denoising_end);
    r->i = r->begin;
    if (!rc && r->begin >= r->evals) // (a cut that leaves no step was refused by sd_check_params)
        rc = sdc_err(err, SDC_ERR_ARG,
                     "--strength %g with %d steps leaves no denoising step ---> raise --strength or --steps",
                     p->strength, p->steps);

    // ---- initial latents, in diffusers' order of draws from each item's generator
    // (the refiner's half of the ensemble: the base's latents as they are, no
    // draws; inpainting: those latents are also the "image" kept outside the
    // mask, re-noised with one draw of noise, as StableDiffusionXLInpaintPipeline
    // does when its image is latents)
    if (!rc && p->mode != GEN_TXT2IMG && !from_latents) rc = vae_reserve(m->vae, 1, H, W, err);
    if (!rc && p->mode != GEN_TXT2IMG && !from_latents) rc = vae_posterior(m, t, b, p->init_image, npix, nlat, err);
    const int strength_max = p->strength == 1.0;
    for (int i = 0; !rc && i < B; i++) {
        float *lat = b->lat + i * nlat, *noise = b->noise + i * nlat, *img_lat = b->img_lat + i * nlat;
        rng_seed(&r->rng[i], p->seed + (uint64_t)i);
        if (from_latents) {
            memcpy(lat, p->init_latents + i * nlat, nlat * sizeof(float));
            if (inpaint) {
                memcpy(img_lat, lat, nlat * sizeof(float));
                rng_normal(&r->rng[i], noise, nlat);
            }
            continue;
        }
        if (p->mode == GEN_IMG2IMG || (inpaint && (blend || !strength_max)))
            posterior_sample(m, b, nlat, &r->rng[i], img_lat);
        rng_normal(&r->rng[i], noise, nlat);
        if (p->mode == GEN_TXT2IMG || (inpaint && strength_max)) {
            for (size_t k = 0; k < nlat; k++) lat[k] = noise[k] * r->s[i].init_noise_sigma;
        } else {
            sampler_add_noise(&r->s[i], r->begin, img_lat, noise, lat);
        }
    }
    if (!rc && inpaint) mask_downsample(p->mask, H, W, b->mask_lat, h, w);
    if (!rc && inpaint && !from_latents) {
        // diffusers encodes the masked image for both UNet kinds (one more
        // draw per item), and binarises the mask then takes nearest pixels;
        // latents handed over give no masked image (nothing encoded, no draw)
        image_mask_out(p->init_image, p->mask, H, W, b->masked_img);
        rc = vae_posterior(m, t, b, b->masked_img, npix, nlat, err);
        for (int i = 0; !rc && i < B; i++) posterior_sample(m, b, nlat, &r->rng[i], b->masked_lat + i * nlat);
    }
    if (!rc) rc = unet_reserve(m->unet, rows, h, w, L, err);
    if (rc) {
        sd_run_free(r);
        return rc;
    }
    backend_hold_params(be, 1); // the parameters stay as they are until sd_run_free
    r->held = 1;
    *out = r;
    return 0;
}

int sd_run_next(SdRun *r, Tensor **x, const float **timesteps, Tensor **ctx, Tensor **out) {
    if (r->i >= r->evals) return 1;
    const int B = r->p.batch, cin = r->cin;
    const size_t nlat = r->nlat, plane = r->plane;
    GenBuffers *b = &r->b;
    const float cin_scale = sampler_input_scale(&r->s[0], r->i);
    for (int k = 0; k < r->rows; k++) {
        const int item = k % B;
        float *dst = b->xin + (size_t)k * cin * plane;
        const float *lat = b->lat + item * nlat;
        for (size_t q = 0; q < nlat; q++) dst[q] = lat[q] * cin_scale;
        if (cin == 9) { // [latent, mask, masked-image latent]
            memcpy(dst + nlat, b->mask_lat, plane * sizeof(float));
            memcpy(dst + nlat + plane, b->masked_lat + item * nlat, nlat * sizeof(float));
        }
    }
    backend_upload_f32(r->m->be, &r->t.x, b->xin, (size_t)r->rows * cin * plane);
    for (int k = 0; k < r->rows; k++) r->tsp[k] = sampler_timestep(&r->s[0], r->i);
    if (r->time_ids) { // the UNet may have run another request since (runs interleave)
        SdcError e;
        int rc = unet_set_added_cond(r->m->unet, &r->add_text, r->time_ids, &e);
        SDC_CHECK(rc == 0); // shapes made by sd_run_begin for this UNet
    }
    *x = &r->t.x, *timesteps = r->tsp, *ctx = &r->t.ctx, *out = &r->t.out;
    return 0;
}

int sd_run_step(SdRun *r, ProgressFn progress, void *user, SdcError *err) {
    if (r->i >= r->evals) return sdc_err(err, SDC_ERR_INTERNAL, "sd_run_step after the last evaluation");
    const GenParams *p = &r->p;
    const int B = p->batch, blend = p->mode == GEN_INPAINT && r->cin == 4, i = r->i;
    const size_t nlat = r->nlat, plane = r->plane;
    GenBuffers *b = &r->b;
    backend_download_f32(r->m->be, b->eps, &r->t.out, (size_t)r->rows * nlat);
    SDC_TRY(backend_status(r->m->be, err));
    for (int item = 0; item < B; item++) {
        const float *e = b->eps + (size_t)item * nlat;
        if (r->guided) {
            const float *uncond = e, *cond = b->eps + (size_t)(B + item) * nlat;
            for (size_t k = 0; k < nlat; k++) b->guided[k] = uncond[k] + p->cfg_scale * (cond[k] - uncond[k]);
            e = b->guided;
        }
        float *lat = b->lat + item * nlat;
        sampler_step(&r->s[item], i, lat, e, &r->rng[item]);
        if (blend) { // keep the (re-noised) original outside the mask
            const float *orig = b->img_lat + item * nlat;
            if (i + 1 < r->evals) {
                sampler_add_noise(&r->s[item], i + 1, orig, b->noise + item * nlat, b->proper);
                orig = b->proper;
            }
            for (size_t k = 0; k < nlat; k++) {
                float mk = b->mask_lat[k % plane];
                lat[k] = (1.0f - mk) * orig[k] + mk * lat[k];
            }
        }
    }
    r->i++;
    if (progress) progress(user, i - r->begin + 1, r->evals - r->begin);
    return 0;
}

int sd_run_finish(SdRun *r, float *latents, float *images, SdcError *err) {
    SdModel *m = r->m;
    const int B = r->p.batch, H = r->p.height, W = r->p.width;
    const size_t nlat = r->nlat, npix = r->npix;
    GenBuffers *b = &r->b;
    if (latents) memcpy(latents, b->lat, (size_t)B * nlat * sizeof(float));
    if (!images) return 0;
    const float sf = vae_config(m->vae)->scaling_factor;
    const VaeTiling vt = gen_tiling(m, &r->p);
    SDC_TRY(vae_reserve_tiled(m->vae, 1, H, W, &vt, err));
    for (int i = 0; i < B; i++) {
        for (size_t k = 0; k < nlat; k++) b->guided[k] = b->lat[i * nlat + k] / sf;
        backend_upload_f32(m->be, &r->t.z, b->guided, nlat);
        SDC_TRY(vae_decode_tiled(m->vae, &r->t.z, &r->t.image, &vt, err));
        backend_download_f32(m->be, images + (size_t)i * 3 * npix, &r->t.image, 3 * npix);
        SDC_TRY(backend_status(m->be, err)); // the download: never a PNG of what it left
    }
    return 0;
}

int sd_generate(SdModel *m, const GenParams *p, const float *ctx, float *latents, float *images,
                ProgressFn progress, void *user, SdcError *err) {
    SdRun *r;
    SDC_TRY(sd_run_begin(m, p, ctx, &r, err));
    Tensor *x, *c, *out;
    const float *ts;
    int rc = 0;
    while (!rc && !sd_run_next(r, &x, &ts, &c, &out)) {
        rc = unet_forward(m->unet, out, x, ts, c, err);
        if (!rc) rc = sd_run_step(r, progress, user, err);
    }
    if (!rc) rc = sd_run_finish(r, latents, images, err);
    sd_run_free(r);
    return rc;
}
