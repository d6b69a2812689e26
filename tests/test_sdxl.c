// test_sdxl.c: SDXL against diffusers on the tiny random SDXL pipeline
// (tools/make_sdxl_fixture.py), in both weight layouts (the diffusers folder;
// a second model in the original single-file layout, its architecture
// inferred from the file as for SDXL base):
//   - the configuration read (family, second encoder, added embedding, time
//     ids, VAE scaling factor, force_zeros_for_empty_prompt);
//   - both text encoders' hidden_states[-2] (no final norm) and the second's
//     projected pooled output (text_embeds), and clip_skip 2 = hidden_states[-3];
//   - the UNet with the text_time added embedding (pooled text + six time ids);
//   - whole StableDiffusionXLPipeline runs from given prompt embeddings (Euler
//     from the folder's scheduler config, guidance 5): zero negative embeddings
//     when no negative prompt is given (force_zeros_for_empty_prompt), given
//     negative embeddings, and micro-conditioning (original size, crop, target
//     size and their negative twins), img2img (strength 0.6) and inpainting
//     with the 4-channel blend (strength 1.0 and 0.75) as
//     StableDiffusionXLImg2ImgPipeline / InpaintPipeline: final latents within
//     1e-4 of max |ref|, 8-bit images within 1/255;
//   - the same from a prompt, through the folder's two tokenizers (pads EOS
//     and "!"): encode_prompt's embeddings, zero negatives without a
//     negative prompt, images;
//   - an SDXL LoRA (both text encoders and the UNet; kohya and diffusers
//     names) at weight 0.7, as diffusers' load_lora_weights + fuse_lora;
//   - the SDXL inpainting UNet (9 input channels: latents, mask, masked-image
//     latents; tools/make_sdxl_inpaint_fixture.py) from a prompt as
//     StableDiffusionXLInpaintPipeline: strength 1.0 and 0.75 with a negative
//     prompt, and without one (zero negatives).
// fp32 CPU. Tolerances as test_clip / test_unet / test_pipeline state them.
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
#include "sampling/scheduler.h"
#include "pipeline/sd.h"
#include "testutil.h"

#define TOL_TEXT 1e-4
#define TOL_UNET 1e-4
#define TOL_LATENT 1e-4

static int check_rc(TestCtx *t, int rc, const char *what, const SdcError *err) {
    return check_true(t, rc == 0, "%s%s%s", what, rc ? ": " : "", rc ? err->msg : "");
}

// The decoded image (1, 3, H, W) in [-1, 1] as 8-bit pixels against a
// diffusers image (H, W, 3) U8 of the fixture: within 1/255.
static void check_image(TestCtx *t, const char *what, const float *img, int W, int H, const StFile *ref,
                        const StEntry *want_e) {
    uint8_t *rgb = malloc((size_t)3 * H * W);
    image_from_vae(rgb, img, 0, H, W);
    const uint8_t *want = st_tensor(ref, want_e).data;
    int worst = 0;
    for (size_t i = 0; i < (size_t)3 * H * W; i++) {
        int d = abs((int)rgb[i] - (int)want[i]);
        if (d > worst) worst = d;
    }
    check_true(t, worst <= 1, "%s image: worst pixel difference %d/255 (at most 1)", what, worst);
    free(rgb);
}

static const int32_t *ids_of(TestCtx *t, const StFile *ref, const char *name) {
    const StEntry *e = st_find(ref, name);
    if (!check_true(t, e && e->dtype == DT_I32 && e->ndim == 2 && e->shape[0] == 2 && e->shape[1] == 77,
                    "%s is I32 (2, 77)", name))
        return NULL;
    return (const int32_t *)st_tensor(ref, e).data;
}

