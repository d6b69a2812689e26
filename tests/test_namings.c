// test_namings.c: the file and tensor namings current diffusers and
// transformers save_pretrained write, read as they read them.
// From tests/fixtures/tiny-sd1 (CLIP ViT-L style text encoder) and tiny-sd2
// (OpenCLIP style) the test writes, in /tmp, the same weights as:
//   v5_text_encoder  transformers 5's CLIPTextModel: no "text_model." prefix
//   projection       CLIPTextModelWithProjection: + text_projection.weight
//   sharded          every component in 3 shards + the index diffusers /
//                    transformers write (*.safetensors.index.json, weight_map)
//   fp16_sharded     the fp16 variant in shards (diffusion_pytorch_model.fp16-
//                    00001-of-00002.safetensors, *.safetensors.index.fp16.json)
//   fp16             model.fp16.safetensors / diffusion_pytorch_model.fp16.safetensors
//   old_vae          the VAE attention names of diffusers < 0.14 (query, key,
//                    value, proj_attn), which diffusers still loads
// and checks that every tensor of the original is found under its diffusers
// name with the same values (fp16: the original rounded to fp16).
// tools/check_namings.py makes the same layouts with the libraries' own
// save_pretrained and runs sdc convert on them.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "io/weights.h"
#include "testutil.h"

// the SD 1.x/2.x components (SDXL's text_encoder_2 is not in these fixtures)
#define N_COMP 3
static const char *const COMP_DIR[N_COMP] = {"text_encoder", "unet", "vae"};
static const char *const BASE[N_COMP] = {"model", "diffusion_pytorch_model", "diffusion_pytorch_model"};

static int copy_file(const char *a, const char *b) {
    FILE *fi = fopen(a, "rb"), *fo = fopen(b, "wb");
    int rc = fi && fo ? 0 : -1;
    char buf[65536];
    size_t k;
    while (!rc && (k = fread(buf, 1, sizeof buf, fi)) > 0) rc = fwrite(buf, 1, k, fo) == k ? 0 : -1;
    if (fi) fclose(fi);
    if (fo && fclose(fo)) rc = -1;
    return rc;
}

typedef enum { V_V5_TE, V_PROJECTION, V_SHARDED, V_FP16_SHARDED, V_FP16, V_OLD_VAE, V_COUNT } Variant;
static const char *const VNAME[V_COUNT] = {"v5_text_encoder", "projection", "sharded", "fp16_sharded", "fp16",
                                           "old_vae"};

// The name a tensor of component c gets in the variant's files.
static void variant_name(Variant v, int c, const char *name, char *out, size_t cap) {
    if (v == V_V5_TE && c == COMP_TEXT_ENCODER && !strncmp(name, "text_model.", 11)) {
        snprintf(out, cap, "%s", name + 11);
        return;
    }
    if (v == V_OLD_VAE && c == COMP_VAE) {
        static const char *const R[4][2] = {{".to_q.", ".query."}, {".to_k.", ".key."}, {".to_v.", ".value."},
                                            {".to_out.0.", ".proj_attn."}};
        const char *at = strstr(name, "mid_block.attentions.0");
        for (int k = 0; at && k < 4; k++) {
            const char *p = strstr(at, R[k][0]);
            if (p) {
                snprintf(out, cap, "%.*s%s%s", (int)(p - name), name, R[k][1], p + strlen(R[k][0]));
                return;
            }
        }
    }
    snprintf(out, cap, "%s", name);
}

