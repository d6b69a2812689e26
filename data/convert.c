// convert.c: model conversion between weight layouts (see convert.h).
//
// Every source becomes one list of parameters: (component, diffusers name,
// tensor view), plus "extra" tensors of an original single file that no
// model uses (model_ema.*, scheduler buffers), kept under their original
// names so single file -> h5 -> single file keeps every tensor. The configs
// travel as diffusers/transformers config.json text, generated from the
// ModelInfo sdc reads (so any source gives configs diffusers can load).
#include "data/convert.h"
#include "data/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/checkpoint.h"
#include "io/json.h"
#include "io/namemap.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "sampling/sched_config.h"
#include "text/tokenizer.h"

#define COMP_EXTRA COMP_COUNT // pseudo component of the "extra" tensors
static const char *const GROUP[COMP_COUNT + 1] = {"text_encoder", "unet", "vae", "text_encoder_2", "extra"};
// The components of SD 1.x/2.x models; SDXL adds text_encoder_2 (Model.xl).
#define N_CONV 3
#define N_CONV_XL 4

typedef struct Param {
    int comp;                   // Component or COMP_EXTRA
    char name[NAMEMAP_NAME_MAX];// diffusers name (original name for extras)
    Tensor t;                   // view (or owned, see Model.owned)
} Param;

typedef struct Model {
    Param *p;
    int n, cap;
    char *cfg[COMP_COUNT];      // config.json text per component
    char *model_index, *scheduler;
    int openclip;               // the text layout of the original names (NameMap's NM_TEXT_*)
    int xl;                     // SDXL: text_encoder_2 too (N_CONV_XL components)
    int force_zeros;            // SDXL: model_index.json's force_zeros_for_empty_prompt
    const char *out_name;       // the output as the user named it (messages; the writers write a temporary)
    // what owns the bytes
    StFile st[COMP_COUNT];
    int n_st;
    void **owned;
    int n_owned;
    int oom; // an allocation failed: the model is incomplete (model_oom says so)
    // the source's tokenizer files (a folder's tokenizer/ and tokenizer_2/, an
    // .h5's /tokenizer and /tokenizer_2), owned; NULL where the source has none
    char *tok[2][6];
    size_t tok_n[2][6];
} Model;

// The files of a diffusers tokenizer/ folder transformers reads (those present are kept).
static const char *const TOK_FILES[6] = {"vocab.json", "merges.txt", "special_tokens_map.json",
                                         "tokenizer_config.json", "tokenizer.json", "added_tokens.json"};
static const char *const TOK_SUB[2] = {"tokenizer", "tokenizer_2"};
#define TOK_MAX_BYTES (64 << 20) // a tokenizer file larger than this is not one

// m has tokenizer k (its vocab.json or tokenizer.json).
static int has_tok(const Model *m, int k) { return m->tok[k][0] || m->tok[k][4]; }

// SDC_ERR_OOM when an allocation of m's failed (its lists are incomplete).
static int model_oom(const Model *m, const char *path, SdcError *err) {
    return m->oom ? sdc_err(err, SDC_ERR_OOM, "%s: out of memory converting the model", path) : 0;
}

static void model_add(Model *m, int comp, const char *name, Tensor t) {
    if (m->n == m->cap) {
        int cap = m->cap ? m->cap * 2 : 512;
        Param *np = realloc(m->p, (size_t)cap * sizeof *m->p);
        if (!np) {
            m->oom = 1;
            return;
        }
        m->p = np;
        m->cap = cap;
    }
    Param *p = &m->p[m->n++];
    p->comp = comp;
    snprintf(p->name, sizeof p->name, "%s", name);
    p->t = t;
}

// n bytes freed with m; NULL (and m->oom) when out of memory.
static void *model_own(Model *m, size_t n) {
    void **no = realloc(m->owned, (size_t)(m->n_owned + 1) * sizeof(void *));
    if (no) m->owned = no;
    void *b = no ? malloc(n ? n : 1) : NULL;
    if (!b) {
        m->oom = 1;
        return NULL;
    }
    m->owned[m->n_owned++] = b;
    return b;
}

static void model_free(Model *m) {
    for (int i = 0; i < m->n_st; i++) st_close(&m->st[i]);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    for (int c = 0; c < COMP_COUNT; c++) free(m->cfg[c]);
    free(m->owned);
    free(m->p);
    free(m->model_index);
    free(m->scheduler);
    memset(m, 0, sizeof *m);
}

// ----------------------------------------------------------------------------
// configs (diffusers / transformers config.json) from a ModelInfo

typedef struct Buf {
    char *s; // NULL after an allocation failed
    size_t n, cap;
    int oom;
} Buf;

