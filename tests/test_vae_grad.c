// test_vae_grad.c: the VAE backward pass against torch autograd.
//
// tests/fixtures/ref-grad-vae.safetensors (tools/make_vae_grad_fixture.py):
// for the tiny-sd1 VAE (batch 2, 32x24 pixels, latent 4x3), in fp64,
//   mean, logvar = encode(x); z = mean + exp(logvar / 2) * eps; rec = decode(z)
//   loss = sum(rec * w_rec) + sum(mean * w_mean) + sum(logvar * w_lv)
// with mean, logvar, rec, d loss / d x and d loss / d every parameter. Here
// the same loss goes through vae_train_encode / vae_train_decode and their
// backwards, the sampling's chain rule on the host as the trainer does it.
// One line per tensor.
//
// Tolerance 1e-4 of max |ref| per tensor, as test_unet_grad: fp32 with
// OpenBLAS sgemm against an fp64 reference; a missing or doubled term shows
// as >= 1e-2. Also: the training forward equals the inference forward, two
// backward passes accumulate to twice the gradients, and a VAE loaded for
// inference is refused.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/vae.h"
#include "testutil.h"

#define FIX "tests/fixtures"

static Tensor host_tensor(float *p, const Tensor *shape) {
    return tensor_make(DT_F32, DEV_CPU, p, shape->ndim, shape->shape);
}

static const float *grad_of(Vae *m, const ParamEntry *e) {
    float *p, *g;
    size_t n;
    vae_trainables(m, &p, &g, &n);
    return g + ((const float *)e->t.data - p);
}