// Writes component c of src (a folder) into dst/<comp>/ in the variant's layout.
static int write_component(const char *src, const char *dst, int c, Variant v, SdcError *err) {
    char in[1024], dir[1024], path[1400];
    snprintf(in, sizeof in, "%s/%s/%s.safetensors", src, COMP_DIR[c], BASE[c]);
    snprintf(dir, sizeof dir, "%s/%s", dst, COMP_DIR[c]);
    if (mkdir(dir, 0755)) return sdc_err(err, SDC_ERR_IO, "mkdir %s", dir);
    char cfg_a[1024], cfg_b[1400];
    snprintf(cfg_a, sizeof cfg_a, "%s/%s/config.json", src, COMP_DIR[c]);
    snprintf(cfg_b, sizeof cfg_b, "%s/config.json", dir);
    if (copy_file(cfg_a, cfg_b)) return sdc_err(err, SDC_ERR_IO, "copy %s", cfg_a);
    StFile f;
    SDC_TRY(st_open(&f, in, err));
    const int fp16 = v == V_FP16 || v == V_FP16_SHARDED;
    const int shards = v == V_SHARDED ? 3 : v == V_FP16_SHARDED ? 2 : 1;
    const int extra = v == V_PROJECTION && c == COMP_TEXT_ENCODER;
    const int n = f.n + extra;
    char **names = calloc((size_t)n, sizeof *names);
    Tensor *ts = calloc((size_t)n, sizeof *ts);
    void **owned = calloc((size_t)n, sizeof *owned);
    int rc = names && ts && owned ? 0 : sdc_err(err, SDC_ERR_OOM, "out of memory");
    for (int i = 0; !rc && i < f.n; i++) {
        char nm[512];
        variant_name(v, c, f.entries[i].name, nm, sizeof nm);
        names[i] = strdup(nm);
        ts[i] = st_tensor(&f, &f.entries[i]);
        if (fp16 && ts[i].dtype == DT_F32) {
            size_t k = (size_t)tensor_numel(&ts[i]);
            owned[i] = malloc(k * 2 + 1);
            if (!owned[i]) {
                rc = sdc_err(err, SDC_ERR_OOM, "out of memory");
                break;
            }
            convert_from_f32(owned[i], DT_F16, ts[i].data, k);
            ts[i].dtype = DT_F16;
            ts[i].data = owned[i];
        }
    }
    static float proj[32 * 32]; // CLIPTextModelWithProjection's, unused by SD
    if (!rc && extra) {
        names[f.n] = strdup("text_projection.weight");
        ts[f.n] = tensor_make(DT_F32, DEV_CPU, proj, 2, (int64_t[]){32, 32});
    }
    // shard k holds the tensors i with i % shards == k, as files named by the libraries
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    FILE *idx = NULL;
    if (!rc && shards > 1) {
        snprintf(path, sizeof path, "%s/%s.safetensors.index%s.json", dir, BASE[c], fp16 ? ".fp16" : "");
        idx = fopen(path, "wb");
        if (!idx) rc = sdc_err(err, SDC_ERR_IO, "create %s", path);
        else fprintf(idx, "{\n  \"metadata\": {\"total_size\": 0},\n  \"weight_map\": {");
    }
    for (int k = 0; !rc && k < shards; k++) {
        const char *sn[4096];
        Tensor st[4096];
        int m = 0;
        char file[256];
        if (shards > 1)
            snprintf(file, sizeof file, "%s%s-%05d-of-%05d.safetensors", BASE[c], fp16 ? ".fp16" : "", k + 1, shards);
        else
            snprintf(file, sizeof file, "%s%s.safetensors", BASE[c], fp16 ? ".fp16" : "");
        for (int i = k; i < n && m < 4096; i += shards) {
            sn[m] = names[i], st[m++] = ts[i];
            if (idx) fprintf(idx, "%s\n    \"%s\": \"%s\"", i ? "," : "", names[i], file);
        }
        snprintf(path, sizeof path, "%s/%s", dir, file);
        rc = st_write(path, sn, st, m, mk, mv, 1, err);
    }
    if (idx) {
        fprintf(idx, "\n  }\n}\n");
        if (fclose(idx) && !rc) rc = sdc_err(err, SDC_ERR_IO, "write the index of %s", dir);
    }
    for (int i = 0; i < n; i++) {
        if (names) free(names[i]);
        if (owned) free(owned[i]);
    }
    free(names);
    free(ts);
    free(owned);
    st_close(&f);
    return rc;
}

static int write_variant(const char *src, const char *dst, Variant v, SdcError *err) {
    if (mkdir(dst, 0755)) return sdc_err(err, SDC_ERR_IO, "mkdir %s", dst);
    char a[1024], b[1024];
    snprintf(a, sizeof a, "%s/scheduler", dst);
    if (mkdir(a, 0755)) return sdc_err(err, SDC_ERR_IO, "mkdir %s", a);
    static const char *const files[] = {"model_index.json", "scheduler/scheduler_config.json"};
    for (int i = 0; i < 2; i++) {
        snprintf(a, sizeof a, "%s/%s", src, files[i]);
        snprintf(b, sizeof b, "%s/%s", dst, files[i]);
        if (copy_file(a, b)) return sdc_err(err, SDC_ERR_IO, "copy %s", a);
    }
    for (int c = 0; c < N_COMP; c++) SDC_TRY(write_component(src, dst, c, v, err));
    return 0;
}