__attribute__((format(printf, 2, 3))) static void bput(Buf *b, const char *fmt, ...) {
    va_list ap;
    while (!b->oom) {
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (b->s && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        b->cap = (b->cap + (size_t)k + 256) * 2;
        char *ns = realloc(b->s, b->cap);
        if (!ns) {
            free(b->s);
            *b = (Buf){.oom = 1};
            return;
        }
        b->s = ns;
    }
}

static void bput_list(Buf *b, const char *key, const int *v, int n) {
    bput(b, "  \"%s\": [", key);
    for (int i = 0; i < n; i++) bput(b, "%s%d", i ? ", " : "", v[i]);
    bput(b, "],\n");
}

static void bput_names(Buf *b, const char *key, int n, const int *flag, const char *yes, const char *no) {
    bput(b, "  \"%s\": [", key);
    for (int i = 0; i < n; i++) bput(b, "%s\"%s\"", i ? ", " : "", flag && flag[i] ? yes : no);
    bput(b, "],\n");
}

// transformers' CLIPTextConfig of k with that many layers: CLIPTextModelWithProjection
// when k has a projection (SDXL's text_encoder_2); eos_token_id 2 where the
// pooled output is taken at the argmax of the ids (transformers' rule for it).
static char *clip_config_json(const ClipConfig *k, int layers) {
    Buf b = {0};
    bput(&b, "{\n  \"architectures\": [\"%s\"],\n  \"attention_dropout\": 0.0,\n"
             "  \"bos_token_id\": %d,\n  \"dropout\": 0.0,\n  \"eos_token_id\": %d,\n  \"hidden_act\": \"%s\",\n"
             "  \"hidden_size\": %d,\n  \"initializer_factor\": 1.0,\n  \"initializer_range\": 0.02,\n"
             "  \"intermediate_size\": %d,\n  \"layer_norm_eps\": %.7g,\n  \"max_position_embeddings\": %d,\n"
             "  \"model_type\": \"clip_text_model\",\n  \"num_attention_heads\": %d,\n"
             "  \"num_hidden_layers\": %d,\n  \"pad_token_id\": %d,\n  \"projection_dim\": %d,\n"
             "  \"torch_dtype\": \"float32\",\n  \"vocab_size\": %d\n}\n",
         k->projection_dim > 0 ? "CLIPTextModelWithProjection" : "CLIPTextModel", k->bos_token,
         k->pool_argmax ? 2 : k->eos_token, k->act == ACT_GELU ? "gelu" : "quick_gelu", k->hidden, k->intermediate,
         k->ln_eps, k->max_positions, k->heads, layers, k->pad_token,
         k->projection_dim > 0 ? k->projection_dim : k->hidden, k->vocab_size);
    return b.s;
}

static void make_configs(Model *m, const ModelInfo *info, const char *sched_json) {
    const UnetConfig *u = &info->unet;
    const VaeConfig *v = &info->vae;
    const ClipConfig *k = &info->clip;
    Buf b = {0};
    bput(&b, "{\n  \"_class_name\": \"UNet2DConditionModel\",\n  \"_diffusers_version\": \"0.27.0\",\n"
             "  \"act_fn\": \"silu\",\n");
    bput_list(&b, "attention_head_dim", u->heads, u->n_levels);
    bput_list(&b, "block_out_channels", u->block_out, u->n_levels);
    bput(&b, "  \"center_input_sample\": false,\n  \"cross_attention_dim\": %d,\n", u->cross_dim);
    bput_names(&b, "down_block_types", u->n_levels, u->down_attn, "CrossAttnDownBlock2D", "DownBlock2D");
    bput(&b, "  \"downsample_padding\": 1,\n  \"flip_sin_to_cos\": %s,\n  \"freq_shift\": %g,\n"
             "  \"in_channels\": %d,\n  \"layers_per_block\": %d,\n  \"mid_block_scale_factor\": 1,\n"
             "  \"mid_block_type\": \"%s\",\n  \"norm_eps\": %.7g,\n  \"norm_num_groups\": %d,\n"
             "  \"out_channels\": %d,\n  \"sample_size\": %d,\n",
         u->flip_sin_to_cos ? "true" : "false", u->freq_shift, u->in_channels, u->layers_per_block,
         u->mid_attn ? "UNetMidBlock2DCrossAttn" : "UNetMidBlock2D", u->norm_eps, u->norm_groups, u->out_channels,
         u->sample_size);
    bput_list(&b, "transformer_layers_per_block", u->transformer_layers, u->n_levels);
    bput_names(&b, "up_block_types", u->n_levels, u->up_attn, "CrossAttnUpBlock2D", "UpBlock2D");
    if (u->add_time_dim) // SDXL's added embedding
        bput(&b, "  \"addition_embed_type\": \"text_time\",\n  \"addition_time_embed_dim\": %d,\n"
                 "  \"projection_class_embeddings_input_dim\": %d,\n", u->add_time_dim, u->add_in_dim);
    bput(&b, "  \"use_linear_projection\": %s\n}\n", u->use_linear_projection ? "true" : "false");
    m->cfg[COMP_UNET] = b.s;

    b = (Buf){0};
    bput(&b, "{\n  \"_class_name\": \"AutoencoderKL\",\n  \"_diffusers_version\": \"0.27.0\",\n"
             "  \"act_fn\": \"silu\",\n");
    bput_list(&b, "block_out_channels", v->block_out, v->n_levels);
    bput_names(&b, "down_block_types", v->n_levels, NULL, "", "DownEncoderBlock2D");
    bput(&b, "  \"in_channels\": %d,\n  \"latent_channels\": %d,\n  \"layers_per_block\": %d,\n"
             "  \"norm_num_groups\": %d,\n  \"out_channels\": %d,\n  \"sample_size\": %d,\n"
             "  \"scaling_factor\": %.7g,\n",
         v->in_channels, v->latent_channels, v->layers_per_block, v->norm_groups, v->out_channels, v->sample_size,
         v->scaling_factor);
    bput_names(&b, "up_block_types", v->n_levels, NULL, "", "UpDecoderBlock2D");
    bput(&b, "  \"use_post_quant_conv\": true,\n  \"use_quant_conv\": true\n}\n");
    m->cfg[COMP_VAE] = b.s;

    // transformers CLIPTextConfig; an original SD 2.x file keeps 24 layers of
    // which the penultimate output is used: diffusers' config says 23
    m->cfg[COMP_TEXT_ENCODER] = clip_config_json(k, k->layers - (k->default_skip > 1 ? k->default_skip - 1 : 0));
    if (info->family == SD_FAMILY_XL && info->has_clip2)
        m->cfg[COMP_TEXT_ENCODER_2] = clip_config_json(&info->clip2, info->clip2.layers);

    // the scheduler config sdc samples the model with: the source's own file
    // (as it was), else SD's original one (sched_config_sd), so that
    // diffusers and sdc sample the export as sdc samples the source
    m->scheduler = sched_json ? strdup(sched_json) : sched_config_to_json(&info->sched);
    m->xl = info->family == SD_FAMILY_XL;
    m->force_zeros = info->force_zeros_negative;
    m->openclip = m->xl ? NM_TEXT_XL : info->clip.act == ACT_GELU ? NM_TEXT_OPENCLIP : NM_TEXT_CLIP;
    for (int c = 0; c < (m->xl ? N_CONV_XL : N_CONV); c++) m->oom |= !m->cfg[c];
    m->oom |= !m->scheduler;
}

// A string member of a JSON text ("" when absent), into out; *oom set when
// the parse ran out of memory (a default then would write a wrong file).
static void json_text_str(const char *text, const char *key, char *out, size_t cap, int *oom) {
    JsonDoc d;
    SdcError e = {0};
    out[0] = 0;
    if (!text) return;
    if (json_parse_config(&d, text, strlen(text), "config", &e)) {
        *oom |= e.code == SDC_ERR_OOM;
        return;
    }
    const char *v = json_str(&d, json_get(&d, json_root(&d), key));
    if (v) snprintf(out, cap, "%s", v);
    json_free(&d);
}

// An integer member of a JSON text (def when absent); *oom as above.
static long long json_text_int(const char *text, const char *key, long long def, int *oom) {
    JsonDoc d;
    SdcError e = {0};
    if (!text) return def;
    if (json_parse_config(&d, text, strlen(text), "config", &e)) {
        *oom |= e.code == SDC_ERR_OOM;
        return def;
    }
    const JsonNode *v = json_get(&d, json_root(&d), key);
    long long r = v && v->type == JSON_NUMBER && v->is_int ? v->i : def;
    json_free(&d);
    return r;
}

// A boolean member of a JSON text (def when absent); *oom as above.
static int json_text_bool(const char *text, const char *key, int def, int *oom) {
    JsonDoc d;
    SdcError e = {0};
    if (!text) return def;
    if (json_parse_config(&d, text, strlen(text), "config", &e)) {
        *oom |= e.code == SDC_ERR_OOM;
        return def;
    }
    const JsonNode *v = json_get(&d, json_root(&d), key);
    int r = v && v->type == JSON_BOOL ? v->boolean : def;
    json_free(&d);
    return r;
}

// model_index.json: the pipeline of the UNet (9 input channels: inpainting;
// SDXL: the XL pipelines with text_encoder_2, tokenizer_2 and
// force_zeros_for_empty_prompt), the scheduler config's class, the
// tokenizers or none.
static void make_model_index(Model *m, int tokenizer) {
    char sched[64];
    json_text_str(m->scheduler, "_class_name", sched, sizeof sched, &m->oom);
    const int inpaint = json_text_int(m->cfg[COMP_UNET], "in_channels", 4, &m->oom) == 9;
    const char *tok = tokenizer ? "[\"transformers\", \"CLIPTokenizer\"]" : "[null, null]";
    Buf b = {0};
    if (m->xl) {
        bput(&b, "{\n  \"_class_name\": \"%s\",\n  \"_diffusers_version\": \"0.27.0\",\n"
                 "  \"feature_extractor\": [null, null],\n  \"force_zeros_for_empty_prompt\": %s,\n"
                 "  \"image_encoder\": [null, null],\n  \"scheduler\": [\"diffusers\", \"%s\"],\n"
                 "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
                 "  \"text_encoder_2\": [\"transformers\", \"CLIPTextModelWithProjection\"],\n"
                 "  \"tokenizer\": %s,\n  \"tokenizer_2\": %s,\n  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
                 "  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n}\n",
             inpaint ? "StableDiffusionXLInpaintPipeline" : "StableDiffusionXLPipeline",
             m->force_zeros ? "true" : "false", sched[0] ? sched : "EulerDiscreteScheduler", tok, tok);
    } else {
        bput(&b, "{\n  \"_class_name\": \"%s\",\n  \"_diffusers_version\": \"0.27.0\",\n"
                 "  \"feature_extractor\": [null, null],\n  \"requires_safety_checker\": false,\n"
                 "  \"safety_checker\": [null, null],\n  \"scheduler\": [\"diffusers\", \"%s\"],\n"
                 "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
                 "  \"tokenizer\": %s,\n  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
                 "  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n}\n",
             inpaint ? "StableDiffusionInpaintPipeline" : "StableDiffusionPipeline", sched[0] ? sched : "PNDMScheduler",
             tok);
    }
    free(m->model_index);
    m->model_index = b.s;
    m->oom |= !b.s;
}

// The text encoder(s) can take the shipped CLIP vocab's ids (49408 tokens).
static int clip_vocab_model(Model *m) {
    return json_text_int(m->cfg[COMP_TEXT_ENCODER], "vocab_size", 0, &m->oom) == CLIP_TOK_VOCAB &&
           (!m->xl || json_text_int(m->cfg[COMP_TEXT_ENCODER_2], "vocab_size", 0, &m->oom) == CLIP_TOK_VOCAB);
}

// ----------------------------------------------------------------------------
// sources

// The (c, r) transpose of a 2-D tensor (r, c), owned by m (t itself and
// m->oom when out of memory): SDXL's OpenCLIP text_projection, which the
// original layout holds as x @ P and diffusers as the Linear weight P^T.
static Tensor transpose_own(Model *m, Tensor t) {
    const size_t r = (size_t)t.shape[0], c = (size_t)t.shape[1], es = dtype_size(t.dtype);
    char *o = model_own(m, r * c * es);
    if (!o) return t;
    for (size_t i = 0; i < r; i++)
        for (size_t j = 0; j < c; j++) memcpy(o + (j * r + i) * es, (const char *)t.data + (i * c + j) * es, es);
    t.data = o;
    t.shape[0] = (int64_t)c, t.shape[1] = (int64_t)r;
    return t;
}

static int load_single(Model *m, const char *path, const ModelInfo *info, SdcError *err) {
    StFile *f = &m->st[m->n_st];
    SDC_TRY(st_open(f, path, err));
    m->n_st++;
    // the text layout of the names: SDXL's two encoders, or SD 2.x's OpenCLIP or SD 1.x's CLIP
    int openclip = m->xl ? NM_TEXT_XL : NM_TEXT_CLIP;
    for (int i = 0; i < f->n && openclip == NM_TEXT_CLIP; i++)
        if (!strncmp(f->entries[i].name, "cond_stage_model.model.", 23)) openclip = NM_TEXT_OPENCLIP;
    m->openclip = openclip;
    NameMap *nm = malloc(sizeof *nm);
    if (!nm) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory for the name map", path);
    int rc = namemap_init(nm, &info->unet, &info->vae, openclip, err);
    for (int i = 0; !rc && i < f->n; i++) {
        const StEntry *e = &f->entries[i];
        if (!e->supported) {
            fprintf(stderr, "sdc: warning: %s: tensor %s (%s) cannot be converted; left out\n", path, e->name,
                    e->dtype_str);
            continue;
        }
        Tensor t = st_tensor(f, e);
        NameMapping mp[3];
        int k = namemap_from_original(nm, e->name, mp);
        if (k < 0) rc = sdc_err(err, SDC_ERR_FORMAT, "%s: tensor name %.200s too long", path, e->name);
        if (k == 0) model_add(m, COMP_EXTRA, e->name, t);
        for (int j = 0; j < k; j++) {
            Tensor v = t;
            if (mp[j].kind == NM_CONV_TO_LINEAR && v.ndim == 4 && v.shape[2] == 1 && v.shape[3] == 1) v.ndim = 2;
            if (mp[j].kind == NM_ROW_SLICE) {
                if (v.ndim < 1 || v.shape[0] % 3) {
                    rc = sdc_err(err, SDC_ERR_SHAPE, "%s: fused %s: expected 3*D rows", path, e->name);
                    break;
                }
                int64_t rows = v.shape[0] / 3;
                size_t row_bytes = tensor_bytes(&v) / (size_t)v.shape[0];
                v.data = (char *)v.data + (size_t)(mp[j].slice * rows) * row_bytes;
                v.shape[0] = rows;
            }
            if (mp[j].kind == NM_TRANSPOSE) {
                if (v.ndim != 2) {
                    rc = sdc_err(err, SDC_ERR_SHAPE, "%s: %s: expected a matrix (hidden, projection)", path, e->name);
                    break;
                }
                v = transpose_own(m, v);
            }
            model_add(m, mp[j].comp, mp[j].name, v);
        }
    }
    free(nm);
    return rc ? rc : model_oom(m, path, err);
}

// Every tensor of a diffusers folder under its diffusers name, as the model
// loader reads it (shards, .fp16 files, transformers 5's names without
// "text_model.", old VAE attention names): views into mf's maps.
static int load_diffusers(Model *m, const ModelFiles *mf, const char *dir, SdcError *err) {
    for (int c = 0; c < COMP_COUNT; c++)
        for (int i = 0; i < model_files_count(mf, (Component)c); i++) {
            const char *name;
            Tensor t;
            SdcError e = {0};
            if (model_files_at(mf, (Component)c, i, &name, &t, &e)) {
                fprintf(stderr, "sdc: warning: %s: %s cannot be converted; left out\n", dir, e.msg);
                continue;
            }
            model_add(m, c, name, t);
        }
    return model_oom(m, dir, err);
}

// A diffusers folder's tokenizer/ and tokenizer_2/ files into m.
static int read_tok_dir(Model *m, const char *dir, SdcError *err) {
    char p[2048];
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 6; i++) {
            snprintf(p, sizeof p, "%s/%s/%s", dir, TOK_SUB[k], TOK_FILES[i]);
            struct stat st;
            if (stat(p, &st) || !S_ISREG(st.st_mode)) continue;
            if (st.st_size > TOK_MAX_BYTES)
                return sdc_err(err, SDC_ERR_FORMAT, "%s: %lld bytes: not a tokenizer file", p, (long long)st.st_size);
            FILE *f = fopen(p, "rb");
            char *b = f ? model_own(m, (size_t)st.st_size + 1) : NULL;
            size_t n = b ? fread(b, 1, (size_t)st.st_size, f) : 0;
            if (f) fclose(f);
            if (!f || !b || n != (size_t)st.st_size)
                return f && !b ? model_oom(m, p, err)
                               : sdc_err(err, SDC_ERR_IO, "%s: cannot read (%s)", p, strerror(errno));
            b[n] = 0;
            m->tok[k][i] = b, m->tok_n[k][i] = n;
        }
    return 0;
}

