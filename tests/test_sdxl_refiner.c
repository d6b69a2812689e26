// test_sdxl_refiner.c: the SDXL refiner against diffusers on the tiny random
// refiner (tools/make_sdxl_refiner_fixture.py), alone and after tiny-sdxl
// (tools/make_sdxl_fixture.py) as diffusers' ensemble of experts:
//   - the configuration read from the diffusers folder (text_encoder_2 alone,
//     five time ids, force_zeros_for_empty_prompt false) and inferred from a
//     single file in the original layout (conditioner.embedders.0.model.*,
//     the mid block's depth read off its own blocks);
//   - its one text encoder (hidden_states[-2], projected pooled output) and
//     its UNet with the five-id added embedding, in both layouts;
//   - StableDiffusionXLImg2ImgPipeline with the refiner from a prompt (no
//     negative prompt: "" encoded; a negative prompt with aesthetic scores,
//     original size, crops and their negative twins) and
//     StableDiffusionXLInpaintPipeline with the refiner; a refiner asked to
//     start from noise is refused;
//   - tiny-sdxl's img2img with negative micro-conditioning (img2img keeps the
//     positive crop on its negative rows, txt2img does not);
//   - the cut (int(round(N - f * N)), Python's rounding; Heun's extra
//     evaluation) on Euler and Heun schedules, against diffusers' values;
//   - base (denoising_end 0.8, latents out) then refiner (denoising_start 0.8
//     from those latents) for Euler (the folders' scheduler), Euler a, DDIM,
//     DPM++ 2M and Heun, and the base as img2img (strength 0.6) then the
//     refiner: the base's latents, the final latents and image.
// Final latents within 1e-4 of max |ref|, 8-bit images within 1/255. fp32 CPU.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/clip.h"
#include "models/unet.h"
#include "pipeline/sd.h"
#include "testutil.h"

#define TOL_TEXT 1e-4
#define TOL_UNET 1e-4
#define TOL_LATENT 1e-4

static const char *const BASE = "tests/fixtures/tiny-sdxl";
static const char *const BASE9 = "tests/fixtures/tiny-sdxl-inpaint";
static const char *const REFINER = "tests/fixtures/tiny-sdxl-refiner";
static const char *const PROMPT = "a photo of a red fox in the snow, high quality!";
static const char *const NEGATIVE = "blurry, low quality";

static int check_rc(TestCtx *t, int rc, const char *what, const SdcError *err) {
    return check_true(t, rc == 0, "%s%s%s", what, rc ? ": " : "", rc ? err->msg : "");
}

// The decoded image (1, 3, H, W) in [-1, 1] as 8-bit pixels against a
// diffusers image (H, W, 3) U8: within 1/255.
static void check_image(TestCtx *t, const char *what, const float *img, int W, int H, const StFile *ref,
                        const char *name) {
    const StEntry *e = st_find(ref, name);
    if (!check_true(t, e && e->dtype == DT_U8, "%s is U8", name)) return;
    uint8_t *rgb = malloc((size_t)3 * H * W);
    image_from_vae(rgb, img, 0, H, W);
    const uint8_t *want = st_tensor(ref, e).data;
    int worst = 0;
    for (size_t i = 0; i < (size_t)3 * H * W; i++) {
        int d = abs((int)rgb[i] - (int)want[i]);
        if (d > worst) worst = d;
    }
    check_true(t, worst <= 1, "%s image: worst pixel difference %d/255 (at most 1)", what, worst);
    free(rgb);
}

static void check_latents_tol(TestCtx *t, const char *what, const float *lat, const StFile *ref, const char *name,
                              size_t n, double tol) {
    float *want = fixture_f32(t, ref, name, NULL);
    if (want) check_rel(t, what, lat, want, n, tol);
    free(want);
}

static void check_latents(TestCtx *t, const char *what, const float *lat, const StFile *ref, const char *name,
                          size_t n) {
    check_latents_tol(t, what, lat, ref, name, n, TOL_LATENT);
}