// Every tensor of ref (by diffusers name) is in got with the same values
// (fp16: ref's values rounded to fp16).
static void compare(TestCtx *t, const ModelFiles *ref, const ModelFiles *got, int fp16, const char *label) {
    int missing = 0, differ = 0, total = 0;
    char first[300] = "";
    for (int c = 0; c < N_COMP; c++)
        for (int i = 0; i < model_files_count(ref, (Component)c); i++) {
            const char *name;
            Tensor a, b;
            SdcError err = {0};
            if (model_files_at(ref, (Component)c, i, &name, &a, &err)) continue; // position_ids (I64)
            total++;
            if (model_files_get(got, (Component)c, name, a.ndim, a.shape, &b, &err)) {
                if (!missing++) snprintf(first, sizeof first, "%.250s", err.msg);
                continue;
            }
            size_t n = (size_t)tensor_numel(&a);
            float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
            convert_to_f32(x, a.data, a.dtype, n);
            convert_to_f32(y, b.data, b.dtype, n);
            if (fp16 && a.dtype == DT_F32) { // round the reference the same way
                uint16_t *h = malloc(n * 2 + 1);
                convert_from_f32(h, DT_F16, x, n);
                convert_to_f32(x, h, DT_F16, n);
                free(h);
            }
            if (memcmp(x, y, n * sizeof *x)) {
                if (!differ++ && !missing) snprintf(first, sizeof first, "%s/%s differs", COMP_DIR[c], name);
            }
            free(x);
            free(y);
        }
    check_true(t, total > 100 && !missing && !differ, "%-28s %d tensors found by their diffusers names, equal "
               "(%d missing, %d differ)%s%s", label, total, missing, differ, first[0] ? ": " : "", first);
}

static void remove_tree(const char *dir) {
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
}

int main(void) {
    TestCtx t = {0};
    char root[] = "/tmp/sdc_test_namings_XXXXXX";
    if (!mkdtemp(root)) return 1;
    const char *models[] = {"tiny-sd1", "tiny-sd2"};
    for (int mi = 0; mi < 2; mi++) {
        char src[256];
        snprintf(src, sizeof src, "tests/fixtures/%s", models[mi]);
        ModelFiles *ref = NULL;
        SdcError err = {0};
        if (!check_true(&t, model_files_open(&ref, src, NULL, -1, &err) == 0, "open %s: %s", src, err.msg)) continue;
        printf("%s (%s text encoder):\n", models[mi], mi ? "OpenCLIP-style" : "CLIP ViT-L-style");
        for (int v = 0; v < V_COUNT; v++) {
            char dst[512], label[128];
            snprintf(dst, sizeof dst, "%s/%s-%s", root, models[mi], VNAME[v]);
            snprintf(label, sizeof label, "  %s", VNAME[v]);
            if (!check_true(&t, write_variant(src, dst, (Variant)v, &err) == 0, "write %s: %s", dst, err.msg))
                continue;
            ModelFiles *got = NULL;
            if (check_true(&t, model_files_open(&got, dst, NULL, -1, &err) == 0, "%s opens%s%s", label,
                           got ? "" : ": ", got ? "" : err.msg))
                compare(&t, ref, got, v == V_FP16 || v == V_FP16_SHARDED, label);
            model_files_close(got);
        }
        model_files_close(ref);
    }
    // a shard index naming a file outside the folder is refused
    {
        char dst[512], p[600];
        SdcError err = {0};
        snprintf(dst, sizeof dst, "%s/bad-index", root);
        if (write_variant("tests/fixtures/tiny-sd1", dst, V_SHARDED, &err) == 0) {
            snprintf(p, sizeof p, "%s/vae/diffusion_pytorch_model.safetensors.index.json", dst);
            FILE *f = fopen(p, "wb");
            fprintf(f, "{\"weight_map\": {\"encoder.conv_in.weight\": \"../../etc/passwd\"}}");
            fclose(f);
            ModelFiles *got = NULL;
            int rc = model_files_open(&got, dst, NULL, -1, &err);
            check_true(&t, rc == SDC_ERR_FORMAT && strstr(err.msg, "index.json") && strstr(err.msg, "../../etc/passwd"),
                       "a shard index pointing outside its folder is refused: %s", rc ? err.msg : "(opened)");
            model_files_close(got);
        }
    }
    remove_tree(root);
    return test_summary(&t);
}
