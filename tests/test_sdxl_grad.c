// test_sdxl_grad.c: the SDXL UNet's backward pass against torch autograd.
//
// tests/fixtures/ref-grad-sdxl.safetensors (tools/make_sdxl_grad_fixture.py):
// the tiny SDXL UNet (tests/fixtures/tiny-sdxl: levels without attention,
// transformers 1 / 2 / 3 deep, linear projections, the text_time added
// embedding), out = unet(x, t, ctx, text_embeds, time_ids), loss =
// sum(out * dout), computed by torch in fp64: d loss / d ctx, d loss / d the
// pooled text embedding (through add_embedding; what trains text_encoder_2's
// projection), and
//   xl:     the gradients of a subset of the parameters (the time MLP,
//           add_embedding, conv in/out, level 0, a 2-deep transformer, two
//           resnets), batch 1, 16x16;
//   xllora: the LoRA gradients (rank 4, alpha 8, nonzero down/up from the
//           file) of every attention projection, batch 2, 16x24.
// The text encoders with SDXL's outputs (ClipTrainOpts.xl): hidden =
// hidden_states[-2] of each, pooled = text_encoder_2's text_embeds; loss =
// sum(hidden * dhidden) + sum(pooled * dpooled), two prompts:
//   te2:     text_encoder_2, every parameter (the projection and the final
//            norm through the pooled output only);
//   te2lora: its LoRA gradients (rank 4, alpha 4, every layer);
//   te1lora: text_encoder's (its last layer's adapters get none).
// Prints one line per tensor.
//
// Tolerance 1e-4 of max |ref| per tensor, as test_unet_grad (fp32 against
// fp64: ~1e-6 expected; a missing or doubled term shows as >= 1e-2).
// Also: gradient checkpointing gives the same gradients (the same ops in the
// same order: 1e-6), the LoRA gradients do not depend on whether d text is
// wanted (it makes the frozen blocks before the first transformer run their
// backward), and the training forward equals the inference forward.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/backend.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/clip.h"
#include "models/unet.h"
#include "testutil.h"

#define FIX "tests/fixtures"

static Tensor host_tensor(float *p, const Tensor *shape) {
    return tensor_make(DT_F32, DEV_CPU, p, shape->ndim, shape->shape);
}

static const float *grad_of(Unet *m, const ParamEntry *e) {
    float *p, *g;
    size_t n;
    unet_trainables(m, &p, &g, &n);
    return g + ((const float *)e->t.data - p);
}

static float *fx(TestCtx *t, const StFile *ref, const char *tag, const char *what, Tensor *shape) {
    char nm[256];
    snprintf(nm, sizeof nm, "%s.%s", tag, what);
    return fixture_f32(t, ref, nm, shape);
}