// pre: "" (tiny-sdxl) or "infer." (tiny-sdxl-infer): the reference names.
static void text_encoders(TestCtx *t, const Backend *be, const ModelFiles *mf, const StFile *ref, const char *pre) {
    SdcError err = {0};
    for (int second = 0; second < 2; second++) {
        ClipModel *m = NULL;
        ModelLoadOpts o = {.second_text_encoder = second};
        if (!check_rc(t, clip_load_opts(&m, mf, be, &o, &err), second ? "clip_load text_encoder_2" : "clip_load",
                      &err))
            continue;
        const ClipConfig *c = clip_config(m);
        const int B = 2, L = c->max_positions, D = c->hidden, P = c->projection_dim;
        printf("  text encoder %d: %d layers, hidden %d, projection %d, pad %d\n", second + 1, c->layers, D, P,
               c->pad_token);
        const int32_t *ids = ids_of(t, ref, second ? "te2.ids" : "te1.ids");
        char n1[64], n2[64];
        snprintf(n1, sizeof n1, "%s%s", pre, second ? "te2.hidden2" : "te1.hidden2");
        snprintf(n2, sizeof n2, "%ste2.pooled", pre);
        float *want = fixture_f32(t, ref, n1, NULL);
        float *wantp = second ? fixture_f32(t, ref, n2, NULL) : NULL;
        float *got = calloc((size_t)B * L * D, sizeof(float)), *gotp = calloc((size_t)B * (P > 0 ? P : 1), 4);
        Tensor h = tensor_f32(got, 3, (int64_t[]){B, L, D}), pl = tensor_f32(gotp, 2, (int64_t[]){B, P});
        if (ids && want && (!second || wantp)) {
            int rc = clip_encode_xl(m, ids, B, 0, &h, second ? &pl : NULL, &err);
            if (check_rc(t, rc, "clip_encode_xl", &err)) {
                check_rel(t, second ? "te2 hidden_states[-2]" : "te1 hidden_states[-2]", got, want,
                          (size_t)B * L * D, TOL_TEXT);
                if (second) check_rel(t, "te2 pooled (text_embeds)", gotp, wantp, (size_t)B * P, TOL_TEXT);
            }
            // the pooled output needs a projection: the first encoder has none
            if (!second) {
                Tensor p1 = tensor_f32(gotp, 2, (int64_t[]){B, 32});
                rc = clip_encode_xl(m, ids, B, 0, &h, &p1, &err);
                check_true(t, rc == SDC_ERR_ARG, "pooled output of an encoder without projection refused (%s)",
                           err.msg);
            }
            rc = clip_encode_xl(m, ids, B, c->layers + 1, &h, NULL, &err);
            check_true(t, rc == SDC_ERR_ARG, "clip_skip past the first layer refused (%s)", err.msg);
        }
        free(got), free(gotp), free(want), free(wantp);
        clip_free(m);
    }
}

static void unet_check(TestCtx *t, const Backend *be, const ModelFiles *mf, const StFile *ref, const char *pre) {
    SdcError err = {0};
    Unet *u = NULL;
    if (!check_rc(t, unet_load(&u, mf, be, &err), "unet_load", &err)) return;
    const UnetConfig *c = unet_config(u);
    Tensor xs;
    float *x = fixture_f32(t, ref, "unet.x", &xs), *ts = fixture_f32(t, ref, "unet.t", NULL);
    char nc[64], nt[64], no[64];
    snprintf(nc, sizeof nc, "%sunet.ctx", pre);
    snprintf(nt, sizeof nt, "%sunet.text_embeds", pre);
    snprintf(no, sizeof no, "%sunet.out", pre);
    float *ctx = fixture_f32(t, ref, nc, NULL), *te = fixture_f32(t, ref, nt, NULL);
    float *ids = fixture_f32(t, ref, "unet.time_ids", NULL), *want = fixture_f32(t, ref, no, NULL);
    if (x && ts && ctx && te && ids && want) {
        const int64_t N = xs.shape[0], H = xs.shape[2], W = xs.shape[3];
    printf("  unet: %d levels, context %d, added input %d\n", c->n_levels, c->cross_dim, c->add_in_dim);
        float *got = calloc((size_t)N * 4 * H * W, sizeof(float));
        Tensor tx = tensor_f32(x, 4, xs.shape), tc = tensor_f32(ctx, 3, (int64_t[]){N, 77, c->cross_dim});
        Tensor tt = tensor_f32(te, 2, (int64_t[]){N, c->add_in_dim - 6 * c->add_time_dim});
        Tensor out = tensor_f32(got, 4, (int64_t[]){N, 4, H, W});
        // without its added conditioning an SDXL UNet refuses to run
        int rc = unet_forward(u, &out, &tx, ts, &tc, &err);
        check_true(t, rc == SDC_ERR_ARG, "a pass without the added conditioning refused (%s)", err.msg);
        if (check_rc(t, unet_set_added_cond(u, &tt, ids, &err), "unet_set_added_cond", &err) &&
            check_rc(t, unet_forward(u, &out, &tx, ts, &tc, &err), "unet_forward", &err))
            check_rel(t, "unet out (text_time)", got, want, (size_t)N * 4 * H * W, TOL_UNET);
        free(got);
    }
    free(x), free(ts), free(ctx), free(te), free(ids), free(want);
    unet_free(u);
}

