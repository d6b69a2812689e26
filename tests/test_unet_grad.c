// test_unet_grad.c: the UNet backward pass against torch autograd.
//
// tests/fixtures/ref-grad-unet.safetensors (tools/make_grad_fixture.py): for
// tiny-sd1 (batch 2, latent 16x24, 7 tokens) and tiny-sd2 (batch 1, 16x16),
// out = unet(x, t, ctx), loss = sum(out * dout), and d loss / d ctx and
// d loss / d every parameter, computed by torch in fp64. A LoRA case
// (tiny-sd1, rank 4, alpha 8, nonzero down/up given in the file) adds the
// LoRA gradients. Prints one line per tensor.
//
// Tolerance 1e-4 of max |ref| per tensor: fp32 with OpenBLAS sgemm and
// blocked attention against an fp64 reference; each gradient is a sum over
// up to batch x 384 positions of products of fp32 activations, so ~1e-6 is
// expected, 1e-4 leaves room for reduction order while still catching any
// wrong term (a missing or doubled term shows as >= 1e-2).
// Also: gradient checkpointing gives the same gradients (tolerance 1e-6:
// the same ops in the same order, so in fact bit-identical), two backward
// passes accumulate to twice the gradients, and the training forward equals
// the inference forward.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/backend.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/unet.h"
#include "testutil.h"

#define FIX "tests/fixtures"

static Tensor host_tensor(float *p, const Tensor *shape) {
    return tensor_make(DT_F32, DEV_CPU, p, shape->ndim, shape->shape);
}

// The gradient of table entry e: same offset from the trainables' base.
static const float *grad_of(Unet *m, const ParamEntry *e) {
    float *p, *g;
    size_t n;
    unet_trainables(m, &p, &g, &n);
    return g + ((const float *)e->t.data - p);
}

typedef struct Case {
    const char *tag, *model;
    int lora;
} Case;

