// test_weights.c: the original <-> diffusers name map and ModelFiles.
// (1) namemap on SD 1.5- and SD 2.1-shaped configs: spot checks against the
//     mapping diffusers' single_file_utils performs, and the reverse map;
// (2) with the tiny fixtures (tools/make_fixtures.py): every parameter of the
//     diffusers folder equals the single file's (exactly: the single file
//     holds f16/bf16-representable values), the inferred config equals the
//     folder's field by field (except the few that shapes cannot tell), and
//     with config_dir it equals it entirely; error messages for a missing
//     tensor, a wrong shape and a missing component.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/namemap.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "testutil.h"

// ----------------------------------------------------------------------------
// (1) name map

static UnetConfig unet_cfg(int levels, int lpb, int up0_attn) {
    UnetConfig u = {.n_levels = levels, .layers_per_block = lpb, .mid_attn = 1};
    for (int i = 0; i < levels; i++) {
        u.down_attn[i] = i < levels - 1;
        u.up_attn[i] = i > 0 || up0_attn;
    }
    return u;
}

typedef struct MapCase {
    const char *orig, *diff;
    Component comp;
    NameMapKind kind;
} MapCase;

// Hand-written from diffusers' convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint
// / convert_open_clip_checkpoint for the SD 1.5 / 2.1 layouts.
static const MapCase SD_CASES[] = {
    {"model.diffusion_model.input_blocks.0.0.weight", "conv_in.weight", COMP_UNET, NM_PLAIN},
    {"model.diffusion_model.time_embed.2.bias", "time_embedding.linear_2.bias", COMP_UNET, NM_PLAIN},
    {"model.diffusion_model.input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight", COMP_UNET, NM_PLAIN},
    {"model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
     "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight", COMP_UNET, NM_PLAIN},
    {"model.diffusion_model.input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight", COMP_UNET, NM_PLAIN},
    {"model.diffusion_model.input_blocks.4.0.skip_connection.bias", "down_blocks.1.resnets.0.conv_shortcut.bias", COMP_UNET, NM_PLAIN},
    {"model.diffusion_model.input_blocks.11.0.emb_layers.1.weight", "down_blocks.3.resnets.1.time_emb_proj.weight", COMP_UNET, NM_PLAIN},
    {"model.diffusion_model.middle_block.1.proj_out.weight", "mid_block.attentions.0.proj_out.weight", COMP_UNET, NM_PLAIN},
    {"model.diffusion_model.middle_block.2.out_layers.3.weight", "mid_block.resnets.1.conv2.weight", COMP_UNET, NM_PLAIN},
    {"model.diffusion_model.output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight", COMP_UNET, NM_PLAIN},
    {"model.diffusion_model.output_blocks.3.1.norm.weight", "up_blocks.1.attentions.0.norm.weight", COMP_UNET, NM_PLAIN},
    {"model.diffusion_model.output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias", COMP_UNET, NM_PLAIN},
    {"model.diffusion_model.output_blocks.11.0.out_layers.0.bias", "up_blocks.3.resnets.2.norm2.bias", COMP_UNET, NM_PLAIN},
    {"model.diffusion_model.out.0.weight", "conv_norm_out.weight", COMP_UNET, NM_PLAIN},
    {"model.diffusion_model.out.2.bias", "conv_out.bias", COMP_UNET, NM_PLAIN},
    {"first_stage_model.encoder.down.1.block.0.nin_shortcut.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight", COMP_VAE, NM_PLAIN},
    {"first_stage_model.encoder.down.2.downsample.conv.weight", "encoder.down_blocks.2.downsamplers.0.conv.weight", COMP_VAE, NM_PLAIN},
    {"first_stage_model.encoder.mid.attn_1.q.weight", "encoder.mid_block.attentions.0.to_q.weight", COMP_VAE, NM_CONV_TO_LINEAR},
    {"first_stage_model.decoder.mid.attn_1.proj_out.weight", "decoder.mid_block.attentions.0.to_out.0.weight", COMP_VAE, NM_CONV_TO_LINEAR},
    {"first_stage_model.decoder.mid.attn_1.norm.bias", "decoder.mid_block.attentions.0.group_norm.bias", COMP_VAE, NM_PLAIN},
    {"first_stage_model.decoder.mid.block_2.conv1.weight", "decoder.mid_block.resnets.1.conv1.weight", COMP_VAE, NM_PLAIN},
    {"first_stage_model.decoder.up.0.block.2.conv2.bias", "decoder.up_blocks.3.resnets.2.conv2.bias", COMP_VAE, NM_PLAIN},
    {"first_stage_model.decoder.up.3.upsample.conv.weight", "decoder.up_blocks.0.upsamplers.0.conv.weight", COMP_VAE, NM_PLAIN},
    {"first_stage_model.decoder.norm_out.weight", "decoder.conv_norm_out.weight", COMP_VAE, NM_PLAIN},
    {"first_stage_model.post_quant_conv.weight", "post_quant_conv.weight", COMP_VAE, NM_PLAIN},
};
static const MapCase SD1_CLIP_CASES[] = {
    {"cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight",
     "text_model.encoder.layers.11.mlp.fc2.weight", COMP_TEXT_ENCODER, NM_PLAIN},
    {"cond_stage_model.transformer.embeddings.token_embedding.weight",
     "text_model.embeddings.token_embedding.weight", COMP_TEXT_ENCODER, NM_PLAIN},
};
static const MapCase SD2_CLIP_CASES[] = {
    {"cond_stage_model.model.positional_embedding", "text_model.embeddings.position_embedding.weight", COMP_TEXT_ENCODER, NM_PLAIN},
    {"cond_stage_model.model.ln_final.bias", "text_model.final_layer_norm.bias", COMP_TEXT_ENCODER, NM_PLAIN},
    {"cond_stage_model.model.transformer.resblocks.22.mlp.c_fc.weight", "text_model.encoder.layers.22.mlp.fc1.weight", COMP_TEXT_ENCODER, NM_PLAIN},
    {"cond_stage_model.model.transformer.resblocks.3.ln_2.weight", "text_model.encoder.layers.3.layer_norm2.weight", COMP_TEXT_ENCODER, NM_PLAIN},
    {"cond_stage_model.model.transformer.resblocks.0.attn.out_proj.bias", "text_model.encoder.layers.0.self_attn.out_proj.bias", COMP_TEXT_ENCODER, NM_PLAIN},
};