// DDIM here (DDIMScheduler.from_config of the Euler config: clip_sample on,
// x0 clamped to [-1, 1]) is ill-conditioned on the random tiny model:
// diffusers' own base latents at the cut move by 8.5e-5 of max |ref| when
// the prompt embeddings move by 1e-6 (relative), so fp32 rounding alone
// gives ~1e-4; the images still agree within 1/255.
#define TOL_LATENT_DDIM 1e-3

// pre: "" (tiny-sdxl-refiner) or "infer." (tiny-sdxl-refiner-infer).
static void text_encoder(TestCtx *t, const Backend *be, const ModelFiles *mf, const StFile *ref, const char *pre) {
    SdcError err = {0};
    ClipModel *m = NULL;
    ModelLoadOpts first = {0}, second = {.second_text_encoder = 1};
    int rc = clip_load_opts(&m, mf, be, &first, &err);
    check_true(t, rc != 0, "the refiner has no first text encoder to load (%s)", rc ? err.msg : "loaded one");
    clip_free(m), m = NULL;
    if (!check_rc(t, clip_load_opts(&m, mf, be, &second, &err), "clip_load text_encoder_2", &err)) return;
    const ClipConfig *c = clip_config(m);
    const int B = 2, L = c->max_positions, D = c->hidden, P = c->projection_dim;
    char n1[64], n2[64];
    snprintf(n1, sizeof n1, "%ste2.hidden2", pre);
    snprintf(n2, sizeof n2, "%ste2.pooled", pre);
    const StEntry *ie = st_find(ref, "te2.ids");
    float *want = fixture_f32(t, ref, n1, NULL), *wantp = fixture_f32(t, ref, n2, NULL);
    float *got = calloc((size_t)B * L * D, sizeof(float)), *gotp = calloc((size_t)B * P, sizeof(float));
    Tensor h = tensor_f32(got, 3, (int64_t[]){B, L, D}), pl = tensor_f32(gotp, 2, (int64_t[]){B, P});
    if (check_true(t, ie && ie->dtype == DT_I32, "te2.ids is I32") && want && wantp &&
        check_rc(t, clip_encode_xl(m, st_tensor(ref, ie).data, B, 0, &h, &pl, &err), "clip_encode_xl", &err)) {
        check_rel(t, "refiner text encoder hidden_states[-2]", got, want, (size_t)B * L * D, TOL_TEXT);
        check_rel(t, "refiner text encoder pooled (text_embeds)", gotp, wantp, (size_t)B * P, TOL_TEXT);
    }
    free(got), free(gotp), free(want), free(wantp);
    clip_free(m);
}

static void unet_check(TestCtx *t, const Backend *be, const ModelFiles *mf, const StFile *ref, const char *pre) {
    SdcError err = {0};
    Unet *u = NULL;
    if (!check_rc(t, unet_load(&u, mf, be, &err), "unet_load", &err)) return;
    const UnetConfig *c = unet_config(u);
    Tensor xs;
    char nc[64], nt[64], ni[64], no[64];
    snprintf(nc, sizeof nc, "%sunet.ctx", pre);
    snprintf(nt, sizeof nt, "%sunet.text_embeds", pre);
    snprintf(ni, sizeof ni, "%sunet.time_ids", pre);
    snprintf(no, sizeof no, "%sunet.out", pre);
    float *x = fixture_f32(t, ref, "unet.x", &xs), *ts = fixture_f32(t, ref, "unet.t", NULL);
    float *ctx = fixture_f32(t, ref, nc, NULL), *te = fixture_f32(t, ref, nt, NULL);
    float *ids = fixture_f32(t, ref, ni, NULL), *want = fixture_f32(t, ref, no, NULL);
    if (x && ts && ctx && te && ids && want) {
        const int64_t N = xs.shape[0], H = xs.shape[2], W = xs.shape[3];
        printf("  unet: %d levels, context %d, added input %d (%d time ids)\n", c->n_levels, c->cross_dim,
               c->add_in_dim, unet_n_time_ids(u));
        float *got = calloc((size_t)N * 4 * H * W, sizeof(float));
        Tensor tx = tensor_f32(x, 4, xs.shape), tc = tensor_f32(ctx, 3, (int64_t[]){N, 77, c->cross_dim});
        Tensor tt = tensor_f32(te, 2, (int64_t[]){N, c->add_in_dim - unet_n_time_ids(u) * c->add_time_dim});
        Tensor out = tensor_f32(got, 4, (int64_t[]){N, 4, H, W});
        if (check_rc(t, unet_set_added_cond(u, &tt, ids, &err), "unet_set_added_cond", &err) &&
            check_rc(t, unet_forward(u, &out, &tx, ts, &tc, &err), "unet_forward", &err))
            check_rel(t, "refiner unet out (text_time, 5 ids)", got, want, (size_t)N * 4 * H * W, TOL_UNET);
        free(got);
    }
    free(x), free(ts), free(ctx), free(te), free(ids), free(want);
    unet_free(u);
}