// An .h5's /tokenizer and /tokenizer_2 (one uint8 dataset per file) into m.
static int read_tok_h5(Model *m, hid_t file, const char *path, SdcError *err) {
    char name[128];
    hid_t d = -1, sp = -1;
    for (int k = 0; k < 2; k++) {
        if (!h5_has_link(file, TOK_SUB[k])) continue;
        for (int i = 0; i < 6; i++) {
            snprintf(name, sizeof name, "%s/%s", TOK_SUB[k], TOK_FILES[i]);
            if (!h5_has_link(file, name)) continue;
            H5_TRY(d = H5Dopen2(file, name, H5P_DEFAULT), "%s: /%s", path, name);
            H5_TRY(sp = H5Dget_space(d), "%s: /%s", path, name);
            hsize_t n = 0;
            const hid_t ty = H5Dget_type(d);
            const size_t tsz = ty >= 0 ? H5Tget_size(ty) : 0;
            if (ty >= 0) H5Tclose(ty);
            if (H5Sget_simple_extent_ndims(sp) != 1 || H5Sget_simple_extent_dims(sp, &n, NULL) != 1 ||
                n > TOK_MAX_BYTES || tsz != 1) {
                H5Sclose(sp), H5Dclose(d);
                return sdc_err(err, SDC_ERR_FORMAT, "%s: /%s is not a tokenizer file (1-D bytes, at most %d MiB) "
                               "---> the file is damaged", path, name, TOK_MAX_BYTES >> 20);
            }
            char *b = model_own(m, (size_t)n + 1);
            if (!b) {
                H5Sclose(sp), H5Dclose(d);
                return model_oom(m, path, err);
            }
            if (h5_check_stored(d, 0, -1, name, path, err)) {
                H5Sclose(sp), H5Dclose(d);
                return err->code;
            }
            if (n) H5_TRY(H5Dread(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, b), "%s: /%s", path, name);
            b[n] = 0;
            m->tok[k][i] = b, m->tok_n[k][i] = (size_t)n;
            H5Sclose(sp), H5Dclose(d);
            sp = d = -1;
        }
    }
    return 0;
fail:
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    return err->code;
}

