// test_vae.c: parity of the VAE with diffusers' AutoencoderKL on the tiny
// fixtures (tools/make_fixtures.py), in both weight layouts (diffusers folder;
// original single file with the folder as config_dir): encode vae.image and
// compare the mean and logvar, decode vae.z and compare the image; then the
// same with a batch of two (both rows must match the reference). fp32 CPU,
// tolerance 1e-4 of max |ref|. Also prints the planned activation memory, and
// checks that a 512x512 decode with the real SD VAE config plans no more than
// its 256-channel main buffer plus two temporaries (640 MiB in f32).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/vae.h"
#include "testutil.h"

#define TOL 1e-4
#define MIB (1024.0 * 1024.0)

static int check_rc(TestCtx *t, int rc, const char *what, const SdcError *err) {
    return check_true(t, rc == 0, "%s%s%s", what, rc ? ": " : "", rc ? err->msg : "");
}

// A reference tensor as a new f32 buffer, with its shape; NULL (and a failed
// check) when absent.
static float *ref_f32(TestCtx *t, const StFile *f, const char *name, Tensor *shape) {
    const StEntry *e = st_find(f, name);
    if (!check_true(t, e != NULL, "%s: reference tensor %s present", f->path, name)) return NULL;
    Tensor r = st_tensor(f, e);
    size_t n = (size_t)tensor_numel(&r);
    float *out = malloc(n * sizeof(float));
    convert_to_f32(out, r.data, r.dtype, n);
    *shape = tensor_f32(out, r.ndim, r.shape);
    return out;
}

// Runs encode and decode of a batch of N: img (N, 3, H, W) -> mean, lv
// (N, L, h, w); z (N, L, h, w) -> dec (N, 3, H, W). Shapes from the
// reference tensors (1, ...).
static int run_batch(TestCtx *t, Vae *m, int N, const Tensor *img1, const Tensor *lat1,
                     const Tensor *dec1, float *img, float *z, float *mean, float *lv, float *dec,
                     const char *what) {
    SdcError err = {0};
    const int64_t *si = img1->shape, *sl = lat1->shape, *sd = dec1->shape;
    Tensor ti = tensor_f32(img, 4, (int64_t[]){N, si[1], si[2], si[3]});
    Tensor tm = tensor_f32(mean, 4, (int64_t[]){N, sl[1], sl[2], sl[3]});
    Tensor tl = tensor_f32(lv, 4, tm.shape);
    Tensor tz = tensor_f32(z, 4, tm.shape);
    Tensor td = tensor_f32(dec, 4, (int64_t[]){N, sd[1], sd[2], sd[3]});
    char label[96];
    double t0 = now_s();
    int rc = vae_encode(m, &ti, &tm, &tl, &err);
    double t1 = now_s();
    snprintf(label, sizeof label, "vae_encode %s batch %d (%.1f ms)", what, N, (t1 - t0) * 1e3);
    if (!check_rc(t, rc, label, &err)) return 0;
    t0 = now_s();
    rc = vae_decode(m, &tz, &td, &err);
    t1 = now_s();
    snprintf(label, sizeof label, "vae_decode %s batch %d (%.1f ms)", what, N, (t1 - t0) * 1e3);
    return check_rc(t, rc, label, &err);
}

