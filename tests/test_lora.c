// test_lora.c: LoRA files (src/io/lora.h) on the tiny SD 1.x fixture.
//
// (1) The fixture LoRA (tools/make_lora_fixture.py: rank 4 on every UNet
//     attention projection and the text encoder's q/k/v/out_proj and fc1;
//     UNet alpha 2, attn2.to_k/to_v alpha 6, text encoder alpha = rank) in
//     diffusers format (alpha in lora_adapter_metadata) and kohya format
//     (.alpha tensors, none where alpha = rank), each against the diffusers
//     folder and the original single file: merged weights and the UNet / text
//     encoder outputs at weight 0.7 against diffusers' (fp32; the merge is one
//     rank-4 sum per weight, so ~1e-7; the forward passes ~1e-6 as in test_unet).
// (2) kohya names in the original layout (lora_unet_input_blocks_1_1_...)
//     resolve to the same modules; the other diffusers / PEFT spellings too.
// (3) lora_save round trip in both formats: same targets, tensors, alphas.
// (4) 1x1 conv (4-D and 2-D LoRA tensors) and 3x3 conv (LoCon) merges
//     against a direct computation; weight 0 leaves a weight bit-identical.
// (5) Bad files: a shape that does not fit (both shapes in the message), a
//     module the model does not have, a tensor that is not a LoRA tensor,
//     disagreeing ranks, a missing up, DoRA, SDXL.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/arena.h"
#include "core/backend.h"
#include "io/lora.h"
#include "io/namemap.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/clip.h"
#include "models/unet.h"
#include "testutil.h"

#define FIX "tests/fixtures"
#define MODEL FIX "/tiny-sd1"
#define WEIGHT 0.7f
#define TOL_MERGE 1e-6 // one rank-4 dot product per element on top of an exact copy
#define TOL_OUT 1e-5   // fp32 forward passes, summation order only (measured ~1e-6)

// A call the test depends on: counted (and printed) only when it fails; the
// checks that follow it print the figures.
static int check_rc(TestCtx *t, int rc, const char *what, const SdcError *err) {
    return rc == 0 || check_true(t, 0, "%s: %s", what, err->msg);
}

static float *to_f32(const Tensor *x) {
    size_t n = (size_t)tensor_numel(x);
    float *h = malloc(n * sizeof *h);
    convert_to_f32(h, x->data, x->dtype, n);
    return h;
}

// The message of a failing call must contain every one of the (NULL-ended) words.
static void check_error(TestCtx *t, const char *what, int rc, const SdcError *err, const char *const *words) {
    int ok = rc != 0;
    for (const char *const *w = words; ok && *w; w++) ok = strstr(err->msg, *w) != NULL;
    check_true(t, ok, "%s: refused with a message naming the problem (rc %d)", what, rc);
    printf("    message: %s\n", rc ? err->msg : "(none)");
}

// ----------------------------------------------------------------------------
// (1) the fixture LoRA

static void check_merged_weights(TestCtx *t, const ModelFiles *mf, const LoraSet *set, const StFile *ref,
                                 const char *label) {
    for (int i = 0; i < ref->n; i++) {
        const char *rn = ref->entries[i].name;
        if (strncmp(rn, "merged.", 7)) continue;
        Component c = !strncmp(rn + 7, "unet.", 5) ? COMP_UNET : COMP_TEXT_ENCODER;
        const char *name = rn + 7 + (c == COMP_UNET ? 5 : 13);
        Tensor rs;
        float *want = fixture_f32(t, ref, rn, &rs);
        Tensor base;
        SdcError err = {0};
        if (!check_rc(t, model_files_get(mf, c, name, rs.ndim, rs.shape, &base, &err), name, &err)) {
            free(want);
            continue;
        }
        float *w = to_f32(&base);
        char what[1024];
        snprintf(what, sizeof what, "%s: merged %s", label, name);
        if (check_rc(t, lora_merge(set, c, name, base.ndim, base.shape, w, &err), what, &err))
            check_rel(t, what, w, want, (size_t)tensor_numel(&base), TOL_MERGE);
        free(w);
        free(want);
    }
}

