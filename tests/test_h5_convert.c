// test_h5_convert.c: `sdc convert` round trips on the tiny fixtures are
// bit-exact: safetensors (original layout) -> h5 -> safetensors and diffusers
// folder -> h5 -> diffusers folder, in f32, f16 and bf16, comparing every
// tensor (name, dtype, shape, bytes); the diffusers configs sdc writes read
// back as the same architecture. SDXL (tools/make_sdxl_fixture.py): the
// four components (text_encoder_2 with OpenCLIP's fused in_proj split and
// merged again and its transposed text_projection) through every pair of
// single file / h5 / diffusers folder, in f32 and f16, every tensor of every
// file byte-identical, and the configs read back as the same SDXL model.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/convert.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "testutil.h"

static int same_tensors(TestCtx *t, const char *a, const char *b) {
    StFile fa, fb;
    SdcError err = {0};
    if (!check_true(t, st_open(&fa, a, &err) == 0, "open %s: %s", a, err.msg)) return 1;
    if (!check_true(t, st_open(&fb, b, &err) == 0, "open %s: %s", b, err.msg)) return 1;
    int bad = fa.n != fb.n;
    for (int i = 0; i < fa.n && !bad; i++) {
        const StEntry *x = &fa.entries[i], *y = st_find(&fb, x->name);
        bad = !y || strcmp(x->dtype_str, y->dtype_str) || x->ndim != y->ndim || x->nbytes != y->nbytes ||
              memcmp(x->shape, y->shape, sizeof x->shape) ||
              memcmp(fa.data + x->offset, fb.data + y->offset, x->nbytes);
        if (bad) printf("  first difference: %s\n", x->name);
    }
    check_true(t, !bad, "%s == %s: %d tensors, names, dtypes, shapes, bytes", b, a, fa.n);
    st_close(&fa);
    st_close(&fb);
    return bad;
}

static int conv_cfg(TestCtx *t, const char *in, const char *config, const char *out, int dtype) {
    SdcError err = {0};
    ConvertOpts o = {.model = in, .config = config, .output = out, .dtype = dtype, .quiet = 1};
    return !check_true(t, convert_run(&o, &err) == 0, "convert %s -> %s: %s", in, out, err.msg);
}

static int conv(TestCtx *t, const char *in, const char *out, int dtype) { return conv_cfg(t, in, NULL, out, dtype); }

// The four weight files of two SDXL diffusers folders are the same tensors.
static void same_xl_folders(TestCtx *t, const char *a, const char *b) {
    static const char *files[4] = {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                                   "text_encoder/model.safetensors", "text_encoder_2/model.safetensors"};
    for (int f = 0; f < 4; f++) {
        char x[512], y[512];
        snprintf(x, sizeof x, "%s/%s", a, files[f]);
        snprintf(y, sizeof y, "%s/%s", b, files[f]);
        same_tensors(t, x, y);
    }
}

// ModelInfo a and b describe the same SDXL model (the levels that exist).
static void same_xl_info(TestCtx *t, const char *pa, const char *pb) {
    ModelFiles *m0 = NULL, *m1 = NULL;
    SdcError err = {0};
    if (check_true(t, model_files_open(&m0, pa, NULL, -1, &err) == 0 && model_files_open(&m1, pb, NULL, -1, &err) == 0,
                   "open %s and %s: %s", pa, pb, err.msg)) {
        const ModelInfo *i0 = model_files_info(m0), *i1 = model_files_info(m1);
        UnetConfig u0 = i0->unet, u1 = i1->unet;
        for (int l = u0.n_levels; l < SDC_MAX_LEVELS; l++) u0.heads[l] = u1.heads[l] = 0;
        check_true(t, i1->family == SD_FAMILY_XL && i1->has_clip2 && !memcmp(&u0, &u1, sizeof u0),
                   "%s: SDXL, the same UnetConfig (added embedding %d x %d + %d)", pb, u1.n_time_ids, u1.add_time_dim,
                   u1.add_in_dim - u1.n_time_ids * u1.add_time_dim);
        check_true(t, !memcmp(&i0->vae, &i1->vae, sizeof i0->vae), "%s: same VaeConfig (scaling factor %g)", pb,
                   i1->vae.scaling_factor);
        check_true(t, !memcmp(&i0->clip, &i1->clip, sizeof i0->clip) && !memcmp(&i0->clip2, &i1->clip2, sizeof i0->clip2),
                   "%s: same text encoders (projection %d, pads %d / %d)", pb, i1->clip2.projection_dim,
                   i1->clip.pad_token, i1->clip2.pad_token);
        check_true(t, i0->force_zeros_negative == i1->force_zeros_negative && !strcmp(i0->sched.class_name, i1->sched.class_name),
                   "%s: force_zeros_for_empty_prompt %d, scheduler %s", pb, i1->force_zeros_negative, i1->sched.class_name);
    }
    model_files_close(m0);
    model_files_close(m1);
}

