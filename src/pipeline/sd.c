// sd.c: the txt2img pipeline (see sd.h).
#include "pipeline/sd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/image.h"
#include "sampling/rng.h"

int sd_model_load(SdModel *m, const char *path, const char *config_dir, int prediction, const Backend *be,
                  SdcError *err) {
    memset(m, 0, sizeof *m);
    m->be = be;
    int rc = model_files_open(&m->files, path, config_dir, prediction, err);
    if (rc) return rc;
    const ModelInfo *info = model_files_info(m->files);
    rc = info->tokenizer_dir[0] ? clip_tok_load_dir(&m->tok, info->tokenizer_dir, err)
                                : clip_tok_load_default(&m->tok, err);
    if (!rc) rc = clip_load(&m->clip, m->files, be, err);
    if (!rc) rc = unet_load(&m->unet, m->files, be, err);
    if (!rc) rc = vae_load(&m->vae, m->files, be, err);
    if (rc) sd_model_free(m);
    return rc;
}

void sd_model_free(SdModel *m) {
    if (m->vae) vae_free(m->vae);
    if (m->unet) unet_free(m->unet);
    if (m->clip) clip_free(m->clip);
    if (m->tok) clip_tok_free(m->tok);
    if (m->files) model_files_close(m->files);
    memset(m, 0, sizeof *m);
}

// Tokenizes one prompt into ids (max_positions), warning when it is cut.
static int encode_prompt_ids(SdModel *m, const char *text, int32_t *ids, SdcError *err) {
    const ClipConfig *cc = clip_config(m->clip);
    int dropped = 0;
    SDC_TRY(clip_tok_encode(m->tok, text, ids, cc->max_positions, cc->pad_token, &dropped, err));
    if (dropped > 0)
        fprintf(stderr, "sdc: warning: prompt is longer than %d tokens; %d tokens were cut: \"%.60s%s\"\n",
                cc->max_positions, dropped, text, strlen(text) > 60 ? "..." : "");
    return 0;
}