// The init image and mask of the fixture, as the runner prepares them.
static int init_inputs(TestCtx *t, const StFile *ref, int W, int H, float *init, float *mask) {
    SdcError err = {0};
    const StEntry *ie = st_find(ref, "pipe.init.image_u8"), *me = st_find(ref, "pipe.init.mask_u8");
    Image im = {.width = W, .height = H, .channels = 3, .data = ie ? st_tensor(ref, ie).data : NULL};
    Image mk = {.width = W, .height = H, .channels = 1, .data = me ? st_tensor(ref, me).data : NULL};
    return check_true(t, ie && me && !image_to_tensor(&im, init, &err) && !mask_to_tensor(&mk, mask, &err),
                      "init image and mask");
}

// The refiner alone: StableDiffusionXLImg2ImgPipeline / InpaintPipeline from
// the refiner folder; and tiny-sdxl's img2img with negative micro-conditioning.
static void pipelines(TestCtx *t, const Backend *be, const StFile *ref) {
    SdcError err = {0};
    SdModel m = {0};
    if (!check_rc(t, sd_model_load(&m, REFINER, NULL, -1, be, &err), "sd_model_load refiner", &err)) return;
    float *prm = fixture_f32(t, ref, "pipe.params", NULL);
    const size_t nctx = (size_t)2 * 77 * 32, ncond = sd_cond_floats(&m);
    check_true(t, !m.clip && !m.tok && m.clip2 && ncond == nctx + 2 * 32,
               "the refiner: one text encoder; conditioning floats %zu = 2 x (77 x 32 + 32)", ncond);
    if (!prm || ncond != nctx + 2 * 32) {
        free(prm);
        sd_model_free(&m);
        return;
    }
    const int W = (int)prm[3], H = (int)prm[4];
    const size_t nlat = (size_t)4 * (H / 8) * (W / 8);
    float *cond = malloc(ncond * sizeof(float)), *lat = malloc(nlat * sizeof(float));
    float *img = malloc((size_t)3 * H * W * sizeof(float)), *init = malloc((size_t)3 * H * W * sizeof(float));
    float *mask = malloc((size_t)H * W * sizeof(float));
    const GenParams p0 = {.mode = GEN_IMG2IMG, .steps = (int)prm[0], .cfg_scale = prm[1], .sampler = SAMPLER_EULER,
                          .seed = (uint64_t)prm[2], .width = W, .height = H, .batch = 1, .strength = prm[5],
                          .init_image = init};
    GenParams p = p0;
    p.mode = GEN_TXT2IMG, p.init_image = NULL;
    int rc = sd_check_params(&m, &p, &err);
    check_true(t, rc == SDC_ERR_ARG && strstr(err.msg, "SDXL refiner") && strstr(err.msg, "--init-img"),
               "the refiner from noise (txt2img) refused: %s", rc ? err.msg : "accepted");
    if (init_inputs(t, ref, W, H, init, mask) && check_rc(t, sd_encode_prompt(&m, PROMPT, NULL, 0, cond, &err),
                                                          "sd_encode_prompt", &err)) {
        float *wctx = fixture_f32(t, ref, "r.ctx", NULL), *wpool = fixture_f32(t, ref, "r.pooled", NULL);
        if (wctx && wpool) { // force_zeros_for_empty_prompt false: "" encoded, not zeros
            check_rel(t, "refiner encode_prompt [negative \"\", prompt] embeddings", cond, wctx, nctx, TOL_TEXT);
            check_rel(t, "refiner encode_prompt pooled", cond + nctx, wpool, 2 * 32, TOL_TEXT);
        }
        free(wctx), free(wpool);
        p = p0;
        if (check_rc(t, sd_generate(&m, &p, cond, lat, img, NULL, NULL, &err), "refiner img2img", &err)) {
            check_latents(t, "refiner img2img latents", lat, ref, "r.img2img.latents", nlat);
            check_image(t, "refiner img2img", img, W, H, ref, "r.img2img.image");
        }
        p = p0, p.mode = GEN_INPAINT, p.mask = mask, p.strength = 0.75;
        if (check_rc(t, sd_generate(&m, &p, cond, lat, img, NULL, NULL, &err), "refiner inpaint", &err)) {
            check_latents(t, "refiner inpaint latents", lat, ref, "r.inpaint.latents", nlat);
            check_image(t, "refiner inpaint", img, W, H, ref, "r.inpaint.image");
        }
    }
    // a negative prompt, aesthetic scores and micro-conditioning
    p = p0;
    p.xl = (SdxlCond){.original_h = 96, .original_w = 128, .crop_top = 8, .crop_left = 16, .neg_original_h = 32,
                      .neg_original_w = 48, .neg_crop_top = 4, .neg_crop_left = 0, .aesthetic_score = 7.5f,
                      .neg_aesthetic_score = 1.5f};
    if (check_rc(t, sd_encode_prompt(&m, PROMPT, NEGATIVE, 0, cond, &err), "sd_encode_prompt", &err) &&
        check_rc(t, sd_generate(&m, &p, cond, lat, img, NULL, NULL, &err), "refiner img2img (micro)", &err)) {
        check_latents(t, "refiner micro latents (aesthetic 7.5 / 1.5, sizes, crops)", lat, ref, "r.micro.latents",
                      nlat);
        check_image(t, "refiner micro", img, W, H, ref, "r.micro.image");
    }
    free(cond);
    sd_model_free(&m);

    // SDXL base img2img: negative sizes, the positive crop on the negative rows
    if (check_rc(t, sd_model_load(&m, BASE, NULL, -1, be, &err), "sd_model_load base", &err)) {
        cond = malloc(sd_cond_floats(&m) * sizeof(float));
        p = p0;
        p.xl = (SdxlCond){.original_h = 96, .original_w = 128, .crop_top = 8, .crop_left = 16, .neg_original_h = 32,
                          .neg_original_w = 48, .neg_crop_top = 4, .neg_crop_left = 0, .neg_target_h = 64,
                          .neg_target_w = 64};
        if (check_rc(t, sd_encode_prompt(&m, PROMPT, NEGATIVE, 0, cond, &err), "sd_encode_prompt", &err) &&
            check_rc(t, sd_generate(&m, &p, cond, lat, img, NULL, NULL, &err), "base img2img (micro)", &err)) {
            check_latents(t, "base img2img micro latents (negative rows: positive crop)", lat, ref,
                          "b.micro.latents", nlat);
            check_image(t, "base img2img micro", img, W, H, ref, "b.micro.image");
        }
        free(cond);
        sd_model_free(&m);
    }
    free(prm), free(lat), free(img), free(init), free(mask);
}