static void pipeline(TestCtx *t, const Backend *be, const char *path, const char *config_dir, const StFile *ref) {
    SdcError err = {0};
    SdModel m = {0};
    if (!check_rc(t, sd_model_load(&m, path, config_dir, -1, be, &err), "sd_model_load", &err)) return;
    float *prm = fixture_f32(t, ref, "pipe.params", NULL);
    float *ctx = fixture_f32(t, ref, "pipe.ctx", NULL), *pooled = fixture_f32(t, ref, "te2.pooled", NULL);
    const size_t nctx = (size_t)2 * 77 * 64, ncond = sd_cond_floats(&m);
    check_true(t, ncond == nctx + 2 * 32, "conditioning floats %zu = 2 x (77 x 64 + 32)", ncond);
    if (prm && ctx && pooled && ncond == nctx + 2 * 32) {
        float *cond = malloc(ncond * sizeof(float));
        const int W = (int)prm[3], H = (int)prm[4];
        float *lat = malloc((size_t)4 * (H / 8) * (W / 8) * sizeof(float)), *img = malloc((size_t)3 * H * W * 4);
        // the init image and mask of img2img / inpainting
        const StEntry *ie = st_find(ref, "pipe.init.image_u8"), *me = st_find(ref, "pipe.init.mask_u8");
        float *init = malloc((size_t)3 * H * W * sizeof(float)), *mask = malloc((size_t)H * W * sizeof(float));
        Image im = {.width = W, .height = H, .channels = 3, .data = ie ? st_tensor(ref, ie).data : NULL};
        Image mk = {.width = W, .height = H, .channels = 1, .data = me ? st_tensor(ref, me).data : NULL};
        check_true(t, ie && me && !image_to_tensor(&im, init, &err) && !mask_to_tensor(&mk, mask, &err),
                   "init image and mask");
        static const char *const CASES[] = {"zeroneg", "neg", "micro", "img2img", "inpaint", "inpaint075"};
        for (int k = 0; k < 6; k++) {
            memcpy(cond, ctx, nctx * sizeof(float));
            memcpy(cond + nctx, pooled, 2 * 32 * sizeof(float));
            if (k == 0) { // no negative prompt: zeros, as diffusers' force_zeros_for_empty_prompt
                memset(cond, 0, nctx / 2 * sizeof(float));
                memset(cond + nctx, 0, 32 * sizeof(float));
            }
            GenParams p = {.mode = GEN_TXT2IMG, .steps = (int)prm[0], .cfg_scale = prm[1], .sampler = SAMPLER_EULER,
                           .seed = (uint64_t)prm[2], .width = W, .height = H, .batch = 1};
            if (k >= 3) { // StableDiffusionXLImg2ImgPipeline / InpaintPipeline.from_pipe, 8 steps
                p.mode = k == 3 ? GEN_IMG2IMG : GEN_INPAINT;
                p.steps = 8, p.init_image = init;
                p.strength = k == 3 ? 0.6 : k == 4 ? 1.0 : 0.75;
                p.mask = k >= 4 ? mask : NULL;
            }
            if (k == 2) {
                p.xl.original_h = 96, p.xl.original_w = 128, p.xl.crop_top = 8, p.xl.crop_left = 16;
                p.xl.target_h = 64, p.xl.target_w = 80;
                p.xl.neg_original_h = 32, p.xl.neg_original_w = 48, p.xl.neg_crop_top = 4, p.xl.neg_crop_left = 0;
                p.xl.neg_target_h = 64, p.xl.neg_target_w = 64;
            }
            char name[64];
            snprintf(name, sizeof name, "pipe.%s.latents", CASES[k]);
            float *wl = fixture_f32(t, ref, name, NULL);
            snprintf(name, sizeof name, "pipe.%s.image", CASES[k]);
            const StEntry *wi = st_find(ref, name);
            if (wl && wi && check_rc(t, sd_generate(&m, &p, cond, lat, img, NULL, NULL, &err), CASES[k], &err)) {
                snprintf(name, sizeof name, "%s latents", CASES[k]);
                check_rel(t, name, lat, wl, (size_t)4 * (H / 8) * (W / 8), TOL_LATENT);
                check_image(t, CASES[k], img, W, H, ref, wi);
            }
            free(wl);
        }
        // from prompts through the folder's two tokenizers (pads EOS and "!")
        static const char *const PROMPT = "a photo of a red fox in the snow, high quality!";
        float *wctx = fixture_f32(t, ref, "pipe.textneg.ctx", NULL), *wpool = fixture_f32(t, ref, "pipe.textneg.pooled", NULL);
        for (int k = 0; k < 2; k++) {
            const char *neg = k ? "blurry, low quality" : NULL, *cname = k ? "textneg" : "text";
            int rc = sd_encode_prompt(&m, PROMPT, neg, 0, cond, &err);
            if (!check_rc(t, rc, "sd_encode_prompt", &err)) continue;
            char name[64];
            if (k && wctx && wpool) {
                check_rel(t, "encode_prompt [negative, prompt] embeddings", cond, wctx, nctx, TOL_TEXT);
                check_rel(t, "encode_prompt pooled embeddings", cond + nctx, wpool, 2 * 32, TOL_TEXT);
            }
            if (!k) {
                int zero = 1;
                for (size_t i = 0; i < nctx / 2; i++) zero &= cond[i] == 0.0f;
                for (size_t i = 0; i < 32; i++) zero &= cond[nctx + i] == 0.0f;
                check_true(t, zero, "no negative prompt: zero negative embeddings (force_zeros_for_empty_prompt)");
            }
            GenParams p = {.mode = GEN_TXT2IMG, .steps = (int)prm[0], .cfg_scale = prm[1], .sampler = SAMPLER_EULER,
                           .seed = (uint64_t)prm[2], .width = W, .height = H, .batch = 1};
            snprintf(name, sizeof name, "pipe.%s.latents", cname);
            float *wl = fixture_f32(t, ref, name, NULL);
            snprintf(name, sizeof name, "pipe.%s.image", cname);
            const StEntry *wi = st_find(ref, name);
            if (wl && wi && check_rc(t, sd_generate(&m, &p, cond, lat, img, NULL, NULL, &err), cname, &err)) {
                snprintf(name, sizeof name, "%s latents (from the prompt)", cname);
                check_rel(t, name, lat, wl, (size_t)4 * (H / 8) * (W / 8), TOL_LATENT);
                check_image(t, cname, img, W, H, ref, wi);
            }
            free(wl);
        }
        free(wctx), free(wpool), free(init), free(mask);
        free(cond), free(lat), free(img);
    }
    free(prm), free(ctx), free(pooled);
    sd_model_free(&m);
}