static void run_case(TestCtx *t, const Backend *be, const StFile *ref, const char *tag, int lora) {
    char nm[512];
    SdcError err = {0};
    ModelFiles *mf = NULL;
    Unet *m = NULL;
    float *hx = NULL, *ht = NULL, *hctx = NULL, *htext = NULL, *hids = NULL, *hdout = NULL, *hout = NULL;
    float *hdctx = NULL, *hdtext = NULL, *out = NULL, *dctx = NULL, *dtext = NULL, *g1 = NULL, *inf = NULL;
    printf("== %s (tiny-sdxl, %s)\n", tag, lora ? "LoRA rank 4 alpha 8" : "every parameter");
    if (!check_true(t, model_files_open(&mf, FIX "/tiny-sdxl", NULL, -1, &err) == 0, "open: %s", err.msg)) goto done;
    ModelLoadOpts lo = {.trainable = !lora};
    if (!check_true(t, unet_load_opts(&m, mf, be, &lo, &err) == 0, "load: %s", err.msg)) goto done;
    Tensor sx, sctx, sout, stext;
    hx = fx(t, ref, tag, "x", &sx);
    ht = fx(t, ref, tag, "t", NULL);
    hctx = fx(t, ref, tag, "ctx", &sctx);
    htext = fx(t, ref, tag, "text", &stext);
    hids = fx(t, ref, tag, "time_ids", NULL);
    hdout = fx(t, ref, tag, "dout", NULL);
    hout = fx(t, ref, tag, "out", &sout);
    hdctx = fx(t, ref, tag, "dctx", NULL);
    hdtext = fx(t, ref, tag, "dtext", NULL);
    if (!hx || !ht || !hctx || !htext || !hids || !hdout || !hout || !hdctx || !hdtext) goto done;
    check_true(t, unet_text_dim(m) == stext.shape[1], "text dim %d", unet_text_dim(m));
    int N = (int)sx.shape[0], H = (int)sx.shape[2], W = (int)sx.shape[3], L = (int)sctx.shape[1];
    size_t nout = (size_t)tensor_numel(&sout), nctx = (size_t)tensor_numel(&sctx), ntext = (size_t)tensor_numel(&stext);
    out = calloc(nout, sizeof *out);
    dctx = calloc(nctx, sizeof *dctx);
    dtext = calloc(ntext, sizeof *dtext);
    inf = calloc(nout, sizeof *inf);
    Tensor tx = host_tensor(hx, &sx), tctx = host_tensor(hctx, &sctx), tout = host_tensor(out, &sout);
    Tensor tdout = host_tensor(hdout, &sout), tdctx = host_tensor(dctx, &sctx), tinf = host_tensor(inf, &sout);
    Tensor ttext = host_tensor(htext, &stext), tdtext = host_tensor(dtext, &stext);
    if (!check_true(t, unet_set_added_cond(m, &ttext, hids, &err) == 0, "added cond: %s", err.msg)) goto done;

    // pass 0: d text wanted, no checkpointing; 1: checkpointing; 2 (LoRA): d text not wanted
    for (int pass = 0; pass < (lora ? 3 : 2); pass++) {
        const int ckpt = pass == 1, want_text = pass < 2;
        UnetTrainOpts o = {.checkpointing = ckpt, .lora_rank = lora ? 4 : 0, .lora_alpha = 8, .lora_seed = 1,
                           .want_dctx = 1, .want_dtext = want_text};
        if (!check_true(t, unet_train_reserve(m, &o, N, H, W, L, &err) == 0, "reserve: %s", err.msg)) goto done;
        printf("  checkpointing %s, d text %s: training memory %.2f MiB\n", ckpt ? "on" : "off",
               want_text ? "wanted" : "not wanted", (double)unet_train_bytes(m) / (1 << 20));
        const ParamTable *tb = unet_train_table(m);
        if (lora) { // the fixture's down/up values
            for (int i = 0; i < tb->n; i++) {
                Tensor shp;
                float *v = fx(t, ref, tag, tb->e[i].name, &shp);
                if (!v) goto done;
                check_true(t, tensor_numel(&shp) == tensor_numel(&tb->e[i].t), "%s shape", tb->e[i].name);
                memcpy(tb->e[i].t.data, v, tensor_bytes(&tb->e[i].t));
                free(v);
            }
        }
        if (!check_true(t, unet_train_forward(m, &tout, &tx, ht, &tctx, &err) == 0, "forward: %s", err.msg) ||
            !check_true(t, unet_train_backward_xl(m, &tdout, &tdctx, want_text ? &tdtext : NULL, &err) == 0,
                        "backward: %s", err.msg))
            goto done;
        float *p, *g;
        size_t n;
        unet_trainables(m, &p, &g, &n);
        if (pass == 0) {
            check_rel(t, "out", out, hout, nout, 1e-4);
            check_rel(t, "d ctx", dctx, hdctx, nctx, 1e-4);
            check_rel(t, "d text_embeds (pooled)", dtext, hdtext, ntext, 1e-4);
            double worst = 0;
            const char *worst_name = "";
            int n_checked = 0;
            for (int i = 0; i < tb->n; i++) {
                snprintf(nm, sizeof nm, "%s.grad.%s", tag, tb->e[i].name);
                if (!st_find(ref, nm)) continue; // the full case's fixture holds a subset
                Tensor shp;
                float *r = fixture_f32(t, ref, nm, &shp);
                if (!r) continue;
                size_t k = (size_t)tensor_numel(&tb->e[i].t);
                const float *gg = grad_of(m, &tb->e[i]);
                double e = rel_err(gg, r, k);
                if (e > worst) worst = e, worst_name = tb->e[i].name;
                snprintf(nm, sizeof nm, "grad %s", tb->e[i].name);
                check_rel(t, nm, gg, r, k, 1e-4);
                n_checked++;
                free(r);
            }
            check_true(t, n_checked >= (lora ? 448 : 104), "%d gradients checked", n_checked);
            printf("  %d parameter gradients, worst %.3g (%s)\n", n_checked, worst, worst_name);
            g1 = malloc(n * sizeof *g1);
            memcpy(g1, g, n * sizeof *g1);
            if (!lora) {
                if (!check_true(t, unet_forward(m, &tinf, &tx, ht, &tctx, &err) == 0, "inference: %s", err.msg))
                    goto done;
                check_rel(t, "training forward == inference forward", out, inf, nout, 1e-6);
            }
        } else {
            check_rel(t, pass == 1 ? "checkpointing: same gradients" : "d text not wanted: same LoRA gradients", g,
                      g1, n, 1e-6);
            check_rel(t, "same d ctx", dctx, hdctx, nctx, 1e-4);
            if (want_text) check_rel(t, "same d text", dtext, hdtext, ntext, 1e-4);
        }
        if (!lora) memset(g, 0, n * sizeof *g);
    }
    // Bad use: a stage forward of block 0 without the added conditioning of its rows.
    UnetTrainOpts o = {.lora_rank = 4, .lora_alpha = 4};
    if (lora && check_true(t, unet_train_reserve(m, &o, N, H, W, L, &err) == 0, "reserve: %s", err.msg)) {
        Tensor one = ttext;
        one.shape[0] = 1;
        unet_set_added_cond(m, &one, hids, &err);
        int rc = unet_train_forward(m, &tout, &tx, ht, &tctx, &err);
        check_true(t, rc != 0 && strstr(err.msg, "added conditioning"), "added conditioning of 1 row for %d: %s",
                   N, err.msg);
        err.code = 0;
    }
done:
    if (err.code) printf("  error: %s\n", err.msg);
    free(hx), free(ht), free(hctx), free(htext), free(hids), free(hdout), free(hout), free(hdctx), free(hdtext);
    free(out), free(dctx), free(dtext), free(g1), free(inf);
    unet_free(m);
    model_files_close(mf);
}