static void check_cases(TestCtx *t, const NameMap *nm, const MapCase *cs, int n, const char *label) {
    int ok = 1;
    for (int i = 0; i < n; i++) {
        NameMapping m[3], back;
        int k = namemap_from_original(nm, cs[i].orig, m);
        if (k != 1 || strcmp(m[0].name, cs[i].diff) || m[0].comp != cs[i].comp || m[0].kind != cs[i].kind) {
            printf("  %s: %s -> %s (want %s)\n", label, cs[i].orig, k == 1 ? m[0].name : "(none)", cs[i].diff);
            ok = 0;
            continue;
        }
        if (namemap_to_original(nm, cs[i].comp, cs[i].diff, &back) || strcmp(back.name, cs[i].orig) ||
            back.kind != cs[i].kind) {
            // The SD 1.x text encoder's old layout maps back to the current one.
            if (!strstr(cs[i].orig, "transformer.embeddings")) {
                printf("  %s: reverse of %s gave %s\n", label, cs[i].diff, back.name);
                ok = 0;
            }
        }
    }
    check_true(t, ok, "%s: %d names map as diffusers does, both directions", label, n);
}

static void test_namemap(TestCtx *t) {
    VaeConfig v = {.n_levels = 4, .layers_per_block = 2};
    UnetConfig u = unet_cfg(4, 2, 0);
    NameMap *nm = malloc(sizeof *nm);
    SdcError err = {0};
    int rc = namemap_init(nm, &u, &v, 0, &err);
    check_true(t, rc == 0, "namemap_init SD 1.5 shape: %s", rc ? err.msg : "ok");
    check_cases(t, nm, SD_CASES, sizeof SD_CASES / sizeof SD_CASES[0], "SD1 unet/vae");
    check_cases(t, nm, SD1_CLIP_CASES, 2, "SD1 clip");
    NameMapping m[3];
    check_true(t, namemap_from_original(nm, "model_ema.diffusion_modelout2bias", m) == 0 &&
                      namemap_from_original(nm, "alphas_cumprod", m) == 0,
               "model_ema.* and scheduler buffers ignored");

    // SD 2.1 shape with the OpenCLIP text encoder.
    rc = namemap_init(nm, &u, &v, 1, &err);
    check_cases(t, nm, SD_CASES, sizeof SD_CASES / sizeof SD_CASES[0], "SD2 unet/vae");
    check_cases(t, nm, SD2_CLIP_CASES, sizeof SD2_CLIP_CASES / sizeof SD2_CLIP_CASES[0], "SD2 clip");
    int k = namemap_from_original(nm, "cond_stage_model.model.transformer.resblocks.7.attn.in_proj_weight", m);
    int split_ok = k == 3 && m[2].kind == NM_ROW_SLICE && m[2].slice == 2 &&
                   !strcmp(m[0].name, "text_model.encoder.layers.7.self_attn.q_proj.weight") &&
                   !strcmp(m[1].name, "text_model.encoder.layers.7.self_attn.k_proj.weight") &&
                   !strcmp(m[2].name, "text_model.encoder.layers.7.self_attn.v_proj.weight");
    check_true(t, split_ok, "OpenCLIP in_proj_weight -> q/k/v row slices");
    NameMapping back;
    rc = namemap_to_original(nm, COMP_TEXT_ENCODER, "text_model.encoder.layers.7.self_attn.k_proj.bias", &back);
    check_true(t, !rc && back.slice == 1 && !strcmp(back.name, "cond_stage_model.model.transformer.resblocks.7.attn.in_proj_bias"),
               "k_proj.bias -> in_proj_bias slice 1");
    check_true(t, namemap_from_original(nm, "cond_stage_model.model.text_projection", m) == 0 &&
                      namemap_from_original(nm, "cond_stage_model.model.logit_scale", m) == 0,
               "text_projection / logit_scale ignored");

    // Another shape: 3 levels, 1 layer per block, attention on every up level
    // (upsampler moves to index 2 everywhere).
    UnetConfig u3 = unet_cfg(3, 1, 1);
    VaeConfig v3 = {.n_levels = 3, .layers_per_block = 1};
    namemap_init(nm, &u3, &v3, 0, &err);
    const MapCase c3[] = {
        {"model.diffusion_model.input_blocks.2.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight", COMP_UNET, NM_PLAIN},
        {"model.diffusion_model.input_blocks.3.1.norm.weight", "down_blocks.1.attentions.0.norm.weight", COMP_UNET, NM_PLAIN},
        {"model.diffusion_model.output_blocks.1.2.conv.weight", "up_blocks.0.upsamplers.0.conv.weight", COMP_UNET, NM_PLAIN},
        {"model.diffusion_model.output_blocks.1.1.proj_in.weight", "up_blocks.0.attentions.1.proj_in.weight", COMP_UNET, NM_PLAIN},
        {"model.diffusion_model.output_blocks.5.0.in_layers.2.weight", "up_blocks.2.resnets.1.conv1.weight", COMP_UNET, NM_PLAIN},
        {"first_stage_model.decoder.up.0.block.1.conv1.weight", "decoder.up_blocks.2.resnets.1.conv1.weight", COMP_VAE, NM_PLAIN},
        {"first_stage_model.decoder.up.2.upsample.conv.bias", "decoder.up_blocks.0.upsamplers.0.conv.bias", COMP_VAE, NM_PLAIN},
    };
    check_cases(t, nm, c3, sizeof c3 / sizeof c3[0], "3-level lpb=1");
    free(nm);
}