static void check_outputs(TestCtx *t, const Backend *be, const ModelFiles *mf, const LoraSet *set,
                          const StFile *base_ref, const StFile *ref, const char *label) {
    SdcError err = {0};
    const ModelLoadOpts lo = {.lora = set};
    char what[768];
    // text encoder
    ClipModel *clip = NULL;
    snprintf(what, sizeof what, "%s: clip_load_opts with the LoRA", label);
    if (check_rc(t, clip_load_opts(&clip, mf, be, &lo, &err), what, &err)) {
        const ClipConfig *cc = clip_config(clip);
        const int B = 2, L = cc->max_positions, D = cc->hidden;
        const StEntry *ide = st_find(base_ref, "text.ids");
        float *want = fixture_f32(t, ref, "lora.text.hidden", NULL);
        float *got = malloc((size_t)B * L * D * sizeof *got);
        Tensor out = tensor_f32(got, 3, (int64_t[]){B, L, D}); // (B, L, D)
        if (ide && want && check_rc(t, clip_encode(clip, st_tensor(base_ref, ide).data, B, 0, &out, &err),
                                    "clip_encode", &err)) {
            snprintf(what, sizeof what, "%s: lora.text.hidden", label);
            check_rel(t, what, got, want, (size_t)B * L * D, TOL_OUT);
        }
        free(want);
        free(got);
        clip_free(clip);
    }
    // UNet
    Unet *unet = NULL;
    snprintf(what, sizeof what, "%s: unet_load_opts with the LoRA", label);
    if (!check_rc(t, unet_load_opts(&unet, mf, be, &lo, &err), what, &err)) return;
    Tensor sx, sctx;
    float *hx = fixture_f32(t, base_ref, "unet.x", &sx), *ht = fixture_f32(t, base_ref, "unet.t", NULL);
    float *hctx = fixture_f32(t, base_ref, "unet.ctx", &sctx), *want = fixture_f32(t, ref, "lora.unet.out", NULL);
    Arena io = {0};
    if (hx && ht && hctx && want) {
        const int64_t N = sx.shape[0], C = sx.shape[1], H = sx.shape[2], W = sx.shape[3];
        const int64_t L = sctx.shape[1], Dc = sctx.shape[2];
        const size_t nx = (size_t)(N * C * H * W), nc = (size_t)(N * L * Dc);
        if (check_rc(t, arena_init(&io, be, 4 * (2 * nx + nc) + 8 * ARENA_ALIGN, &err), "io arena", &err)) {
            Tensor x = arena_tensor(&io, be->act_dtype, 4, (int64_t[]){N, C, H, W});       // (N, 4, H, W)
            Tensor ctx = arena_tensor(&io, be->act_dtype, 3, (int64_t[]){N, L, Dc});       // (N, L, cross)
            Tensor out = arena_tensor(&io, be->act_dtype, 4, (int64_t[]){N, 4, H, W});     // (N, 4, H, W)
            backend_upload_f32(be, &x, hx, nx);
            backend_upload_f32(be, &ctx, hctx, nc);
            if (check_rc(t, unet_forward(unet, &out, &x, ht, &ctx, &err), "unet_forward", &err)) {
                float *got = malloc(nx * sizeof *got);
                backend_download_f32(be, got, &out, nx);
                snprintf(what, sizeof what, "%s: lora.unet.out", label);
                check_rel(t, what, got, want, nx, TOL_OUT);
                free(got);
            }
        }
    }
    arena_free(&io);
    free(hx), free(ht), free(hctx), free(want);
    unet_free(unet);
}