// ---- text encoders --------------------------------------------------------------

static void run_te(TestCtx *t, const Backend *be, const StFile *ref, const char *tag, int second, int lora) {
    char nm[512];
    SdcError err = {0};
    ModelFiles *mf = NULL;
    ClipModel *m = NULL;
    float *hids = NULL, *hdh = NULL, *hdp = NULL, *hhid = NULL, *hpool = NULL, *hidden = NULL, *pooled = NULL;
    int32_t *ids = NULL;
    printf("== %s (tiny-sdxl %s, %s)\n", tag, second ? "text_encoder_2" : "text_encoder",
           lora ? "LoRA rank 4 alpha 4" : "every parameter");
    if (!check_true(t, model_files_open(&mf, FIX "/tiny-sdxl", NULL, -1, &err) == 0, "open: %s", err.msg)) goto done;
    ModelLoadOpts lo = {.trainable = !lora, .second_text_encoder = second};
    if (!check_true(t, clip_load_opts(&m, mf, be, &lo, &err) == 0, "load: %s", err.msg)) goto done;
    Tensor sids, sdh, sdp;
    hids = fx(t, ref, tag, "ids", &sids); // token ids as floats (exact)
    hdh = fx(t, ref, tag, "dhidden", &sdh);
    hhid = fx(t, ref, tag, "hidden", NULL);
    if (second) hdp = fx(t, ref, tag, "dpooled", &sdp), hpool = fx(t, ref, tag, "pooled", NULL);
    if (!hids || !hdh || !hhid || (second && (!hdp || !hpool))) goto done;
    const int B = (int)sids.shape[0];
    const size_t nids = (size_t)tensor_numel(&sids), nh = (size_t)tensor_numel(&sdh);
    const size_t np = second ? (size_t)tensor_numel(&sdp) : 0;
    ids = malloc(nids * sizeof *ids);
    for (size_t i = 0; i < nids; i++) ids[i] = (int32_t)hids[i];
    hidden = calloc(nh, sizeof *hidden);
    pooled = calloc(np + 1, sizeof *pooled);
    Tensor th = host_tensor(hidden, &sdh), tdh = host_tensor(hdh, &sdh);
    Tensor tp = second ? host_tensor(pooled, &sdp) : (Tensor){0}, tdp = second ? host_tensor(hdp, &sdp) : (Tensor){0};
    ClipTrainOpts o = {.lora_rank = lora ? 4 : 0, .lora_alpha = 4, .lora_seed = 1, .xl = 1};
    if (!check_true(t, clip_train_reserve(m, &o, B, &err) == 0, "reserve: %s", err.msg)) goto done;
    const ParamTable *tb = clip_train_table(m);
    if (lora)
        for (int i = 0; i < tb->n; i++) {
            Tensor shp;
            float *v = fx(t, ref, tag, tb->e[i].name, &shp);
            if (!v) goto done;
            check_true(t, tensor_numel(&shp) == tensor_numel(&tb->e[i].t), "%s shape", tb->e[i].name);
            memcpy(tb->e[i].t.data, v, tensor_bytes(&tb->e[i].t));
            free(v);
        }
    if (!check_true(t, clip_train_forward_xl(m, ids, B, &th, second ? &tp : NULL, &err) == 0, "forward: %s",
                    err.msg) ||
        !check_true(t, clip_train_backward_xl(m, &tdh, second ? &tdp : NULL, &err) == 0, "backward: %s", err.msg))
        goto done;
    check_rel(t, "hidden_states[-2]", hidden, hhid, nh, 1e-4);
    if (second) check_rel(t, "pooled (text_embeds)", pooled, hpool, np, 1e-4);
    float *p, *g;
    size_t n;
    clip_trainables(m, &p, &g, &n);
    double worst = 0;
    const char *worst_name = "";
    int n_checked = 0;
    for (int i = 0; i < tb->n; i++) {
        snprintf(nm, sizeof nm, "%s.grad.%s", tag, tb->e[i].name);
        Tensor shp;
        float *r = fixture_f32(t, ref, nm, &shp);
        if (!r) continue;
        size_t k = (size_t)tensor_numel(&tb->e[i].t);
        const float *gg = g + ((const float *)tb->e[i].t.data - p);
        const char *kb = strstr(tb->e[i].name, "k_proj.bias");
        double e;
        snprintf(nm, sizeof nm, "grad %s", tb->e[i].name);
        if (kb) { // no gradient in exact arithmetic (a constant on a softmax row): against d k_proj.weight's scale
            char wn[300];
            snprintf(wn, sizeof wn, "%s.grad.%.*sk_proj.weight", tag, (int)(kb - tb->e[i].name), tb->e[i].name);
            Tensor ws;
            float *w = fixture_f32(t, ref, wn, &ws);
            double scale = 0;
            for (int64_t j = 0; w && j < tensor_numel(&ws); j++) scale = fmax(scale, fabs(w[j]));
            free(w);
            e = max_abs_diff(gg, r, k) / (scale > 0 ? scale : 1);
            check_true(t, e <= 1e-4, "%-48s rel_err=%.3e  tol=1e-04 (exact grad 0; / max|d k_proj.weight|)", nm, e);
        } else { // an all-zero reference (text_encoder's last layer) needs exact zeros
            e = rel_err(gg, r, k);
            check_rel(t, nm, gg, r, k, 1e-4);
        }
        if (e > worst) worst = e, worst_name = tb->e[i].name;
        n_checked++;
        free(r);
    }
    check_true(t, n_checked == tb->n, "%d of %d gradients checked", n_checked, tb->n);
    printf("  %d parameter gradients, worst %.3g (%s)\n", n_checked, worst, worst_name);
    // the inference path (clip_encode_xl, the same layer forward with the adapters) gives the same outputs
    float *h2 = calloc(nh, sizeof *h2), *p2 = calloc(np + 1, sizeof *p2);
    Tensor th2 = host_tensor(h2, &sdh), tp2 = second ? host_tensor(p2, &sdp) : (Tensor){0};
    if (check_true(t, clip_encode_xl(m, ids, B, 0, &th2, second ? &tp2 : NULL, &err) == 0, "encode: %s", err.msg)) {
        check_rel(t, "training hidden == clip_encode_xl", hidden, h2, nh, 1e-6);
        if (second) check_rel(t, "training pooled == clip_encode_xl", pooled, p2, np, 1e-6);
    }
    free(h2), free(p2);
    // the SD 1.x entry points refuse an SDXL reservation
    check_true(t, clip_train_backward(m, &tdh, &err) != 0 && strstr(err.msg, "_xl"), "plain backward refused: %s",
               err.msg);
    err.code = 0;
done:
    if (err.code) printf("  error: %s\n", err.msg);
    free(hids), free(hdh), free(hdp), free(hhid), free(hpool), free(hidden), free(pooled), free(ids);
    clip_free(m);
    model_files_close(mf);
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Backend *be = NULL;
    StFile ref = {0};
    if (!check_true(&t, backend_cpu_create(&be, 0, &err) == 0, "cpu backend: %s", err.msg)) return test_summary(&t);
    if (check_true(&t, st_open(&ref, FIX "/ref-grad-sdxl.safetensors", &err) == 0, "%s", err.msg)) {
        run_case(&t, be, &ref, "xl", 0);
        run_case(&t, be, &ref, "xllora", 1);
        run_te(&t, be, &ref, "te2", 1, 0);
        run_te(&t, be, &ref, "te2lora", 1, 1);
        run_te(&t, be, &ref, "te1lora", 0, 1);
        st_close(&ref);
    }
    // want_dtext on a UNet without the added embedding
    ModelFiles *mf = NULL;
    Unet *m = NULL;
    if (model_files_open(&mf, FIX "/tiny-sd1", NULL, -1, &err) == 0 && unet_load(&m, mf, be, &err) == 0) {
        UnetTrainOpts o = {.lora_rank = 4, .lora_alpha = 4, .want_dtext = 1};
        int rc = unet_train_reserve(m, &o, 1, 16, 16, 7, &err);
        check_true(&t, rc != 0 && strstr(err.msg, "added embedding"), "want_dtext on SD 1.x refused: %s", err.msg);
    }
    unet_free(m);
    model_files_close(mf);
    backend_destroy(be);
    return test_summary(&t);
}