// m's tokenizer files into /tokenizer and /tokenizer_2 of an .h5 being written.
static int write_tok_h5(const Model *m, hid_t file, const char *path, SdcError *err) {
    char name[128];
    hid_t g = -1, sp = -1, d = -1;
    for (int k = 0; k < 2; k++) {
        if (!has_tok(m, k)) continue;
        H5_TRY(g = H5Gcreate2(file, TOK_SUB[k], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "%s: /%s", path, TOK_SUB[k]);
        for (int i = 0; i < 6; i++) {
            if (!m->tok[k][i]) continue;
            snprintf(name, sizeof name, "%s/%s", TOK_SUB[k], TOK_FILES[i]);
            const hsize_t n = m->tok_n[k][i];
            H5_TRY(sp = H5Screate_simple(1, &n, NULL), "%s: /%s", path, name);
            H5_TRY(d = H5Dcreate2(file, name, H5T_STD_U8LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "%s: /%s",
                   path, name);
            if (n) H5_TRY(H5Dwrite(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, m->tok[k][i]), "%s: /%s",
                          path, name);
            H5Dclose(d), H5Sclose(sp);
            d = sp = -1;
        }
        H5Gclose(g);
        g = -1;
    }
    return 0;
fail:
    if (d >= 0) H5Dclose(d);
    if (sp >= 0) H5Sclose(sp);
    if (g >= 0) H5Gclose(g);
    return err->code;
}

static int load_h5(Model *m, const char *path, SdcError *err) {
    Ckpt c;
    SDC_TRY(ckpt_open(&c, path, err));
    int rc = 0;
    for (int i = 0; i < c.n && !rc; i++) {
        const CkptTensor *ct = &c.t[i];
        int comp = -1;
        for (int g = 0; g <= COMP_COUNT; g++)
            if (!strcmp(ct->group, GROUP[g])) comp = g;
        void *buf = model_own(m, ct->nbytes);
        rc = buf ? ckpt_read(&c, i, buf, 1, err) : model_oom(m, path, err);
        model_add(m, comp, ct->name, tensor_make(ct->dtype, DEV_CPU, buf, ct->ndim, ct->shape));
    }
    if (!rc) rc = model_oom(m, path, err);
    for (int i = 0; i < m->n; i++) m->xl |= m->p[i].comp == COMP_TEXT_ENCODER_2; // SDXL
    for (int k = 0; !rc && k < (m->xl ? N_CONV_XL : N_CONV); k++)
        rc = ckpt_get_attr(&c, GROUP[k], "config", &m->cfg[k], err);
    if (!rc) rc = ckpt_get_attr(&c, "", "model_index", &m->model_index, err);
    if (!rc) rc = ckpt_get_attr(&c, "", "scheduler_config", &m->scheduler, err);
    if (!rc && m->xl) {
        m->openclip = NM_TEXT_XL;
        m->force_zeros = json_text_bool(m->model_index, "force_zeros_for_empty_prompt", 1, &m->oom);
    } else if (!rc) {
        JsonDoc d;
        rc = json_parse(&d, m->cfg[COMP_TEXT_ENCODER], strlen(m->cfg[COMP_TEXT_ENCODER]), path, err);
        if (!rc) {
            const char *act = json_str(&d, json_get(&d, json_root(&d), "hidden_act"));
            m->openclip = act && !strcmp(act, "gelu") ? NM_TEXT_OPENCLIP : NM_TEXT_CLIP;
            json_free(&d);
        }
    }
    if (!rc) rc = read_tok_h5(m, c.file, path, err);
    ckpt_close(&c);
    return rc;
}

// ----------------------------------------------------------------------------
// sinks

// A float tensor in the asked dtype (a converted copy owned by m, or t);
// out of memory: t, with m->oom set (the writers check model_oom).
static Tensor cast(Model *m, Tensor t, int dtype) {
    if (dtype < 0 || (int)t.dtype == dtype || (t.dtype != DT_F32 && t.dtype != DT_F16 && t.dtype != DT_BF16))
        return t;
    size_t n = (size_t)tensor_numel(&t);
    float *tmp = malloc((n ? n : 1) * sizeof(float));
    Tensor o = t;
    o.dtype = (DType)dtype;
    o.data = tmp ? model_own(m, n * dtype_size(o.dtype)) : NULL;
    if (!o.data) {
        free(tmp);
        m->oom = 1;
        return t;
    }
    convert_to_f32(tmp, t.data, t.dtype, n);
    convert_from_f32(o.data, o.dtype, tmp, n);
    free(tmp);
    return o;
}

static int write_h5(Model *m, const ConvertOpts *o, SdcError *err) {
    CkptWriter w;
    SDC_TRY(ckpt_begin(&w, o->output, err));
    int rc = 0;
    for (int i = 0; i < m->n && !rc; i++) {
        Tensor t = cast(m, m->p[i].t, o->dtype);
        rc = m->oom ? model_oom(m, o->output, err) : ckpt_put(&w, GROUP[m->p[i].comp], m->p[i].name, &t, err);
    }
    for (int c = 0; c < (m->xl ? N_CONV_XL : N_CONV) && !rc; c++)
        rc = ckpt_set_attr(&w, GROUP[c], "config", m->cfg[c], err);
    if (!rc) rc = ckpt_set_attr(&w, "", "model_index", m->model_index, err);
    if (!rc) rc = ckpt_set_attr(&w, "", "scheduler_config", m->scheduler, err);
    if (!rc) rc = ckpt_set_attr(&w, "", "source", o->model, err);
    if (!rc && o->manifest) rc = ckpt_set_attr(&w, "", "manifest", o->manifest, err);
    if (!rc) rc = write_tok_h5(m, w.file, w.tmp, err);
    if (rc) {
        ckpt_abort(&w);
        return rc;
    }
    CkptState st = {0};
    return ckpt_commit(&w, &st, err);
}

// The namemap needs only the block structure, which the diffusers names show.
static int count_prefix(const Model *m, int comp, const char *fmt, int a) {
    int n = 0;
    for (;; n++) {
        char pre[128];
        snprintf(pre, sizeof pre, fmt, a, n);
        size_t len = strlen(pre);
        int found = 0;
        for (int i = 0; i < m->n && !found; i++) found = m->p[i].comp == comp && !strncmp(m->p[i].name, pre, len);
        if (!found) return n;
    }
}

static void structure_from_names(const Model *m, UnetConfig *u, VaeConfig *v) {
    memset(u, 0, sizeof *u);
    memset(v, 0, sizeof *v);
    u->n_levels = count_prefix(m, COMP_UNET, "down_blocks.%.0d%d.", 0);
    u->layers_per_block = count_prefix(m, COMP_UNET, "down_blocks.%d.resnets.%d.", 0);
    for (int i = 0; i < u->n_levels && i < SDC_MAX_LEVELS; i++) {
        u->down_attn[i] = count_prefix(m, COMP_UNET, "down_blocks.%d.attentions.%d.", i) > 0;
        u->up_attn[i] = count_prefix(m, COMP_UNET, "up_blocks.%d.attentions.%d.", i) > 0;
    }
    u->mid_attn = count_prefix(m, COMP_UNET, "mid_block.attentions.%.0d%d.", 0) > 0;
    v->n_levels = count_prefix(m, COMP_VAE, "encoder.down_blocks.%.0d%d.", 0);
    v->layers_per_block = count_prefix(m, COMP_VAE, "encoder.down_blocks.%d.resnets.%d.", 0);
}

typedef struct Fused {
    char name[NAMEMAP_NAME_MAX];
    Tensor t;
    int have;
} Fused;

static int write_single(Model *m, const ConvertOpts *o, SdcError *err) {
    UnetConfig u;
    VaeConfig v;
    structure_from_names(m, &u, &v);
    NameMap *nm = malloc(sizeof *nm);
    const char **names = calloc((size_t)m->n + 1, sizeof(char *));
    Tensor *ts = calloc((size_t)m->n + 1, sizeof(Tensor));
    Fused *fu = calloc((size_t)m->n + 1, sizeof(Fused));
    int rc = !nm || !names || !ts || !fu ? sdc_err(err, SDC_ERR_OOM, "%s: out of memory", o->output)
                                         : namemap_init(nm, &u, &v, m->openclip, err);
    int n = 0, nf = 0;
    for (int i = 0; i < m->n && !rc; i++) {
        Param *p = &m->p[i];
        Tensor t = cast(m, p->t, o->dtype);
        if (p->comp == COMP_EXTRA) {
            names[n] = p->name, ts[n++] = t;
            continue;
        }
        NameMapping mp;
        if (namemap_to_original(nm, (Component)p->comp, p->name, &mp)) {
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: %s tensor %s has no original-layout name\n---> is this an SD "
                         "1.x/2.x or SDXL model?", o->model, GROUP[p->comp], p->name);
            break;
        }
        if (mp.kind == NM_ROW_SLICE) { // q, k, v rows -> one fused in_proj
            int f = 0;
            while (f < nf && strcmp(fu[f].name, mp.name)) f++;
            if (f == nf) {
                snprintf(fu[f].name, sizeof fu[f].name, "%s", mp.name);
                fu[f].t = t;
                fu[f].t.shape[0] = t.shape[0] * 3;
                fu[f].t.data = model_own(m, tensor_bytes(&fu[f].t));
                if (!fu[f].t.data) break;
                nf++;
            }
            size_t bytes = tensor_bytes(&t);
            memcpy((char *)fu[f].t.data + (size_t)mp.slice * bytes, t.data, bytes);
            fu[f].have |= 1 << mp.slice;
            continue;
        }
        if (mp.kind == NM_CONV_TO_LINEAR && t.ndim == 2) t.ndim = 4, t.shape[2] = t.shape[3] = 1;
        if (mp.kind == NM_TRANSPOSE && t.ndim == 2) t = transpose_own(m, t); // SDXL's OpenCLIP x @ P
        if (m->oom || !(names[n] = model_own(m, strlen(mp.name) + 1))) break;
        strcpy((char *)names[n], mp.name);
        ts[n++] = t;
    }
    if (!rc) rc = model_oom(m, o->output, err);
    for (int f = 0; f < nf && !rc; f++) {
        if (fu[f].have != 7) rc = sdc_err(err, SDC_ERR_SHAPE, "%s: %s is missing its q, k or v part", o->model, fu[f].name);
        names[n] = fu[f].name, ts[n++] = fu[f].t;
    }
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    if (!rc) rc = st_write(o->output, names, ts, n, mk, mv, 1, err);
    free(nm);
    free(names);
    free(ts);
    free(fu);
    return rc;
}

static int write_bytes(const char *path, const char *b, size_t n, SdcError *err) {
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(b, 1, n, f) == n, e = errno;
    if (f && fclose(f) && ok) ok = 0, e = errno;
    if (!ok) return sdc_err(err, SDC_ERR_IO, "%s: cannot write (%s) ---> %s", path, strerror(e), fs_write_hint(e));
    return 0;
}

static int write_text(const char *path, const char *text, SdcError *err) {
    return write_bytes(path, text, strlen(text), err);
}

// Copies src_dir/SUB/ (a diffusers source's tokenizer/ or tokenizer_2/: the
// files transformers reads, those present) into out/SUB/.
int convert_copy_tokenizer(const char *src_dir, const char *sub, const char *out, SdcError *err) {
    const char *const *files = TOK_FILES;
    char a[2048], b[2048];
    snprintf(b, sizeof b, "%s/%s", out, sub);
    SDC_TRY(fs_mkdir_p(b, err));
    for (int i = 0; i < 6; i++) {
        struct stat st;
        snprintf(a, sizeof a, "%s/%s/%s", src_dir, sub, files[i]);
        snprintf(b, sizeof b, "%s/%s/%s", out, sub, files[i]);
        if (stat(a, &st) || !S_ISREG(st.st_mode)) continue;
        SDC_TRY(fs_copy_file(a, b, err));
    }
    return 0;
}

// The source folder has SUB/ with a tokenizer transformers reads.
static int src_has_tokenizer(const char *model, const char *sub) {
    char a[2048], b[2048];
    struct stat s;
    snprintf(a, sizeof a, "%s/%s/vocab.json", model, sub);
    snprintf(b, sizeof b, "%s/%s/tokenizer.json", model, sub);
    return fs_is_dir(model) && (!stat(a, &s) || !stat(b, &s));
}

static int write_diffusers(Model *m, const ConvertOpts *o, SdcError *err) {
    static const char *const wfile[N_CONV_XL] = {"model.safetensors", "diffusion_pytorch_model.safetensors",
                                                 "diffusion_pytorch_model.safetensors", "model.safetensors"};
    const int n_conv = m->xl ? N_CONV_XL : N_CONV;
    char p[2048];
    SDC_TRY(fs_mkdir_p(o->output, err));
    // the tokenizer(s): the source folder's, else the shipped CLIP vocab with
    // SD 1.x's or SD 2.x's special tokens (pad "!": the text encoder config's
    // pad_token_id 0), the tokenizer sdc itself uses for the model; SDXL's
    // tokenizer_2 likewise (its text encoder pads with "!")
    // (the source's own, a folder's or an .h5's, or ConvertOpts.tokenizer_from's: m->tok)
    const int src_tok = has_tok(m, 0) && (!m->xl || has_tok(m, 1)), shipped = !src_tok && clip_vocab_model(m);
    for (int k = 0; src_tok && k < (m->xl ? 2 : 1); k++) {
        snprintf(p, sizeof p, "%s/%s", o->output, TOK_SUB[k]);
        SDC_TRY(fs_mkdir_p(p, err));
        for (int i = 0; i < 6; i++) {
            if (!m->tok[k][i]) continue;
            snprintf(p, sizeof p, "%s/%s/%s", o->output, TOK_SUB[k], TOK_FILES[i]);
            SDC_TRY(write_bytes(p, m->tok[k][i], m->tok_n[k][i], err));
        }
    }
    for (int c = 0; shipped && c < n_conv; c++) {
        if (c != COMP_TEXT_ENCODER && c != COMP_TEXT_ENCODER_2) continue;
        snprintf(p, sizeof p, "%s/%s", o->output, c == COMP_TEXT_ENCODER ? "tokenizer" : "tokenizer_2");
        SDC_TRY(fs_mkdir_p(p, err));
        const int sd2 = json_text_int(m->cfg[c], "pad_token_id", -1, &m->oom) == 0;
        SDC_TRY(clip_tok_write_hf(p, sd2 ? CLIP_TOK_FOLDER_SD2 : CLIP_TOK_FOLDER_SD1, err));
    }
    const int has_tok = src_tok || shipped;
    make_model_index(m, has_tok);
    SDC_TRY(model_oom(m, o->output, err));
    int extras = 0, rc = 0;
    for (int c = 0; c < n_conv && !rc; c++) {
        snprintf(p, sizeof p, "%s/%s", o->output, GROUP[c]);
        SDC_TRY(fs_mkdir_p(p, err));
        snprintf(p, sizeof p, "%s/%s/config.json", o->output, GROUP[c]);
        SDC_TRY(write_text(p, m->cfg[c], err));
        const char **names = calloc((size_t)m->n + 1, sizeof(char *));
        Tensor *ts = calloc((size_t)m->n + 1, sizeof(Tensor));
        int n = 0;
        for (int i = 0; names && ts && i < m->n; i++) {
            if (m->p[i].comp == COMP_EXTRA) extras += c == 0;
            if (m->p[i].comp != c) continue;
            names[n] = m->p[i].name;
            ts[n++] = cast(m, m->p[i].t, o->dtype);
        }
        snprintf(p, sizeof p, "%s/%s/%s", o->output, GROUP[c], wfile[c]);
        const char *mk[1] = {"format"}, *mv[1] = {"pt"};
        if (!names || !ts) m->oom = 1;
        rc = m->oom ? model_oom(m, p, err) : st_write(p, names, ts, n, mk, mv, 1, err);
        free(names);
        free(ts);
    }
    if (rc) return rc;
    snprintf(p, sizeof p, "%s/scheduler", o->output);
    SDC_TRY(fs_mkdir_p(p, err));
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", o->output);
    SDC_TRY(write_text(p, m->scheduler, err));
    snprintf(p, sizeof p, "%s/model_index.json", o->output);
    SDC_TRY(write_text(p, m->model_index, err));
    if (extras && !o->quiet)
        fprintf(stderr, "sdc: note: %d tensors no model uses (model_ema.*, scheduler buffers) have no place in a "
                "diffusers folder; left out\n", extras);
    if (!has_tok && !o->quiet)
        fprintf(stderr, "sdc: note: no tokenizer/ written: the text encoder's vocab has %lld tokens, not CLIP's %d "
                "(the source has no tokenizer/)\n---> diffusers users: give the model's own tokenizer%s to from_pretrained "
                "(tokenizer=CLIPTokenizer.from_pretrained(...)), or copy its folder into %s/ and name it in "
                "model_index.json\n", json_text_int(m->cfg[COMP_TEXT_ENCODER], "vocab_size", 0, &m->oom), CLIP_TOK_VOCAB,
                m->xl ? "s (tokenizer, tokenizer_2)" : "", m->out_name ? m->out_name : o->output);
    return 0;
}

// The one-step replacement of folder out by the new folder tmp (see below):
// 0 when done, -1 when the file system cannot (tmp then holds only the new
// entries again).
static int exchange_folder(const char *out, const char *tmp, const char *const *entries, int n_entries) {
    struct stat st;
    if (lstat(out, &st) || !S_ISDIR(st.st_mode)) return -1; // a symlink to a folder: update what it points to
    DIR *d = opendir(out);
    if (!d) return -1;
    int rc = 0;
    char a[4200], b[4200];
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        int ours = 0;
        for (int i = 0; i < n_entries; i++) ours |= !strcmp(e->d_name, entries[i]);
        if (ours) continue;
        snprintf(a, sizeof a, "%s/%s", out, e->d_name);
        snprintf(b, sizeof b, "%s/%s", tmp, e->d_name);
        rc = fs_link_tree(a, b);
    }
    closedir(d);
    if (!rc) rc = fs_exchange(tmp, out);
    if (rc) { // undo the links: tmp holds what sdc wrote, for the entry-by-entry way
        if ((d = opendir(tmp))) {
            while ((e = readdir(d))) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
                int ours = 0;
                for (int i = 0; i < n_entries; i++) ours |= !strcmp(e->d_name, entries[i]);
                snprintf(b, sizeof b, "%s/%s", tmp, e->d_name);
                if (!ours) fs_rm_tree(b);
            }
            closedir(d);
        }
    }
    return rc ? -1 : 0;
}