// ----------------------------------------------------------------------------
// (2) fixtures

static int exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

// Every tensor of the folder's component file equals the single file's.
static void compare_component(TestCtx *t, const char *fixture, const ModelFiles *single, const char *folder,
                              Component c, const char *sub, const char *file) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s/%s", folder, sub, file);
    StFile f;
    SdcError err = {0};
    if (st_open(&f, p, &err)) {
        check_true(t, 0, "%s", err.msg);
        return;
    }
    int matched = 0, bad = 0;
    for (int i = 0; i < f.n; i++) {
        const StEntry *e = &f.entries[i];
        if (!e->supported || (e->dtype != DT_F32 && e->dtype != DT_F16 && e->dtype != DT_BF16)) continue;
        Tensor ref = st_tensor(&f, e), got;
        if (model_files_get(single, c, e->name, ref.ndim, ref.shape, &got, &err)) {
            if (bad++ < 5) printf("  %s\n", err.msg);
            continue;
        }
        size_t n = (size_t)tensor_numel(&ref);
        float *a = malloc((n ? n : 1) * sizeof(float)), *b = malloc((n ? n : 1) * sizeof(float));
        convert_to_f32(a, ref.data, ref.dtype, n);
        convert_to_f32(b, got.data, got.dtype, n);
        if (memcmp(a, b, n * sizeof(float))) {
            if (bad++ < 5) printf("  %s: values differ (max |a-b| %g)\n", e->name, max_abs_diff(b, a, n));
        } else {
            matched++;
        }
        free(a);
        free(b);
    }
    printf("  %s %s: %d tensors matched, %d mismatched\n", fixture, sub, matched, bad);
    check_true(t, bad == 0 && matched == f.n, "%s %s: all %d folder tensors equal the single file's", fixture, sub,
               f.n);
    st_close(&f);
}