// An SDXL LoRA on both text encoders and the UNet, in kohya's names
// (lora_te1_, lora_te2_, lora_unet_ + the original layout) and diffusers'
// (text_encoder_2., peft lora_A / lora_B, LoraConfig metadata), at weight
// 0.7: the image of diffusers' load_lora_weights + fuse_lora(0.7).
static void lora_check(TestCtx *t, const Backend *be, const char *path, const StFile *ref) {
    static const char *const FILES[2] = {"tests/fixtures/lora-tiny-sdxl-kohya.safetensors",
                                         "tests/fixtures/lora-tiny-sdxl-diffusers.safetensors"};
    float *prm = fixture_f32(t, ref, "pipe.params", NULL), *wl = fixture_f32(t, ref, "pipe.lora.latents", NULL);
    const StEntry *wi = st_find(ref, "pipe.lora.image");
    for (int k = 0; k < 2 && prm && wl && wi; k++) {
        SdcError err = {0};
        SdModel m = {0};
        LoraSpec spec = {.weight = 0.7f};
        snprintf(spec.path, sizeof spec.path, "%s", FILES[k]);
        SdLoadOpts o = {.loras = &spec, .n_loras = 1};
        if (!check_rc(t, sd_model_load_opts(&m, path, NULL, -1, be, &o, &err), FILES[k], &err)) continue;
        const int W = (int)prm[3], H = (int)prm[4];
        float *cond = malloc(sd_cond_floats(&m) * sizeof(float)), *lat = malloc((size_t)4 * (H / 8) * (W / 8) * 4);
        float *img = malloc((size_t)3 * H * W * sizeof(float));
        GenParams p = {.mode = GEN_TXT2IMG, .steps = (int)prm[0], .cfg_scale = prm[1], .sampler = SAMPLER_EULER,
                       .seed = (uint64_t)prm[2], .width = W, .height = H, .batch = 1};
        int rc = sd_encode_prompt(&m, "a photo of a red fox in the snow, high quality!", "blurry, low quality", 0,
                                  cond, &err);
        if (!rc) rc = sd_generate(&m, &p, cond, lat, img, NULL, NULL, &err);
        if (check_rc(t, rc, k ? "LoRA (diffusers names) at 0.7" : "LoRA (kohya names) at 0.7", &err)) {
            check_rel(t, k ? "latents with the diffusers-named LoRA" : "latents with the kohya LoRA", lat, wl,
                      (size_t)4 * (H / 8) * (W / 8), TOL_LATENT);
            check_image(t, "LoRA", img, W, H, ref, wi);
        }
        free(cond), free(lat), free(img);
        sd_model_free(&m);
    }
    free(prm), free(wl);
}

