// fuzz_lora.c: libFuzzer target for LoRA files through the real LoRA loader
// (src/io/lora.c): the input written as a .safetensors file and opened by
// lora_set_open against tests/fixtures/tiny-sd1 (diffusers / PEFT and kohya
// names resolved against that model's modules, alpha tensors and the
// lora_adapter_metadata header), then every base weight the LoRA targets
// merged by lora_merge at the model's shapes, into zeros, as the parameter
// loader does (models/params.c). Checks: a refusal names the file; a LoRA
// that loads targets only weights the model has, each with rank >= 1.
// Seeds: tests/fuzz/seeds/lora (small files of both namings, written by
// lora_save). Run with tools/fuzz.sh SECONDS 1 lora.
#include "fuzz_util.h"

#include "io/lora.h"

#define FIX SDC_DATA_DIR "/../tests/fixtures/tiny-sd1"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static ModelFiles *mf;
    static float *w;        // zeros for the merge, as large as the largest base weight
    static size_t w_cap;
    SdcError err = {0};
    if (!mf) {
        if (model_files_open(&mf, FIX, NULL, -1, &err)) {
            fprintf(stderr, "fuzz_lora: %s\n", err.msg);
            abort();
        }
        for (int c = 0; c < COMP_COUNT; c++)
            for (int i = 0; i < model_files_count(mf, c); i++) {
                const char *name;
                Tensor t;
                if (!model_files_at(mf, c, i, &name, &t, &err) && (size_t)tensor_numel(&t) > w_cap)
                    w_cap = (size_t)tensor_numel(&t);
            }
        w = calloc(w_cap, sizeof *w);
        if (!w) abort();
    }
    LoraSpec spec = {.weight = 0.7f};
    fuzz_path(spec.path, sizeof spec.path, "lora.safetensors");
    fuzz_write(spec.path, data, size);
    LoraSet set;
    int rc = lora_set_open(&set, &spec, 1, mf, &err);
    fuzz_note("lora_set_open", rc, err.msg);
    if (rc) {
        if (!strstr(err.msg, spec.path)) __builtin_trap(); // errors name the file
        return 0;
    }
    int merged = 0;
    for (int c = 0; c < COMP_COUNT; c++)
        for (int i = 0; i < model_files_count(mf, c); i++) {
            const char *name;
            Tensor t;
            if (model_files_at(mf, c, i, &name, &t, &err) || !lora_set_targets(&set, (Component)c, name)) continue;
            size_t n = (size_t)tensor_numel(&t);
            int mrc = lora_merge(&set, (Component)c, name, t.ndim, t.shape, w, &err);
            fuzz_note("lora_merge", mrc, err.msg);
            if (mrc == 0) merged++;
            else if (!err.msg[0]) __builtin_trap();
            memset(w, 0, n * sizeof *w);
        }
    // every entry of the file targets a weight of the model (lora_open resolved it)
    for (int k = 0; k < set.files[0].n; k++) {
        const LoraEntry *e = &set.files[0].e[k];
        if (!model_files_has(mf, e->comp, e->target) || e->rank < 1) __builtin_trap();
    }
    (void)merged;
    lora_set_free(&set);
    return 0;
}
