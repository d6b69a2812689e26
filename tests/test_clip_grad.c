// test_clip_grad.c: the CLIP text encoder's backward pass (clip_train.c)
// against torch autograd (tools/make_clip_grad_fixture.py ->
// tests/fixtures/ref-grad-clip.safetensors), for tiny-sd1 (quick_gelu) and
// tiny-sd2 (gelu):
//   full:  every parameter's gradient of loss = sum(out * dout), out the
//          default output for text.ids of ref-<model>.safetensors;
//   LoRA:  rank 4 on q/k/v/out_proj, sd1 alpha 4 and 8, sd2 alpha 8, model
//          loaded for inference (mmap views / converted copies, frozen);
// plus: the training forward equals clip_encode (exactly) and text.hidden,
// two backward calls accumulate (2x), a second step gives the same gradients
// (no state leak), and LoRA with up = 0 leaves the output unchanged.
//
// Tolerance 1e-4 of max |ref| per tensor: sdc runs fp32, the reference fp64,
// and fp32 rounding over sums of <= 154 rows and 32..128 features, through
// 4-5 residual layers with layer norms, lands near 1e-6; a wrong term (a
// missing residual, bias or scale) is off by 1e-2 or more. k_proj.bias has
// no gradient in exact arithmetic (a constant added to every score of a
// softmax row): its reference is ~1e-15, so it is measured against the
// scale of k_proj.weight's gradient instead of its own.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/clip.h"
#include "sampling/rng.h"
#include "testutil.h"

#define TOL 1e-4
#define TOL_ACCUM 1e-6 // two backward calls vs 2x one: only the order of the sums differs

static const char *const PROJ[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};

typedef struct Fixture {
    StFile grad;             // ref-grad-clip.safetensors
    uint64_t dout_seed, lora_seed, lora_b_seed;
    int rank;                // of the LoRA case being run
} Fixture;

typedef struct Case {        // one model
    const char *prefix;      // "sd1"
    const char *folder;      // tests/fixtures/tiny-sd1
    int32_t *ids;            // (B, L) from ref-<model>.safetensors
    float *hidden;           // (B, L, D) text.hidden there
    float *dout;             // (B, L, D) torch.randn(generator=manual_seed(dout_seed))
    int B, L, D;
    int lora;                // the case running: 0 full, 1 LoRA
    double worst[2];         // largest gradient rel_err seen, full and LoRA
} Case;

static int check_rc(TestCtx *t, int rc, const char *what, const SdcError *err) {
    return check_true(t, rc == 0, "%s%s%s", what, rc ? ": " : "", rc ? err->msg : "");
}

// A precondition: silent when it holds, a failed check with the message when not.
#define REQUIRE(t, cond, ...) ((cond) ? 1 : check_true((t), 0, __VA_ARGS__))

// The reference tensor `name` as f32 (a view into the map), or NULL (and a failed check).
static const float *ref(TestCtx *t, const StFile *f, const char *name, size_t n) {
    const StEntry *e = st_find(f, name);
    if (!REQUIRE(t, e && e->dtype == DT_F32 && e->nbytes == n * sizeof(float),
                 "%s: %s is F32 with %zu elements", f->path, name, n))
        return NULL;
    return (const float *)st_tensor(f, e).data;
}

static double max_abs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(x[i]) > m) m = fabs(x[i]);
    return m;
}

// check_rel, remembering the worst figure of the case.
static void check_grad(TestCtx *t, Case *c, const char *name, const float *got, const float *want, size_t n) {
    double e = rel_err(got, want, n);
    if (e > c->worst[c->lora] || e != e) c->worst[c->lora] = e;
    check_rel(t, name, got, want, n, TOL);
}

// A gradient that is zero in exact arithmetic: max |got - ref| over `scale`,
// printed like check_rel.
static void check_zero_grad(TestCtx *t, Case *c, const char *name, const float *got, const float *want, size_t n,
                            double scale) {
    double e = max_abs_diff(got, want, n) / scale;
    int ok = e <= TOL;
    if (e > c->worst[c->lora] || e != e) c->worst[c->lora] = e;
    t->checks++;
    if (!ok) t->failures++;
    printf("  %-48s rel_err=%.3e  tol=%.0e  %s  (exact grad 0; / max|d k_proj.weight|)\n", name, e, TOL,
           ok ? "OK" : "NOT OK");
}