// One fixture file against one model layout.
static void run_fixture(TestCtx *t, const Backend *be, const char *lora_path, LoraFormat fmt, const char *model,
                        const char *config, const StFile *base_ref, const StFile *ref) {
    char label[512];
    snprintf(label, sizeof label, "%s on %s", strrchr(lora_path, '/') + 1, strrchr(model, '/') + 1);
    printf("%s\n", label);
    SdcError err = {0};
    ModelFiles *mf = NULL;
    if (!check_rc(t, model_files_open(&mf, model, config, -1, &err), model, &err)) return;
    LoraSet set = {0};
    LoraSpec spec = {.weight = WEIGHT};
    snprintf(spec.path, sizeof spec.path, "%s", lora_path);
    double t0 = now_s();
    if (!check_rc(t, lora_set_open(&set, &spec, 1, mf, &err), "lora_set_open", &err)) {
        model_files_close(mf);
        return;
    }
    const LoraFile *f = &set.files[0];
    int n_unet = 0, n_te = 0, ranks_ok = 1;
    for (int i = 0; i < f->n; i++) {
        *(f->e[i].comp == COMP_UNET ? &n_unet : &n_te) += 1;
        ranks_ok &= f->e[i].rank == 4;
    }
    printf("  opened in %.1f ms: %s format, %d UNet + %d text-encoder modules\n", (now_s() - t0) * 1e3,
           f->format == LORA_FORMAT_KOHYA ? "kohya" : "diffusers", n_unet, n_te);
    check_true(t, f->format == fmt && n_unet == 128 && n_te == 25 && ranks_ok,
               "format %d, 128 + 25 modules of rank 4", (int)fmt);
    const LoraEntry *q = lora_find(f, COMP_UNET, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight");
    const LoraEntry *k2 = lora_find(f, COMP_UNET, "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k.weight");
    const LoraEntry *te = lora_find(f, COMP_TEXT_ENCODER, "text_model.encoder.layers.3.mlp.fc1.weight");
    check_true(t, q && k2 && te && q->alpha == 2 && q->scale == 0.5f && k2->alpha == 6 && k2->scale == 1.5f &&
                      te->alpha == 4 && te->scale == 1,
               "alphas: attn1.to_q 2 (scale 0.5), attn2.to_k 6 (1.5), text encoder 4 = rank (1): got %g %g %g",
               q ? q->alpha : -1, k2 ? k2->alpha : -1, te ? te->alpha : -1);
    check_merged_weights(t, mf, &set, ref, label);
    check_outputs(t, be, mf, &set, base_ref, ref, label);
    lora_set_free(&set);
    model_files_close(mf);
}

// ----------------------------------------------------------------------------
// helpers for files written by the test

static void tmp_path(char *out, size_t cap, const char *name) {
    const char *dir = getenv("TMPDIR");
    snprintf(out, cap, "%s/sdc-test-lora-%d-%s", dir && dir[0] ? dir : "/tmp", (int)getpid(), name);
}

// Both LoRA files give the same modules with the same tensors and scales.
static void check_same_lora(TestCtx *t, const char *what, const LoraFile *a, const LoraFile *b) {
    int same = a->n == b->n;
    double max_diff = 0;
    for (int i = 0; same && i < a->n; i++) {
        const LoraEntry *x = &a->e[i], *y = lora_find(b, x->comp, x->target);
        same = y && tensor_same_shape(&x->down, &y->down) && tensor_same_shape(&x->up, &y->up) &&
               x->alpha == y->alpha && x->scale == y->scale;
        for (int h = 0; same && h < 2; h++) {
            const Tensor *tx = h ? &x->up : &x->down, *ty = h ? &y->up : &y->down;
            float *fx = to_f32(tx), *fy = to_f32(ty);
            double d = max_abs_diff(fx, fy, (size_t)tensor_numel(tx));
            if (d > max_diff) max_diff = d;
            free(fx), free(fy);
        }
    }
    check_true(t, same && max_diff == 0, "%s: %d modules, same targets, alphas, scales; max |diff| %g", what, a->n,
               max_diff);
}

// ----------------------------------------------------------------------------
// (2) other spellings of the same modules

static void test_original_names(TestCtx *t, const ModelFiles *mf) {
    printf("kohya names in the original layout (lora_unet_input_blocks_...)\n");
    SdcError err = {0};
    LoraFile ko;
    if (!check_rc(t, lora_open(&ko, FIX "/lora-tiny-sd1-kohya.safetensors", 1, mf, &err), "open kohya", &err)) return;
    const ModelInfo *info = model_files_info(mf);
    NameMap *nm = malloc(sizeof *nm);
    int rc = namemap_init(nm, &info->unet, &info->vae, 0, &err);
    check_rc(t, rc, "namemap_init", &err);
    const int n = ko.n;
    const char **names = malloc(3 * n * sizeof *names);
    char(*buf)[300] = malloc(3 * n * sizeof *buf);
    Tensor *ts = malloc(3 * n * sizeof *ts);
    float *alphas = malloc(n * sizeof *alphas);
    int k = 0;
    for (int i = 0; !rc && i < n; i++) {
        const LoraEntry *e = &ko.e[i];
        char stem[260];
        if (e->comp == COMP_UNET) {
            NameMapping o;
            rc = namemap_to_original(nm, COMP_UNET, e->target, &o);
            const char *p = o.name + strlen(namemap_prefix(nm, COMP_UNET));
            snprintf(stem, sizeof stem, "lora_unet_%.*s", (int)(strlen(p) - 7), p);
        } else {
            snprintf(stem, sizeof stem, "lora_te_%.*s", (int)(strlen(e->target) - 7), e->target);
        }
        for (char *c = stem; *c; c++)
            if (*c == '.') *c = '_';
        alphas[i] = e->alpha;
        snprintf(buf[k], sizeof buf[k], "%s.lora_down.weight", stem), ts[k++] = e->down;
        snprintf(buf[k], sizeof buf[k], "%s.lora_up.weight", stem), ts[k++] = e->up;
        snprintf(buf[k], sizeof buf[k], "%s.alpha", stem), ts[k++] = tensor_f32(&alphas[i], 0, NULL);
    }
    for (int i = 0; i < k; i++) names[i] = buf[i];
    char path[512];
    tmp_path(path, sizeof path, "orig.safetensors");
    for (int i = 0; !rc && i < k; i++)
        if (!strncmp(names[i], "lora_unet_", 10)) {
            printf("  e.g. %s\n", names[i]);
            break;
        }
    if (!rc && check_rc(t, st_write(path, names, ts, k, NULL, NULL, 0, &err), "write", &err)) {
        LoraFile back;
        if (check_rc(t, lora_open(&back, path, 1, mf, &err), "open original-layout kohya names", &err)) {
            check_same_lora(t, "original-layout names = diffusers-layout names", &ko, &back);
            lora_close(&back);
        }
        remove(path);
    }
    free(names), free(buf), free(ts), free(alphas), free(nm);
    lora_close(&ko);
}

// One module each in the other spellings diffusers / PEFT files use.
static void test_spellings(TestCtx *t, const ModelFiles *mf) {
    printf("diffusers / PEFT spellings\n");
    static const char *const KEYS[][3] = {
        // key stem, down suffix, target it must resolve to
        {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k", ".lora_A.weight",
         "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"},
        {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out", "_lora.down.weight",
         "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight"},
        {"up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_q", "_lora.down.weight",
         "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q.weight"},
        {"text_encoder.text_model.encoder.layers.0.self_attn.to_q", "_lora.down.weight",
         "text_model.encoder.layers.0.self_attn.q_proj.weight"},
        {"text_encoder.encoder.layers.1.self_attn.out_proj", ".lora_linear_layer.down.weight",
         "text_model.encoder.layers.1.self_attn.out_proj.weight"},
    };
    const int n = sizeof KEYS / sizeof KEYS[0];
    float down[4 * 32], up[32 * 4], alpha = 3;
    fill_uniform(down, 4 * 32, 1, -1, 1);
    fill_uniform(up, 32 * 4, 2, -1, 1);
    char buf[16][300];
    const char *names[16];
    Tensor ts[16];
    int k = 0;
    for (int i = 0; i < n; i++) {
        const int d = i < 3 ? 16 : 32; // those UNet levels are 16 wide, the text encoder 32
        const char *ds = KEYS[i][1];
        const char *us = !strcmp(ds, ".lora_A.weight") ? ".lora_B.weight"
                         : !strcmp(ds, "_lora.down.weight") ? "_lora.up.weight" : ".lora_linear_layer.up.weight";
        snprintf(buf[k], sizeof buf[k], "%s%s", KEYS[i][0], ds);
        ts[k++] = tensor_f32(down, 2, (int64_t[]){4, d});
        snprintf(buf[k], sizeof buf[k], "%s%s", KEYS[i][0], us);
        ts[k++] = tensor_f32(up, 2, (int64_t[]){d, 4});
    }
    snprintf(buf[k], sizeof buf[k], "%s.alpha", KEYS[0][0]); // a diffusers-style alpha tensor
    ts[k++] = tensor_f32(&alpha, 0, NULL);
    for (int i = 0; i < k; i++) names[i] = buf[i];
    char path[512];
    tmp_path(path, sizeof path, "spellings.safetensors");
    SdcError err = {0};
    if (!check_rc(t, st_write(path, names, ts, k, NULL, NULL, 0, &err), "write", &err)) return;
    LoraFile f;
    if (check_rc(t, lora_open(&f, path, 1, mf, &err), "open", &err)) {
        int found = 0;
        for (int i = 0; i < n; i++) {
            const LoraEntry *e = lora_find(&f, i < 3 ? COMP_UNET : COMP_TEXT_ENCODER, KEYS[i][2]);
            found += e != NULL;
            printf("  %s%s -> %s\n", KEYS[i][0], KEYS[i][1], e ? e->target : "(not found)");
        }
        const LoraEntry *a = lora_find(&f, COMP_UNET, KEYS[0][2]);
        check_true(t, found == n && f.n == n && a && a->alpha == 3 && a->scale == 0.75f,
                   "%d spellings resolve to their modules; <module>.alpha 3 -> scale 0.75", n);
        lora_close(&f);
    }
    remove(path);
}

// ----------------------------------------------------------------------------
// (3) lora_save round trip

static void test_roundtrip(TestCtx *t, const ModelFiles *mf) {
    SdcError err = {0};
    LoraFile src;
    if (!check_rc(t, lora_open(&src, FIX "/lora-tiny-sd1-diffusers.safetensors", 1, mf, &err), "open", &err)) return;
    // the trainer's view: f32 tensors and module names
    LoraTensor *lt = calloc((size_t)src.n, sizeof *lt);
    char(*mods)[LORA_NAME_MAX] = malloc((size_t)src.n * sizeof *mods);
    for (int i = 0; i < src.n; i++) {
        const LoraEntry *e = &src.e[i];
        snprintf(mods[i], sizeof mods[i], "%.*s", (int)(strlen(e->target) - 7), e->target);
        lt[i] = (LoraTensor){.comp = e->comp, .module = mods[i], .alpha = e->alpha,
                             .down = tensor_f32(to_f32(&e->down), e->down.ndim, e->down.shape),
                             .up = tensor_f32(to_f32(&e->up), e->up.ndim, e->up.shape)};
    }
    for (int fmt = 0; fmt < 2; fmt++) {
        const char *fname = fmt == LORA_FORMAT_KOHYA ? "kohya" : "diffusers";
        printf("lora_save %s format, read back\n", fname);
        char path[512], what[128];
        tmp_path(path, sizeof path, fmt ? "rt-kohya.safetensors" : "rt-diffusers.safetensors");
        if (!check_rc(t, lora_save(path, (LoraFormat)fmt, lt, src.n, &err), "lora_save", &err)) continue;
        LoraFile back;
        if (check_rc(t, lora_open(&back, path, 1, mf, &err), "lora_open", &err)) {
            snprintf(what, sizeof what, "%s round trip", fname);
            check_true(t, back.format == (LoraFormat)fmt, "%s: read back as %s", what, fname);
            check_same_lora(t, what, &src, &back);
            const char *m1 = st_meta(&back.st, fmt ? "ss_network_dim" : "lora_adapter_metadata");
            const char *m2 = st_meta(&back.st, fmt ? "ss_network_alpha" : "format");
            printf("  metadata: %s = %.70s%s\n", fmt ? "ss_network_dim" : "lora_adapter_metadata", m1 ? m1 : "-",
                   m1 && strlen(m1) > 70 ? "..." : "");
            check_true(t, fmt ? m1 && m2 && !strcmp(m1, "4") && !strcmp(m2, "Dynamic")
                              : m1 && strstr(m1, "\"unet.lora_alpha\": 2") && m2 && !strcmp(m2, "pt"),
                       "%s: metadata %s", what, fmt ? "ss_network_dim 4, ss_network_alpha Dynamic"
                                                   : "lora_adapter_metadata with unet.lora_alpha 2");
            lora_close(&back);
        }
        remove(path);
    }
    // alpha == rank everywhere: diffusers stores no alpha at all
    char path[512];
    tmp_path(path, sizeof path, "rt-plain.safetensors");
    LoraTensor one = lt[0];
    one.alpha = (float)one.down.shape[0];
    if (check_rc(t, lora_save(path, LORA_FORMAT_DIFFUSERS, &one, 1, &err), "lora_save alpha = rank", &err)) {
        StFile st;
        if (check_rc(t, st_open(&st, path, &err), "open", &err)) {
            check_true(t, st.n == 2 && !st_meta(&st, "lora_adapter_metadata"),
                       "alpha = rank: 2 tensors, no lora_adapter_metadata");
            st_close(&st);
        }
        remove(path);
    }
    one.alpha = -1;
    check_true(t, lora_save(path, LORA_FORMAT_KOHYA, &one, 1, &err) == SDC_ERR_ARG, "alpha -1 refused: %s", err.msg);
    // a trainer's table ("<module>.lora.down.weight" / ".lora.up.weight") -> LoraTensors
    ParamEntry pe[4];
    for (int i = 0; i < 2; i++) {
        snprintf(pe[2 * i].name, sizeof pe[2 * i].name, "%s.lora.up.weight", mods[i]);
        pe[2 * i].t = lt[i].up;
        snprintf(pe[2 * i + 1].name, sizeof pe[2 * i + 1].name, "%s.lora.down.weight", mods[i]);
        pe[2 * i + 1].t = lt[i].down;
    }
    ParamTable tb = {.e = pe, .n = 4, .cap = 4};
    LoraTensor *ft = NULL;
    int nft = 0;
    if (check_rc(t, lora_tensors_from_table(&tb, lt[0].comp, 2.0f, &ft, &nft, &err), "from table", &err)) {
        check_true(t, nft == 2 && !strcmp(ft[0].module, mods[0]) && !strcmp(ft[1].module, mods[1]) &&
                          ft[1].down.data == lt[1].down.data && ft[1].up.data == lt[1].up.data && ft[0].alpha == 2,
                   "lora_tensors_from_table: 2 modules paired by name (%s, ...)", nft ? ft[0].module : "-");
        free(ft);
    }
    for (int i = 0; i < src.n; i++) free(lt[i].down.data), free(lt[i].up.data);
    free(lt), free(mods);
    lora_close(&src);
}

// ----------------------------------------------------------------------------
// (4) conv merges against a direct computation

static void test_conv_merges(TestCtx *t, const ModelFiles *mf) {
    printf("conv LoRAs: proj_in 1x1 (4-D and 2-D tensors), resnet conv1 3x3 (LoCon)\n");
    // tiny-sd1 level 0: 16 channels; proj_in (16, 16, 1, 1); resnets.0.conv1 (16, 16, 3, 3)
    enum { C = 16, R = 2 };
    float d1[R * C], u1[C * R], d3[R * C * 9], alpha = 1;
    fill_uniform(d1, R * C, 11, -1, 1);
    fill_uniform(u1, C * R, 12, -1, 1);
    fill_uniform(d3, R * C * 9, 13, -1, 1);
    const char *names[] = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha",
        "lora_unet_down_blocks_0_attentions_1_proj_out.lora_down.weight", // 2-D on a 1x1 conv
        "lora_unet_down_blocks_0_attentions_1_proj_out.lora_up.weight",
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight",
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight",
    };
    Tensor ts[] = {
        tensor_f32(d1, 4, (int64_t[]){R, C, 1, 1}), tensor_f32(u1, 4, (int64_t[]){C, R, 1, 1}),
        tensor_f32(&alpha, 0, NULL),
        tensor_f32(d1, 2, (int64_t[]){R, C}), tensor_f32(u1, 2, (int64_t[]){C, R}),
        tensor_f32(d3, 4, (int64_t[]){R, C, 3, 3}), tensor_f32(u1, 4, (int64_t[]){C, R, 1, 1}),
    };
    char path[512];
    tmp_path(path, sizeof path, "conv.safetensors");
    SdcError err = {0};
    if (!check_rc(t, st_write(path, names, ts, 7, NULL, NULL, 0, &err), "write", &err)) return;
    LoraSet set = {0};
    LoraSpec spec = {.weight = 0.5f};
    snprintf(spec.path, sizeof spec.path, "%s", path);
    if (!check_rc(t, lora_set_open(&set, &spec, 1, mf, &err), "open", &err)) {
        remove(path);
        return;
    }
    const struct {
        const char *name;
        int k;          // kernel side
        float scale;    // alpha / rank
        const float *d; // (R, C*k*k)
    } cases[] = {
        {"down_blocks.0.attentions.0.proj_in.weight", 1, 1.0f / R, d1},
        {"down_blocks.0.attentions.1.proj_out.weight", 1, 1.0f, d1},
        {"down_blocks.0.resnets.0.conv1.weight", 3, 1.0f, d3},
    };
    for (int c = 0; c < 3; c++) {
        const int K = C * cases[c].k * cases[c].k;
        Tensor base;
        if (!check_rc(t, model_files_get(mf, COMP_UNET, cases[c].name, 4,
                                         (int64_t[]){C, C, cases[c].k, cases[c].k}, &base, &err), cases[c].name, &err))
            continue;
        float *got = to_f32(&base), *want = to_f32(&base);
        for (int o = 0; o < C; o++) // W[o, k] + 0.5 * scale * sum_r up[o, r] down[r, k]
            for (int k = 0; k < K; k++) {
                double s = 0;
                for (int r = 0; r < R; r++) s += (double)u1[o * R + r] * cases[c].d[r * K + k];
                want[o * K + k] += (float)(0.5 * cases[c].scale * s);
            }
        if (check_rc(t, lora_merge(&set, COMP_UNET, cases[c].name, 4, base.shape, got, &err), "merge", &err))
            check_rel(t, cases[c].name, got, want, (size_t)(C * K), TOL_MERGE);
        // weight 0: checked, never added
        float *zero = to_f32(&base), *orig = to_f32(&base);
        set.files[0].weight = 0;
        lora_merge(&set, COMP_UNET, cases[c].name, 4, base.shape, zero, &err);
        set.files[0].weight = 0.5f;
        check_true(t, !memcmp(zero, orig, (size_t)(C * K) * sizeof(float)), "%s: weight 0 leaves it bit-identical",
                   cases[c].name);
        free(got), free(want), free(zero), free(orig);
    }
    lora_set_free(&set);
    remove(path);
}

