// test_configs.c: models sdc does not run are refused when they are opened,
// with a message naming the file, the field and its value and ending with a
// hint, not a shape error from deep inside a model. Each case is
// tests/fixtures/tiny-sd1 with one config field set (written in /tmp; the
// field is appended, so it is the one JSON readers take), or its single file
// with a 2-level VAE; harmless values of the same fields must still open (a
// 3-level VAE too: latents 4x smaller than the image).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "io/weights.h"
#include "models/vae.h"
#include "testutil.h"

#define SRC "tests/fixtures/tiny-sd1"

// dst := SRC with comp/config.json (comp: "unet", "vae", "text_encoder",
// "scheduler") given `"key": value` last. The weights are links to SRC's.
static int make_folder(const char *dst, const char *comp, const char *kv) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s' && cp -rL %s/* '%s'/", dst, dst, SRC, dst);
    if (system(cmd)) return -1;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/%s", dst, comp,
             strcmp(comp, "scheduler") ? "config.json" : "scheduler_config.json");
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *end = strrchr(buf, '}');
    if (!end) return -1;
    *end = 0;
    f = fopen(path, "wb");
    if (!f) return -1;
    fprintf(f, "%s, %s}\n", buf, kv);
    return fclose(f);
}

typedef struct Case {
    const char *comp, *kv;
    const char *needle1, *needle2; // NULL needle1: must open
} Case;

static const Case CASES[] = {
    // the VAE: depth, latents, blocks, layers
    {"vae", "\"block_out_channels\": [8, 16]", "\"block_out_channels\" has 2 levels ([8, 16])", "4-level VAE"},
    {"vae", "\"block_out_channels\": [8, 8, 16, 16, 16]", "has 5 levels ([8, 8, 16, 16, 16])", "--vae"},
    {"vae", "\"latent_channels\": 16", "\"latent_channels\" is 16", "4-channel"},
    {"vae", "\"act_fn\": \"gelu\"", "\"act_fn\" is \"gelu\"", "SD 1.x/2.x VAE"},
    {"vae", "\"down_block_types\": [\"DownEncoderBlock2D\", \"AttnDownEncoderBlock2D\", \"DownEncoderBlock2D\", "
            "\"DownEncoderBlock2D\"]", "\"down_block_types\"[1] is \"AttnDownEncoderBlock2D\"", "DownEncoderBlock2D"},
    {"vae", "\"use_post_quant_conv\": false", "\"use_post_quant_conv\" is false", "no post_quant_conv"},
    {"vae", "\"shift_factor\": 0.1159", "\"shift_factor\" is 0.1159", "SD3 / FLUX"},
    {"vae", "\"latents_mean\": [0.1, 0.2, 0.3, 0.4]", "\"latents_mean\" is an array", "normalised latents"},
    // the UNet: SDXL, LCM, class conditioning and other architectures
    {"unet", "\"addition_embed_type\": \"image\"", "\"addition_embed_type\" is \"image\"", "Kandinsky"},
    // SDXL's added embedding without its sizes
    {"unet", "\"addition_embed_type\": \"text_time\"", "\"addition_time_embed_dim\" (0)",
     "projection_class_embeddings_input_dim"},
    {"unet", "\"time_cond_proj_dim\": 256", "\"time_cond_proj_dim\" is 256", "LCM"},
    {"unet", "\"class_embed_type\": \"timestep\"", "\"class_embed_type\" is \"timestep\"", "class conditioning"},
    {"unet", "\"resnet_time_scale_shift\": \"scale_shift\"", "\"resnet_time_scale_shift\" is \"scale_shift\"",
     "scale-shift"},
    {"unet", "\"attention_type\": \"gated\"", "\"attention_type\" is \"gated\"", "GLIGEN"},
    {"unet", "\"conv_in_kernel\": 1", "\"conv_in_kernel\" is 1", "conv_in"},
    {"unet", "\"act_fn\": \"mish\"", "\"act_fn\" is \"mish\"", "activation"},
    {"unet", "\"only_cross_attention\": true", "\"only_cross_attention\" is true", "cross-attention-only"},
    {"unet", "\"encoder_hid_dim\": 32", "\"encoder_hid_dim\" is 32", "projected text embedding"},
    {"unet", "\"mid_block_type\": \"UNetMidBlock2DSimpleCrossAttn\"",
     "\"mid_block_type\" is \"UNetMidBlock2DSimpleCrossAttn\"", "UNetMidBlock2DCrossAttn"},
    {"unet", "\"down_block_types\": [\"SimpleCrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", "
             "\"DownBlock2D\"]", "\"down_block_types\"[0] is \"SimpleCrossAttnDownBlock2D\"", "SD 1.x/2.x UNet"},
    {"unet", "\"out_channels\": 8", "\"out_channels\" is 8 but the VAE's latent_channels is 4", "not one model's"},
    {"unet", "\"in_channels\": 8", "\"in_channels\" is 8", "inpainting"},
    {"unet", "\"cross_attention_dim\": 1024", "\"cross_attention_dim\" is 1024 but", "hidden_size 32"},
    {"unet", "\"cross_attention_dim\": [32, 32, 32, 32]", "\"cross_attention_dim\" is a list", "SD 1.x/2.x UNet"},
    // numbers that would draw noise: inf (JSON's 1e400), zero or negative scales and eps
    {"vae", "\"scaling_factor\": 1e400", "\"scaling_factor\" is inf: expected a positive number", "fix the config"},
    {"vae", "\"scaling_factor\": 0", "\"scaling_factor\" is 0: expected a positive number", "fix the config"},
    {"vae", "\"scaling_factor\": 1e39", "\"scaling_factor\" is 1e+39", "32-bit float"},
    {"unet", "\"norm_eps\": -1e-5", "\"norm_eps\" is -1e-05: expected a non-negative number", "fix the config"},
    {"unet", "\"freq_shift\": -1e400", "\"freq_shift\" is -inf: expected a finite number", "fix the config"},
    {"text_encoder", "\"layer_norm_eps\": 1e400", "\"layer_norm_eps\" is inf", "fix the config"},
    // the text encoder and the scheduler
    {"text_encoder", "\"hidden_act\": \"gelu_new\"", "\"hidden_act\" is \"gelu_new\"", "quick_gelu"},
    {"scheduler", "\"prediction_type\": \"sample\"", "\"prediction_type\" is \"sample\"", "--prediction-type"},
    {"scheduler", "\"beta_schedule\": \"sigmoid\"", "\"beta_schedule\" is \"sigmoid\"", "scaled_linear"},
    // the same fields at values sdc runs: these open
    {"unet", "\"act_fn\": \"silu\", \"class_embed_type\": null, \"resnet_time_scale_shift\": \"default\", "
             "\"conv_in_kernel\": 3, \"time_cond_proj_dim\": null, \"upcast_attention\": true", NULL, NULL},
    {"vae", "\"block_out_channels\": [8, 8, 16]", NULL, NULL}, // 3 levels: latents 4x smaller
    {"vae", "\"scaling_factor\": 0.13025", NULL, NULL}, // SDXL's
    {"unet", "\"norm_eps\": 0, \"freq_shift\": 1", NULL, NULL},
    {"vae", "\"use_quant_conv\": true, \"use_post_quant_conv\": true, \"shift_factor\": null, \"force_upcast\": true, "
            "\"mid_block_add_attention\": true", NULL, NULL},
};