// ---- full training ---------------------------------------------------------------

// Compares every parameter's gradient (the load table) with the reference.
static void check_full_grads(TestCtx *t, Case *c, const Fixture *fx, ClipModel *m, const float *grads,
                             const float *params) {
    const ParamTable *tb = clip_train_table(m);
    const char *tok = "text_model.embeddings.token_embedding.weight";
    char key[256];
    int n_ref = 0, prefix_len = snprintf(key, sizeof key, "%s.grad.", c->prefix);
    for (int i = 0; i < fx->grad.n; i++) n_ref += !strncmp(fx->grad.entries[i].name, key, (size_t)prefix_len);
    check_true(t, tb && tb->n == n_ref + 1, "%s: %d trainable tensors, %d references + the token embedding",
               c->prefix, tb ? tb->n : 0, n_ref);
    if (!tb) return;
    for (int i = 0; i < tb->n; i++) {
        const ParamEntry *e = &tb->e[i];
        size_t n = (size_t)tensor_numel(&e->t);
        const float *g = grads + ((const float *)e->t.data - params);
        if (!strcmp(e->name, tok)) {
            // the reference holds the rows of the prompts' ids; the rest must be 0
            snprintf(key, sizeof key, "%s.tok_rows", c->prefix);
            const StEntry *re = st_find(&fx->grad, key);
            if (!REQUIRE(t, re && re->dtype == DT_I32, "%s present", key)) continue;
            const int32_t *rows = (const int32_t *)st_tensor(&fx->grad, re).data;
            int nr = (int)re->shape[0], D = (int)e->t.shape[1], V = (int)e->t.shape[0];
            snprintf(key, sizeof key, "%s.grad_rows.%s", c->prefix, tok);
            const float *want = ref(t, &fx->grad, key, (size_t)nr * D);
            float *got = malloc((size_t)nr * D * sizeof(float));
            char *used = calloc((size_t)V, 1);
            for (int r = 0; r < nr; r++) {
                memcpy(got + (size_t)r * D, g + (size_t)rows[r] * D, (size_t)D * sizeof(float));
                used[rows[r]] = 1;
            }
            double other = 0;
            for (int v = 0; v < V; v++)
                if (!used[v]) other = fmax(other, max_abs(g + (size_t)v * D, (size_t)D));
            if (want) check_grad(t, c, e->name, got, want, (size_t)nr * D);
            check_true(t, other == 0, "  token_embedding: the %d rows no prompt uses have gradient 0 (max %g)",
                       V - nr, other);
            free(got);
            free(used);
            continue;
        }
        snprintf(key, sizeof key, "%s.grad.%s", c->prefix, e->name);
        const float *want = ref(t, &fx->grad, key, n);
        if (!want) continue;
        const char *kb = strstr(e->name, "k_proj.bias");
        if (kb) {
            char wname[256];
            snprintf(wname, sizeof wname, "%s.grad.%.*sk_proj.weight", c->prefix, (int)(kb - e->name), e->name);
            const StEntry *we = st_find(&fx->grad, wname);
            double scale = we ? max_abs((const float *)st_tensor(&fx->grad, we).data, (size_t)(we->nbytes / 4)) : 1;
            check_zero_grad(t, c, e->name, g, want, n, scale);
        } else {
            check_grad(t, c, e->name, g, want, n);
        }
    }
}

