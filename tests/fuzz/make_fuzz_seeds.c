// make_fuzz_seeds.c: the binary seed corpora of the fuzz targets, written by
// sdc's own writers so that every seed is a file sdc itself makes (the text
// seeds come from tools/make_fuzz_seeds.py):
//   manifest_bin  each tests/fuzz/seeds/manifest_text/*.txtpb that parses, packed by protobuf-c
//   lora          LoRAs of a few tiny-sd1 modules (attention, feed-forward, a 3x3 conv, the
//                 text encoder) in diffusers and kohya naming, f32 and f16 (lora_save)
//   h5_dataset    `sdc dataset import` of two fixture images at 16 px, with and without latents
//                 (of tiny-sd1's VAE, f = 8, and of the shipped synth model's 3-level VAE, f = 4)
//   h5_ckpt       a model checkpoint (f32 / f16 / bf16 / i64 tensors, configs), the same as a whole
//                 model (every config, model_index, scheduler config, /tokenizer files) and a LoRA
//                 training checkpoint of fuzz_h5.h's spec (ckpt_*, train_ckpt_save)
//   h5_genout     fuzz_h5.h's sweep with none, one and all items done (genout_*)
//   h5s_*         each h5_* seed as the program that rebuilds it (fuzz_h5_build.h), for the
//                 structure-aware targets; the rebuilt file is checked to hold the same objects
// Run from the repository root (fixtures at tests/fixtures/):
//   BUILD/tests/fuzz/make_fuzz_seeds tests/fuzz/seeds
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/backend.h"
#include "data/checkpoint.h"
#include "data/dataset.h"
#include "fuzz_h5.h"
#include "fuzz_h5_build.h"
#include "io/lora.h"
#include "jobs/manifest.h"