// SDXL: single file <-> h5 <-> diffusers folder, f32 and f16, bit-exact.
static void sdxl(TestCtx *t, const char *dir) {
    const char *folder = "tests/fixtures/tiny-sdxl", *infer = "tests/fixtures/tiny-sdxl-infer.safetensors";
    char a[256], b[256], c[256], d[256], e[256];
    const char *names[2] = {"f32", "f16"};
    const int dts[2] = {DT_F32, DT_F16};
    for (int k = 0; k < 2; k++) {
        // the folder in this dtype, then folder -> h5 -> folder, folder -> single -> folder (the single file
        // read with the folder's configs: tiny-sdxl's widths cannot be inferred), and single -> h5 -> single
        snprintf(a, sizeof a, "%s/xl-%s", dir, names[k]);
        snprintf(b, sizeof b, "%s/xl-%s.h5", dir, names[k]);
        snprintf(c, sizeof c, "%s/xl-%s-from-h5", dir, names[k]);
        snprintf(d, sizeof d, "%s/xl-%s.safetensors", dir, names[k]);
        snprintf(e, sizeof e, "%s/xl-%s-from-single", dir, names[k]);
        if (conv(t, folder, a, dts[k])) continue;
        if (!conv(t, a, b, -1) && !conv(t, b, c, -1)) same_xl_folders(t, a, c);
        if (!conv(t, a, d, -1) && !conv_cfg(t, d, folder, e, -1)) same_xl_folders(t, a, e);
        snprintf(c, sizeof c, "%s/xl-%s-b.h5", dir, names[k]);
        snprintf(e, sizeof e, "%s/xl-%s-b.safetensors", dir, names[k]);
        if (!conv_cfg(t, d, folder, c, -1) && !conv(t, c, e, -1)) same_tensors(t, d, e);
        if (k == 0) same_xl_info(t, folder, a);
    }
    // the single file in the original layout whose architecture is inferred (fused in_proj, x @ P projection,
    // logit_scale kept as an extra): single -> h5 -> single, single -> folder -> single, h5 -> folder
    snprintf(a, sizeof a, "%s/xli.h5", dir);
    snprintf(b, sizeof b, "%s/xli.safetensors", dir);
    snprintf(c, sizeof c, "%s/xli", dir);
    snprintf(d, sizeof d, "%s/xli-b.safetensors", dir);
    snprintf(e, sizeof e, "%s/xli-from-h5", dir);
    if (!conv(t, infer, a, -1) && !conv(t, a, b, -1)) same_tensors(t, infer, b);
    if (!conv(t, infer, c, -1) && !conv(t, c, d, -1)) {
        // the folder has no place for logit_scale (an extra): the rest is the file's
        StFile fa, fb;
        SdcError err = {0};
        if (check_true(t, !st_open(&fa, infer, &err) && !st_open(&fb, d, &err), "open: %s", err.msg)) {
            int bad = fb.n != fa.n - 1;
            for (int i = 0; i < fa.n && !bad; i++) {
                const StEntry *x = &fa.entries[i], *y = st_find(&fb, x->name);
                if (strstr(x->name, "logit_scale")) continue;
                bad = !y || x->nbytes != y->nbytes || memcmp(x->shape, y->shape, sizeof x->shape) ||
                      memcmp(fa.data + x->offset, fb.data + y->offset, x->nbytes);
                if (bad) printf("  first difference: %s\n", x->name);
            }
            check_true(t, !bad, "%s == %s but logit_scale: %d tensors, shapes, bytes", d, infer, fb.n);
            st_close(&fa);
            st_close(&fb);
        }
    }
    if (!conv(t, a, e, -1)) same_xl_folders(t, c, e);
    same_xl_info(t, infer, c);
    // the 9-channel SDXL inpainting model (its shared parts are symlinks): StableDiffusionXLInpaintPipeline
    snprintf(a, sizeof a, "%s/xl-inpaint", dir);
    if (!conv(t, "tests/fixtures/tiny-sdxl-inpaint", a, -1)) {
        char mi[300], text[4096] = "";
        snprintf(mi, sizeof mi, "%s/model_index.json", a);
        FILE *f = fopen(mi, "rb");
        size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
        if (f) fclose(f);
        text[n] = 0;
        check_true(t, strstr(text, "\"StableDiffusionXLInpaintPipeline\"") && strstr(text, "\"tokenizer_2\""),
                   "%s: model_index.json names StableDiffusionXLInpaintPipeline and tokenizer_2", a);
        same_xl_info(t, "tests/fixtures/tiny-sdxl-inpaint", a);
    }
}