static void run_full(TestCtx *t, const Backend *be, Case *c, const Fixture *fx) {
    SdcError err = {0};
    ModelFiles *mf = NULL;
    ClipModel *m = NULL;
    printf("%s full (every parameter, %s loaded trainable)\n", c->prefix, c->folder);
    c->lora = 0;
    if (!check_rc(t, model_files_open(&mf, c->folder, NULL, -1, &err), "model_files_open", &err)) return;
    if (!check_rc(t, clip_load_opts(&m, mf, be, &(ModelLoadOpts){.trainable = 1}, &err), "clip_load_opts", &err))
        goto done;
    const size_t nout = (size_t)c->B * c->L * c->D;
    float *out = malloc(nout * sizeof(float)), *enc = malloc(nout * sizeof(float));
    Tensor out_t = tensor_f32(out, 3, (int64_t[]){c->B, c->L, c->D});    // (B, L, D)
    Tensor enc_t = tensor_f32(enc, 3, (int64_t[]){c->B, c->L, c->D});    // (B, L, D)
    Tensor dout_t = tensor_f32(c->dout, 3, (int64_t[]){c->B, c->L, c->D}); // (B, L, D)
    float *p, *g, *g1 = NULL;
    size_t n;
    if (!check_rc(t, clip_train_reserve(m, &(ClipTrainOpts){0}, c->B, &err), "clip_train_reserve", &err))
        goto free_bufs;
    clip_trainables(m, &p, &g, &n);
    printf("  trainable %zu floats (%.1f KiB), training activations + gradients %.1f KiB\n", n, n / 256.0,
           clip_train_bytes(m) / 1024.0);
    if (!check_rc(t, clip_train_forward(m, c->ids, c->B, &out_t, &err), "clip_train_forward", &err))
        goto free_bufs;
    check_rel(t, "out vs text.hidden (transformers)", out, c->hidden, nout, TOL);
    if (check_rc(t, clip_encode(m, c->ids, c->B, 0, &enc_t, &err), "clip_encode", &err))
        check_true(t, max_abs_diff(out, enc, nout) == 0, "clip_train_forward == clip_encode (max |diff| %g)",
                   max_abs_diff(out, enc, nout));
    if (!check_rc(t, clip_train_backward(m, &dout_t, &err), "clip_train_backward", &err)) goto free_bufs;
    check_full_grads(t, c, fx, m, g, p);

    // Two backward calls of one forward accumulate: 2x.
    g1 = malloc(n * sizeof(float));
    memcpy(g1, g, n * sizeof(float));
    float *g2 = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) g2[i] = 2 * g1[i];
    if (check_rc(t, clip_train_backward(m, &dout_t, &err), "clip_train_backward again", &err)) {
        double e = rel_err(g, g2, n);
        check_true(t, e <= TOL_ACCUM, "two backward calls = 2x one (rel_err %.3e, tol %.0e)", e, TOL_ACCUM);
    }
    free(g2);
    // A second step from zeroed gradients gives the first step's gradients.
    memset(g, 0, n * sizeof(float));
    memset(out, 0, nout * sizeof(float));
    if (check_rc(t, clip_train_forward(m, c->ids, c->B, &out_t, &err), "second clip_train_forward", &err) &&
        check_rc(t, clip_train_backward(m, &dout_t, &err), "second clip_train_backward", &err)) {
        check_true(t, max_abs_diff(out, enc, nout) == 0 && max_abs_diff(g, g1, n) == 0,
                   "second step: same output and gradients (max |diff| %g, %g)", max_abs_diff(out, enc, nout),
                   max_abs_diff(g, g1, n));
    }
free_bufs:
    free(g1);
    free(out);
    free(enc);
done:
    clip_free(m);
    model_files_close(mf);
}

// ---- LoRA --------------------------------------------------------------------------