// The 9-channel SDXL inpainting UNet (tiny-sdxl-inpaint: tiny-sdxl's
// encoders, tokenizers and VAE) from a prompt through both tokenizers, as
// StableDiffusionXLInpaintPipeline draws it.
static void inpaint9(TestCtx *t, const Backend *be) {
    SdcError err = {0};
    StFile ref;
    const char *path = "tests/fixtures/tiny-sdxl-inpaint";
    printf("%s\n", path);
    if (!check_rc(t, st_open(&ref, "tests/fixtures/ref-tiny-sdxl-inpaint.safetensors", &err), "ref-tiny-sdxl-inpaint",
                  &err))
        return;
    SdModel m = {0};
    if (!check_rc(t, sd_model_load(&m, path, NULL, -1, be, &err), "sd_model_load", &err)) {
        st_close(&ref);
        return;
    }
    const ModelInfo *in = model_files_info(m.files);
    check_true(t, in->family == SD_FAMILY_XL && in->unet.in_channels == 9,
               "an SDXL inpainting UNet (family %d, %d input channels)", (int)in->family, in->unet.in_channels);
    float *prm = fixture_f32(t, &ref, "params", NULL);
    const StEntry *ie = st_find(&ref, "init.image_u8"), *me = st_find(&ref, "init.mask_u8");
    if (prm && ie && me) {
        const int W = (int)prm[3], H = (int)prm[4];
        float *cond = malloc(sd_cond_floats(&m) * sizeof(float)), *lat = malloc((size_t)4 * (H / 8) * (W / 8) * 4);
        float *img = malloc((size_t)3 * H * W * sizeof(float));
        float *init = malloc((size_t)3 * H * W * sizeof(float)), *mask = malloc((size_t)H * W * sizeof(float));
        Image im = {.width = W, .height = H, .channels = 3, .data = st_tensor(&ref, ie).data};
        Image mk = {.width = W, .height = H, .channels = 1, .data = st_tensor(&ref, me).data};
        check_true(t, !image_to_tensor(&im, init, &err) && !mask_to_tensor(&mk, mask, &err), "init image and mask");
        static const char *const CASES[3] = {"full", "s075", "zeroneg"};
        for (int k = 0; k < 3; k++) {
            const char *neg = k < 2 ? "blurry, low quality" : NULL;
            GenParams p = {.mode = GEN_INPAINT, .steps = (int)prm[0], .cfg_scale = prm[1], .sampler = SAMPLER_EULER,
                           .seed = (uint64_t)prm[2], .width = W, .height = H, .batch = 1, .init_image = init,
                           .mask = mask, .strength = k == 1 ? 0.75 : 1.0};
            char name[64];
            snprintf(name, sizeof name, "%s.latents", CASES[k]);
            float *wl = fixture_f32(t, &ref, name, NULL);
            snprintf(name, sizeof name, "%s.image", CASES[k]);
            const StEntry *wi = st_find(&ref, name);
            int rc = sd_encode_prompt(&m, "a photo of a red fox in the snow, high quality!", neg, 0, cond, &err);
            if (!rc) rc = sd_generate(&m, &p, cond, lat, img, NULL, NULL, &err);
            snprintf(name, sizeof name, "9-channel inpainting, %s", CASES[k]);
            if (wl && wi && check_rc(t, rc, name, &err)) {
                snprintf(name, sizeof name, "9-channel inpainting %s latents", CASES[k]);
                check_rel(t, name, lat, wl, (size_t)4 * (H / 8) * (W / 8), TOL_LATENT);
                snprintf(name, sizeof name, "9-channel inpainting %s", CASES[k]);
                check_image(t, name, img, W, H, &ref, wi);
            }
            free(wl);
        }
        free(cond), free(lat), free(img), free(init), free(mask);
    }
    free(prm);
    sd_model_free(&m);
    st_close(&ref);
}