static void run_case(TestCtx *t, const Backend *be, const StFile *ref, const Case *c) {
    char path[256], nm[512];
    snprintf(path, sizeof path, FIX "/%s", c->model);
    SdcError err = {0};
    ModelFiles *mf = NULL;
    Unet *m = NULL;
    float *hx = NULL, *ht = NULL, *hctx = NULL, *hdout = NULL, *hout = NULL, *hdctx = NULL;
    float *out = NULL, *dctx = NULL, *g1 = NULL, *inf = NULL;
    printf("== %s (%s%s)\n", c->tag, c->model, c->lora ? ", LoRA rank 4 alpha 8" : ", every parameter");
    if (!check_true(t, model_files_open(&mf, path, NULL, -1, &err) == 0, "open %s: %s", path, err.msg)) goto done;
    ModelLoadOpts lo = {.trainable = !c->lora};
    if (!check_true(t, unet_load_opts(&m, mf, be, &lo, &err) == 0, "load: %s", err.msg)) goto done;
    Tensor sx, sctx, sout;
    snprintf(nm, sizeof nm, "%s.x", c->tag);
    hx = fixture_f32(t, ref, nm, &sx);
    snprintf(nm, sizeof nm, "%s.t", c->tag);
    ht = fixture_f32(t, ref, nm, NULL);
    snprintf(nm, sizeof nm, "%s.ctx", c->tag);
    hctx = fixture_f32(t, ref, nm, &sctx);
    snprintf(nm, sizeof nm, "%s.dout", c->tag);
    hdout = fixture_f32(t, ref, nm, NULL);
    snprintf(nm, sizeof nm, "%s.out", c->tag);
    hout = fixture_f32(t, ref, nm, &sout);
    snprintf(nm, sizeof nm, "%s.dctx", c->tag);
    hdctx = fixture_f32(t, ref, nm, NULL);
    if (!hx || !ht || !hctx || !hdout || !hout || !hdctx) goto done;
    int N = (int)sx.shape[0], H = (int)sx.shape[2], W = (int)sx.shape[3], L = (int)sctx.shape[1];
    size_t nout = (size_t)tensor_numel(&sout), nctx = (size_t)tensor_numel(&sctx);
    out = calloc(nout, sizeof *out);
    dctx = calloc(nctx, sizeof *dctx);
    inf = calloc(nout, sizeof *inf);
    Tensor tx = host_tensor(hx, &sx), tctx = host_tensor(hctx, &sctx), tout = host_tensor(out, &sout);
    Tensor tdout = host_tensor(hdout, &sout), tdctx = host_tensor(dctx, &sctx), tinf = host_tensor(inf, &sout);

    for (int ckpt = 0; ckpt < 2; ckpt++) {
        UnetTrainOpts o = {.checkpointing = ckpt, .lora_rank = c->lora ? 4 : 0, .lora_alpha = 8,
                           .lora_seed = 1, .want_dctx = 1};
        if (!check_true(t, unet_train_reserve(m, &o, N, H, W, L, &err) == 0, "reserve: %s", err.msg)) goto done;
        printf("  checkpointing %s: training memory %.2f MiB\n", ckpt ? "on" : "off",
               (double)unet_train_bytes(m) / (1 << 20));
        const ParamTable *tb = unet_train_table(m);
        if (c->lora) { // the fixture's down/up values
            for (int i = 0; i < tb->n; i++) {
                snprintf(nm, sizeof nm, "%s.%s", c->tag, tb->e[i].name);
                Tensor shp;
                float *v = fixture_f32(t, ref, nm, &shp);
                if (!v) goto done;
                check_true(t, tensor_numel(&shp) == tensor_numel(&tb->e[i].t), "%s shape", nm);
                memcpy(tb->e[i].t.data, v, tensor_bytes(&tb->e[i].t));
                free(v);
            }
        }
        if (!check_true(t, unet_train_forward(m, &tout, &tx, ht, &tctx, &err) == 0, "forward: %s", err.msg) ||
            !check_true(t, unet_train_backward(m, &tdout, &tdctx, &err) == 0, "backward: %s", err.msg))
            goto done;
        if (ckpt == 0) {
            check_rel(t, "out", out, hout, nout, 1e-4);
            check_rel(t, "d ctx", dctx, hdctx, nctx, 1e-4);
            double worst = 0;
            const char *worst_name = "";
            int n_checked = 0;
            for (int i = 0; i < tb->n; i++) {
                snprintf(nm, sizeof nm, "%s.grad.%s", c->tag, tb->e[i].name);
                Tensor shp;
                float *r = fixture_f32(t, ref, nm, &shp);
                if (!r) continue;
                size_t n = (size_t)tensor_numel(&tb->e[i].t);
                const float *g = grad_of(m, &tb->e[i]);
                double e = rel_err(g, r, n);
                if (e > worst) {
                    worst = e;
                    worst_name = tb->e[i].name;
                }
                snprintf(nm, sizeof nm, "grad %s", tb->e[i].name);
                check_rel(t, nm, g, r, n, 1e-4);
                n_checked++;
                free(r);
            }
            printf("  %d parameter gradients, worst %.3g (%s)\n", n_checked, worst, worst_name);
            float *p, *g;
            size_t n;
            unet_trainables(m, &p, &g, &n);
            g1 = malloc(n * sizeof *g1);
            memcpy(g1, g, n * sizeof *g1);
            // A second backward pass accumulates: every gradient doubles.
            if (!check_true(t, unet_train_forward(m, &tout, &tx, ht, &tctx, &err) == 0, "forward: %s", err.msg) ||
                !check_true(t, unet_train_backward(m, &tdout, &tdctx, &err) == 0, "backward: %s", err.msg))
                goto done;
            for (size_t i = 0; i < n; i++) g1[i] *= 2;
            check_rel(t, "two backward passes accumulate (2x)", g, g1, n, 1e-6);
            for (size_t i = 0; i < n; i++) g1[i] *= 0.5f;
            if (!c->lora) { // the training forward computes what inference computes
                if (!check_true(t, unet_forward(m, &tinf, &tx, ht, &tctx, &err) == 0, "inference: %s", err.msg))
                    goto done;
                check_rel(t, "training forward == inference forward", out, inf, nout, 1e-6);
            }
            if (!c->lora) memset(g, 0, n * sizeof *g); // reserve re-zeroes; LoRA params were overwritten
        } else {
            float *p, *g;
            size_t n;
            unet_trainables(m, &p, &g, &n);
            check_rel(t, "checkpointing: same gradients", g, g1, n, 1e-6);
            check_rel(t, "checkpointing: same d ctx", dctx, hdctx, nctx, 1e-4);
        }
    }
done:
    if (err.code) printf("  error: %s\n", err.msg);
    free(hx), free(ht), free(hctx), free(hdout), free(hout), free(hdctx);
    free(out), free(dctx), free(g1), free(inf);
    unet_free(m);
    model_files_close(mf);
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Backend *be = NULL;
    StFile ref = {0};
    if (!check_true(&t, backend_cpu_create(&be, 0, &err) == 0, "cpu backend: %s", err.msg)) return test_summary(&t);
    if (check_true(&t, st_open(&ref, FIX "/ref-grad-unet.safetensors", &err) == 0, "%s", err.msg)) {
        static const Case cases[] = {{"sd1", "tiny-sd1", 0}, {"sd2", "tiny-sd2", 0}, {"sd1lora", "tiny-sd1", 1}};
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_case(&t, be, &ref, &cases[i]);
        st_close(&ref);
    }
    // Bad use: full training of a model not loaded trainable.
    ModelFiles *mf = NULL;
    Unet *m = NULL;
    if (model_files_open(&mf, FIX "/tiny-sd1", NULL, -1, &err) == 0 && unet_load(&m, mf, be, &err) == 0) {
        UnetTrainOpts o = {0};
        int rc = unet_train_reserve(m, &o, 1, 16, 16, 7, &err);
        check_true(&t, rc != 0 && strstr(err.msg, "trainable"), "full training of a frozen load refused: %s",
                   err.msg);
    }
    unet_free(m);
    model_files_close(mf);
    backend_destroy(be);
    return test_summary(&t);
}
