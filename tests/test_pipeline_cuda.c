// test_pipeline_cuda.c: whole generations (sd_generate) on the CUDA backend
// against the CPU backend, the reference: the same requests, the same
// embeddings, the same seeds -> the same final latents and decoded images.
//
// Requests: every case of tests/fixtures/ref-pipeline.safetensors (the ones
// tests/test_pipeline.c checks the CPU against diffusers with): txt2img at
// 64x64 and at the odd size 64x48 (no guidance), img2img, inpainting with the
// 9-channel UNet (tiny-sd1-inpaint) and with a regular UNet (4-channel blend),
// samplers euler, euler_a, ddim, dpm++2m, dpm++2m_sde, batches 1 and 2.
// Each case runs once on the CPU (fp32) and once per CUDA activation dtype
// (F32, BF16). Per case and dtype it prints the latents' rel error (max
// |gpu - cpu| / max |cpu|) and the PSNR of the decoded images as pixels
// (image_from_vae, u8, over all items), both checked:
// - F32: latents 1e-4 (test_pipeline's tolerance against diffusers: fp32 in
//   another summation order, amplified by 5-10 UNet evaluations through
//   random weights; single ops agree to ~1e-6, docs/gpu.md), images PSNR
//   > 60 dB or identical (60 dB is an RMS error of 0.26 of a grey level:
//   a few pixels one level off);
// - BF16: latents 0.25, images PSNR > 25 dB. One bf16 UNet pass is 2.6e-2
//   off (docs/gpu.md, ~25 roundings of 2^-9 each); a sampler chain feeds
//   every step's error into the next, and the tiny random-weight UNets have
//   a gain above 1, so 6-10 evaluations can grow it several times; the bf16
//   VAE decode adds 1.4e-2 of its range. 0.25 / 25 dB (RMS error 14 grey
//   levels) hold that with room and still catch a real bug, which gives an
//   O(1) error (PSNR ~10 dB). The measured figures are printed either way.
//   H100, 2026-11-25 (docs/gpu.md): F32 latents <= 3.2e-6, PSNR >= 80 dB;
//   BF16 latents 5.7e-3 .. 0.11, PSNR 36.3 .. 48.1 dB.
//
// Without a GPU it prints "SKIPPED: no CUDA device (reason)" and exits 77
// (CTest: skipped), unless SDC_REQUIRE_GPU=1 (tests/gpu/run.sh), where that is a failure.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/image.h"
#include "io/safetensors.h"
#include "pipeline/sd.h"
#include "testutil.h"

#define FIX "tests/fixtures"
#define N_DT 2
static const DType DTS[N_DT] = {DT_F32, DT_BF16};

static double lat_tol(DType dt) { return dt == DT_F32 ? 1e-4 : 0.25; }
static double psnr_min(DType dt) { return dt == DT_F32 ? 60.0 : 25.0; }

// One request, as read from the fixture, with its host inputs.
typedef struct Case {
    char name[64], model[64], mode[16], sampler[32];
    GenParams p;
    const float *ctx; // (2, L, D)
    float *img;       // (3, H, W) init image in [-1, 1]
    float *mask;      // (H, W) {0, 1}
    size_t nlat, nimg; // floats in latents (B, 4, h, w) and images (B, 3, H, W)
} Case;

// One generation's outputs (malloc'd).
typedef struct Result {
    float *lat, *img;
    double seconds;
} Result;

static void result_free(Result *r) {
    free(r->lat), free(r->img);
    memset(r, 0, sizeof *r);
}

// Reads case `name` of the fixture into c; 0 on success.
static int case_read(const StFile *f, const char *name, Case *c, SdcError *err) {
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    const char *v = st_meta(f, name);
    if (!v || sscanf(v, "%63[^|]|%15[^|]|%31s", c->model, c->mode, c->sampler) != 3)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: metadata missing", name);
    char key[128];
    snprintf(key, sizeof key, "%s.params", name);
    const StEntry *pe = st_find(f, key);
    snprintf(key, sizeof key, "%s.ctx", name);
    const StEntry *ce = st_find(f, key);
    if (!pe || !ce) return sdc_err(err, SDC_ERR_FORMAT, "%s: params or ctx missing", name);
    const float *prm = st_tensor(f, pe).data; // steps, cfg, strength, seed, batch, W, H
    c->p = (GenParams){.steps = (int)prm[0], .cfg_scale = prm[1], .strength = prm[2], .seed = (uint64_t)prm[3],
                       .batch = (int)prm[4], .width = (int)prm[5], .height = (int)prm[6]};
    c->p.mode = !strcmp(c->mode, "txt2img") ? GEN_TXT2IMG : !strcmp(c->mode, "img2img") ? GEN_IMG2IMG : GEN_INPAINT;
    c->ctx = st_tensor(f, ce).data;
    SDC_TRY(sampler_parse(c->sampler, &c->p.sampler, err));
    const size_t npix = (size_t)c->p.width * c->p.height;
    c->nlat = (size_t)c->p.batch * 4 * (c->p.height / 8) * (c->p.width / 8);
    c->nimg = (size_t)c->p.batch * 3 * npix;
    c->img = malloc(3 * npix * sizeof(float));
    c->mask = malloc(npix * sizeof(float));
    if (!c->img || !c->mask) return sdc_err(err, SDC_ERR_OOM, "%s: inputs", name);
    if (c->p.mode != GEN_TXT2IMG) {
        snprintf(key, sizeof key, "%s.image_u8", name);
        const StEntry *ie = st_find(f, key);
        if (!ie) return sdc_err(err, SDC_ERR_FORMAT, "%s missing", key);
        Image im = {.width = c->p.width, .height = c->p.height, .channels = 3, .data = st_tensor(f, ie).data};
        SDC_TRY(image_to_tensor(&im, c->img, err));
        c->p.init_image = c->img;
    }
    if (c->p.mode == GEN_INPAINT) {
        snprintf(key, sizeof key, "%s.mask_u8", name);
        const StEntry *me = st_find(f, key);
        if (!me) return sdc_err(err, SDC_ERR_FORMAT, "%s missing", key);
        Image mk = {.width = c->p.width, .height = c->p.height, .channels = 1, .data = st_tensor(f, me).data};
        SDC_TRY(mask_to_tensor(&mk, c->mask, err));
        c->p.mask = c->mask;
    }
    return 0;
}