// A diffusers folder is written whole into OUT.sdc-tmp/ first, so a failed
// write (a full disk) leaves nothing half-written at OUT: a new OUT does not
// appear, an existing one keeps its files. Then the new folder takes OUT's
// place in one step, so that a kill at any moment leaves OUT either as it
// was or complete and new: OUT.sdc-tmp is renamed to OUT when OUT does not
// exist; else the files in OUT that sdc does not write are hard-linked into
// OUT.sdc-tmp (they stay, untouched) and the two folders are exchanged
// (renameat2 RENAME_EXCHANGE), the old one removed after. Where the file
// system cannot link or exchange, each entry written replaces its namesake
// in OUT (the old one parked in OUT.sdc-tmp until the end), model_index.json
// last: a kill in those few renames leaves a mix of old and new entries.
static int write_diffusers_whole(Model *m, const ConvertOpts *o, SdcError *err) {
    static const char *const entries[] = {"text_encoder", "text_encoder_2", "unet", "vae", "scheduler",
                                          "tokenizer", "tokenizer_2", "model_index.json"};
    enum { N_ENTRIES = 8 };
    char tmp[1900], a[2100], b[2100], old[2100];
    size_t len = strlen(o->output);
    while (len > 1 && o->output[len - 1] == '/') len--; // "out/": the temporary folder beside out, not in it
    if ((size_t)snprintf(tmp, sizeof tmp, "%.*s.sdc-tmp", (int)len, o->output) >= sizeof tmp)
        return sdc_err(err, SDC_ERR_ARG, "%s: path too long", o->output);
    struct stat st;
    const int exists = !stat(o->output, &st);
    if (exists && !S_ISDIR(st.st_mode))
        return sdc_err(err, SDC_ERR_ARG, "%s: exists and is not a folder ---> a diffusers folder is written there; "
                       "pick another output (.safetensors or .h5 for one file)", o->output);
    fs_rm_tree(tmp); // a leftover of a killed conversion
    ConvertOpts ot = *o;
    ot.output = tmp;
    m->out_name = o->output;
    int rc = write_diffusers(m, &ot, err);
    if (!rc && !exists && rename(tmp, o->output))
        rc = sdc_err(err, SDC_ERR_IO, "%s: cannot rename %s to it (%s)", o->output, tmp, strerror(errno));
    if (!rc && exists && !exchange_folder(o->output, tmp, entries, N_ENTRIES)) {
        fs_rm_tree(tmp); // the old folder
        return 0;
    }
    if (!rc && exists) {
        int placed[N_ENTRIES] = {0}, parked[N_ENTRIES] = {0};
        for (int i = 0; i < N_ENTRIES && !rc; i++) {
            snprintf(a, sizeof a, "%s/%s", tmp, entries[i]);
            if (stat(a, &st)) continue; // not written (no tokenizer)
            snprintf(b, sizeof b, "%s/%s", o->output, entries[i]);
            snprintf(old, sizeof old, "%s/old-%s", tmp, entries[i]);
            if (!stat(b, &st)) {
                if (rename(b, old)) {
                    rc = sdc_err(err, SDC_ERR_IO, "%s: cannot move it aside (%s)", b, strerror(errno));
                    break;
                }
                parked[i] = 1;
            }
            if (rename(a, b)) rc = sdc_err(err, SDC_ERR_IO, "%s: cannot move %s there (%s)", b, a, strerror(errno));
            else placed[i] = 1;
        }
        for (int i = N_ENTRIES - 1; rc && i >= 0; i--) { // the way back: the old folder whole again
            snprintf(a, sizeof a, "%s/%s", tmp, entries[i]);
            snprintf(b, sizeof b, "%s/%s", o->output, entries[i]);
            snprintf(old, sizeof old, "%s/old-%s", tmp, entries[i]);
            if (placed[i] && rename(b, a)) continue; // cannot undo: leave it rather than lose the old one
            if (parked[i]) rename(old, b);
        }
    }
    fs_rm_tree(tmp);
    return rc;
}

