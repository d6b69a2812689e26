// test_unet_cuda.c: the whole models on the CUDA backend against the
// diffusers references of the tiny fixtures (tools/make_fixtures.py), with
// activations and weights in F32, then BF16:
// - UNet: ref-<name>.safetensors unet.x / unet.t / unet.ctx -> unet.out,
//   for tiny-sd1 and tiny-sd2 (diffusers folders), batch 2;
// - CLIP text encoder: text.ids -> text.hidden (causal attention);
// - VAE: vae.z -> vae.decoded, vae.image -> vae.mean (its mid-block
//   attention is one head of the full channel width).
// Tolerances, relative to max |ref|:
// - F32: 1e-4, as the CPU tests (fp32 throughout, TF32 off; the GPU sums in
//   another order, expected ~1e-6);
// - BF16: 5e-2. Weights are rounded once to bf16 (2^-9 relative) and every
//   op rounds its output to bf16; the longest path of the tiny UNet runs
//   through ~25 such roundings (convs, norms, linears, attention with bf16
//   softmax weights), which add up like a random walk to ~sqrt(25) * 2^-9
//   ~ 1e-2 of the typical value, more at the largest outputs: 5e-2 leaves
//   room for that and still fails any real bug (a wrong op is O(1)).
// The figure is printed per model and dtype.
//
// Without a GPU it prints "SKIPPED: no CUDA device (reason)" and exits 77
// (CTest: skipped), unless SDC_REQUIRE_GPU=1 (tests/gpu/run.sh), where that is a failure.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/clip.h"
#include "models/unet.h"
#include "models/vae.h"
#include "testutil.h"

#define FIX "tests/fixtures"

static double tol_of(DType dt) { return dt == DT_F32 ? 1e-4 : 5e-2; }

// A reference tensor as host f32 (malloc'd), its shape in *shape; NULL and a
// failed check if absent.
// A device tensor of be's activation dtype (caller frees .data with be->free).
static Tensor dev_tensor(const Backend *be, int ndim, const int64_t *shape) {
    Tensor t = tensor_make(be->act_dtype, DEV_CUDA, NULL, ndim, shape);
    t.data = be->alloc(be, tensor_bytes(&t));
    if (!t.data) {
        fprintf(stderr, "test_unet_cuda: out of GPU memory\n");
        exit(2);
    }
    return t;
}

static Tensor dev_from_host(const Backend *be, const float *h, const Tensor *shape) {
    Tensor t = dev_tensor(be, shape->ndim, shape->shape);
    backend_upload_f32(be, &t, h, (size_t)tensor_numel(&t));
    return t;
}

// Downloads t and compares it with ref (n values).
static void compare(TestCtx *t, const Backend *be, const char *label, const Tensor *got_t,
                    const float *ref, size_t n) {
    be->sync(be);
    float *got = malloc(n * sizeof *got);
    backend_download_f32(be, got, got_t, n);
    check_rel(t, label, got, ref, n, tol_of(be->act_dtype));
    free(got);
}

// ---- UNet -----------------------------------------------------------------------

static void unet_case(TestCtx *t, const Backend *be, const ModelFiles *mf, const StFile *ref,
                      const char *name) {
    SdcError err = {0};
    char label[160];
    snprintf(label, sizeof label, "unet %s [%s]", name, dtype_name(be->act_dtype));
    Unet *m = NULL;
    if (!check_true(t, unet_load(&m, mf, be, &err) == 0, "%s: load: %s", label, err.msg)) return;
    Tensor sx, st_, sctx, sout;
    float *hx = fixture_f32(t, ref, "unet.x", &sx), *ht = fixture_f32(t, ref, "unet.t", &st_);
    float *hctx = fixture_f32(t, ref, "unet.ctx", &sctx), *hout = fixture_f32(t, ref, "unet.out", &sout);
    if (hx && ht && hctx && hout) {
        Tensor x = dev_from_host(be, hx, &sx);       // (N, Cin, h, w)
        Tensor ctx = dev_from_host(be, hctx, &sctx); // (N, L, cross)
        Tensor out = dev_tensor(be, sout.ndim, sout.shape);
        double t0 = now_s();
        int rc = unet_forward(m, &out, &x, ht, &ctx, &err);
        be->sync(be);
        double t1 = now_s();
        if (check_true(t, rc == 0, "%s: forward: %s", label, err.msg)) {
            printf("  %s: first pass (plans, allocates) %.1f ms, activations %.1f KiB\n", label,
                   (t1 - t0) * 1e3, unet_activation_bytes(m) / 1024.0);
            compare(t, be, label, &out, hout, (size_t)tensor_numel(&sout));
        }
        be->free(be, x.data), be->free(be, ctx.data), be->free(be, out.data);
    }
    free(hx), free(ht), free(hctx), free(hout);
    unet_free(m);
}

// ---- CLIP -----------------------------------------------------------------------