// The diffusers folder: configuration, encoders, UNet, pipeline.
static void run_folder(TestCtx *t, const Backend *be, const char *path, const StFile *ref) {
    SdcError err = {0};
    ModelFiles *mf = NULL;
    printf("%s\n", path);
    if (!check_rc(t, model_files_open(&mf, path, NULL, -1, &err), "model_files_open", &err)) return;
    const ModelInfo *in = model_files_info(mf);
    check_true(t, in->family == SD_FAMILY_XL && in->has_clip2, "family SDXL with a second text encoder (family %d)",
               (int)in->family);
    check_true(t, in->unet.add_time_dim == 8 && in->unet.add_in_dim == 80 && in->unet.n_time_ids == 6,
               "added embedding: time dim %d, input %d, %d time ids", in->unet.add_time_dim, in->unet.add_in_dim,
               in->unet.n_time_ids);
    check_true(t, in->clip.pad_token == 999 && in->clip2.pad_token == 0 && in->clip2.projection_dim == 32,
               "pads: EOS (999) then \"!\" (0): %d, %d; projection %d", in->clip.pad_token, in->clip2.pad_token,
               in->clip2.projection_dim);
    check_true(t, fabsf(in->vae.scaling_factor - 0.13025f) < 1e-7f && in->force_zeros_negative,
               "VAE scaling factor 0.13025 (%g), force_zeros_for_empty_prompt", in->vae.scaling_factor);
    text_encoders(t, be, mf, ref, "");
    unet_check(t, be, mf, ref, "");
    model_files_close(mf);
    pipeline(t, be, path, NULL, ref);
    lora_check(t, be, path, ref);
}