// Base then refiner, diffusers' ensemble of experts, per sampler.
static void ensemble(TestCtx *t, const Backend *be, const StFile *ref) {
    SdcError err = {0};
    SdModel base = {0}, rf = {0};
    float *prm = fixture_f32(t, ref, "pipe.params", NULL);
    if (!prm || !check_rc(t, sd_model_load(&base, BASE, NULL, -1, be, &err), "sd_model_load base", &err) ||
        !check_rc(t, sd_model_load(&rf, REFINER, NULL, -1, be, &err), "sd_model_load refiner", &err)) {
        free(prm);
        sd_model_free(&base);
        return;
    }
    const int W = (int)prm[3], H = (int)prm[4];
    const double start = prm[6] > 0.79f && prm[6] < 0.81f ? 0.8 : prm[6]; // the Python float 0.8
    const size_t nlat = (size_t)4 * (H / 8) * (W / 8);
    float *cb = malloc(sd_cond_floats(&base) * sizeof(float)), *cr = malloc(sd_cond_floats(&rf) * sizeof(float));
    float *mid = malloc(nlat * sizeof(float)), *lat = malloc(nlat * sizeof(float));
    float *img = malloc((size_t)3 * H * W * sizeof(float));
    int rc = sd_encode_prompt(&base, PROMPT, NULL, 0, cb, &err);
    if (!rc) rc = sd_encode_prompt(&rf, PROMPT, NULL, 0, cr, &err);
    static const struct {
        const char *name;
        SamplerKind kind;
    } S[] = {{"euler", SAMPLER_EULER}, {"euler_a", SAMPLER_EULER_A}, {"ddim", SAMPLER_DDIM},
             {"dpmpp2m", SAMPLER_DPMPP_2M}, {"heun", SAMPLER_HEUN}};
    for (int k = 0; check_rc(t, rc, "sd_encode_prompt", &err) && k < 5; k++) {
        GenParams pb = {.mode = GEN_TXT2IMG, .steps = 10, .cfg_scale = prm[1], .sampler = S[k].kind,
                        .seed = (uint64_t)prm[2], .width = W, .height = H, .batch = 1, .denoising_end = start};
        GenParams pr = pb;
        pr.mode = GEN_IMG2IMG, pr.denoising_end = 0, pr.denoising_start = start, pr.init_latents = mid;
        char what[96], name[64];
        snprintf(what, sizeof what, "%s: base to %g", S[k].name, start);
        if (!check_rc(t, sd_generate(&base, &pb, cb, mid, NULL, NULL, NULL, &err), what, &err)) continue;
        snprintf(name, sizeof name, "ens.%s.base_latents", S[k].name);
        snprintf(what, sizeof what, "%s: base latents at the cut (denoising_end)", S[k].name);
        const double tol = S[k].kind == SAMPLER_DDIM ? TOL_LATENT_DDIM : TOL_LATENT;
        check_latents_tol(t, what, mid, ref, name, nlat, tol);
        snprintf(what, sizeof what, "%s: refiner from %g", S[k].name, start);
        if (!check_rc(t, sd_generate(&rf, &pr, cr, lat, img, NULL, NULL, &err), what, &err)) continue;
        snprintf(name, sizeof name, "ens.%s.latents", S[k].name);
        snprintf(what, sizeof what, "%s: base + refiner latents", S[k].name);
        check_latents_tol(t, what, lat, ref, name, nlat, tol);
        snprintf(name, sizeof name, "ens.%s.image", S[k].name);
        snprintf(what, sizeof what, "%s: base + refiner", S[k].name);
        check_image(t, what, img, W, H, ref, name);
    }
    // the base as img2img (strength 0.6) to the cut, then the refiner
    float *init = malloc((size_t)3 * H * W * sizeof(float)), *mask = malloc((size_t)H * W * sizeof(float));
    if (rc == 0 && init_inputs(t, ref, W, H, init, mask)) {
        GenParams pb = {.mode = GEN_IMG2IMG, .steps = 10, .cfg_scale = prm[1], .sampler = SAMPLER_EULER,
                        .seed = (uint64_t)prm[2], .width = W, .height = H, .batch = 1, .strength = prm[5],
                        .init_image = init, .denoising_end = start};
        GenParams pr = pb;
        pr.init_image = NULL, pr.denoising_end = 0, pr.denoising_start = start, pr.init_latents = mid;
        if (check_rc(t, sd_generate(&base, &pb, cb, mid, NULL, NULL, NULL, &err), "img2img base to the cut", &err)) {
            check_latents(t, "img2img base latents at the cut", mid, ref, "ens.i2i.base_latents", nlat);
            if (check_rc(t, sd_generate(&rf, &pr, cr, lat, img, NULL, NULL, &err), "refiner after img2img", &err)) {
                check_latents(t, "img2img base + refiner latents", lat, ref, "ens.i2i.latents", nlat);
                check_image(t, "img2img base + refiner", img, W, H, ref, "ens.i2i.image");
            }
        }
    }
    // inpainting: the base (tiny-sdxl's 4-channel blend; tiny-sdxl-inpaint's 9 channels) to the cut, then the
    // refiner inpaints on from its latents (strength 0.75, the mask kept)
    static const struct {
        const char *key, *model;
        SamplerKind kind;
    } I[] = {{"ens.inpaint.euler", BASE, SAMPLER_EULER}, {"ens.inpaint.euler_a", BASE, SAMPLER_EULER_A},
             {"ens.inpaint9.euler", BASE9, SAMPLER_EULER}};
    for (int k = 0; rc == 0 && k < 3 && init_inputs(t, ref, W, H, init, mask); k++) {
        SdModel b9 = {0};
        SdModel *bm = &base;
        float *cb9 = NULL;
        char what[96], name[64];
        if (I[k].model != BASE) { // the 9-channel base: its own prompt embeddings
            if (!check_rc(t, sd_model_load(&b9, I[k].model, NULL, -1, be, &err), "sd_model_load 9-channel base", &err))
                continue;
            bm = &b9;
            cb9 = malloc(sd_cond_floats(&b9) * sizeof(float));
            if (!check_rc(t, sd_encode_prompt(&b9, PROMPT, NULL, 0, cb9, &err), "sd_encode_prompt (9-channel)", &err)) {
                free(cb9);
                sd_model_free(&b9);
                continue;
            }
        }
        GenParams pb = {.mode = GEN_INPAINT, .steps = 10, .cfg_scale = prm[1], .sampler = I[k].kind,
                        .seed = (uint64_t)prm[2], .width = W, .height = H, .batch = 1, .strength = 0.75,
                        .init_image = init, .mask = mask, .denoising_end = start};
        GenParams pr = pb;
        pr.init_image = NULL, pr.denoising_end = 0, pr.denoising_start = start, pr.init_latents = mid;
        snprintf(what, sizeof what, "%s: inpainting base to the cut", I[k].key);
        if (check_rc(t, sd_generate(bm, &pb, cb9 ? cb9 : cb, mid, NULL, NULL, NULL, &err), what, &err)) {
            snprintf(name, sizeof name, "%s.base_latents", I[k].key);
            snprintf(what, sizeof what, "%s: base latents at the cut", I[k].key);
            check_latents(t, what, mid, ref, name, nlat);
            snprintf(what, sizeof what, "%s: refiner inpainting from the cut", I[k].key);
            if (check_rc(t, sd_generate(&rf, &pr, cr, lat, img, NULL, NULL, &err), what, &err)) {
                snprintf(name, sizeof name, "%s.latents", I[k].key);
                snprintf(what, sizeof what, "%s: base + refiner latents", I[k].key);
                check_latents(t, what, lat, ref, name, nlat);
                snprintf(name, sizeof name, "%s.image", I[k].key);
                check_image(t, I[k].key, img, W, H, ref, name);
            }
        }
        free(cb9);
        sd_model_free(&b9);
    }
    free(init), free(mask);
    // a cut that leaves the refiner nothing: a clear refusal
    // (2 leading steps: timesteps 501, 1; 0.99 cuts at 10, 0.9999 at 0)
    GenParams pr = {.mode = GEN_IMG2IMG, .steps = 2, .cfg_scale = prm[1], .sampler = SAMPLER_EULER, .seed = 7,
                    .width = W, .height = H, .batch = 1, .denoising_start = 0.99, .init_latents = mid};
    rc = sd_check_params(&rf, &pr, &err);
    check_true(t, rc == 0, "denoising_start 0.99 of 2 steps: the refiner's last step (%s)", rc ? err.msg : "ok");
    pr.denoising_start = 0.9999;
    rc = sd_check_params(&rf, &pr, &err);
    check_true(t, rc == SDC_ERR_ARG && strstr(err.msg, "leaves the refiner no denoising step"),
               "denoising_start 0.9999: no step left for the refiner, refused: %s", rc ? err.msg : "accepted");
    GenParams pb = {.mode = GEN_TXT2IMG, .steps = 2, .cfg_scale = prm[1], .sampler = SAMPLER_EULER, .seed = 7,
                    .width = W, .height = H, .batch = 1, .denoising_end = 0.0001};
    rc = sd_check_params(&base, &pb, &err);
    check_true(t, rc == SDC_ERR_ARG && strstr(err.msg, "leaves the base model no denoising step"),
               "denoising_end 0.0001: no step left for the base, refused: %s", rc ? err.msg : "accepted");
    free(cb), free(cr), free(mid), free(lat), free(img), free(prm);
    sd_model_free(&base);
    sd_model_free(&rf);
}