int main(void) {
    TestCtx t = {0};
    char dir[] = "/tmp/sdc-test-convert-XXXXXX", a[256], b[256], c[256], base[256];
    if (!mkdtemp(dir)) return 1;
    const char *single = "tests/fixtures/tiny-sd1.safetensors", *sd2 = "tests/fixtures/tiny-sd2.safetensors";
    const char *names[3] = {"f32", "f16", "bf16"};
    const int dts[3] = {DT_F32, DT_F16, DT_BF16};
    for (int k = 0; k < 3; k++) {
        // the source in this dtype, then safetensors -> h5 -> safetensors
        snprintf(base, sizeof base, "%s/base-%s.safetensors", dir, names[k]);
        snprintf(a, sizeof a, "%s/a-%s.h5", dir, names[k]);
        snprintf(b, sizeof b, "%s/b-%s.safetensors", dir, names[k]);
        if (conv(&t, single, base, dts[k]) || conv(&t, base, a, -1) || conv(&t, a, b, -1)) continue;
        same_tensors(&t, base, b);
        // diffusers folder -> h5 -> diffusers folder
        snprintf(base, sizeof base, "%s/dbase-%s", dir, names[k]);
        snprintf(a, sizeof a, "%s/d-%s.h5", dir, names[k]);
        snprintf(c, sizeof c, "%s/dout-%s", dir, names[k]);
        if (conv(&t, "tests/fixtures/tiny-sd1", base, dts[k]) || conv(&t, base, a, -1) || conv(&t, a, c, -1)) continue;
        static const char *files[3] = {"unet/diffusion_pytorch_model.safetensors",
                                       "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"};
        for (int f = 0; f < 3; f++) {
            char x[512], y[512];
            snprintf(x, sizeof x, "%s/%s", base, files[f]);
            snprintf(y, sizeof y, "%s/%s", c, files[f]);
            same_tensors(&t, x, y);
        }
    }
    // the f32 fixture itself, and SD 2.x (OpenCLIP fused in_proj) through h5
    const char *srcs[2] = {single, sd2};
    for (int s = 0; s < 2; s++) {
        snprintf(a, sizeof a, "%s/x%d.h5", dir, s);
        snprintf(b, sizeof b, "%s/x%d.safetensors", dir, s);
        if (!conv(&t, srcs[s], a, -1) && !conv(&t, a, b, -1)) same_tensors(&t, srcs[s], b);
    }
    // configs: the diffusers folder written from an h5 reads back as the fixture's architecture
    ModelFiles *m0 = NULL, *m1 = NULL;
    SdcError err = {0};
    snprintf(c, sizeof c, "%s/dout-f32", dir);
    if (check_true(&t, model_files_open(&m0, "tests/fixtures/tiny-sd1", NULL, -1, &err) == 0 &&
                           model_files_open(&m1, c, NULL, -1, &err) == 0, "open both folders: %s", err.msg)) {
        const ModelInfo *i0 = model_files_info(m0), *i1 = model_files_info(m1);
        // heads[] past n_levels is not set by the config reader: compare the levels that exist
        UnetConfig u0 = i0->unet, u1 = i1->unet;
        for (int l = u0.n_levels; l < SDC_MAX_LEVELS; l++) u0.heads[l] = u1.heads[l] = 0;
        check_true(&t, !memcmp(&u0, &u1, sizeof u0), "unet/config.json: same UnetConfig");
        check_true(&t, !memcmp(&i0->vae, &i1->vae, sizeof i0->vae), "vae/config.json: same VaeConfig");
        check_true(&t, !memcmp(&i0->clip, &i1->clip, sizeof i0->clip), "text_encoder/config.json: same ClipConfig");
    }
    model_files_close(m0);
    model_files_close(m1);
    sdxl(&t, dir);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) return 1;
    return test_summary(&t);
}