// Any source into m: an .h5 checkpoint, or a diffusers folder / single file
// (config: the single file's config folder; *mf stays open: m's tensors are
// views into its maps).
static int load_source(Model *m, const char *model, const char *config, ModelFiles **mf, SdcError *err) {
    if (fs_ends_with(model, ".h5")) return load_h5(m, model, err);
    SDC_TRY(model_files_open(mf, model, config, -1, err));
    const ModelInfo *info = model_files_info(*mf);
    make_configs(m, info, model_files_scheduler_json(*mf));
    make_model_index(m, clip_vocab_model(m) || fs_is_dir(model));
    SDC_TRY(model_oom(m, model, err));
    // its tokenizer: a folder's own, or a single file's config folder's (the tokenizer sdc runs it with)
    if (fs_is_dir(model)) SDC_TRY(read_tok_dir(m, model, err));
    else if (config && fs_is_dir(config)) SDC_TRY(read_tok_dir(m, config, err));
    return info->layout == LAYOUT_DIFFUSERS ? load_diffusers(m, *mf, model, err) : load_single(m, model, info, err);
}

int convert_train_ckpt(const char *path, char **manifest, SdcError *err) {
    *manifest = NULL;
    Ckpt c;
    SDC_TRY(ckpt_open(&c, path, err));
    hid_t g = h5_has_link(c.file, "unet") ? H5Gopen2(c.file, "unet", H5P_DEFAULT) : -1;
    const int complete = g >= 0 && h5_has_attr(g, "config");
    if (g >= 0) H5Gclose(g);
    g = h5_has_link(c.file, "state") ? H5Gopen2(c.file, "state", H5P_DEFAULT) : -1;
    const int train = g >= 0 && h5_has_attr(g, "micro_step");
    if (g >= 0) H5Gclose(g);
    int rc = 0;
    if (!complete && !train)
        rc = sdc_err(err, SDC_ERR_FORMAT, "%s: /unet has no config, and the file is not a training checkpoint\n"
                     "---> the file is damaged, or not written by sdc", path);
    else if (!complete && ckpt_get_attr(&c, "", "manifest", manifest, err))
        rc = sdc_err_wrap(err, "%s is a training checkpoint; the job that wrote it (its base model) is not recorded",
                          path);
    ckpt_close(&c);
    if (rc) {
        free(*manifest);
        *manifest = NULL;
    }
    return rc;
}