#define FIELD(cond, name)                                   \
    do {                                                    \
        if (!(cond)) {                                      \
            printf("    field %s differs\n", name);         \
            same = 0;                                       \
        }                                                   \
    } while (0)

// inferred: a is inferred from shapes; skip the fields shapes cannot tell
// (compared only with config_dir).
static int configs_equal(const ModelInfo *a, const ModelInfo *b, int inferred) {
    int same = 1;
    const UnetConfig *u = &a->unet, *w = &b->unet;
    FIELD(a->family == b->family, "family");
    FIELD(u->in_channels == w->in_channels && u->out_channels == w->out_channels, "unet in/out_channels");
    FIELD(u->n_levels == w->n_levels && u->layers_per_block == w->layers_per_block, "unet levels/layers");
    for (int i = 0; i < u->n_levels; i++) {
        FIELD(u->block_out[i] == w->block_out[i], "unet block_out");
        FIELD(u->down_attn[i] == w->down_attn[i] && u->up_attn[i] == w->up_attn[i], "unet down/up_attn");
        if (!inferred) FIELD(u->heads[i] == w->heads[i], "unet heads");
        FIELD(u->transformer_layers[i] == w->transformer_layers[i], "unet transformer_layers");
    }
    FIELD(u->cross_dim == w->cross_dim, "unet cross_dim");
    FIELD(u->use_linear_projection == w->use_linear_projection, "unet use_linear_projection");
    FIELD(u->norm_eps == w->norm_eps, "unet norm_eps");
    FIELD(u->flip_sin_to_cos == w->flip_sin_to_cos && u->freq_shift == w->freq_shift, "unet time embedding");
    FIELD(u->mid_attn == w->mid_attn && u->family == w->family, "unet mid_attn/family");
    const VaeConfig *v = &a->vae, *x = &b->vae;
    FIELD(v->in_channels == x->in_channels && v->out_channels == x->out_channels &&
              v->latent_channels == x->latent_channels, "vae channels");
    FIELD(v->n_levels == x->n_levels && v->layers_per_block == x->layers_per_block, "vae levels");
    for (int i = 0; i < v->n_levels; i++) FIELD(v->block_out[i] == x->block_out[i], "vae block_out");
    FIELD(v->norm_eps == x->norm_eps, "vae norm_eps");
    FIELD(v->scaling_factor == x->scaling_factor, "vae scaling_factor");
    const ClipConfig *k = &a->clip, *l = &b->clip;
    FIELD(k->vocab_size == l->vocab_size && k->hidden == l->hidden && k->intermediate == l->intermediate,
          "clip sizes");
    FIELD(k->max_positions == l->max_positions && k->act == l->act && k->ln_eps == l->ln_eps, "clip pos/act/eps");
    FIELD(k->pad_token == l->pad_token && k->bos_token == l->bos_token && k->eos_token == l->eos_token,
          "clip tokens");
    // The layer the conditioning comes from must be the same one.
    FIELD(k->layers - k->default_skip == l->layers - l->default_skip, "clip output layer");
    if (!inferred) {
        // Not in any tensor shape: the tiny fixtures use 8/4 groups and head
        // dim 8 where real SD uses 32 groups and 8 heads / head dim 64.
        FIELD(u->norm_groups == w->norm_groups && v->norm_groups == x->norm_groups, "norm groups");
        FIELD(k->heads == l->heads && k->layers == l->layers, "clip heads/layers");
        FIELD(u->sample_size == w->sample_size && u->prediction == w->prediction, "unet sample_size/prediction");
        FIELD(v->sample_size == x->sample_size, "vae sample_size");
    }
    return same;
}