// ----------------------------------------------------------------------------
// (5) bad files

typedef struct BadTensor {
    const char *name;
    int ndim;
    int64_t shape[4];
} BadTensor;

// Writes the tensors (random values) and opens the file as a LoRA of mf; with
// load_unet, also loads the UNet with it. Returns the first error.
static int try_bad(const ModelFiles *mf, const Backend *be, const BadTensor *bt, int n, int load_unet,
                   SdcError *err) {
    static float vals[64 * 1024];
    fill_uniform(vals, sizeof vals / sizeof vals[0], 7, -1, 1);
    const char *names[8];
    Tensor ts[8];
    for (int i = 0; i < n; i++) names[i] = bt[i].name, ts[i] = tensor_f32(vals, bt[i].ndim, bt[i].shape);
    char path[512];
    tmp_path(path, sizeof path, "bad.safetensors");
    SDC_TRY(st_write(path, names, ts, n, NULL, NULL, 0, err));
    LoraSet set = {0};
    LoraSpec spec = {.weight = 1};
    snprintf(spec.path, sizeof spec.path, "%s", path);
    int rc = lora_set_open(&set, &spec, 1, mf, err);
    if (!rc && load_unet) {
        Unet *u = NULL;
        ModelLoadOpts lo = {.lora = &set};
        rc = unet_load_opts(&u, mf, be, &lo, err);
        unet_free(u);
    }
    lora_set_free(&set);
    remove(path);
    return rc;
}