static void run_lora(TestCtx *t, const Backend *be, Case *c, const Fixture *fx, float alpha) {
    SdcError err = {0};
    ModelFiles *mf = NULL;
    ClipModel *m = NULL;
    const int r = fx->rank, D = c->D;
    printf("%s LoRA rank %d alpha %g (%s loaded for inference, base frozen)\n", c->prefix, r, alpha, c->folder);
    c->lora = 1;
    if (!check_rc(t, model_files_open(&mf, c->folder, NULL, -1, &err), "model_files_open", &err)) return;
    if (!check_rc(t, clip_load(&m, mf, be, &err), "clip_load", &err)) goto done;
    const size_t nout = (size_t)c->B * c->L * D;
    float *out = malloc(nout * sizeof(float)), *enc = malloc(nout * sizeof(float));
    float *bvals = malloc((size_t)D * r * sizeof(float));
    Tensor out_t = tensor_f32(out, 3, (int64_t[]){c->B, c->L, D});
    Tensor enc_t = tensor_f32(enc, 3, (int64_t[]){c->B, c->L, D});
    Tensor dout_t = tensor_f32(c->dout, 3, (int64_t[]){c->B, c->L, D});
    // Refused: full training of a model loaded for inference; backward before any forward.
    int rc = clip_train_reserve(m, &(ClipTrainOpts){0}, c->B, &err);
    check_true(t, rc == SDC_ERR_ARG, "full training of an inference load refused (rc %d)", rc);
    rc = clip_train_backward(m, &dout_t, &err);
    check_true(t, rc == SDC_ERR_ARG, "backward before any forward refused (rc %d)", rc);
    // batch 1 here: the batch-2 forward below re-plans
    ClipTrainOpts o = {.lora_rank = r, .lora_alpha = alpha, .lora_seed = fx->lora_seed};
    if (!check_rc(t, clip_train_reserve(m, &o, 1, &err), "clip_train_reserve (batch 1)", &err)) goto free_bufs;
    rc = clip_train_reserve(m, &(ClipTrainOpts){.lora_rank = 2 * r, .lora_alpha = alpha}, 1, &err);
    check_true(t, rc == SDC_ERR_ARG, "a second setup with other options refused (rc %d)", rc);
    float *p, *g;
    size_t n;
    clip_trainables(m, &p, &g, &n);
    const ParamTable *tb = clip_train_table(m);
    const int layers = tb ? tb->n / 8 : 0;
    printf("  %d LoRA tensors, %zu floats; training activations + gradients + LoRA %.1f KiB\n", tb ? tb->n : 0, n,
           clip_train_bytes(m) / 1024.0);
    // Fresh adapters (up = 0) change nothing.
    if (check_rc(t, clip_train_forward(m, c->ids, c->B, &out_t, &err), "clip_train_forward (batch 2)", &err) &&
        check_rc(t, clip_encode(m, c->ids, c->B, 0, &enc_t, &err), "clip_encode", &err))
        check_true(t, max_abs_diff(out, enc, nout) == 0, "fresh LoRA (up = 0): output == clip_encode (max |diff| %g)",
                   max_abs_diff(out, enc, nout));
    // The fixture's up values: randn(D, r) / 8 per (layer, projection), one generator.
    Rng rng;
    rng_seed(&rng, fx->lora_b_seed);
    char name[256], key[256];
    for (int i = 0; i < layers; i++)
        for (int j = 0; j < 4; j++) {
            snprintf(name, sizeof name, "text_model.encoder.layers.%d.self_attn.%s.lora.up.weight", i, PROJ[j]);
            int k = param_table_find(tb, name);
            if (!REQUIRE(t, k >= 0 && tensor_numel(&tb->e[k].t) == (int64_t)D * r, "%s is (%d, %d)", name, D, r))
                goto free_bufs;
            rng_normal(&rng, bvals, (size_t)D * r);
            float *up = tensor_f32p(&tb->e[k].t);
            for (int q = 0; q < D * r; q++) up[q] = bvals[q] / 8;
        }
    if (!check_rc(t, clip_train_forward(m, c->ids, c->B, &out_t, &err), "clip_train_forward", &err) ||
        !check_rc(t, clip_train_backward(m, &dout_t, &err), "clip_train_backward", &err))
        goto free_bufs;
    const char *what[2] = {"down", "up"};
    for (int w = 0; w < 2; w++) {
        snprintf(key, sizeof key, "%s.lora%g.grad.%s", c->prefix, alpha, what[w]);
        const float *want = ref(t, &fx->grad, key, (size_t)layers * 4 * r * D);
        if (!want) continue;
        for (int i = 0; i < layers; i++)
            for (int j = 0; j < 4; j++) {
                snprintf(name, sizeof name, "text_model.encoder.layers.%d.self_attn.%s.lora.%s.weight", i, PROJ[j],
                         what[w]);
                int k = param_table_find(tb, name);
                if (!REQUIRE(t, k >= 0, "LoRA tensor %s present", name)) continue;
                const float *gk = g + ((const float *)tb->e[k].t.data - p);
                check_grad(t, c, name + strlen("text_model.encoder."), gk, want + (size_t)(i * 4 + j) * r * D,
                           (size_t)r * D);
            }
    }
free_bufs:
    free(bvals);
    free(out);
    free(enc);
done:
    clip_free(m);
    model_files_close(mf);
}

// ---- main --------------------------------------------------------------------------