static void test_fixture(TestCtx *t, const char *name) {
    char folder[512], single[512];
    snprintf(folder, sizeof folder, "tests/fixtures/%s", name);
    snprintf(single, sizeof single, "tests/fixtures/%s.safetensors", name);
    if (!check_true(t, exists(folder) && exists(single), "%s: fixture %s and %s present (committed; "
                    "tools/make_fixtures.py makes them)", name, folder, single))
        return;
    ModelFiles *md = NULL, *ms = NULL, *mc = NULL;
    SdcError err = {0};
    int rc = model_files_open(&md, folder, NULL, -1, &err);
    check_true(t, rc == 0, "%s: open diffusers folder: %s", name, rc ? err.msg : "ok");
    rc = rc ? rc : model_files_open(&ms, single, NULL, -1, &err);
    check_true(t, rc == 0, "%s: open single file: %s", name, rc ? err.msg : "ok");
    rc = rc ? rc : model_files_open(&mc, single, folder, -1, &err);
    check_true(t, rc == 0, "%s: open single file with config_dir: %s", name, rc ? err.msg : "ok");
    if (rc) goto done;
    const ModelInfo *id = model_files_info(md), *is = model_files_info(ms), *ic = model_files_info(mc);
    check_true(t, id->layout == LAYOUT_DIFFUSERS && is->layout == LAYOUT_SINGLE_FILE, "%s: layouts", name);
    check_true(t, configs_equal(is, id, 1), "%s: inferred config equals the folder's (shape-derived fields)", name);
    check_true(t, configs_equal(ic, id, 0), "%s: config with config_dir equals the folder's, all fields", name);
    int sd2 = id->family == SD_FAMILY_2;
    check_true(t, sd2 ? (is->clip.layers == id->clip.layers + 1 && is->clip.default_skip == 2 &&
                         id->clip.default_skip == 1)
                      : (is->clip.default_skip == 1 && is->clip.layers == id->clip.layers),
               "%s: clip layers single %d (skip %d) / folder %d (skip %d)", name, is->clip.layers,
               is->clip.default_skip, id->clip.layers, id->clip.default_skip);
    check_true(t, is->unet.prediction == PRED_EPSILON && id->unet.prediction == (sd2 ? PRED_V : PRED_EPSILON),
               "%s: prediction: folder from its scheduler config, tiny single file epsilon", name);
    ModelFiles *mv = NULL;
    rc = model_files_open(&mv, single, NULL, PRED_V, &err);
    check_true(t, !rc && model_files_info(mv)->unet.prediction == PRED_V, "%s: the user's prediction flag wins", name);
    model_files_close(mv);
    compare_component(t, name, ms, folder, COMP_UNET, "unet", "diffusion_pytorch_model.safetensors");
    compare_component(t, name, ms, folder, COMP_VAE, "vae", "diffusion_pytorch_model.safetensors");
    compare_component(t, name, ms, folder, COMP_TEXT_ENCODER, "text_encoder", "model.safetensors");
    compare_component(t, name, mc, folder, COMP_UNET, "unet", "diffusion_pytorch_model.safetensors");

    // Error messages: missing tensor, wrong shape.
    Tensor x;
    int64_t s1[1] = {7};
    // level 0 keeps its channel count: no conv_shortcut there
    rc = model_files_get(ms, COMP_UNET, "down_blocks.0.resnets.0.conv_shortcut.weight", 1, s1, &x, &err);
    int good = rc == SDC_ERR_SHAPE && strstr(err.msg, "down_blocks.0.resnets.0.conv_shortcut.weight") &&
               strstr(err.msg, "model.diffusion_model.input_blocks.1.0.skip_connection.weight") &&
               strstr(err.msg, "--->");
    check_true(t, good, "%s: missing tensor named with its original name: %s", name, strtok(err.msg, "\n"));
    rc = model_files_get(ms, COMP_UNET, "conv_in.weight", 1, s1, &x, &err);
    good = rc == SDC_ERR_SHAPE && strstr(err.msg, "input_blocks.0.0.weight") && strstr(err.msg, "expected (7)") &&
           strstr(err.msg, name);
    check_true(t, good, "%s: wrong shape names file, both names, shapes: %s", name, strtok(err.msg, "\n"));
    if (sd2) {
        // The q slice of the fused in_proj is a view at the start of the fused tensor, v at 2/3.
        int64_t D = id->clip.hidden, sq[2] = {D, D};
        Tensor q, v;
        model_files_get(ms, COMP_TEXT_ENCODER, "text_model.encoder.layers.0.self_attn.q_proj.weight", 2, sq, &q, &err);
        model_files_get(ms, COMP_TEXT_ENCODER, "text_model.encoder.layers.0.self_attn.v_proj.weight", 2, sq, &v, &err);
        check_true(t, (char *)v.data - (char *)q.data == (ptrdiff_t)(2 * D * D * dtype_size(q.dtype)),
                   "%s: q/v slices are views into in_proj_weight", name);
    }
done:
    model_files_close(md);
    model_files_close(ms);
    model_files_close(mc);
}

