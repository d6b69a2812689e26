// test_vae_folder.c: `--vae FOLDER` (a diffusers AutoencoderKL folder of its
// own) against diffusers' pipeline(..., vae=AutoencoderKL.from_pretrained(FOLDER))
// (tools/make_vae_folder_fixture.py):
//   - SDXL (tiny-sdxl) with a VAE folder configured as madebyollin's
//     sdxl-vae-fp16-fix (scaling_factor 0.13025, force_upcast false);
//   - SD 1.x (tiny-sd1) with a VAE folder whose scaling factor (0.3) is not
//     the model's (0.18215): the folder's config decides, as in diffusers;
// txt2img (4 Euler steps) and img2img (strength 0.6, 8 steps: the encode
// side of the factor) from given embeddings: final latents within 1e-4 of
// max |ref|, 8-bit images within 1/255. fp32 CPU.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "pipeline/sd.h"
#include "testutil.h"

#define TOL_LATENT 1e-4

static void check_image(TestCtx *t, const char *what, const float *img, int W, int H, const StFile *ref,
                        const char *name) {
    const StEntry *e = st_find(ref, name);
    if (!check_true(t, e != NULL, "%s in the fixture", name)) return;
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

// pre "xl" / "sd1": model with --vae folder; sf: the folder's scaling factor.
static void run(TestCtx *t, const Backend *be, const StFile *ref, const char *pre, const char *model,
                const char *vae, float sf) {
    SdcError err = {0};
    SdModel m = {0};
    SdLoadOpts o = {.vae = vae};
    printf("%s --vae %s\n", model, vae);
    if (!check_true(t, sd_model_load_opts(&m, model, NULL, -1, be, &o, &err) == 0, "load: %s", err.msg)) return;
    check_true(t, fabsf(vae_config(m.vae)->scaling_factor - sf) < 1e-7f,
               "the VAE's scaling factor is the folder's config's: %g (want %g)", vae_config(m.vae)->scaling_factor, sf);
    char name[64];
    float *prm = fixture_f32(t, ref, "params", NULL);
    snprintf(name, sizeof name, "%s.ctx", pre);
    Tensor cs = {0};
    float *ctx = fixture_f32(t, ref, name, &cs);
    snprintf(name, sizeof name, "%s.pooled", pre);
    Tensor ps = {0};
    float *pooled = st_find(ref, name) ? fixture_f32(t, ref, name, &ps) : NULL;
    const StEntry *ie = st_find(ref, "init.image_u8");
    const size_t nctx = ctx ? (size_t)tensor_numel(&cs) : 0, npool = pooled ? (size_t)tensor_numel(&ps) : 0;
    if (prm && ctx && ie &&
        check_true(t, sd_cond_floats(&m) == nctx + npool, "conditioning floats %zu", sd_cond_floats(&m))) {
        const int W = (int)prm[3], H = (int)prm[4];
        float *cond = malloc((nctx + npool) * sizeof(float)), *lat = malloc((size_t)4 * (H / 8) * (W / 8) * 4);
        float *img = malloc((size_t)3 * H * W * sizeof(float)), *init = malloc((size_t)3 * H * W * sizeof(float));
        memcpy(cond, ctx, nctx * sizeof(float));
        if (npool) memcpy(cond + nctx, pooled, npool * sizeof(float));
        Image im = {.width = W, .height = H, .channels = 3, .data = st_tensor(ref, ie).data};
        check_true(t, !image_to_tensor(&im, init, &err), "init image");
        for (int k = 0; k < 2; k++) {
            const char *mode = k ? "img2img" : "txt2img";
            GenParams p = {.mode = k ? GEN_IMG2IMG : GEN_TXT2IMG, .steps = k ? (int)prm[6] : (int)prm[0],
                           .cfg_scale = prm[1], .sampler = SAMPLER_EULER, .seed = (uint64_t)prm[2], .width = W,
                           .height = H, .batch = 1, .init_image = k ? init : NULL, .strength = k ? prm[5] : 0};
            snprintf(name, sizeof name, "%s.%s.latents", pre, mode);
            float *wl = fixture_f32(t, ref, name, NULL);
            int rc = sd_generate(&m, &p, cond, lat, img, NULL, NULL, &err);
            if (wl && check_true(t, rc == 0, "%s %s: %s", pre, mode, rc ? err.msg : "")) {
                snprintf(name, sizeof name, "%s %s latents", pre, mode);
                check_rel(t, name, lat, wl, (size_t)4 * (H / 8) * (W / 8), TOL_LATENT);
                char iname[64];
                snprintf(iname, sizeof iname, "%s.%s.image", pre, mode);
                snprintf(name, sizeof name, "%s %s", pre, mode);
                check_image(t, name, img, W, H, ref, iname);
            }
            free(wl);
        }
        free(cond), free(lat), free(img), free(init);
    }
    free(prm), free(ctx), free(pooled);
    sd_model_free(&m);
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
    if (check_true(&t, st_open(&ref, "tests/fixtures/ref-vae-folders.safetensors", &err) == 0, "ref-vae-folders: %s",
                   err.msg)) {
        run(&t, be, &ref, "xl", "tests/fixtures/tiny-sdxl", "tests/fixtures/tiny-sdxl-vae-fp16fix", 0.13025f);
        run(&t, be, &ref, "sd1", "tests/fixtures/tiny-sd1", "tests/fixtures/tiny-sd1-vae-sf", 0.3f);
        st_close(&ref);
    }
    backend_destroy(be);
    return test_summary(&t);
}