int sd_txt2img(SdModel *m, const GenParams *p, uint8_t *rgb, ProgressFn progress, void *user, SdcError *err) {
    const Backend *be = m->be;
    if (p->width % 8 || p->height % 8 || p->width <= 0 || p->height <= 0)
        return sdc_err(err, SDC_ERR_ARG, "width and height must be positive multiples of 8 (got %dx%d)", p->width,
                       p->height);
    const ClipConfig *cc = clip_config(m->clip);
    const UnetConfig *uc = unet_config(m->unet);
    if (uc->in_channels != 4)
        return sdc_err(err, SDC_ERR_UNSUPPORTED,
                       "this UNet has %d input channels (an inpainting model) ---> txt2img needs a 4-channel UNet",
                       uc->in_channels);
    const int guided = p->cfg_scale > 1.0f;
    const int nb = guided ? 2 : 1; // UNet batch: [uncond, cond]
    const int L = cc->max_positions, D = cc->hidden;
    const int h = p->height / 8, w = p->width / 8, C = 4;
    const size_t nlat = (size_t)C * h * w;

    Sampler *s = malloc(sizeof *s);
    if (!s) return sdc_err(err, SDC_ERR_OOM, "sampler");
    // the spacing a diffusers user gets from XScheduler.from_config(SD's scheduler config)
    int rc = sampler_init(s, p->sampler, p->steps, sampler_default_spacing(p->sampler), uc->prediction, 0.0f, nlat,
                          err);
    if (rc) {
        free(s);
        return rc;
    }

    // One arena for the pipeline's own tensors, on the backend's device.
    Arena a;
    size_t bytes = 0;
    bytes += (size_t)nb * L * D * 4 + 64;         // ctx
    bytes += 2 * ((size_t)nb * nlat * 4 + 64);    // unet in, out
    bytes += (size_t)3 * p->height * p->width * 4 + 64; // decoded image
    bytes += nlat * 4 + 64;                       // z for decode
    rc = arena_init(&a, be, bytes, err);
    float *host = malloc((nlat * (2 + 2 * nb) + (size_t)3 * p->height * p->width) * sizeof(float));
    if (rc || !host) {
        sampler_free(s);
        free(s);
        free(host);
        arena_free(&a);
        return rc ? rc : sdc_err(err, SDC_ERR_OOM, "pipeline host buffers");
    }
    float *lat = host;                     // (C, h, w)
    float *xin = lat + nlat;               // (nb, C, h, w)
    float *eps = xin + nb * nlat;          // (nb, C, h, w)
    float *guide = eps + nb * nlat;        // (C, h, w)
    float *img = guide + nlat;             // (3, H, W)

    Tensor ctx = ARENA_F32(&a, nb, L, D);          // (nb, 77, D)
    Tensor x = ARENA_F32(&a, nb, C, h, w);          // (nb, 4, h, w)
    Tensor out = ARENA_F32(&a, nb, C, h, w);        // (nb, 4, h, w)
    Tensor z = ARENA_F32(&a, 1, C, h, w);           // (1, 4, h, w)
    Tensor image = ARENA_F32(&a, 1, 3, p->height, p->width);

    // ---- text conditioning
    int32_t *ids = calloc((size_t)nb * L, sizeof(int32_t));
    if (!ids) rc = sdc_err(err, SDC_ERR_OOM, "token ids");
    if (!rc && guided) rc = encode_prompt_ids(m, p->negative_prompt ? p->negative_prompt : "", ids, err);
    if (!rc) rc = encode_prompt_ids(m, p->prompt, ids + (size_t)(nb - 1) * L, err);
    if (!rc) rc = clip_reserve(m->clip, nb, err);
    if (!rc) rc = clip_encode(m->clip, ids, nb, p->clip_skip, &ctx, err);
    free(ids);

    // ---- denoising
    if (!rc) rc = unet_reserve(m->unet, nb, h, w, L, err);
    // One generator for the run, as diffusers' generator=: the initial latent
    // first, then the stochastic samplers' per-step noise.
    Rng rng;
    rng_seed(&rng, p->seed);
    if (!rc) {
        rng_normal(&rng, lat, nlat);
        for (size_t k = 0; k < nlat; k++) lat[k] *= s->init_noise_sigma;
    }
    const int evals = sampler_num_evals(s); // Heun: 2 per step; PNDM: steps + 1
    for (int i = 0; !rc && i < evals; i++) {
        float cin = sampler_input_scale(s, i);
        for (int b = 0; b < nb; b++)
            for (size_t k = 0; k < nlat; k++) xin[b * nlat + k] = lat[k] * cin;
        backend_upload_f32(be, &x, xin, nb * nlat);
        float t = sampler_timestep(s, i), ts[2] = {t, t};
        rc = unet_forward(m->unet, &out, &x, ts, &ctx, err);
        if (rc) break;
        backend_download_f32(be, eps, &out, nb * nlat);
        const float *e = eps;
        if (guided) {
            for (size_t k = 0; k < nlat; k++)
                guide[k] = eps[k] + p->cfg_scale * (eps[nlat + k] - eps[k]);
            e = guide;
        }
        sampler_step(s, i, lat, e, &rng);
        if (progress) progress(user, i + 1, evals);
    }

    // ---- decode
    if (!rc) {
        const float sf = vae_config(m->vae)->scaling_factor;
        for (size_t k = 0; k < nlat; k++) xin[k] = lat[k] / sf;
        backend_upload_f32(be, &z, xin, nlat);
        rc = vae_reserve(m->vae, 1, p->height, p->width, err);
        if (!rc) rc = vae_decode(m->vae, &z, &image, err);
    }
    if (!rc) {
        backend_download_f32(be, img, &image, (size_t)3 * p->height * p->width);
        image_from_vae(rgb, img, 0, p->height, p->width);
    }
    arena_free(&a);
    free(host);
    sampler_free(s);
    free(s);
    return rc;
}
