// test_vae_tiled.c: tiled VAE decode and encode against diffusers'
// AutoencoderKL with enable_tiling() (tools/make_ref_vae_tiled.py writes
// tests/fixtures/ref-vae-tiled.safetensors: the tiny-sd1 VAE, 64-pixel tiles,
// overlap factor 0.25 = VaeTiling {8, 2}). Decode z (1, 4, 10, 20) in 2 x 4
// tiles and compare the blended image; encode that image (1, 3, 80, 160) in
// 2 x 4 tiles and compare mean and logvar; then both again at batch 2 (the
// reference twice). fp32 CPU, tolerance 1e-4 of max |ref| as test_vae.c (one
// tile is a plain decode, the blend is a convex combination). Also: the
// tiled result must differ from the untiled one (tiling really happened),
// the tiled arena must be smaller, and the SD VAE plans at 512/1024/2048 px
// with and without tiling, and the auto rule, are printed and checked.
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

// A reference tensor as a new f32 buffer (n elements); NULL when absent.
static float *ref_f32(TestCtx *t, const StFile *f, const char *name, size_t *n) {
    const StEntry *e = st_find(f, name);
    if (!check_true(t, e != NULL, "%s: reference tensor %s present", f->path, name)) return NULL;
    Tensor r = st_tensor(f, e);
    *n = (size_t)tensor_numel(&r);
    float *out = malloc(*n * sizeof(float));
    convert_to_f32(out, r.data, r.dtype, *n);
    return out;
}