static void run_layout(TestCtx *t, const Backend *be, const char *path, const char *config_dir,
                       const StFile *ref) {
    SdcError err = {0};
    ModelFiles *mf = NULL;
    printf("%s%s%s\n", path, config_dir ? " with config " : "", config_dir ? config_dir : "");
    if (!check_rc(t, model_files_open(&mf, path, config_dir, -1, &err), "model_files_open", &err))
        return;
    Vae *m = NULL;
    if (!check_rc(t, vae_load(&m, mf, be, &err), "vae_load", &err)) {
        model_files_close(mf);
        return;
    }
    const VaeConfig *c = vae_config(m);
    printf("  config: %d levels (%d, %d, %d, %d), layers_per_block %d, latent %d, groups %d\n",
           c->n_levels, c->block_out[0], c->block_out[1], c->block_out[2], c->block_out[3],
           c->layers_per_block, c->latent_channels, c->norm_groups);

    Tensor img, mean_ref, lv_ref, z, dec_ref; // reference tensors (1, ...)
    float *img_d = ref_f32(t, ref, "vae.image", &img);
    float *mean_d = ref_f32(t, ref, "vae.mean", &mean_ref);
    float *lv_d = ref_f32(t, ref, "vae.logvar", &lv_ref);
    float *z_d = ref_f32(t, ref, "vae.z", &z);
    float *dec_d = ref_f32(t, ref, "vae.decoded", &dec_ref);
    if (img_d && mean_d && lv_d && z_d && dec_d && img.ndim == 4 && z.ndim == 4) {
        const int64_t H = img.shape[2], W = img.shape[3];
        size_t nm = (size_t)tensor_numel(&mean_ref);
        size_t nd = (size_t)tensor_numel(&dec_ref);
        if (check_rc(t, vae_reserve(m, 2, (int)H, (int)W, &err), "vae_reserve (2, 3, H, W)", &err)) {
            printf("  params %.1f KiB, activations %.1f KiB (batch 2, %lldx%lld)\n",
                   vae_param_bytes(m) / 1024.0, vae_activation_bytes(m) / 1024.0, (long long)H,
                   (long long)W);
            const size_t nl = nm, nim = (size_t)tensor_numel(&img);
            // Batch 1 on the reference inputs.
            float *mean = calloc(2 * nl, sizeof(float)), *lv = calloc(2 * nl, sizeof(float));
            float *dec = calloc(2 * nd, sizeof(float));
            if (run_batch(t, m, 1, &img, &mean_ref, &dec_ref, img_d, z_d, mean, lv, dec, "ref")) {
                check_rel(t, "vae.mean", mean, mean_d, nl, TOL);
                check_rel(t, "vae.logvar", lv, lv_d, nl, TOL);
                check_rel(t, "vae.decoded", dec, dec_d, nd, TOL);
            }
            // Batch 2 = [noise, reference]: row 1 must match the reference and
            // row 0 a batch-1 run on the noise (no mixing between samples).
            float *img2 = malloc(2 * nim * sizeof(float)), *z2 = malloc(2 * nl * sizeof(float));
            fill_uniform(img2, nim, 7, -1.0f, 1.0f);
            fill_uniform(z2, nl, 8, -2.0f, 2.0f);
            memcpy(img2 + nim, img_d, nim * sizeof(float));
            memcpy(z2 + nl, z_d, nl * sizeof(float));
            float *mean0 = calloc(nl, sizeof(float)), *lv0 = calloc(nl, sizeof(float));
            float *dec0 = calloc(nd, sizeof(float));
            int ok0 = run_batch(t, m, 1, &img, &mean_ref, &dec_ref, img2, z2, mean0, lv0, dec0, "noise");
            if (run_batch(t, m, 2, &img, &mean_ref, &dec_ref, img2, z2, mean, lv, dec, "[noise, ref]")) {
                check_rel(t, "vae.mean [1]", mean + nl, mean_d, nl, TOL);
                check_rel(t, "vae.logvar [1]", lv + nl, lv_d, nl, TOL);
                check_rel(t, "vae.decoded [1]", dec + nd, dec_d, nd, TOL);
                if (ok0) {
                    check_rel(t, "noise mean [0] vs batch 1", mean, mean0, nl, TOL);
                    check_rel(t, "noise logvar [0] vs batch 1", lv, lv0, nl, TOL);
                    check_rel(t, "noise decoded [0] vs batch 1", dec, dec0, nd, TOL);
                }
            }
            free(img2);
            free(z2);
            free(mean0);
            free(lv0);
            free(dec0);
            free(mean);
            free(lv);
            free(dec);
            // More than was planned is refused, not overrun.
            Tensor big = tensor_f32(img_d, 4, (int64_t[]){3, img.shape[1], H, W});
            Tensor bm = tensor_f32(mean_d, 4, (int64_t[]){3, mean_ref.shape[1], mean_ref.shape[2], mean_ref.shape[3]});
            int rc = vae_encode(m, &big, &bm, &bm, &err);
            check_true(t, rc == SDC_ERR_ARG, "batch 3 past the plan refused (rc %d)", rc);
        }
    }
    free(img_d);
    free(mean_d);
    free(lv_d);
    free(z_d);
    free(dec_d);
    vae_free(m);
    model_files_close(mf);
}

// The real SD 1.x/2.x VAE at 512x512, f32, batch 1: planned from the config
// alone. Decode peak: main (256 ch, 512^2) + norm1 output (256 ch) + conv1
// output (128 ch) in the first ResNet of the last level = 640 MiB.
static void plan_sd(TestCtx *t) {
    VaeConfig sd = {.in_channels = 3, .out_channels = 3, .latent_channels = 4, .n_levels = 4,
                    .block_out = {128, 256, 512, 512}, .layers_per_block = 2, .norm_groups = 32,
                    .norm_eps = 1e-6f, .scaling_factor = 0.18215f, .sample_size = 512};
    SdcError err = {0};
    size_t enc = 0, dec = 0;
    printf("SD VAE plan\n");
    if (!check_rc(t, vae_plan(&sd, DT_F32, 1, 512, 512, &enc, &dec, &err), "vae_plan 512x512", &err))
        return;
    printf("  512x512 f32 batch 1: encode %.1f MiB, decode %.1f MiB of activations\n", enc / MIB, dec / MIB);
    check_true(t, dec <= (size_t)640 << 20, "decode plan %.1f MiB <= 640 MiB", dec / MIB);
    check_true(t, enc <= (size_t)384 << 20, "encode plan %.1f MiB <= 384 MiB", enc / MIB);
    if (!vae_plan(&sd, DT_F32, 1, 768, 768, &enc, &dec, &err))
        printf("  768x768 f32 batch 1: encode %.1f MiB, decode %.1f MiB\n", enc / MIB, dec / MIB);
    check_true(t, vae_plan(&sd, DT_F32, 1, 500, 512, &enc, &dec, &err) == SDC_ERR_ARG,
               "500x512 refused (not a multiple of 8)");
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Backend *be = NULL;
    if (backend_cpu_create(&be, 0, &err)) {
        fprintf(stderr, "backend_cpu_create: %s\n", err.msg);
        return 1;
    }
    plan_sd(&t);
    const char *models[] = {"tiny-sd1", "tiny-sd2"};
    for (int i = 0; i < 2; i++) {
        char folder[256], single[256], refp[256];
        snprintf(folder, sizeof folder, "tests/fixtures/%s", models[i]);
        snprintf(single, sizeof single, "tests/fixtures/%s.safetensors", models[i]);
        snprintf(refp, sizeof refp, "tests/fixtures/ref-%s.safetensors", models[i]);
        StFile ref;
        if (!check_rc(&t, st_open(&ref, refp, &err), refp, &err)) continue;
        run_layout(&t, be, folder, NULL, &ref);
        run_layout(&t, be, single, folder, &ref);
        st_close(&ref);
    }
    backend_destroy(be);
    return test_summary(&t);
}