static void case_free(Case *c) {
    free(c->img), free(c->mask);
    c->img = c->mask = NULL;
}

// Loads c's model on be and runs c's request; 0 on success.
static int generate(const Case *c, const Backend *be, Result *r, SdcError *err) {
    char path[256];
    snprintf(path, sizeof path, FIX "/%s", c->model);
    memset(r, 0, sizeof *r);
    SdModel m;
    SDC_TRY(sd_model_load(&m, path, NULL, -1, be, err));
    r->lat = malloc(c->nlat * sizeof(float));
    r->img = malloc(c->nimg * sizeof(float));
    int rc = (!r->lat || !r->img) ? sdc_err(err, SDC_ERR_OOM, "outputs") : 0;
    double t0 = now_s();
    if (!rc) rc = sd_generate(&m, &c->p, c->ctx, r->lat, r->img, NULL, NULL, err);
    r->seconds = now_s() - t0;
    sd_model_free(&m);
    if (rc) result_free(r);
    return rc;
}

// PSNR in dB of the decoded images as u8 pixels (INFINITY when identical).
static double image_psnr(const Case *c, const float *got, const float *ref) {
    const int B = c->p.batch, H = c->p.height, W = c->p.width;
    const size_t n = (size_t)H * W * 3;
    uint8_t *a = malloc(n), *b = malloc(n);
    double se = 0;
    for (int i = 0; a && b && i < B; i++) {
        image_from_vae(a, got, i, H, W);
        image_from_vae(b, ref, i, H, W);
        for (size_t k = 0; k < n; k++) se += (double)(a[k] - b[k]) * (a[k] - b[k]);
    }
    free(a), free(b);
    double mse = se / ((double)n * B);
    return mse == 0 ? INFINITY : 10.0 * log10(255.0 * 255.0 / mse);
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Backend *gpu[N_DT] = {0};
    const int gpu_rc = test_cuda_backend(&gpu[0], DTS[0]);
    if (gpu_rc >= 0) return gpu_rc;
    for (int d = 1; d < N_DT; d++)
        if (backend_cuda_create(&gpu[d], 0, DTS[d], &err) != SDC_OK)
            check_true(&t, 0, "create CUDA backend %s: %s", dtype_name(DTS[d]), err.msg);
    Backend *cpu = NULL;
    StFile f;
    if (backend_cpu_create(&cpu, 0, &err) || st_open(&f, FIX "/ref-pipeline.safetensors", &err)) {
        fprintf(stderr, "test_pipeline_cuda: %s\n", err.msg);
        return 1;
    }
    const char *cases = st_meta(&f, "cases");
    if (!cases) check_true(&t, 0, "%s lists its cases", f.path);
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", cases ? cases : "");

    printf("sd_generate on CUDA against the CPU backend (final latents: rel error; images: u8 PSNR)\n");
    printf("%-14s %-17s %-8s %-12s %-7s %-5s %10s %9s %8s %8s\n", "case", "model", "mode", "sampler", "size",
           "dtype", "lat rel", "PSNR dB", "cpu s", "gpu s");
    double t0 = now_s();
    for (char *name = strtok(buf, ","); name; name = strtok(NULL, ",")) {
        Case c;
        Result ref;
        if (case_read(&f, name, &c, &err) || generate(&c, cpu, &ref, &err)) {
            check_true(&t, 0, "%s on the CPU: %s", name, err.msg);
            case_free(&c);
            continue;
        }
        for (int d = 0; d < N_DT; d++) {
            if (!gpu[d]) continue;
            Result got;
            if (generate(&c, gpu[d], &got, &err)) {
                check_true(&t, 0, "%s on CUDA %s: %s", name, dtype_name(DTS[d]), err.msg);
                continue;
            }
            double lrel = rel_err(got.lat, ref.lat, c.nlat);
            double psnr = image_psnr(&c, got.img, ref.img);
            char size[16];
            snprintf(size, sizeof size, "%dx%d", c.p.width, c.p.height);
            printf("%-14s %-17s %-8s %-12s %-7s %-5s %10.2e %9.1f %8.2f %8.2f\n", c.name, c.model, c.mode,
                   c.sampler, size, dtype_name(DTS[d]), lrel, psnr, ref.seconds, got.seconds);
            check_true(&t, lrel <= lat_tol(DTS[d]) && psnr > psnr_min(DTS[d]),
                       "%s [%s] latents rel %.2e <= %.2g, image PSNR %.1f dB > %.0f dB", name, dtype_name(DTS[d]),
                       lrel, lat_tol(DTS[d]), psnr, psnr_min(DTS[d]));
            result_free(&got);
        }
        result_free(&ref);
        case_free(&c);
    }
    printf("(%.1f s)\n", now_s() - t0);
    for (int d = 0; d < N_DT; d++)
        if (gpu[d]) backend_destroy(gpu[d]);
    backend_destroy(cpu);
    st_close(&f);
    return test_summary(&t);
}