// One training pass of the fixture's loss: outputs into mean, lv, rec;
// gradients added, d x into dx.
static int pass(Vae *m, Tensor *x, Tensor *mean, Tensor *lv, Tensor *rec, Tensor *dx, const float *eps,
                const float *w_rec, const float *w_mean, const float *w_lv, float *z, float *dz, float *dm,
                float *dl, SdcError *err) {
    size_t nl = (size_t)tensor_numel(mean);
    Tensor tz = host_tensor(z, mean), tdz = host_tensor(dz, mean), tdm = host_tensor(dm, mean),
           tdl = host_tensor(dl, mean), tdr = host_tensor((float *)w_rec, rec);
    SDC_TRY(vae_train_encode(m, x, mean, lv, err));
    const float *mu = mean->data, *l = lv->data;
    for (size_t i = 0; i < nl; i++) z[i] = mu[i] + expf(0.5f * l[i]) * eps[i];
    SDC_TRY(vae_train_decode(m, &tz, rec, err));
    SDC_TRY(vae_train_decode_backward(m, &tdr, &tdz, err));
    for (size_t i = 0; i < nl; i++) {
        dm[i] = dz[i] + w_mean[i];
        dl[i] = dz[i] * eps[i] * 0.5f * expf(0.5f * l[i]) + w_lv[i];
    }
    return vae_train_encode_backward(m, &tdm, &tdl, dx, err);
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Backend *be = NULL;
    StFile ref = {0};
    ModelFiles *mf = NULL;
    Vae *m = NULL, *inf = NULL;
    float *x = NULL, *eps = NULL, *w_rec = NULL, *w_mean = NULL, *w_lv = NULL, *r_mean = NULL, *r_lv = NULL;
    float *r_rec = NULL, *r_dx = NULL, *mean = NULL, *lv = NULL, *rec = NULL, *dx = NULL, *z = NULL, *dz = NULL;
    float *dm = NULL, *dl = NULL, *g1 = NULL, *rec_inf = NULL;
    if (!check_true(&t, backend_cpu_create(&be, 0, &err) == 0, "cpu backend: %s", err.msg)) return test_summary(&t);
    if (!check_true(&t, st_open(&ref, FIX "/ref-grad-vae.safetensors", &err) == 0, "%s", err.msg)) goto done;
    if (!check_true(&t, model_files_open(&mf, FIX "/tiny-sd1", NULL, -1, &err) == 0, "open: %s", err.msg)) goto done;
    ModelLoadOpts lo = {.trainable = 1};
    if (!check_true(&t, vae_load_opts(&m, mf, be, &lo, &err) == 0, "load: %s", err.msg)) goto done;
    Tensor sx, sl;
    x = fixture_f32(&t, &ref, "x", &sx);
    eps = fixture_f32(&t, &ref, "eps", &sl);
    w_rec = fixture_f32(&t, &ref, "w_rec", NULL);
    w_mean = fixture_f32(&t, &ref, "w_mean", NULL);
    w_lv = fixture_f32(&t, &ref, "w_lv", NULL);
    r_mean = fixture_f32(&t, &ref, "mean", NULL);
    r_lv = fixture_f32(&t, &ref, "logvar", NULL);
    r_rec = fixture_f32(&t, &ref, "rec", NULL);
    r_dx = fixture_f32(&t, &ref, "dx", NULL);
    if (!x || !eps || !w_rec || !w_mean || !w_lv || !r_mean || !r_lv || !r_rec || !r_dx) goto done;
    const int N = (int)sx.shape[0], H = (int)sx.shape[2], W = (int)sx.shape[3];
    const size_t nx = (size_t)tensor_numel(&sx), nl = (size_t)tensor_numel(&sl);
    mean = calloc(nl, 4), lv = calloc(nl, 4), z = calloc(nl, 4), dz = calloc(nl, 4), dm = calloc(nl, 4);
    dl = calloc(nl, 4), rec = calloc(nx, 4), dx = calloc(nx, 4), rec_inf = calloc(nx, 4);
    Tensor tx = host_tensor(x, &sx), tmean = host_tensor(mean, &sl), tlv = host_tensor(lv, &sl);
    Tensor trec = host_tensor(rec, &sx), tdx = host_tensor(dx, &sx);
    printf("== tiny-sd1 vae, batch %d, %dx%d\n", N, H, W);
    if (!check_true(&t, vae_train_reserve(m, N, H, W, &err) == 0, "reserve: %s", err.msg)) goto done;
    printf("  training memory %.2f MiB\n", (double)vae_train_bytes(m) / (1 << 20));
    if (!check_true(&t, pass(m, &tx, &tmean, &tlv, &trec, &tdx, eps, w_rec, w_mean, w_lv, z, dz, dm, dl, &err) == 0,
                    "training pass: %s", err.msg))
        goto done;
    check_rel(&t, "mean", mean, r_mean, nl, 1e-4);
    check_rel(&t, "logvar", lv, r_lv, nl, 1e-4);
    check_rel(&t, "rec", rec, r_rec, nx, 1e-4);
    check_rel(&t, "d x", dx, r_dx, nx, 1e-4);
    const ParamTable *tb = vae_train_table(m);
    double worst = 0;
    const char *worst_name = "";
    int n_checked = 0;
    char nm[256];
    for (int i = 0; i < tb->n; i++) {
        snprintf(nm, sizeof nm, "grad.%s", tb->e[i].name);
        float *r = fixture_f32(&t, &ref, nm, NULL);
        if (!r) continue;
        size_t n = (size_t)tensor_numel(&tb->e[i].t);
        const float *g = grad_of(m, &tb->e[i]);
        snprintf(nm, sizeof nm, "grad %s", tb->e[i].name);
        if (strstr(tb->e[i].name, "to_k.bias")) {
            // Zero in exact arithmetic (it adds q . b to every score of a row,
            // which the softmax cancels): both sides are rounding noise, so
            // the check is absolute, 1e-4 of the to_v bias gradient's scale.
            char vn[256];
            snprintf(vn, sizeof vn, "grad.%.*sto_v.bias", (int)(strstr(tb->e[i].name, "to_k.bias") - tb->e[i].name),
                     tb->e[i].name);
            float *rv = fixture_f32(&t, &ref, vn, NULL);
            double vmax = 0, d = max_abs_diff(g, r, n);
            for (size_t k = 0; rv && k < n; k++) vmax = fmax(vmax, fabs(rv[k]));
            free(rv);
            check_true(&t, d < 1e-4 * vmax, "%-48s max_abs=%.3e  tol=%.1e (zero in exact arithmetic)", nm, d,
                       1e-4 * vmax);
            n_checked++;
            free(r);
            continue;
        }
        double e = rel_err(g, r, n);
        if (e > worst) worst = e, worst_name = tb->e[i].name;
        check_rel(&t, nm, g, r, n, 1e-4);
        n_checked++;
        free(r);
    }
    printf("  %d parameter gradients (the fixture has %d tensors), worst %.3g (%s)\n", n_checked, ref.n, worst,
           worst_name);
    check_true(&t, n_checked == ref.n - 9, "every parameter of the fixture checked (%d of %d)", n_checked, ref.n - 9);

    // A second pass accumulates: every gradient doubles.
    float *p, *g;
    size_t n;
    vae_trainables(m, &p, &g, &n);
    g1 = malloc(n * sizeof *g1);
    memcpy(g1, g, n * sizeof *g1);
    if (!check_true(&t, pass(m, &tx, &tmean, &tlv, &trec, &tdx, eps, w_rec, w_mean, w_lv, z, dz, dm, dl, &err) == 0,
                    "training pass: %s", err.msg))
        goto done;
    for (size_t i = 0; i < n; i++) g1[i] *= 2;
    check_rel(&t, "two backward passes accumulate (2x)", g, g1, n, 1e-6);

    // The training forward computes what inference computes.
    if (!check_true(&t, vae_load(&inf, mf, be, &err) == 0, "inference load: %s", err.msg)) goto done;
    Tensor tz = host_tensor(z, &sl), tri = host_tensor(rec_inf, &sx);
    if (check_true(&t, vae_decode(inf, &tz, &tri, &err) == 0, "decode: %s", err.msg))
        check_rel(&t, "training decode == inference decode", rec, rec_inf, nx, 1e-6);
    // Bad use: training a VAE loaded for inference.
    int rc = vae_train_reserve(inf, N, H, W, &err);
    check_true(&t, rc != 0 && strstr(err.msg, "trainable"), "training a frozen load refused: %s", err.msg);
    rc = vae_train_reserve(m, N, 30, W, &err);
    check_true(&t, rc == SDC_ERR_ARG && strstr(err.msg, "multiples of 8"), "30 px refused: %s", err.msg);
    err = (SdcError){0};
done:
    if (err.code) printf("  error: %s\n", err.msg);
    free(x), free(eps), free(w_rec), free(w_mean), free(w_lv), free(r_mean), free(r_lv), free(r_rec), free(r_dx);
    free(mean), free(lv), free(rec), free(dx), free(z), free(dz), free(dm), free(dl), free(g1), free(rec_inf);
    vae_free(m);
    vae_free(inf);
    model_files_close(mf);
    st_close(&ref);
    backend_destroy(be);
    return test_summary(&t);
}