// The reference twice, for batch 2.
static float *twice(const float *x, size_t n) {
    float *y = malloc(2 * n * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    memcpy(y + n, x, n * sizeof(float));
    return y;
}

static void run_tiny(TestCtx *t, const Backend *be, const StFile *ref) {
    SdcError err = {0};
    ModelFiles *mf = NULL;
    if (!check_rc(t, model_files_open(&mf, "tests/fixtures/tiny-sd1", NULL, -1, &err), "model_files_open", &err))
        return;
    Vae *m = NULL;
    if (!check_rc(t, vae_load(&m, mf, be, &err), "vae_load", &err)) {
        model_files_close(mf);
        return;
    }
    size_t nz, nd, nm, nl;
    float *z = ref_f32(t, ref, "z", &nz);             // (1, 4, 10, 20)
    float *dec_ref = ref_f32(t, ref, "decoded", &nd); // (1, 3, 80, 160)
    float *mean_ref = ref_f32(t, ref, "mean", &nm);   // (1, 4, 10, 20)
    float *lv_ref = ref_f32(t, ref, "logvar", &nl);   // (1, 4, 10, 20)
    const VaeTiling tiles = {8, 2};
    const int h = 10, w = 20, H = 80, W = 160;
    if (z && dec_ref && mean_ref && lv_ref && nz == 800 && nd == 38400 && nm == 800 && nl == 800 &&
        check_rc(t, vae_reserve_tiled(m, 2, H, W, &tiles, &err), "vae_reserve_tiled (2, 3, 80, 160), tile 8", &err)) {
        size_t tiled_bytes = vae_activation_bytes(m);
        printf("  tiled arena (batch 2, 80x160, 64-px tiles): %.1f KiB\n", tiled_bytes / 1024.0);
        float *dec = calloc(2 * nd, sizeof(float)), *mean = calloc(2 * nm, sizeof(float));
        float *lv = calloc(2 * nm, sizeof(float));
        float *z2 = twice(z, nz), *img2 = twice(dec_ref, nd);
        for (int N = 1; N <= 2; N++) {
            char label[96];
            Tensor tz = tensor_f32(z2, 4, (int64_t[]){N, 4, h, w});
            Tensor td = tensor_f32(dec, 4, (int64_t[]){N, 3, H, W});
            Tensor ti = tensor_f32(img2, 4, (int64_t[]){N, 3, H, W});
            Tensor tm = tensor_f32(mean, 4, (int64_t[]){N, 4, h, w});
            Tensor tl = tensor_f32(lv, 4, (int64_t[]){N, 4, h, w});
            double t0 = now_s();
            int rc = vae_decode_tiled(m, &tz, &td, &tiles, &err);
            snprintf(label, sizeof label, "vae_decode_tiled batch %d (%.1f ms)", N, (now_s() - t0) * 1e3);
            if (check_rc(t, rc, label, &err))
                for (int i = 0; i < N; i++) {
                    snprintf(label, sizeof label, "decoded [%d] (2x4 tiles)", i);
                    check_rel(t, label, dec + i * nd, dec_ref, nd, TOL);
                }
            t0 = now_s();
            rc = vae_encode_tiled(m, &ti, &tm, &tl, &tiles, &err);
            snprintf(label, sizeof label, "vae_encode_tiled batch %d (%.1f ms)", N, (now_s() - t0) * 1e3);
            if (check_rc(t, rc, label, &err))
                for (int i = 0; i < N; i++) {
                    snprintf(label, sizeof label, "mean [%d] (2x4 tiles)", i);
                    check_rel(t, label, mean + i * nm, mean_ref, nm, TOL);
                    snprintf(label, sizeof label, "logvar [%d] (2x4 tiles)", i);
                    check_rel(t, label, lv + i * nm, lv_ref, nm, TOL);
                }
        }
        // Untiled on the same input: must differ (the tiles were normalised
        // on their own) and plan more.
        Tensor tz = tensor_f32(z, 4, (int64_t[]){1, 4, h, w});
        Tensor td = tensor_f32(dec, 4, (int64_t[]){1, 3, H, W});
        if (check_rc(t, vae_reserve(m, 1, H, W, &err), "vae_reserve (1, 3, 80, 160) untiled", &err) &&
            check_rc(t, vae_decode(m, &tz, &td, &err), "vae_decode untiled", &err)) {
            double e = rel_err(dec, dec_ref, nd);
            check_true(t, e > 1e-2, "untiled differs from tiled (rel %.3g): tiling happened", e);
            check_true(t, vae_activation_bytes(m) > tiled_bytes, "untiled arena %.1f KiB > tiled %.1f KiB",
                       vae_activation_bytes(m) / 1024.0, tiled_bytes / 1024.0);
        }
        // A latent that fits one tile decodes untiled, as diffusers.
        Tensor z1 = tensor_f32(z, 4, (int64_t[]){1, 4, 8, 8});
        float *a = calloc(3 * 64 * 64, sizeof(float)), *b = calloc(3 * 64 * 64, sizeof(float));
        Tensor ta = tensor_f32(a, 4, (int64_t[]){1, 3, 64, 64}), tb = tensor_f32(b, 4, (int64_t[]){1, 3, 64, 64});
        if (!vae_decode(m, &z1, &ta, &err) && !vae_decode_tiled(m, &z1, &tb, &tiles, &err))
            check_true(t, max_abs_diff(a, b, 3 * 64 * 64) == 0.0, "one-tile latent: tiled == untiled");
        else
            check_true(t, 0, "one-tile decode: %s", err.msg);
        VaeTiling bad = {8, 8};
        check_true(t, vae_decode_tiled(m, &tz, &td, &bad, &err) == SDC_ERR_ARG, "overlap == tile refused");
        free(a);
        free(b);
        free(dec);
        free(mean);
        free(lv);
        free(z2);
        free(img2);
    }
    free(z);
    free(dec_ref);
    free(mean_ref);
    free(lv_ref);
    vae_free(m);
    model_files_close(mf);
}

// The SD 1.x/2.x VAE, f32, batch 1: activation plans with and without
// 64-latent-pixel tiles (512 px, overlap 16), and the auto rule.
static void plan_sd(TestCtx *t) {
    VaeConfig sd = {.in_channels = 3, .out_channels = 3, .latent_channels = 4, .n_levels = 4,
                    .block_out = {128, 256, 512, 512}, .layers_per_block = 2, .norm_groups = 32,
                    .norm_eps = 1e-6f, .scaling_factor = 0.18215f, .sample_size = 512};
    const VaeTiling tiles = {VAE_TILE_DEFAULT, VAE_TILE_DEFAULT / 4};
    SdcError err = {0};
    printf("SD VAE plan, f32, batch 1 (MiB of activations)\n  %6s %10s %10s %10s %10s  auto\n", "px",
           "encode", "decode", "enc tiled", "dec tiled");
    const int sizes[] = {512, 768, 1024, 2048};
    for (int i = 0; i < 4; i++) {
        const int s = sizes[i];
        size_t enc, dec, enc_t, dec_t;
        if (!check_rc(t, vae_plan(&sd, DT_F32, 1, s, s, &enc, &dec, &err), "vae_plan", &err) ||
            !check_rc(t, vae_plan_tiled(&sd, DT_F32, 1, s, s, &tiles, &enc_t, &dec_t, &err), "vae_plan_tiled", &err))
            return;
        VaeTiling a = vae_tiling_auto(&sd, DT_F32, 1, s, s);
        printf("  %6d %10.1f %10.1f %10.1f %10.1f  %s\n", s, enc / MIB, dec / MIB, enc_t / MIB, dec_t / MIB,
               a.tile ? "tiled" : "untiled");
        // Tiled plans are bounded by one 512-px tile plus the tile buffers.
        check_true(t, dec_t <= (size_t)660 << 20, "%d px: tiled decode plan %.1f MiB <= 660 MiB", s, dec_t / MIB);
        check_true(t, (a.tile != 0) == (dec > VAE_TILE_BUDGET), "%d px: auto tiles iff the decode plan > 1 GiB", s);
    }
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
    StFile ref;
    const char *refp = "tests/fixtures/ref-vae-tiled.safetensors";
    if (check_rc(&t, st_open(&ref, refp, &err), refp, &err)) {
        printf("tiny-sd1 vae, tiles of 8 latent px (64 px), overlap 2 (diffusers' factor 0.25)\n");
        run_tiny(&t, be, &ref);
        st_close(&ref);
    }
    backend_destroy(be);
    return test_summary(&t);
}