// The cut itself against the values diffusers' formulas give on the same
// 10-step schedules (computed with diffusers: int(round(N - f * N)), the base
// keeping timesteps >= the cut, the refiner those below, plus one for Heun
// when even): 0.799 cuts at 201, a timestep (kept by the base); 0.7775 at
// 222.5, which Python rounds to 222 (half to even), a linspace timestep.
static void cuts(TestCtx *t) {
    static const struct {
        SamplerKind kind;
        TimestepSpacing spacing;
        double f;
        int end, begin, evals;
    } C[] = {{SAMPLER_EULER, SPACING_LEADING, 0.8, 8, 8, 10},    {SAMPLER_EULER, SPACING_LEADING, 0.799, 8, 8, 10},
             {SAMPLER_EULER, SPACING_LEADING, 0.5, 5, 5, 10},    {SAMPLER_EULER, SPACING_LINSPACE, 0.7775, 8, 8, 10},
             {SAMPLER_HEUN, SPACING_LEADING, 0.8, 15, 14, 19},   {SAMPLER_HEUN, SPACING_LEADING, 0.5, 9, 8, 19}};
    for (size_t k = 0; k < sizeof C / sizeof C[0]; k++) {
        SdcError err = {0};
        Sampler s;
        if (!check_rc(t, sampler_init(&s, C[k].kind, 10, C[k].spacing, PRED_EPSILON, 0, 1, &err), "sampler_init",
                      &err))
            continue;
        const int end = sampler_end_for_denoising(&s, 0, C[k].f), begin = sampler_begin_for_denoising(&s, C[k].f);
        check_true(t, sampler_num_evals(&s) == C[k].evals && end == C[k].end && begin == C[k].begin,
                   "%s %s cut at %g: base evaluations [0, %d), refiner [%d, %d) (diffusers: [0, %d), [%d, %d))",
                   sampler_name(C[k].kind), C[k].spacing == SPACING_LEADING ? "leading" : "linspace", C[k].f, end,
                   begin, sampler_num_evals(&s), C[k].end, C[k].begin, C[k].evals);
        sampler_free(&s);
    }
}