static void clip_case(TestCtx *t, const Backend *be, const ModelFiles *mf, const StFile *ref,
                      const char *name) {
    SdcError err = {0};
    char label[160];
    snprintf(label, sizeof label, "clip %s text.hidden [%s]", name, dtype_name(be->act_dtype));
    ClipModel *m = NULL;
    if (!check_true(t, clip_load(&m, mf, be, &err) == 0, "%s: load: %s", label, err.msg)) return;
    const ClipConfig *c = clip_config(m);
    const StEntry *ide = st_find(ref, "text.ids");
    Tensor sh;
    float *want = fixture_f32(t, ref, "text.hidden", &sh);
    if (want && check_true(t, ide && ide->dtype == DT_I32 && ide->ndim == 2 &&
                                  ide->shape[1] == c->max_positions,
                           "%s: text.ids is I32 (B, %d)", label, c->max_positions)) {
        int B = (int)ide->shape[0];
        const int32_t *ids = (const int32_t *)st_tensor(ref, ide).data;
        Tensor out = dev_tensor(be, 3, (int64_t[]){B, c->max_positions, c->hidden});
        int rc = clip_encode(m, ids, B, 0, &out, &err);
        if (check_true(t, rc == 0, "%s: encode: %s", label, err.msg))
            compare(t, be, label, &out, want, (size_t)tensor_numel(&out));
        be->free(be, out.data);
    }
    free(want);
    clip_free(m);
}

// ---- VAE ------------------------------------------------------------------------

static void vae_case(TestCtx *t, const Backend *be, const ModelFiles *mf, const StFile *ref,
                     const char *name) {
    SdcError err = {0};
    char label[160];
    Vae *m = NULL;
    snprintf(label, sizeof label, "vae %s [%s]", name, dtype_name(be->act_dtype));
    if (!check_true(t, vae_load(&m, mf, be, &err) == 0, "%s: load: %s", label, err.msg)) return;
    Tensor sz, sdec, simg, smean;
    float *hz = fixture_f32(t, ref, "vae.z", &sz), *hdec = fixture_f32(t, ref, "vae.decoded", &sdec);
    float *himg = fixture_f32(t, ref, "vae.image", &simg), *hmean = fixture_f32(t, ref, "vae.mean", &smean);
    if (hz && hdec && himg && hmean &&
        check_true(t, vae_reserve(m, 1, (int)simg.shape[2], (int)simg.shape[3], &err) == 0,
                   "%s: reserve: %s", label, err.msg)) {
        Tensor z = dev_from_host(be, hz, &sz);
        Tensor dec = dev_tensor(be, sdec.ndim, sdec.shape);
        int rc = vae_decode(m, &z, &dec, &err);
        snprintf(label, sizeof label, "vae %s decode [%s]", name, dtype_name(be->act_dtype));
        if (check_true(t, rc == 0, "%s: %s", label, err.msg))
            compare(t, be, label, &dec, hdec, (size_t)tensor_numel(&sdec));
        Tensor img = dev_from_host(be, himg, &simg);
        Tensor mean = dev_tensor(be, smean.ndim, smean.shape);
        Tensor lv = dev_tensor(be, smean.ndim, smean.shape);
        rc = vae_encode(m, &img, &mean, &lv, &err);
        snprintf(label, sizeof label, "vae %s encode mean [%s]", name, dtype_name(be->act_dtype));
        if (check_true(t, rc == 0, "%s: %s", label, err.msg))
            compare(t, be, label, &mean, hmean, (size_t)tensor_numel(&smean));
        be->free(be, z.data), be->free(be, dec.data), be->free(be, img.data);
        be->free(be, mean.data), be->free(be, lv.data);
    }
    free(hz), free(hdec), free(himg), free(hmean);
    vae_free(m);
}

// ---- main -----------------------------------------------------------------------

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Backend *probe = NULL;
    const int gpu_rc = test_cuda_backend(&probe, DT_F32);
    if (gpu_rc >= 0) return gpu_rc;
    backend_destroy(probe);

    const char *models[2] = {"tiny-sd1", "tiny-sd2"};
    const DType dts[2] = {DT_F32, DT_BF16};
    double t0 = now_s();
    for (int d = 0; d < 2; d++) {
        Backend *be = NULL;
        if (!check_true(&t, backend_cuda_create(&be, 0, dts[d], &err) == SDC_OK,
                        "create CUDA backend %s: %s", dtype_name(dts[d]), err.msg))
            continue;
        printf("-- CUDA backend, %s\n", dtype_name(dts[d]));
        for (int i = 0; i < 2; i++) {
            char path[256], refp[256];
            snprintf(path, sizeof path, FIX "/%s", models[i]);
            snprintf(refp, sizeof refp, FIX "/ref-%s.safetensors", models[i]);
            ModelFiles *mf = NULL;
            StFile ref = {0};
            if (!check_true(&t, model_files_open(&mf, path, NULL, -1, &err) == 0, "open %s: %s",
                            path, err.msg))
                continue;
            if (check_true(&t, st_open(&ref, refp, &err) == 0, "open %s: %s", refp, err.msg)) {
                unet_case(&t, be, mf, &ref, models[i]);
                clip_case(&t, be, mf, &ref, models[i]);
                vae_case(&t, be, mf, &ref, models[i]);
                st_close(&ref);
            }
            model_files_close(mf);
        }
        backend_destroy(be);
    }
    printf("(%.1f s)\n", now_s() - t0);
    return test_summary(&t);
}