// A single file in the original layout whose architecture is inferred as for
// SDXL base (conditioner.embedders.*, label_emb, the transposed OpenCLIP
// projection).
static void run_single(TestCtx *t, const Backend *be, const char *path, const StFile *ref) {
    SdcError err = {0};
    ModelFiles *mf = NULL;
    printf("%s (inferred)\n", path);
    if (!check_rc(t, model_files_open(&mf, path, NULL, -1, &err), "model_files_open", &err)) return;
    const ModelInfo *in = model_files_info(mf);
    const UnetConfig *u = &in->unet;
    check_true(t, in->family == SD_FAMILY_XL && in->has_clip2 && in->force_zeros_negative,
               "family SDXL, second encoder, zero negatives (family %d)", (int)in->family);
    check_true(t, u->add_time_dim == 256 && u->add_in_dim == 6 * 256 + 64 && u->n_time_ids == 6 &&
                   u->cross_dim == 128 && u->use_linear_projection && u->heads[1] == 1 &&
                   u->transformer_layers[1] == 2 && !u->down_attn[0] && u->down_attn[1],
               "UNet inferred: time ids 6 x %d, added input %d, context %d, linear %d, heads %d, depth %d",
               u->add_time_dim, u->add_in_dim, u->cross_dim, u->use_linear_projection, u->heads[1],
               u->transformer_layers[1]);
    check_true(t, in->clip.hidden == 64 && in->clip.layers == 2 && in->clip.act == ACT_QUICK_GELU &&
                   in->clip2.layers == 3 && in->clip2.act == ACT_GELU && in->clip2.projection_dim == 64 &&
                   in->clip2.pad_token == 0 && in->clip.pad_token == 999,
               "text encoders inferred: %d x %d quick_gelu, %d x %d gelu, projection %d, pads %d / %d",
               in->clip.layers, in->clip.hidden, in->clip2.layers, in->clip2.hidden, in->clip2.projection_dim,
               in->clip.pad_token, in->clip2.pad_token);
    check_true(t, fabsf(in->vae.scaling_factor - 0.13025f) < 1e-7f && u->sample_size == 128,
               "VAE scaling factor %g, default size %d px", in->vae.scaling_factor, 8 * u->sample_size);
    // no --config: the scheduler config diffusers' from_single_file gives an SDXL file (the base
    // repository's EulerDiscreteScheduler, "leading", steps_offset 1), not SD's PNDM one; Euler over 4
    // steps then runs diffusers' timesteps and sigmas:
    //   EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    //                          steps_offset=1, timestep_spacing="leading").set_timesteps(4)
    // (Euler's own default spacing, linspace, gives 999, 666, 333, 0)
    const SchedConfig *sc = &in->sched;
    check_true(t, !strcmp(sc->class_name, "EulerDiscreteScheduler") && (sc->have & SCHED_HAS_SPACING) &&
                   sc->spacing == SPACING_LEADING && sc->steps_offset == 1,
               "scheduler config: %s, spacing %s, steps_offset %d (diffusers' SDXL default: "
               "EulerDiscreteScheduler, leading, 1)", sc->class_name, sched_spacing_name(sc->spacing),
               sc->steps_offset);
    Sampler s;
    static const float TS[4] = {751, 501, 251, 1};
    static const float SIG[5] = {4.116698265075684f, 1.6236929893493652f, 0.6983985900878906f,
                                 0.04131447896361351f, 0.0f};
    if (check_rc(t, sampler_init_cfg(&s, SAMPLER_EULER, 4, sc, 0, 1, &err), "sampler_init_cfg", &err)) {
        double e = 0;
        for (int i = 0; i < 4; i++) e = fmax(e, fabs(s.timesteps[i] - TS[i]));
        for (int i = 0; i < 5 && i < s.n_sigmas; i++) e = fmax(e, fabs(s.sigmas[i] - SIG[i]) / fmax(SIG[i], 1.0));
        check_true(t, s.n_sigmas == 5 && e <= 1e-6, "euler, 4 steps: timesteps %g %g %g %g, sigmas as diffusers' "
                   "(max err %.2e)", s.timesteps[0], s.timesteps[1], s.timesteps[2], s.timesteps[3], e);
        sampler_free(&s);
    }
    text_encoders(t, be, mf, ref, "infer.");
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
    if (check_rc(&t, st_open(&ref, "tests/fixtures/ref-tiny-sdxl.safetensors", &err), "ref-tiny-sdxl", &err)) {
        run_folder(&t, be, "tests/fixtures/tiny-sdxl", &ref);
        run_single(&t, be, "tests/fixtures/tiny-sdxl-infer.safetensors", &ref);
        st_close(&ref);
    }
    inpaint9(&t, be);
    backend_destroy(be);
    return test_summary(&t);
}