static void run_folder(TestCtx *t, const Backend *be, const StFile *ref) {
    SdcError err = {0};
    ModelFiles *mf = NULL;
    printf("%s\n", REFINER);
    if (!check_rc(t, model_files_open(&mf, REFINER, NULL, -1, &err), "model_files_open", &err)) return;
    const ModelInfo *in = model_files_info(mf);
    const UnetConfig *u = &in->unet;
    check_true(t, in->family == SD_FAMILY_XL && in->refiner && in->has_clip2 && !in->force_zeros_negative &&
                   !in->tokenizer_dir[0] && in->tokenizer2_dir[0],
               "SDXL refiner: text_encoder_2 and tokenizer_2 alone, force_zeros_for_empty_prompt false");
    check_true(t, u->add_time_dim == 8 && u->add_in_dim == 5 * 8 + 32 && u->n_time_ids == 5 && u->cross_dim == 32,
               "UNet: %d time ids x %d, added input %d, context %d", u->n_time_ids, u->add_time_dim, u->add_in_dim,
               u->cross_dim);
    text_encoder(t, be, mf, ref, "");
    unet_check(t, be, mf, ref, "");
    model_files_close(mf);
}

static void run_single(TestCtx *t, const Backend *be, const StFile *ref) {
    static const char *const PATH = "tests/fixtures/tiny-sdxl-refiner-infer.safetensors";
    SdcError err = {0};
    ModelFiles *mf = NULL;
    printf("%s (inferred)\n", PATH);
    if (!check_rc(t, model_files_open(&mf, PATH, NULL, -1, &err), "model_files_open", &err)) return;
    const ModelInfo *in = model_files_info(mf);
    const UnetConfig *u = &in->unet;
    check_true(t, in->family == SD_FAMILY_XL && in->refiner && in->has_clip2 && !in->force_zeros_negative,
               "SDXL refiner from conditioner.embedders.0.model.* (family %d, refiner %d)", (int)in->family,
               in->refiner);
    check_true(t, u->add_time_dim == 256 && u->add_in_dim == 5 * 256 + 64 && u->n_time_ids == 5 &&
                   u->cross_dim == 64 && u->n_levels == 3 && !u->down_attn[0] && u->down_attn[1] &&
                   !u->down_attn[2] && u->mid_attn && u->transformer_layers[2] == 2 && u->heads[1] == 1,
               "UNet inferred: %d time ids x %d, context %d, mid block depth %d (from its blocks)", u->n_time_ids,
               u->add_time_dim, u->cross_dim, u->transformer_layers[2]);
    check_true(t, in->clip2.layers == 2 && in->clip2.hidden == 64 && in->clip2.projection_dim == 64 &&
                   in->clip2.act == ACT_GELU && in->clip2.pad_token == 0,
               "text encoder inferred: %d x %d gelu, projection %d, pad %d", in->clip2.layers, in->clip2.hidden,
               in->clip2.projection_dim, in->clip2.pad_token);
    text_encoder(t, be, mf, ref, "infer.");
    unet_check(t, be, mf, ref, "infer.");
    model_files_close(mf);
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Backend *be = NULL;
    if (backend_cpu_create(&be, 0, &err)) {
        fprintf(stderr, "backend_cpu_create: %s\n", err.msg);
        return 1;
    }
    StFile ref;
    if (check_rc(&t, st_open(&ref, "tests/fixtures/ref-tiny-sdxl-refiner.safetensors", &err), "ref-tiny-sdxl-refiner",
                 &err)) {
        cuts(&t);
        run_folder(&t, be, &ref);
        run_single(&t, be, &ref);
        pipelines(&t, be, &ref);
        ensemble(&t, be, &ref);
        st_close(&ref);
    }
    backend_destroy(be);
    return test_summary(&t);
}