// The trained weights of a training checkpoint in place of m's (its base
// model's): /unet (or /unet_ema when the run kept an EMA), /text_encoder and
// /text_encoder_2 when trained. Each must be a tensor of the base, of its shape.
static int overlay_trained(Model *m, const char *path, const char *base, SdcError *err) {
    Ckpt c;
    SDC_TRY(ckpt_open(&c, path, err));
    int rc = ckpt_list_group(&c, "unet_ema", err), ema = 0, n = 0;
    for (int i = 0; i < c.n; i++) ema |= !strcmp(c.t[i].group, "unet_ema");
    for (int i = 0; i < c.n && !rc; i++) {
        const CkptTensor *ct = &c.t[i];
        const char *g = ct->group;
        const int comp = !strcmp(g, ema ? "unet_ema" : "unet") ? COMP_UNET
                         : !strcmp(g, "text_encoder") ? COMP_TEXT_ENCODER
                         : !strcmp(g, "text_encoder_2") ? COMP_TEXT_ENCODER_2 : -1;
        if (comp < 0) continue;
        Param *p = NULL;
        for (int k = 0; k < m->n && !p; k++)
            if (m->p[k].comp == comp && !strcmp(m->p[k].name, ct->name)) p = &m->p[k];
        int same = p && p->t.ndim == ct->ndim;
        for (int d = 0; same && d < ct->ndim; d++) same = p->t.shape[d] == ct->shape[d];
        if (!same) {
            rc = sdc_err(err, SDC_ERR_SHAPE, "%s: %s/%s is %s its base model %s\n---> was the run trained from "
                         "another model than its manifest names?", path, g, ct->name,
                         p ? "of another shape than in" : "not a tensor of", base);
            break;
        }
        void *buf = model_own(m, ct->nbytes);
        rc = buf ? ckpt_read(&c, i, buf, 1, err) : model_oom(m, path, err);
        if (!rc) p->t = tensor_make(ct->dtype, DEV_CPU, buf, ct->ndim, ct->shape);
        n++;
    }
    if (!rc && !n)
        rc = sdc_err(err, SDC_ERR_FORMAT, "%s: no trained UNet or text encoder weights in it\n---> a LoRA training "
                     "checkpoint? generate with its base model and --lora %s", path, path);
    ckpt_close(&c);
    return rc ? sdc_err_wrap(err, "the model of training checkpoint %s", path) : 0;
}