// tiny-sd1's single file with its VAE cut to `levels` levels (first_stage_model.
// encoder.down.N / decoder.up.N from N = levels on left out).
static int single_cut_levels(const char *path, int levels, SdcError *err) {
    StFile f;
    SDC_TRY(st_open(&f, SRC ".safetensors", err));
    const char **names = calloc((size_t)f.n, sizeof *names);
    Tensor *ts = calloc((size_t)f.n, sizeof *ts);
    int n = 0;
    for (int i = 0; i < f.n; i++) {
        const char *nm = f.entries[i].name;
        int cut = 0;
        for (int l = levels; l < 4; l++) {
            char a[64], b[64];
            snprintf(a, sizeof a, "first_stage_model.encoder.down.%d.", l);
            snprintf(b, sizeof b, "first_stage_model.decoder.up.%d.", l);
            cut |= strstr(nm, a) || strstr(nm, b);
        }
        if (cut) continue;
        names[n] = nm, ts[n++] = st_tensor(&f, &f.entries[i]);
    }
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    int rc = st_write(path, names, ts, n, mk, mv, 1, err);
    free(names);
    free(ts);
    st_close(&f);
    return rc;
}

int main(void) {
    TestCtx t = {0};
    char root[] = "/tmp/sdc_test_configs_XXXXXX";
    if (!mkdtemp(root)) return 1;
    char dst[256];
    snprintf(dst, sizeof dst, "%s/model", root);
    printf("configs sdc does not run (tiny-sd1 with one field set):\n");
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        const Case *c = &CASES[i];
        if (!check_true(&t, make_folder(dst, c->comp, c->kv) == 0, "write %s with %s", dst, c->kv)) continue;
        ModelFiles *m = NULL;
        SdcError err = {0};
        int rc = model_files_open(&m, dst, NULL, -1, &err);
        model_files_close(m);
        char file[300];
        snprintf(file, sizeof file, "%s/%s/", dst, c->comp);
        if (!c->needle1) {
            check_true(&t, rc == 0, "%s/ %s opens%s%s", c->comp, c->kv, rc ? ": " : "", rc ? err.msg : "");
            continue;
        }
        check_true(&t, rc == SDC_ERR_UNSUPPORTED || rc == SDC_ERR_FORMAT, "%s/ %s refused (%s)", c->comp, c->kv,
                   rc ? sdc_err_name(rc) : "opened");
        check_true(&t, rc && strstr(err.msg, file) && strstr(err.msg, c->needle1) && strstr(err.msg, c->needle2) &&
                       strstr(err.msg, "--->"),
                   "  message names the file, field, value and hints: %s", err.msg);
    }
    for (int levels = 3; levels >= 2; levels--) { // 3: latents 4x smaller, opens; 2: refused
        printf("a single file whose VAE has %d levels:\n", levels);
        char single[300];
        snprintf(single, sizeof single, "%s/vae%d.safetensors", root, levels);
        SdcError err = {0};
        if (!check_true(&t, single_cut_levels(single, levels, &err) == 0, "write %s%s", single, err.msg)) continue;
        ModelFiles *m = NULL;
        char cfg[300];
        snprintf(cfg, sizeof cfg, "%s/model", root);
        make_folder(cfg, "unet", "\"act_fn\": \"silu\""); // the architecture of the rest (as --config DIR)
        int rc = model_files_open(&m, single, NULL, -1, &err);
        if (levels == 3)
            check_true(&t, rc == 0 && model_files_info(m)->vae.n_levels == 3 &&
                               vae_scale_factor(&model_files_info(m)->vae) == 4,
                       "opens, latents 4x smaller%s%s", rc ? ": " : "", rc ? err.msg : "");
        else
            check_true(&t, rc == SDC_ERR_UNSUPPORTED && strstr(err.msg, single) &&
                               strstr(err.msg, "first_stage_model") && strstr(err.msg, "has 2 levels") &&
                               strstr(err.msg, "--->"),
                       "refused with the file, the VAE and its depth: %s", err.msg);
        model_files_close(m);
    }
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", root);
    return test_summary(&t);
}