#define TRY(call)                                                      \
    do {                                                               \
        if (call) {                                                    \
            fprintf(stderr, "make_fuzz_seeds: %s: %s\n", #call, err.msg); \
            exit(1);                                                   \
        }                                                              \
    } while (0)

static char out_root[1024];

static const char *dir_of(const char *target) {
    static char d[1200];
    snprintf(d, sizeof d, "%s/%s", out_root, target);
    mkdir(d, 0755);
    return d;
}

static const char *path_in(const char *target, const char *name) {
    static char p[1600];
    snprintf(p, sizeof p, "%s/%s", dir_of(target), name);
    return p;
}


// ---- manifest_bin ----------------------------------------------------------
static void seeds_manifest_bin(void) {
    char src[1200];
    snprintf(src, sizeof src, "%s/manifest_text", out_root);
    DIR *d = opendir(src);
    if (!d) {
        perror(src);
        exit(1);
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[1500];
        snprintf(p, sizeof p, "%s/%s", src, e->d_name);
        SdcError err = {0};
        Sdc__Job *job = NULL;
        if (manifest_read_file(p, &job, &err)) continue;
        size_t n = protobuf_c_message_get_packed_size(&job->base);
        uint8_t *buf = malloc(n + 1);
        protobuf_c_message_pack(&job->base, buf);
        char name[300];
        snprintf(name, sizeof name, "%.*s.pb", (int)(strcspn(e->d_name, ".")), e->d_name);
        FILE *f = fopen(path_in("manifest_bin", name), "wb");
        if (!f || fwrite(buf, 1, n, f) != n || fclose(f)) exit(1);
        free(buf);
        protobuf_c_message_free_unpacked(&job->base, NULL);
    }
    closedir(d);
}

// ---- lora ------------------------------------------------------------------
static void seeds_lora(void) {
    SdcError err = {0};
    ModelFiles *mf;
    TRY(model_files_open(&mf, "tests/fixtures/tiny-sd1", NULL, -1, &err));
    static const struct {
        Component c;
        const char *suffix;
    } WANT[] = {{COMP_UNET, "attn1.to_q.weight"}, {COMP_UNET, "attn2.to_k.weight"}, {COMP_UNET, "ff.net.2.weight"},
                {COMP_UNET, "resnets.0.conv1.weight"}, {COMP_UNET, "proj_in.weight"},
                {COMP_TEXT_ENCODER, "self_attn.q_proj.weight"}, {COMP_TEXT_ENCODER, "mlp.fc1.weight"}};
    enum { N = sizeof WANT / sizeof WANT[0], RANK = 2 };
    LoraTensor t[N];
    char modules[N][LORA_NAME_MAX];
    int n = 0;
    for (int w = 0; w < N; w++) {
        for (int i = 0; i < model_files_count(mf, WANT[w].c); i++) {
            const char *name;
            Tensor base;
            if (model_files_at(mf, WANT[w].c, i, &name, &base, &err)) continue;
            size_t nl = strlen(name), sl = strlen(WANT[w].suffix);
            if (nl < sl || strcmp(name + nl - sl, WANT[w].suffix)) continue;
            snprintf(modules[n], sizeof modules[n], "%.*s", (int)(nl - 7), name); // without ".weight"
            int64_t ds[4] = {RANK, base.shape[1], 1, 1}, us[4] = {base.shape[0], RANK, 1, 1};
            if (base.ndim == 4) ds[2] = base.shape[2], ds[3] = base.shape[3];
            size_t dn = (size_t)(ds[0] * ds[1] * ds[2] * ds[3]), un = (size_t)(us[0] * us[1]);
            float *dd = malloc(dn * sizeof(float)), *ud = malloc(un * sizeof(float));
            for (size_t k = 0; k < dn; k++) dd[k] = 0.01f * (float)((k * 7) % 13) - 0.06f;
            for (size_t k = 0; k < un; k++) ud[k] = 0.02f * (float)((k * 5) % 11) - 0.1f;
            t[n] = (LoraTensor){.comp = WANT[w].c, .module = modules[n], .down = tensor_f32(dd, base.ndim, ds),
                                .up = tensor_f32(ud, base.ndim, us), .alpha = n % 2 ? 1.0f : RANK};
            n++;
            break;
        }
    }
    if (n != N) {
        fprintf(stderr, "make_fuzz_seeds: tiny-sd1 lacks a module the LoRA seeds need (%d of %d)\n", n, N);
        exit(1);
    }
    TRY(lora_save(path_in("lora", "diffusers.safetensors"), LORA_FORMAT_DIFFUSERS, t, N, &err));
    TRY(lora_save(path_in("lora", "kohya.safetensors"), LORA_FORMAT_KOHYA, t, N, &err));
    TRY(lora_save(path_in("lora", "kohya_one.safetensors"), LORA_FORMAT_KOHYA, t + 5, 1, &err));
    TRY(lora_save(path_in("lora", "diffusers_one.safetensors"), LORA_FORMAT_DIFFUSERS, t + 3, 1, &err));
    for (int i = 0; i < N; i++) free(t[i].down.data), free(t[i].up.data);
    model_files_close(mf);
}

// ---- h5_dataset --------------------------------------------------------------
static void seeds_h5_dataset(void) {
    SdcError err = {0};
    const char *src[] = {"tests/fixtures/images/img24x16.png", "tests/fixtures/images/gray.jpg"};
    H5Par ser = h5_par_serial();
    DatasetImportStats st;
    DatasetImportOpts o = {.sources = src, .n_sources = 2, .resolution = 16, .center_crop = 1, .seed = 1,
                           .prompt = NULL, .latents_dtype = DT_F32, .threads = 1, .quiet = 1};
    char out[1400];
    snprintf(out, sizeof out, "%s", path_in("h5_dataset", "images.h5"));
    o.output = out, o.prompt = "a photo";
    TRY(dataset_import(&o, &ser, &st, &err));
    snprintf(out, sizeof out, "%s", path_in("h5_dataset", "latents_f16.h5"));
    o.cache_latents_model = "tests/fixtures/tiny-sd1", o.latents_dtype = DT_F16, o.prompt = "caf\xc3\xa9";
    TRY(dataset_import(&o, &ser, &st, &err));
    snprintf(out, sizeof out, "%s", path_in("h5_dataset", "latents_f32.h5"));
    o.latents_dtype = DT_F32, o.n_sources = 1;
    TRY(dataset_import(&o, &ser, &st, &err));
    // a 3-level VAE's latents (4, R/4, R/4): the shipped synth model's
    snprintf(out, sizeof out, "%s", path_in("h5_dataset", "latents_f4.h5"));
    o.cache_latents_model = "data/models/sdc-synth";
    TRY(dataset_import(&o, &ser, &st, &err));
}

// ---- h5_ckpt -----------------------------------------------------------------
static void seeds_h5_ckpt(void) {
    SdcError err = {0};
    CkptWriter w;
    float a[12], b[3];
    uint16_t h[6] = {0x3c00, 0xbc00, 0x0000, 0x7bff, 0x0001, 0x3555}; // f16 / bf16 bit patterns
    int64_t ids[3] = {1, -2, 3};
    for (int i = 0; i < 12; i++) a[i] = (float)i / 8;
    for (int i = 0; i < 3; i++) b[i] = -(float)i;
    int64_t s4[4] = {3, 1, 2, 2}, s1[1] = {3}, s2[2] = {2, 3};
    Tensor ta = tensor_f32(a, 4, s4), tb = tensor_f32(b, 1, s1);
    Tensor th = tensor_make(DT_F16, DEV_CPU, h, 2, s2), tbf = tensor_make(DT_BF16, DEV_CPU, h, 2, s2);
    Tensor ti = tensor_make(DT_I64, DEV_CPU, ids, 1, s1);
    TRY(ckpt_begin(&w, path_in("h5_ckpt", "model.h5"), &err));
    TRY(ckpt_put(&w, "unet", "conv_in.weight", &ta, &err));
    TRY(ckpt_put(&w, "unet", "conv_in.bias", &tb, &err));
    TRY(ckpt_put(&w, "vae", "decoder.conv_out.weight", &th, &err));
    TRY(ckpt_put(&w, "text_encoder", "text_model.embeddings.token_embedding.weight", &tbf, &err));
    TRY(ckpt_put(&w, "extra", "position_ids", &ti, &err));
    TRY(ckpt_set_attr(&w, "unet", "config", "{\"block_out_channels\": [32, 64]}", &err));
    TRY(ckpt_set_attr(&w, "", "manifest", "task: TASK_CONVERT\n", &err));
    int64_t order[3] = {2, 0, 1};
    CkptState st = {.step = 3, .rng = {1, 2, 3, 4}, .data_order = order, .n_order = 3};
    TRY(ckpt_commit(&w, &st, &err));

    // the same as a whole model (`sdc convert X.h5`, `-m X.h5`): every component's config, the pipeline's
    // model_index and scheduler config, and a tokenizer folder's files under /tokenizer (as convert writes them)
    const char *full = path_in("h5_ckpt", "model_full.h5");
    TRY(ckpt_begin(&w, full, &err));
    TRY(ckpt_put(&w, "unet", "conv_in.weight", &ta, &err));
    TRY(ckpt_put(&w, "unet", "conv_in.bias", &tb, &err));
    TRY(ckpt_put(&w, "vae", "decoder.conv_out.weight", &th, &err));
    TRY(ckpt_put(&w, "text_encoder", "text_model.embeddings.token_embedding.weight", &tbf, &err));
    TRY(ckpt_set_attr(&w, "unet", "config", "{\"_class_name\": \"UNet2DConditionModel\", \"block_out_channels\": "
                      "[32, 64], \"in_channels\": 4}", &err));
    TRY(ckpt_set_attr(&w, "vae", "config", "{\"_class_name\": \"AutoencoderKL\", \"latent_channels\": 4}", &err));
    TRY(ckpt_set_attr(&w, "text_encoder", "config", "{\"hidden_act\": \"quick_gelu\", \"hidden_size\": 32}", &err));
    TRY(ckpt_set_attr(&w, "", "model_index", "{\"_class_name\": \"StableDiffusionPipeline\", \"unet\": "
                      "[\"diffusers\", \"UNet2DConditionModel\"]}", &err));
    TRY(ckpt_set_attr(&w, "", "scheduler_config", "{\"_class_name\": \"PNDMScheduler\", \"beta_schedule\": "
                      "\"scaled_linear\"}", &err));
    TRY(ckpt_commit(&w, &st, &err));
    {
        static const char *const files[][2] = {
            {"tokenizer/vocab.json", "{\"a</w>\": 0, \"b</w>\": 1, \"<|startoftext|>\": 2, \"<|endoftext|>\": 3}"},
            {"tokenizer/merges.txt", "#version: 0.2\na b\n"},
            {"tokenizer/tokenizer_config.json", "{\"model_max_length\": 77, \"pad_token\": \"<|endoftext|>\"}"}};
        hid_t fh = H5Fopen(full, H5F_ACC_RDWR, H5P_DEFAULT), lcpl = H5Pcreate(H5P_LINK_CREATE);
        H5Pset_create_intermediate_group(lcpl, 1);
        for (int i = 0; i < 3; i++) {
            hsize_t n = strlen(files[i][1]);
            hid_t sp = H5Screate_simple(1, &n, NULL);
            hid_t d = H5Dcreate2(fh, files[i][0], H5T_STD_U8LE, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
            if (fh < 0 || d < 0 || H5Dwrite(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, files[i][1]) < 0) {
                fprintf(stderr, "make_fuzz_seeds: %s: writing %s failed\n", full, files[i][0]);
                exit(1);
            }
            H5Dclose(d), H5Sclose(sp);
        }
        H5Pclose(lcpl), H5Fclose(fh);
    }

    Backend *be;
    FuzzTrainer tr;
    TRY(backend_cpu_create(&be, 1, &err));
    TRY(fuzz_trainer_init(&tr, be, &err));
    tr.opt.step = 5;
    for (int i = 0; i < 8; i++) tr.opt.groups[0].m[i] = 0.001f * (float)i, tr.opt.groups[0].v[i] = 1e-6f * (float)i;
    tr.st.step = 5, tr.st.epoch = 1, tr.st.micro_step = 2, tr.st.loss = 0.25;
    for (int i = 0; i < 4; i++) tr.rng[i] = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
    for (int i = 0; i < 3; i++) tr.order[i] = (i + 1) % 3;
    TRY(train_ckpt_save(path_in("h5_ckpt", "train_lora.h5"), &tr.spec, &tr.st, &err));
}

// ---- h5_genout ---------------------------------------------------------------
static void seeds_h5_genout(void) {
    static const char *const NAMES[3] = {"none_done.h5", "one_done.h5", "all_done.h5"};
    uint8_t rgb[FUZZ_GEN_N * FUZZ_GEN_H * FUZZ_GEN_W * 3];
    for (size_t i = 0; i < sizeof rgb; i++) rgb[i] = (uint8_t)(i * 31);
    for (int k = 0; k < 3; k++) {
        SdcError err = {0};
        GenOut g;
        H5Par ser = h5_par_serial();
        const char *p = path_in("h5_genout", NAMES[k]);
        unlink(p);
        TRY(genout_open(&g, p, FUZZ_GEN_ITEMS, FUZZ_GEN_N, FUZZ_GEN_W, FUZZ_GEN_H, FUZZ_GEN_HASH,
                        "task: TASK_GENERATE\n", &ser, &err));
        int64_t idx[FUZZ_GEN_N] = {0, 1, 2};
        int n = k == 0 ? 0 : k == 1 ? 1 : FUZZ_GEN_N;
        if (n) TRY(genout_write(&g, k == 1 ? idx + 1 : idx, n, rgb, &err));
        TRY(genout_close(&g, &err));
    }
}

// ---- h5s_*: the h5_* seeds as programs ----------------------------------------
// Each program is checked by building it and describing the result again:
// the same program, so the file the target builds holds every object,
// attribute, type, shape and byte of the seed.
static void seeds_h5s(const char *kind) {
    char src[1200], dst[64], tmp[1400];
    snprintf(src, sizeof src, "%s/h5_%s", out_root, kind);
    snprintf(dst, sizeof dst, "h5s_%s", kind);
    DIR *d = opendir(src);
    if (!d) {
        perror(src);
        exit(1);
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char in[1600];
        snprintf(in, sizeof in, "%s/%s", src, e->d_name);
        size_t n = 0, n2 = 0;
        uint8_t *prog = fuzz_h5_describe(in, &n);
        snprintf(tmp, sizeof tmp, "%s/.rebuilt.h5", out_root);
        uint8_t *again = prog && fuzz_h5_build(tmp, prog, n) == 0 ? fuzz_h5_describe(tmp, &n2) : NULL;
        unlink(tmp);
        if (!again || n2 != n || memcmp(prog, again, n)) {
            fprintf(stderr, "make_fuzz_seeds: %s: its program does not rebuild it (%zu vs %zu bytes)\n", in, n, n2);
            exit(1);
        }
        char name[300]; // images.h5 -> images.prog
        snprintf(name, sizeof name, "%.*s.prog", (int)strcspn(e->d_name, "."), e->d_name);
        FILE *f = fopen(path_in(dst, name), "wb");
        if (!f || fwrite(prog, 1, n, f) != n || fclose(f)) {
            perror(dst);
            exit(1);
        }
        free(prog), free(again);
    }
    closedir(d);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT_DIR (run from the repository root; e.g. tests/fuzz/seeds)\n", argv[0]);
        return 2;
    }
    snprintf(out_root, sizeof out_root, "%s", argv[1]);
    mkdir(out_root, 0755);
    h5_lib_start();
    h5_quiet();
    seeds_manifest_bin();
    seeds_lora();
    seeds_h5_dataset();
    seeds_h5_ckpt();
    seeds_h5_genout();
    seeds_h5s("dataset");
    seeds_h5s("ckpt");
    seeds_h5s("genout");
    h5_lib_finish(1);
    return 0;
}