static void test_bad_inputs(TestCtx *t, const ModelFiles *mf, const Backend *be) {
    printf("bad LoRA files\n");
    SdcError err = {0};
#define K2 "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    { // an SD 2.x-shaped LoRA: cross-attention input 1024 where this model has 32
        BadTensor b[] = {{K2 ".lora_down.weight", 2, {4, 1024}}, {K2 ".lora_up.weight", 2, {16, 4}}};
        int rc = try_bad(mf, be, b, 2, 1, &err);
        check_error(t, "shape that does not fit", rc, &err,
                    (const char *[]){K2, "attn2.to_k.weight", "(16, 32)", "(16, 1024)", "another model", NULL});
    }
    { // a module the model does not have
        BadTensor b[] = {{"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn3_to_q.lora_down.weight", 2,
                          {4, 16}}};
        int rc = try_bad(mf, be, b, 1, 0, &err);
        check_error(t, "kohya module that does not exist", rc, &err,
                    (const char *[]){"attn3_to_q", "this model's UNet has no", "---> a LoRA for another model", NULL});
        BadTensor d[] = {{"unet.mid_block.attentions.0.transformer_blocks.7.attn1.to_q.lora.down.weight", 2, {4, 32}}};
        rc = try_bad(mf, be, d, 1, 0, &err);
        check_error(t, "diffusers module that does not exist", rc, &err,
                    (const char *[]){"this model's UNet has no mid_block.attentions.0.transformer_blocks.7.attn1.to_q",
                                     NULL});
    }
    { // a model tensor, not a LoRA tensor
        BadTensor b[] = {{"model.diffusion_model.input_blocks.0.0.weight", 4, {16, 4, 3, 3}}};
        int rc = try_bad(mf, be, b, 1, 0, &err);
        check_error(t, "not a LoRA key", rc, &err,
                    (const char *[]){"input_blocks.0.0.weight", "not a LoRA tensor", "---> is this a LoRA file?",
                                     NULL});
    }
    { // down rank 4, up rank 8
        BadTensor b[] = {{K2 ".lora_down.weight", 2, {4, 32}}, {K2 ".lora_up.weight", 2, {16, 8}}};
        int rc = try_bad(mf, be, b, 2, 0, &err);
        check_error(t, "ranks that disagree", rc, &err, (const char *[]){K2, "rank 4", "rank 8", "---> ", NULL});
    }
    { // a down without its up
        BadTensor b[] = {{K2 ".lora_down.weight", 2, {4, 32}}, {K2 ".alpha", 0, {0}}};
        int rc = try_bad(mf, be, b, 2, 0, &err);
        check_error(t, "missing up", rc, &err, (const char *[]){K2, "no up tensor", NULL});
    }
    { // DoRA, SDXL
        BadTensor b[] = {{K2 ".lora_down.weight", 2, {4, 32}}, {K2 ".lora_up.weight", 2, {16, 4}},
                         {K2 ".dora_scale", 2, {1, 16}}};
        int rc = try_bad(mf, be, b, 3, 0, &err);
        check_error(t, "DoRA", rc, &err, (const char *[]){"DoRA", NULL});
        BadTensor x[] = {{"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", 2, {4, 32}}};
        rc = try_bad(mf, be, x, 1, 0, &err);
        check_error(t, "SDXL", rc, &err, (const char *[]){"SDXL", NULL});
    }
