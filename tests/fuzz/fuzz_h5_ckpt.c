// fuzz_h5_ckpt.c: libFuzzer target for the checkpoint readers (data/
// checkpoint.c, data/train_ckpt.c): the input written as a .h5 file, then
// ckpt_open and every tensor read with its CRC32 checked (as sdc convert and
// a model load from .h5 do), the manifest attribute, the LoRA groups listed;
// train_ckpt_load with the training spec of fuzz_h5.h (a DreamBooth resume);
// train_ckpt_export_lora (`sdc generate --lora checkpoint-N.h5`); as a model
// (`sdc convert X.h5`, `-m X.h5`): convert_train_ckpt, and for a whole model
// convert_run to a single file or an .h5 (every tensor, configs, /tokenizer
// files read and written).
// Seeds: tests/fuzz/seeds/h5_ckpt (a model checkpoint of f32 / f16 / bf16
// tensors and a LoRA training checkpoint, written by ckpt_* and
// train_ckpt_save; make_fuzz_seeds.c). Run with tools/fuzz.sh SECONDS 1 h5_ckpt.
#include "fuzz_util.h"

#include "core/backend.h"
#include "data/checkpoint.h"
#include "data/convert.h"
#include "fuzz_h5.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[600], lora[600], out[2][600];
    static Backend *be;
    static FuzzTrainer tr;
    SdcError err = {0};
    if (!path[0]) {
        fuzz_h5_start();
        fuzz_path(path, sizeof path, "ckpt.h5");
        fuzz_path(lora, sizeof lora, "lora.safetensors");
        fuzz_path(out[0], sizeof out[0], "model.safetensors");
        fuzz_path(out[1], sizeof out[1], "model-out.h5");
        if (backend_cpu_create(&be, 1, &err) || fuzz_trainer_init(&tr, be, &err)) {
            fprintf(stderr, "fuzz_h5_ckpt: %s\n", err.msg);
            abort();
        }
    }
    FUZZ_H5_INPUT(path, data, size);
    Ckpt c;
    int rc = ckpt_open(&c, path, &err);
    fuzz_note("ckpt_open", rc, err.msg);
    if (rc == 0) {
        if (ckpt_list_group(&c, "unet_lora", &err) == 0) (void)ckpt_list_group(&c, "optimizer/exp_avg/unet_lora", &err);
        for (int i = 0; i < c.n; i++) {
            const CkptTensor *t = &c.t[i];
            // the byte count the readers allocate is the shape's, unwrapped
            uint64_t bytes = t->dtype == DT_F32 || t->dtype == DT_I32 ? 4 : t->dtype == DT_I64 ? 8 : t->dtype == DT_U8 ? 1 : 2;
            for (int k = 0; k < t->ndim; k++)
                if (__builtin_mul_overflow(bytes, (uint64_t)t->shape[k], &bytes)) __builtin_trap();
            if (bytes != t->nbytes) __builtin_trap();
            if (t->nbytes > (64u << 20)) continue; // a model's largest tensor (SD's token embedding) is 113 MiB f32
            void *buf = malloc(t->nbytes ? t->nbytes : 1);
            if (!buf) continue;
            rc = ckpt_read(&c, i, buf, 1, &err);
            fuzz_note("ckpt_read", rc, err.msg);
            if (rc && !err.msg[0]) __builtin_trap();
            free(buf);
        }
        char *s = NULL;
        if (ckpt_get_attr(&c, "", "manifest", &s, &err) == 0) free(s);
        ckpt_close(&c);
    } else if (!strstr(err.msg, path)) {
        __builtin_trap(); // errors name the file
    }
    fuzz_h5_no_open_ids(); // after each reader, as after each of those below
    err = (SdcError){0};
    rc = train_ckpt_load(path, &tr.spec, &tr.st, &err);
    fuzz_note("train_ckpt_load", rc, err.msg);
    if (rc && !strstr(err.msg, path)) __builtin_trap();
    fuzz_h5_no_open_ids();
    err = (SdcError){0};
    rc = train_ckpt_export_lora(path, lora, size & 1 ? LORA_FORMAT_KOHYA : LORA_FORMAT_DIFFUSERS, &err);
    fuzz_note("train_ckpt_export_lora", rc, err.msg);
    if (rc && !err.msg[0]) __builtin_trap();
    fuzz_h5_no_open_ids();
    // as a model (`sdc convert X.h5 Y.safetensors`, `-m X.h5`): a training checkpoint or a whole model? then
    // the whole model's load (every tensor, the configs, the /tokenizer files) and a single-file write
    char *manifest = NULL;
    err = (SdcError){0};
    rc = convert_train_ckpt(path, &manifest, &err);
    fuzz_note("convert_train_ckpt", rc, err.msg);
    if (rc && !strstr(err.msg, path)) __builtin_trap();
    if (!rc && !manifest) {
        ConvertOpts o = {.model = path, .output = out[(size >> 1) & 1], .dtype = -1, .quiet = 1};
        err = (SdcError){0};
        rc = convert_run(&o, &err);
        fuzz_note("convert_run", rc, err.msg);
        if (rc && !err.msg[0]) __builtin_trap();
    }
    free(manifest);
    fuzz_h5_end();
    return 0;
}
