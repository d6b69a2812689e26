// test_clip.c: parity of the CLIP text encoder with transformers'
// CLIPTextModel on the tiny fixtures (tools/make_fixtures.py), in both weight
// layouts: the diffusers folder, and the original single file with the
// folder as config_dir. Compares the default output (clip_skip 0) with
// text.hidden and clip_skip 2 with text.hidden_skip2, fp32 CPU, tolerance
// 1e-4 of max |ref| (fp32 sums over D=32 land near 1e-6). Also checks that a
// clip_skip past the first layer is refused.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/clip.h"
#include "testutil.h"

#define TOL 1e-4

// Copies a reference tensor (F32/F16/BF16) of n elements into a new f32
// buffer; NULL (and a failed check) when absent or of another size.
static float *ref_f32(TestCtx *t, const StFile *f, const char *name, size_t n) {
    const StEntry *e = st_find(f, name);
    if (!check_true(t, e != NULL, "%s: reference tensor %s present", f->path, name)) return NULL;
    Tensor r = st_tensor(f, e);
    if (!check_true(t, (size_t)tensor_numel(&r) == n, "%s: %s has %lld elements, expected %zu",
                    f->path, name, (long long)tensor_numel(&r), n))
        return NULL;
    float *out = malloc(n * sizeof(float));
    convert_to_f32(out, r.data, r.dtype, n);
    return out;
}

// One line per fallible call; the error message only when it failed.
static int check_rc(TestCtx *t, int rc, const char *what, const SdcError *err) {
    return check_true(t, rc == 0, "%s%s%s", what, rc ? ": " : "", rc ? err->msg : "");
}

static void run_layout(TestCtx *t, const Backend *be, const char *model, const char *path,
                       const char *config_dir, const StFile *ref) {
    SdcError err = {0};
    ModelFiles *mf = NULL;
    printf("%s (%s)\n", model, path);
    if (!check_rc(t, model_files_open(&mf, path, config_dir, -1, &err), "model_files_open", &err))
        return;
    ClipModel *m = NULL;
    if (!check_rc(t, clip_load(&m, mf, be, &err), "clip_load", &err)) {
        model_files_close(mf);
        return;
    }
    const ClipConfig *c = clip_config(m);
    const int B = 2, L = c->max_positions, D = c->hidden;
    printf("  config: %d layers, hidden %d, heads %d, act %s, default_skip %d\n", c->layers, D,
           c->heads, c->act == ACT_GELU ? "gelu" : "quick_gelu", c->default_skip);

    const StEntry *ide = st_find(ref, "text.ids");
    int32_t *ids = NULL;
    float *want = ref_f32(t, ref, "text.hidden", (size_t)B * L * D);
    float *want2 = ref_f32(t, ref, "text.hidden_skip2", (size_t)B * L * D);
    if (check_true(t, ide && ide->dtype == DT_I32 && ide->shape[0] == B && ide->shape[1] == L,
                   "text.ids is I32 (%d, %d)", B, L))
        ids = (int32_t *)st_tensor(ref, ide).data;
    float *got = malloc((size_t)B * L * D * sizeof(float));
    Tensor out = tensor_f32(got, 3, (int64_t[]){B, L, D}); // (B, L, D)

    if (ids && want && want2 &&
        check_rc(t, clip_reserve(m, B, &err), "clip_reserve", &err)) {
        printf("  params %.1f KiB, activations %.1f KiB (batch %d)\n",
               clip_param_bytes(m) / 1024.0, clip_activation_bytes(m) / 1024.0, B);
        double t0 = now_s();
        int rc = clip_encode(m, ids, B, 0, &out, &err);
        double t1 = now_s();
        if (check_rc(t, rc, "clip_encode skip 0", &err)) {
            printf("  encode %.2f ms\n", (t1 - t0) * 1e3);
            check_rel(t, "text.hidden (clip_skip 0)", got, want, (size_t)B * L * D, TOL);
        }
        memset(got, 0, (size_t)B * L * D * sizeof(float));
        rc = clip_encode(m, ids, B, 1, &out, &err);
        if (check_rc(t, rc, "clip_encode skip 1", &err))
            check_rel(t, "text.hidden (clip_skip 1)", got, want, (size_t)B * L * D, TOL);
        rc = clip_encode(m, ids, B, 2, &out, &err);
        if (check_rc(t, rc, "clip_encode skip 2", &err))
            check_rel(t, "text.hidden_skip2 (clip_skip 2)", got, want2, (size_t)B * L * D, TOL);
        // A single prompt through the arena planned for two gives the first row.
        Tensor out1 = tensor_f32(got, 3, (int64_t[]){1, L, D});
        rc = clip_encode(m, ids, 1, 0, &out1, &err);
        if (check_rc(t, rc, "clip_encode batch 1", &err))
            check_rel(t, "text.hidden[0] (batch 1)", got, want, (size_t)L * D, TOL);
        // Skipping every layer is refused.
        int n_default = c->layers - (c->default_skip >= 1 ? c->default_skip : 1) + 1;
        rc = clip_encode(m, ids, B, n_default + 1, &out, &err);
        check_true(t, rc == SDC_ERR_ARG, "clip_skip %d refused (rc %d: %s)", n_default + 1, rc, err.msg);
    }
    free(got);
    free(want);
    free(want2);
    clip_free(m);
    model_files_close(mf);
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Backend *be = NULL;
    if (backend_cpu_create(&be, 0, &err)) {
        fprintf(stderr, "backend_cpu_create: %s\n", err.msg);
        return 1;
    }
    const char *models[] = {"tiny-sd1", "tiny-sd2"};
    for (int i = 0; i < 2; i++) {
        char folder[256], single[256], refp[256];
        snprintf(folder, sizeof folder, "tests/fixtures/%s", models[i]);
        snprintf(single, sizeof single, "tests/fixtures/%s.safetensors", models[i]);
        snprintf(refp, sizeof refp, "tests/fixtures/ref-%s.safetensors", models[i]);
        StFile ref;
        if (!check_rc(&t, st_open(&ref, refp, &err), refp, &err)) continue;
        run_layout(&t, be, models[i], folder, NULL, &ref);
        run_layout(&t, be, models[i], single, folder, &ref);
        st_close(&ref);
    }
    backend_destroy(be);
    return test_summary(&t);
}