// A seed stored as an I64 (1,) tensor.
static uint64_t seed_of(TestCtx *t, const StFile *f, const char *name) {
    const StEntry *e = st_find(f, name);
    if (!REQUIRE(t, e && e->dtype == DT_I64 && e->nbytes == 8, "%s: %s is I64 (1,)", f->path, name)) return 0;
    return (uint64_t)*(const int64_t *)st_tensor(f, e).data;
}

// Runs every LoRA case of c the fixture holds ("<prefix>.lora<alpha>.grad.down",
// shape (layers * 4, rank, D)).
static void run_lora_cases(TestCtx *t, const Backend *be, Case *c, Fixture *fx) {
    char pre[64];
    int n = snprintf(pre, sizeof pre, "%s.lora", c->prefix), cases = 0;
    for (int i = 0; i < fx->grad.n; i++) {
        const StEntry *e = &fx->grad.entries[i];
        const char *tail = ".grad.down";
        size_t len = strlen(e->name);
        if (strncmp(e->name, pre, (size_t)n) || len < strlen(tail) || strcmp(e->name + len - strlen(tail), tail))
            continue;
        fx->rank = e->ndim == 3 ? (int)e->shape[1] : 0;
        run_lora(t, be, c, fx, strtof(e->name + n, NULL));
        cases++;
    }
    check_true(t, cases > 0, "%s: %d LoRA cases in the fixture", c->prefix, cases);
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Backend *be = NULL;
    if (backend_cpu_create(&be, 0, &err)) {
        fprintf(stderr, "backend_cpu_create: %s\n", err.msg);
        return 1;
    }
    Fixture fx = {0};
    const char *path = "tests/fixtures/ref-grad-clip.safetensors";
    if (!check_rc(&t, st_open(&fx.grad, path, &err), path, &err)) return test_summary(&t);
    fx.dout_seed = seed_of(&t, &fx.grad, "dout_seed");
    fx.lora_seed = seed_of(&t, &fx.grad, "lora_seed");
    fx.lora_b_seed = seed_of(&t, &fx.grad, "lora_b_seed");

    Case cs[2] = {{.prefix = "sd1", .folder = "tests/fixtures/tiny-sd1"},
                  {.prefix = "sd2", .folder = "tests/fixtures/tiny-sd2"}};
    for (int i = 0; i < 2; i++) {
        Case *c = &cs[i];
        StFile rf;
        char refp[256];
        snprintf(refp, sizeof refp, "tests/fixtures/ref-tiny-%s.safetensors", c->prefix);
        if (!check_rc(&t, st_open(&rf, refp, &err), refp, &err)) continue;
        const StEntry *ide = st_find(&rf, "text.ids"), *he = st_find(&rf, "text.hidden");
        if (check_true(&t, ide && ide->dtype == DT_I32 && ide->ndim == 2 && he && he->dtype == DT_F32 &&
                               he->ndim == 3, "%s: text.ids I32 (B, L), text.hidden F32 (B, L, D)", refp)) {
            c->B = (int)he->shape[0], c->L = (int)he->shape[1], c->D = (int)he->shape[2];
            size_t n = (size_t)c->B * c->L * c->D;
            c->ids = malloc(ide->nbytes);
            memcpy(c->ids, st_tensor(&rf, ide).data, ide->nbytes);
            c->hidden = malloc(n * sizeof(float));
            memcpy(c->hidden, st_tensor(&rf, he).data, n * sizeof(float));
            c->dout = malloc(n * sizeof(float));
            Rng rng;
            rng_seed(&rng, fx.dout_seed);
            rng_normal(&rng, c->dout, n);
            run_full(&t, be, c, &fx);
            run_lora_cases(&t, be, c, &fx);
        }
        st_close(&rf);
    }
    for (int i = 0; i < 2; i++)
        printf("%s worst gradient rel_err: full %.3e, LoRA %.3e (tol %.0e)\n", cs[i].prefix, cs[i].worst[0],
               cs[i].worst[1], TOL);
    for (int i = 0; i < 2; i++) {
        free(cs[i].ids);
        free(cs[i].hidden);
        free(cs[i].dout);
    }
    st_close(&fx.grad);
    backend_destroy(be);
    return test_summary(&t);
}