int convert_run(const ConvertOpts *o, SdcError *err) {
    if (o->dtype >= 0 && o->dtype != DT_F32 && o->dtype != DT_F16 && o->dtype != DT_BF16)
        return sdc_err(err, SDC_ERR_ARG, "--dtype: expected f32, f16 or bf16");
    if (!strcmp(o->model, o->output))
        return sdc_err(err, SDC_ERR_ARG, "%s: the output is the source ---> pick another output path", o->output);
    Model m;
    memset(&m, 0, sizeof m);
    ModelFiles *mf = NULL;
    int rc;
    if (o->base) {
        rc = load_source(&m, o->base, o->base_config, &mf, err);
        if (rc) sdc_err_wrap(err, "the base model of training checkpoint %s", o->model);
        else rc = overlay_trained(&m, o->model, o->base, err);
    } else {
        rc = load_source(&m, o->model, o->config, &mf, err);
    }
    const char *tf = o->tokenizer_from; // its tokenizer(s) in place of the source's, when it has them
    if (!rc && tf && src_has_tokenizer(tf, "tokenizer") && (!m.xl || src_has_tokenizer(tf, "tokenizer_2"))) {
        memset(m.tok, 0, sizeof m.tok);
        rc = read_tok_dir(&m, tf, err);
    }
    if (!rc) {
        if (fs_ends_with(o->output, ".h5")) rc = write_h5(&m, o, err);
        else if (fs_ends_with(o->output, ".safetensors")) rc = write_single(&m, o, err);
        else rc = write_diffusers_whole(&m, o, err);
    }
    if (!rc && !o->quiet)
        fprintf(stderr, "sdc: converted %s -> %s (%d tensors)\n", o->model, o->output, m.n);
    model_free(&m);
    model_files_close(mf); // after the writes: a folder's tensors are views into its maps
    return rc;
}