// A folder missing a component, and bad config.json contents.
static void test_folder_errors(TestCtx *t) {
    char dir[] = "/tmp/sdc_test_w_XXXXXX";
    if (!mkdtemp(dir)) return;
    char p[600], cmd[1400];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/unet %s/vae %s/text_encoder && "
             "echo '{\"block_out_channels\":[32,64],\"down_block_types\":[\"CrossAttnDownBlock2D\",\"DownBlock2D\"],"
             "\"up_block_types\":[\"UpBlock2D\",\"CrossAttnUpBlock2D\"],\"attention_head_dim\":8}' > %s/unet/config.json && "
             "echo '{\"block_out_channels\":[32]}' > %s/vae/config.json && "
             "echo '{\"hidden_size\":32,\"vocab_size\":1000}' > %s/text_encoder/config.json",
             dir, dir, dir, dir, dir, dir);
    if (system(cmd)) return;
    ModelFiles *m = NULL;
    SdcError err = {0};
    int rc = model_files_open(&m, dir, NULL, -1, &err);
    int good = rc == SDC_ERR_IO && strstr(err.msg, "text_encoder/model.safetensors");
    check_true(t, good, "folder without weights names the missing file: %s", strtok(err.msg, "\n"));
    model_files_close(m);
    snprintf(p, sizeof p, "%s/vae/config.json", dir);
    FILE *f = fopen(p, "w");
    if (f) {
        fputs("{\"block_out_channels\": [32, \"x\"]}", f);
        fclose(f);
    }
    rc = model_files_open(&m, dir, NULL, -1, &err);
    good = rc == SDC_ERR_FORMAT && strstr(err.msg, "vae/config.json") && strstr(err.msg, "block_out_channels");
    check_true(t, good, "bad config field named: %s", strtok(err.msg, "\n"));
    model_files_close(m);
    rc = model_files_open(&m, "/nonexistent/model.safetensors", NULL, -1, &err);
    check_true(t, rc == SDC_ERR_IO, "missing path: %s", strtok(err.msg, "\n"));
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) printf("  (could not remove %s)\n", dir);
}

int main(void) {
    TestCtx t = {0};
    printf("name map\n");
    test_namemap(&t);
    printf("fixtures\n");
    test_fixture(&t, "tiny-sd1");
    test_fixture(&t, "tiny-sd2");
    test_fixture(&t, "tiny-sd1-inpaint");
    printf("folder errors\n");
    test_folder_errors(&t);
    return test_summary(&t);
}
