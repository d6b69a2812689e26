// fuzz_json_config.c: libFuzzer target for the JSON config files of a
// diffusers folder as model_files_open reads them (src/io/weights.c,
// src/sampling/sched_config.c, src/io/json.c's json_parse_config): the
// input's sections (fuzz_util.h) unet/config.json, vae/config.json,
// text_encoder/config.json, scheduler/scheduler_config.json replace those
// of a copy of tests/fixtures/tiny-sd1's configs (a section absent keeps the
// fixture's file, a section "-NAME" removes NAME), with weight files that
// hold no tensors. Input sizes of 64k+1 bytes (8k+1 until session 10: that
// path, parsing the fixture's safetensors header and mapping its names, took
// 64 % of the time; the safetensors target fuzzes that header) instead open the single file
// tiny-sd1.safetensors with the folder as its config_dir (diffusers'
// from_single_file(config=)). On
// success the level lists fit their arrays (a VAE of 3 or 4 levels).
// Seeds: tests/fuzz/seeds/json_config. Run with tools/fuzz.sh SECONDS 1
// json_config.
#include "fuzz_util.h"

#include "io/weights.h"

#define FIX SDC_DATA_DIR "/../tests/fixtures/tiny-sd1"
static const char *const CONFIGS[] = {"unet/config.json", "vae/config.json", "text_encoder/config.json",
                                      "scheduler/scheduler_config.json"};
#define N_CONFIGS (int)(sizeof CONFIGS / sizeof CONFIGS[0])
static const char *const WEIGHTS[] = {"unet/diffusion_pytorch_model.safetensors",
                                      "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"};

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        abort();
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    if (!b || fread(b, 1, (size_t)len, f) != (size_t)len) abort();
    fclose(f);
    *n = (size_t)len;
    return b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char dir[600];
    static char *fixture[N_CONFIGS];
    static size_t fixture_n[N_CONFIGS];
    char p[800], q[800];
    if (!dir[0]) { // the folder: sub-folders, weights linked to the fixture's
        fuzz_path(dir, sizeof dir, "model");
        mkdir(dir, 0700);
        static const char *const SUB[] = {"unet", "vae", "text_encoder", "scheduler"};
        for (int i = 0; i < 4; i++) snprintf(p, sizeof p, "%s/%s", dir, SUB[i]), mkdir(p, 0700);
        // weights without tensors: the configs are what is fuzzed, and
        // parsing the fixture's headers would take 60% of the time
        static const char EMPTY[16] = {8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
        for (int i = 0; i < 3; i++) {
            snprintf(p, sizeof p, "%s/%s", dir, WEIGHTS[i]);
            fuzz_write(p, EMPTY, sizeof EMPTY);
        }
        for (int i = 0; i < N_CONFIGS; i++) {
            snprintf(q, sizeof q, "%s/%s", FIX, CONFIGS[i]);
            fixture[i] = slurp(q, &fixture_n[i]);
        }
    }
    FuzzSection s[FUZZ_MAX_SECTIONS];
    int ns = fuzz_sections(data, size, s);
    for (int i = 0; i < N_CONFIGS; i++) {
        char gone[80];
        snprintf(gone, sizeof gone, "-%s", CONFIGS[i]);
        const FuzzSection *f = fuzz_section(s, ns, CONFIGS[i]);
        snprintf(p, sizeof p, "%s/%s", dir, CONFIGS[i]);
        if (fuzz_section(s, ns, gone)) unlink(p);
        else if (f) fuzz_write(p, f->data, f->size);
        else fuzz_write(p, fixture[i], fixture_n[i]);
    }
    SdcError err = {0};
    ModelFiles *m = NULL;
    int rc = size % 64 == 1 ? model_files_open(&m, FIX "/../tiny-sd1.safetensors", dir, -1, &err)
                      : model_files_open(&m, dir, NULL, -1, &err);
    fuzz_note("model_files_open", rc, err.msg);
    if (rc) {
        if (m || !err.msg[0]) __builtin_trap();
        return 0;
    }
    const ModelInfo *info = model_files_info(m);
    const UnetConfig *u = &info->unet;
    // the level lists fit their arrays; the rest is checked where the models are built
    // (a VAE of 3 levels, latents 4x smaller, is taken since session 8: this check said 4 until a session-10
    // input with "block_out_channels": [32, 2, 32] tripped it)
    if (u->n_levels < 1 || u->n_levels > SDC_MAX_LEVELS || info->vae.n_levels < 3 || info->vae.n_levels > 4)
        __builtin_trap();
    model_files_close(m);
    return 0;
}