#undef K2
    LoraSpec s;
    int ok = !lora_spec_parse("a.safetensors", &s, &err) && s.weight == 1.0f && !strcmp(s.path, "a.safetensors");
    ok &= !lora_spec_parse("x/a.safetensors:0.7", &s, &err) && s.weight == 0.7f && !strcmp(s.path, "x/a.safetensors");
    ok &= !lora_spec_parse("c:/x.safetensors", &s, &err) && s.weight == 1.0f && !strcmp(s.path, "c:/x.safetensors");
    ok &= !lora_spec_parse("a.safetensors:-1.5", &s, &err) && s.weight == -1.5f;
    ok &= lora_spec_parse("a.safetensors:", &s, &err) && lora_spec_parse(":0.5", &s, &err) &&
          lora_spec_parse("a.safetensors:nan", &s, &err) && lora_spec_parse("", &s, &err);
    check_true(t, ok, "--lora FILE[:W] parsing (default 1, ':' inside a path, bad weights refused)");
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Backend *be = NULL;
    if (backend_cpu_create(&be, 0, &err)) {
        fprintf(stderr, "cpu backend: %s\n", err.msg);
        return 1;
    }
    StFile base_ref, ref;
    if (!check_rc(&t, st_open(&base_ref, FIX "/ref-tiny-sd1.safetensors", &err), "ref-tiny-sd1", &err) ||
        !check_rc(&t, st_open(&ref, FIX "/ref-lora-tiny-sd1.safetensors", &err), "ref-lora-tiny-sd1", &err)) {
        backend_destroy(be);
        return test_summary(&t);
    }
    const char *files[] = {FIX "/lora-tiny-sd1-diffusers.safetensors", FIX "/lora-tiny-sd1-kohya.safetensors"};
    for (int i = 0; i < 2; i++) {
        run_fixture(&t, be, files[i], (LoraFormat)i, MODEL, NULL, &base_ref, &ref);
        run_fixture(&t, be, files[i], (LoraFormat)i, FIX "/tiny-sd1.safetensors", MODEL, &base_ref, &ref);
    }
    ModelFiles *mf = NULL;
    if (check_rc(&t, model_files_open(&mf, MODEL, NULL, -1, &err), MODEL, &err)) {
        test_original_names(&t, mf);
        test_spellings(&t, mf);
        test_roundtrip(&t, mf);
        test_conv_merges(&t, mf);
        test_bad_inputs(&t, mf, be);
        model_files_close(mf);
    }
    st_close(&base_ref);
    st_close(&ref);
    backend_destroy(be);
    return test_summary(&t);
}
