// weights.c: ModelFiles (see weights.h): opens a single original-layout file
// or a diffusers folder, fills ModelInfo (from config.json files or, for a
// single file without config_dir, from tensor shapes and SD 1.x/2.x
// constants), and answers lookups by diffusers name with views into the
// mapped files. The name translation itself lives in namemap.c.
#include "io/weights.h"

#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/json.h"
#include "io/namemap.h"
#include "io/safetensors.h"
#include "text/tokenizer.h"

#define JSON_MAX_BYTES (64u << 20) // config.json, vocab.json

typedef struct WEntry {
    char *name;          // diffusers name
    const StFile *file;
    const StEntry *e;
    NameMapKind kind;
    int slice;
} WEntry;

struct ModelFiles {
    ModelInfo info;
    char *sched_json;          // the scheduler_config.json text read, or NULL
    int vae_set;               // model_files_set_vae was called
    char path[1024];
    StFile **files;            // every mapped file: the single file, or each component's (shards
    int n_files, cap_files;    // included), + a separate VAE (model_files_set_vae)
    WEntry *ents[COMP_COUNT];  // sorted by name
    int n_ents[COMP_COUNT];
    NameMap nm;                // single file only
};

static const char *const COMP_NAMES[COMP_COUNT] = {"text_encoder", "unet", "vae", "text_encoder_2"};

// out = a "/" b ["/" c]; paths are checked against SDC_PATH_MAX at
// model_files_open, so this never truncates in practice (and says so if it would).
#define SDC_PATH_MAX 900
static void path_join(char *out, size_t cap, const char *a, const char *b, const char *c) {
    size_t la = strlen(a), lb = strlen(b), lc = c ? strlen(c) : 0;
    if (la + lb + lc + 3 > cap) {
        out[0] = 0;
        return;
    }
    memcpy(out, a, la);
    out[la] = '/';
    memcpy(out + la + 1, b, lb + 1);
    if (c) {
        out[la + 1 + lb] = '/';
        memcpy(out + la + lb + 2, c, lc + 1);
    }
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

// ----------------------------------------------------------------------------
// config.json readers

typedef struct Cfg {
    JsonDoc doc;
    const JsonNode *root;
    const char *path;
} Cfg;

static int cfg_open(Cfg *c, const char *path, SdcError *err) {
    c->path = path;
    SDC_TRY(json_parse_file(&c->doc, path, JSON_MAX_BYTES, err));
    c->root = json_root(&c->doc);
    if (c->root->type != JSON_OBJECT) {
        json_free(&c->doc);
        return sdc_err(err, SDC_ERR_FORMAT, "%s: expected a JSON object at the top", path);
    }
    return 0;
}

// Integer field: def if absent or null; an error if of another type.
static int cfg_int(const Cfg *c, const char *key, int def, int *out, SdcError *err) {
    const JsonNode *v = json_get(&c->doc, c->root, key);
    if (!v || v->type == JSON_NULL) {
        *out = def;
        return 0;
    }
    if (v->type != JSON_NUMBER || !v->is_int || v->i < INT32_MIN || v->i > INT32_MAX)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: \"%s\" is %s, expected an integer\n---> fix the config (as "
                       "diffusers / transformers save_pretrained write it)", c->path, key, json_type_name(v->type));
    *out = (int)v->i;
    return 0;
}

// A float field, finite as a float; sign: 0 any, 1 at least 0, 2 above 0
// (an eps or a scaling factor: inf, NaN-producing or zero values refused
// here rather than turned into a picture of noise).
static int cfg_float(const Cfg *c, const char *key, float def, int sign, float *out, SdcError *err) {
    const JsonNode *v = json_get(&c->doc, c->root, key);
    if (!v || v->type == JSON_NULL) {
        *out = def;
        return 0;
    }
    if (v->type != JSON_NUMBER)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: \"%s\" is %s, expected a number\n---> fix the config (as "
                       "diffusers / transformers save_pretrained write it)", c->path, key, json_type_name(v->type));
    const float f = (float)v->num;
    if (!isfinite(f) || (sign == 1 && f < 0) || (sign == 2 && !(f > 0)))
        return sdc_err(err, SDC_ERR_FORMAT, "%s: \"%s\" is %g: expected a %snumber%s\n---> fix the config (as "
                       "diffusers / transformers save_pretrained write it)", c->path, key, v->num,
                       sign == 2 ? "positive " : sign == 1 ? "non-negative " : "finite ",
                       sign ? ", finite as a 32-bit float" : " within the 32-bit float range");
    *out = f;
    return 0;
}

static int cfg_bool(const Cfg *c, const char *key, int def, int *out, SdcError *err) {
    const JsonNode *v = json_get(&c->doc, c->root, key);
    if (!v || v->type == JSON_NULL) {
        *out = def;
        return 0;
    }
    if (v->type != JSON_BOOL)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: \"%s\" is %s, expected true or false\n---> fix the config (as "
                       "diffusers / transformers save_pretrained write it)", c->path, key, json_type_name(v->type));
    *out = v->boolean;
    return 0;
}

// An int or a list of n ints (diffusers accepts both for per-level values).
// Absent/null: def for every level. Returns the list length, or -1 on error.
static int cfg_int_list(const Cfg *c, const char *key, int n, int def, int *out, SdcError *err) {
    const JsonNode *v = json_get(&c->doc, c->root, key);
    if (!v || v->type == JSON_NULL || (v->type == JSON_NUMBER && v->is_int)) {
        int x = v && v->type == JSON_NUMBER ? (int)v->i : def;
        for (int i = 0; i < n; i++) out[i] = x;
        return n;
    }
    if (v->type != JSON_ARRAY || (n > 0 && v->n != n) || v->n > SDC_MAX_LEVELS || v->n < 1) {
        sdc_err(err, SDC_ERR_FORMAT, "%s: \"%s\" must be an integer or a list of %d integers (one per level)",
                c->path, key, n > 0 ? n : SDC_MAX_LEVELS);
        return -1;
    }
    int i = 0;
    for (const JsonNode *e = json_first(&c->doc, v); e; e = json_next(&c->doc, e), i++) {
        if (e->type != JSON_NUMBER || !e->is_int || e->i < 0 || e->i > 1000000) {
            sdc_err(err, SDC_ERR_FORMAT, "%s: \"%s\"[%d] is not a non-negative integer", c->path, key, i);
            return -1;
        }
        out[i] = (int)e->i;
    }
    return v->n;
}

// A list of block type strings: out[i] = 1 if it contains "CrossAttn".
static int cfg_attn_list(const Cfg *c, const char *key, int n, int *out, SdcError *err) {
    const JsonNode *v = json_get(&c->doc, c->root, key);
    if (!v || v->type != JSON_ARRAY || v->n != n)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: \"%s\" must be a list of %d block types (one per level)",
                       c->path, key, n);
    int i = 0;
    for (const JsonNode *e = json_first(&c->doc, v); e; e = json_next(&c->doc, e), i++) {
        const char *s = json_str(&c->doc, e);
        if (!s) return sdc_err(err, SDC_ERR_FORMAT, "%s: \"%s\"[%d] is not a string", c->path, key, i);
        if (strcmp(s, "CrossAttnDownBlock2D") && strcmp(s, "DownBlock2D") && strcmp(s, "CrossAttnUpBlock2D") &&
            strcmp(s, "UpBlock2D"))
            return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"%s\"[%d] is \"%s\"; sdc supports the SD 1.x/2.x "
                           "blocks CrossAttnDownBlock2D, DownBlock2D, CrossAttnUpBlock2D, UpBlock2D\n---> is this an "
                           "SD 1.x/2.x UNet?", c->path, key, i, s);
        out[i] = strstr(s, "CrossAttn") != NULL;
    }
    return 0;
}

// ----------------------------------------------------------------------------
// config fields sdc does not implement: refused by name and value

typedef enum { UK_NULL, UK_FALSE, UK_STRING, UK_NUMBER } UkKind;
typedef struct UnsupportedKey {
    const char *key;
    UkKind ok;         // the harmless values: null (always), false, the string ok_s, the number ok_n
    const char *ok_s;
    double ok_n;
    const char *what;  // what the field makes the model (for the message)
} UnsupportedKey;

static const UnsupportedKey UNET_UNSUPPORTED[] = {
    {"act_fn", UK_STRING, "silu", 0, "another activation"},
    {"center_input_sample", UK_FALSE, NULL, 0, "a centred input"},
    {"only_cross_attention", UK_FALSE, NULL, 0, "cross-attention-only blocks"},
    {"dual_cross_attention", UK_FALSE, NULL, 0, "dual cross-attention"},
    {"downsample_padding", UK_NUMBER, NULL, 1, "another down-sampler padding"},
    {"mid_block_scale_factor", UK_NUMBER, NULL, 1, "a scaled mid block"},
    {"mid_block_only_cross_attention", UK_FALSE, NULL, 0, "a cross-attention-only mid block"},
    {"reverse_transformer_layers_per_block", UK_NULL, NULL, 0, "per-block up transformer depths (SDXL-style)"},
    {"encoder_hid_dim", UK_NULL, NULL, 0, "a projected text embedding (IF / Kandinsky)"},
    {"encoder_hid_dim_type", UK_NULL, NULL, 0, "a projected text embedding (IF / Kandinsky)"},
    {"class_embed_type", UK_NULL, NULL, 0, "class conditioning"},
    {"num_class_embeds", UK_NULL, NULL, 0, "class conditioning"},
    {"addition_embed_type", UK_STRING, "text_time", 0, "another added conditioning (Kandinsky, IF)"},
    {"class_embeddings_concat", UK_FALSE, NULL, 0, "concatenated class embeddings"},
    {"resnet_time_scale_shift", UK_STRING, "default", 0, "scale-shift time conditioning"},
    {"resnet_skip_time_act", UK_FALSE, NULL, 0, "resnets without the time activation"},
    {"resnet_out_scale_factor", UK_NUMBER, NULL, 1, "scaled resnet outputs"},
    {"time_embedding_type", UK_STRING, "positional", 0, "another time embedding"},
    {"time_embedding_dim", UK_NULL, NULL, 0, "another time embedding width"},
    {"time_embedding_act_fn", UK_NULL, NULL, 0, "another time embedding activation"},
    {"timestep_post_act", UK_NULL, NULL, 0, "a time embedding post-activation"},
    {"time_cond_proj_dim", UK_NULL, NULL, 0, "guidance-embedding time conditioning (LCM)"},
    {"conv_in_kernel", UK_NUMBER, NULL, 3, "another conv_in kernel"},
    {"conv_out_kernel", UK_NUMBER, NULL, 3, "another conv_out kernel"},
    {"attention_type", UK_STRING, "default", 0, "gated attention (GLIGEN)"},
    {"cross_attention_norm", UK_NULL, NULL, 0, "a normed cross-attention"},
};
static const UnsupportedKey VAE_UNSUPPORTED[] = {
    {"act_fn", UK_STRING, "silu", 0, "another activation"},
    {"use_quant_conv", UK_NULL, NULL, 0, "no quant_conv"}, // true or null only (checked below)
    {"use_post_quant_conv", UK_NULL, NULL, 0, "no post_quant_conv"},
    {"mid_block_add_attention", UK_NULL, NULL, 0, "no mid-block attention"},
    {"shift_factor", UK_NULL, NULL, 0, "shifted latents (SD3 / FLUX VAE)"},
    {"latents_mean", UK_NULL, NULL, 0, "normalised latents (SDXL-style statistics)"},
    {"latents_std", UK_NULL, NULL, 0, "normalised latents (SDXL-style statistics)"},
};

static int key_ok(const JsonDoc *d, const JsonNode *v, const UnsupportedKey *k) {
    if (v->type == JSON_NULL) return 1;
    if (k->ok == UK_FALSE) return v->type == JSON_BOOL && !v->boolean;
    if (k->ok == UK_STRING) return v->type == JSON_STRING && !strcmp(json_str(d, v), k->ok_s);
    if (k->ok == UK_NUMBER) return v->type == JSON_NUMBER && v->num == k->ok_n;
    return 0;
}

// Refuses the first field of tab the config sets to something sdc does not
// implement, naming the file, the field, its value and what it means.
static int check_unsupported(const Cfg *c, const UnsupportedKey *tab, size_t n, const char *model, SdcError *err) {
    for (size_t i = 0; i < n; i++) {
        const JsonNode *v = json_get(&c->doc, c->root, tab[i].key);
        if (!v || key_ok(&c->doc, v, &tab[i])) continue;
        // use_*_conv / mid_block_add_attention: true is the SD layout
        if (v->type == JSON_BOOL && v->boolean && tab[i].ok == UK_NULL && !strncmp(tab[i].what, "no ", 3)) continue;
        char val[80];
        if (v->type == JSON_STRING) snprintf(val, sizeof val, "\"%.60s\"", json_str(&c->doc, v));
        else if (v->type == JSON_NUMBER) snprintf(val, sizeof val, "%g", v->num);
        else if (v->type == JSON_BOOL) snprintf(val, sizeof val, "%s", v->boolean ? "true" : "false");
        else snprintf(val, sizeof val, "%s", json_type_name(v->type));
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"%s\" is %s (%s): sdc runs the SD 1.x/2.x %s only\n---> is "
                       "this an SD 1.x/2.x model? (SDXL, SD3, LCM, IF and other architectures are not supported)",
                       c->path, tab[i].key, val, tab[i].what, model);
    }
    return 0;
}

static int read_unet_config(UnetConfig *u, const char *path, SdcError *err) {
    Cfg c;
    SDC_TRY(cfg_open(&c, path, err));
    memset(u, 0, sizeof *u);
    int rc = 0, n, heads_set[SDC_MAX_LEVELS] = {0};
    n = cfg_int_list(&c, "block_out_channels", 0, 0, u->block_out, err);
    const JsonNode *bo = json_get(&c.doc, c.root, "block_out_channels");
    if (n < 0 || !bo || bo->type != JSON_ARRAY) {
        rc = n < 0 ? err->code : sdc_err(err, SDC_ERR_FORMAT, "%s: \"block_out_channels\" (a list) is missing", path);
        goto done;
    }
    u->n_levels = n;
    if ((rc = cfg_attn_list(&c, "down_block_types", n, u->down_attn, err))) goto done;
    if ((rc = cfg_attn_list(&c, "up_block_types", n, u->up_attn, err))) goto done;
    const JsonNode *nh = json_get(&c.doc, c.root, "num_attention_heads");
    // diffusers: num_attention_heads = num_attention_heads or attention_head_dim
    // (the latter is misnamed: in SD 1.x/2.x configs it is the head count).
    const char *hkey = nh && nh->type != JSON_NULL ? "num_attention_heads" : "attention_head_dim";
    if (cfg_int_list(&c, hkey, n, 8, heads_set, err) < 0 ||
        cfg_int_list(&c, "transformer_layers_per_block", n, 1, u->transformer_layers, err) < 0) {
        rc = err->code;
        goto done;
    }
    memcpy(u->heads, heads_set, sizeof heads_set);
    const JsonNode *cd = json_get(&c.doc, c.root, "cross_attention_dim");
    if (cd && cd->type == JSON_ARRAY) {
        rc = sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"cross_attention_dim\" is a list (one per level): SD "
                     "1.x/2.x UNets have one\n---> is this an SD 1.x/2.x UNet?", path);
        goto done;
    }
    if ((rc = cfg_int(&c, "in_channels", 4, &u->in_channels, err)) ||
        (rc = cfg_int(&c, "out_channels", 4, &u->out_channels, err)) ||
        (rc = cfg_int(&c, "layers_per_block", 2, &u->layers_per_block, err)) ||
        (rc = cfg_int(&c, "cross_attention_dim", 1280, &u->cross_dim, err)) ||
        (rc = cfg_bool(&c, "use_linear_projection", 0, &u->use_linear_projection, err)) ||
        (rc = cfg_int(&c, "norm_num_groups", 32, &u->norm_groups, err)) ||
        (rc = cfg_float(&c, "norm_eps", 1e-5f, 1, &u->norm_eps, err)) ||
        (rc = cfg_bool(&c, "flip_sin_to_cos", 1, &u->flip_sin_to_cos, err)) ||
        (rc = cfg_float(&c, "freq_shift", 0.0f, 0, &u->freq_shift, err)) ||
        (rc = cfg_int(&c, "sample_size", 64, &u->sample_size, err)))
        goto done;
    const char *add = json_str(&c.doc, json_get(&c.doc, c.root, "addition_embed_type"));
    if (add && !strcmp(add, "text_time")) {
        if ((rc = cfg_int(&c, "addition_time_embed_dim", 0, &u->add_time_dim, err)) ||
            (rc = cfg_int(&c, "projection_class_embeddings_input_dim", 0, &u->add_in_dim, err)))
            goto done;
        if (u->add_time_dim <= 0 || u->add_in_dim <= 0) {
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: \"addition_embed_type\" is \"text_time\" but "
                         "\"addition_time_embed_dim\" (%d) or \"projection_class_embeddings_input_dim\" (%d) is not "
                         "a positive number\n---> an SDXL UNet config gives both (SDXL base: 256 and 2816)", path,
                         u->add_time_dim, u->add_in_dim);
            goto done;
        }
    }
    const char *mid = json_str(&c.doc, json_get(&c.doc, c.root, "mid_block_type"));
    u->mid_attn = !mid || !strcmp(mid, "UNetMidBlock2DCrossAttn");
    if (mid && !u->mid_attn && strcmp(mid, "UNetMidBlock2D")) {
        rc = sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"mid_block_type\" is \"%s\": sdc supports "
                     "UNetMidBlock2DCrossAttn (SD 1.x/2.x) and UNetMidBlock2D\n---> is this an SD 1.x/2.x UNet?", path,
                     mid);
        goto done;
    }
    rc = check_unsupported(&c, UNET_UNSUPPORTED, sizeof UNET_UNSUPPORTED / sizeof UNET_UNSUPPORTED[0], "UNet", err);
done:
    json_free(&c.doc);
    return rc;
}

static int read_vae_config(VaeConfig *v, const char *path, SdcError *err) {
    Cfg c;
    SDC_TRY(cfg_open(&c, path, err));
    memset(v, 0, sizeof *v);
    int rc = 0;
    int n = cfg_int_list(&c, "block_out_channels", 0, 0, v->block_out, err);
    const JsonNode *bo = json_get(&c.doc, c.root, "block_out_channels");
    if (n < 0 || !bo || bo->type != JSON_ARRAY) {
        rc = n < 0 ? err->code : sdc_err(err, SDC_ERR_FORMAT, "%s: \"block_out_channels\" (a list) is missing", path);
        goto done;
    }
    v->n_levels = n;
    if ((rc = cfg_int(&c, "in_channels", 3, &v->in_channels, err)) ||
        (rc = cfg_int(&c, "out_channels", 3, &v->out_channels, err)) ||
        (rc = cfg_int(&c, "latent_channels", 4, &v->latent_channels, err)) ||
        (rc = cfg_int(&c, "layers_per_block", 1, &v->layers_per_block, err)) ||
        (rc = cfg_int(&c, "norm_num_groups", 32, &v->norm_groups, err)) ||
        (rc = cfg_float(&c, "scaling_factor", 0.18215f, 2, &v->scaling_factor, err)) ||
        (rc = cfg_int(&c, "sample_size", 512, &v->sample_size, err)))
        goto done;
    v->norm_eps = 1e-6f; // AutoencoderKL's fixed GroupNorm eps (not in its config)
    static const char *const TYPES[2] = {"down_block_types", "up_block_types"};
    static const char *const WANT[2] = {"DownEncoderBlock2D", "UpDecoderBlock2D"};
    for (int k = 0; k < 2 && !rc; k++) {
        const JsonNode *bt = json_get(&c.doc, c.root, TYPES[k]);
        int i = 0;
        for (const JsonNode *e = bt && bt->type == JSON_ARRAY ? json_first(&c.doc, bt) : NULL; e && !rc;
             e = json_next(&c.doc, e), i++) {
            const char *t = json_str(&c.doc, e);
            if (!t || strcmp(t, WANT[k]))
                rc = sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"%s\"[%d] is \"%s\": the SD VAE has %s blocks only\n---> "
                             "is this an SD 1.x/2.x VAE (AutoencoderKL)?", path, TYPES[k], i, t ? t : "not a string",
                             WANT[k]);
        }
    }
    if (!rc) rc = check_unsupported(&c, VAE_UNSUPPORTED, sizeof VAE_UNSUPPORTED / sizeof VAE_UNSUPPORTED[0], "VAE", err);
done:
    json_free(&c.doc);
    return rc;
}

static int read_clip_config(ClipConfig *k, const char *path, SdcError *err) {
    Cfg c;
    SDC_TRY(cfg_open(&c, path, err));
    memset(k, 0, sizeof *k);
    int rc = 0;
    if ((rc = cfg_int(&c, "vocab_size", 49408, &k->vocab_size, err)) ||
        (rc = cfg_int(&c, "hidden_size", 768, &k->hidden, err)) ||
        (rc = cfg_int(&c, "num_hidden_layers", 12, &k->layers, err)) ||
        (rc = cfg_int(&c, "num_attention_heads", 12, &k->heads, err)) ||
        (rc = cfg_int(&c, "intermediate_size", 3072, &k->intermediate, err)) ||
        (rc = cfg_int(&c, "max_position_embeddings", 77, &k->max_positions, err)) ||
        (rc = cfg_float(&c, "layer_norm_eps", 1e-5f, 1, &k->ln_eps, err)))
        goto done;
    int eos = 0;
    if ((rc = cfg_int(&c, "eos_token_id", 0, &eos, err))) goto done;
    k->pool_argmax = eos == 2;
    const JsonNode *arch = json_get(&c.doc, c.root, "architectures");
    const JsonNode *a0 = arch && arch->type == JSON_ARRAY ? json_first(&c.doc, arch) : NULL;
    const char *an = a0 ? json_str(&c.doc, a0) : NULL;
    if (an && !strcmp(an, "CLIPTextModelWithProjection") &&
        (rc = cfg_int(&c, "projection_dim", 0, &k->projection_dim, err)))
        goto done;
    const char *act = json_str(&c.doc, json_get(&c.doc, c.root, "hidden_act"));
    if (!act || !strcmp(act, "quick_gelu")) k->act = ACT_QUICK_GELU;
    else if (!strcmp(act, "gelu")) k->act = ACT_GELU;
    else rc = sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"hidden_act\" is \"%s\": SD's text encoders use \"quick_gelu\" "
                      "(SD 1.x, CLIP ViT-L) or \"gelu\" (SD 2.x, OpenCLIP ViT-H)\n---> is this an SD 1.x/2.x text "
                      "encoder?", path, act);
done:
    json_free(&c.doc);
    return rc;
}

// CLIP's BPE vocabulary ends with <|startoftext|>, <|endoftext|>. The
// token ids in text_encoder/config.json are not reliable (the openai and
// laion configs say bos 0, eos 2, pad 1), so they are taken from the vocab
// size; pad is EOS for SD 1.x and "!" (id 0) for SD 2.x unless the
// tokenizer folder says otherwise.
static void clip_set_tokens(ClipConfig *k, SdFamily fam) {
    k->bos_token = k->vocab_size - 2;
    k->eos_token = k->vocab_size - 1;
    k->pad_token = fam == SD_FAMILY_2 ? 0 : k->eos_token;
}

// The pad token of a tokenizer folder, as the tokenizer reads it
// (text/tokenizer.h: tokenizer.json or vocab.json, and the special tokens of
// its config files as transformers registers them).
static int read_tokenizer_pad(ClipConfig *k, const char *tok_dir, SdcError *err) {
    ClipTokenizer *t;
    SDC_TRY(clip_tok_load_dir(&t, tok_dir, err));
    k->pad_token = clip_tok_pad(t);
    clip_tok_free(t);
    return 0;
}

// dir/scheduler/scheduler_config.json into m->info.sched (its text kept for
// sdc convert); without one, SD's original config. *found: the file gives
// prediction_type (then the UNet's prediction is the file's).
static int read_scheduler(ModelFiles *m, const char *dir, int *found, SdcError *err) {
    char p[1200];
    path_join(p, sizeof p, dir, "scheduler", "scheduler_config.json");
    *found = 0;
    free(m->sched_json);
    m->sched_json = NULL;
    if (!is_file(p)) {
        sched_config_sd(&m->info.sched, PRED_EPSILON);
        return 0;
    }
    SDC_TRY(sched_config_read(&m->info.sched, p, &m->sched_json, err));
    *found = (m->info.sched.have & SCHED_HAS_PREDICTION) != 0;
    if (*found) m->info.unet.prediction = m->info.sched.prediction;
    return 0;
}

// Reads the configs of a diffusers folder (or a config_dir) into m->info.
static int read_diffusers_configs(ModelFiles *m, const char *dir, SdcError *err) {
    ModelInfo *info = &m->info;
    char p[1200];
    const char *missing = NULL;
    path_join(p, sizeof p, dir, "unet", "config.json");
    if (!is_file(p)) missing = "unet/config.json";
    else SDC_TRY(read_unet_config(&info->unet, p, err));
    path_join(p, sizeof p, dir, "vae", "config.json");
    if (!missing && !is_file(p)) missing = "vae/config.json";
    else if (!missing) SDC_TRY(read_vae_config(&info->vae, p, err));
    // the SDXL refiner has text_encoder_2/ alone (model_index.json: "text_encoder": [null, null])
    char p2[1200];
    path_join(p2, sizeof p2, dir, "text_encoder_2", "config.json");
    path_join(p, sizeof p, dir, "text_encoder", "config.json");
    if (!missing && !is_file(p) && !is_file(p2)) missing = "text_encoder/config.json";
    else if (!missing && is_file(p)) SDC_TRY(read_clip_config(&info->clip, p, err));
    else if (!missing) info->refiner = 1;
    if (missing)
        return sdc_err(err, SDC_ERR_IO, "%s: no %s\n---> a diffusers folder has unet/, vae/ and text_encoder/, "
                       "each with a config.json", dir, missing);
    memcpy(p, p2, sizeof p);
    if (is_file(p)) {
        SDC_TRY(read_clip_config(&info->clip2, p, err));
        info->has_clip2 = 1;
        if (info->clip2.projection_dim <= 0)
            return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: not a CLIPTextModelWithProjection with a projection_dim: "
                           "SDXL's second text encoder gives the pooled, projected embedding\n---> is this an SDXL "
                           "folder?", p);
    }
    if (info->unet.add_time_dim || info->has_clip2) {
        info->family = SD_FAMILY_XL;
    } else {
        info->family = (info->unet.use_linear_projection || info->clip.act == ACT_GELU) ? SD_FAMILY_2 : SD_FAMILY_1;
    }
    info->unet.family = info->family;
    if (info->unet.add_time_dim && info->has_clip2)
        info->unet.n_time_ids = (info->unet.add_in_dim - info->clip2.projection_dim) / info->unet.add_time_dim;
    // SDXL: the first encoder pads with EOS, the second with "!" (SD 2.x's)
    clip_set_tokens(&info->clip, info->family == SD_FAMILY_XL ? SD_FAMILY_1 : info->family);
    info->clip.default_skip = 1; // diffusers' SD 2.x config already drops the last layer
    if (info->has_clip2) {
        clip_set_tokens(&info->clip2, SD_FAMILY_2);
        info->clip2.default_skip = 1;
    }
    path_join(p, sizeof p, dir, "tokenizer", NULL);
    if (!info->refiner && is_dir(p)) {
        memcpy(info->tokenizer_dir, p, strlen(p) < sizeof info->tokenizer_dir ? strlen(p) + 1 : 0);
        SDC_TRY(read_tokenizer_pad(&info->clip, p, err));
    }
    path_join(p, sizeof p, dir, "tokenizer_2", NULL);
    if (info->has_clip2 && is_dir(p)) {
        memcpy(info->tokenizer2_dir, p, strlen(p) < sizeof info->tokenizer2_dir ? strlen(p) + 1 : 0);
        SDC_TRY(read_tokenizer_pad(&info->clip2, p, err));
    }
    info->force_zeros_negative = info->family == SD_FAMILY_XL;
    path_join(p, sizeof p, dir, "model_index.json", NULL);
    if (info->family == SD_FAMILY_XL && is_file(p)) {
        Cfg mi;
        SDC_TRY(cfg_open(&mi, p, err));
        int rc = cfg_bool(&mi, "force_zeros_for_empty_prompt", 1, &info->force_zeros_negative, err);
        json_free(&mi.doc);
        SDC_TRY(rc);
    }
    int found;
    SDC_TRY(read_scheduler(m, dir, &found, err));
    if (!found) info->unet.prediction = PRED_EPSILON;
    return 0;
}

// ----------------------------------------------------------------------------
// config inference from the tensors of a single file

// ndim of the named tensor (0 if absent); its shape into shape.
static int shp(const StFile *f, int64_t *shape, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int shp(const StFile *f, int64_t *shape, const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const StEntry *e = st_find(f, name);
    if (!e || e->ndim > TENSOR_MAX_DIMS) return 0;
    for (int i = 0; i < e->ndim; i++) shape[i] = e->shape[i];
    return e->ndim ? e->ndim : -1; // -1: a scalar that exists
}

// Largest N + 1 among names "<prefix>N." (0 if none).
static int count_index(const StFile *f, const char *prefix) {
    size_t pl = strlen(prefix);
    int max = -1;
    for (int i = 0; i < f->n; i++) {
        const char *s = f->entries[i].name;
        if (strncmp(s, prefix, pl) || s[pl] < '0' || s[pl] > '9') continue;
        char *end;
        long v = strtol(s + pl, &end, 10);
        if (*end == '.' && v < 100000 && v > max) max = (int)v;
    }
    return max + 1;
}

#define UP "model.diffusion_model."
#define VP "first_stage_model."

static int infer_unet(UnetConfig *u, const StFile *f, int openclip, SdcError *err) {
    int64_t s[4];
    memset(u, 0, sizeof *u);
    if (shp(f, s, UP "input_blocks.0.0.weight") != 4)
        return sdc_err(err, SDC_ERR_SHAPE, "%s: no UNet: tensor %sinput_blocks.0.0.weight (conv_in, 4 dims) not "
                       "found\n---> is this an SD 1.x/2.x checkpoint in the original layout?", f->path, UP);
    u->in_channels = (int)s[1];
    if (shp(f, s, UP "out.2.weight") != 4)
        return sdc_err(err, SDC_ERR_SHAPE, "%s: tensor %sout.2.weight (conv_out) missing or not 4-D", f->path, UP);
    u->out_channels = (int)s[0];
    int n_down = 0;
    for (int i = 0; i < f->n; i++) {
        const char *nm = f->entries[i].name;
        size_t l = strlen(nm);
        if (!strncmp(nm, UP "input_blocks.", strlen(UP "input_blocks.")) && l > 12 &&
            !strcmp(nm + l - 12, ".0.op.weight"))
            n_down++;
    }
    int n = n_down + 1, n_in = count_index(f, UP "input_blocks."), n_out = count_index(f, UP "output_blocks.");
    int lpb = n_out / n - 1;
    if (n > SDC_MAX_LEVELS || lpb < 1 || n_out != n * (lpb + 1) || n_in != n * (lpb + 1))
        return sdc_err(err, SDC_ERR_SHAPE, "%s: UNet with %d input_blocks, %d output_blocks and %d downsamplers "
                       "does not fit the SD layout (levels x (layers_per_block + 1) each, at most %d levels)",
                       f->path, n_in, n_out, n_down, SDC_MAX_LEVELS);
    u->n_levels = n;
    u->layers_per_block = lpb;
    int linear = -1;
    for (int i = 0; i < n; i++) {
        int k = 1 + i * (lpb + 1);
        if (shp(f, s, UP "input_blocks.%d.0.out_layers.3.weight", k) != 4)
            return sdc_err(err, SDC_ERR_SHAPE, "%s: tensor %sinput_blocks.%d.0.out_layers.3.weight missing or not "
                           "4-D", f->path, UP, k);
        u->block_out[i] = (int)s[0];
        int nd = shp(f, s, UP "input_blocks.%d.1.proj_in.weight", k);
        u->down_attn[i] = nd > 0;
        if (nd > 0) linear = nd == 2;
        u->up_attn[i] = shp(f, s, UP "output_blocks.%d.1.proj_in.weight", i * (lpb + 1)) > 0;
        int t = 0;
        while (t < 64 && shp(f, s, UP "input_blocks.%d.1.transformer_blocks.%d.norm1.weight", k, t) > 0) t++;
        u->transformer_layers[i] = t ? t : 1;
        if (nd > 0 && u->cross_dim == 0 &&
            shp(f, s, UP "input_blocks.%d.1.transformer_blocks.0.attn2.to_k.weight", k) == 2)
            u->cross_dim = (int)s[1];
    }
    u->mid_attn = shp(f, s, UP "middle_block.1.proj_in.weight") > 0;
    if (u->mid_attn && !u->down_attn[n - 1]) { // the mid block's depth is the last level's (diffusers), which
        int t = 0;                             // then has no attention of its own: read it off the mid block
        while (t < 64 && shp(f, s, UP "middle_block.1.transformer_blocks.%d.norm1.weight", t) > 0) t++;
        u->transformer_layers[n - 1] = t ? t : 1;
    }
    if (linear < 0) linear = shp(f, s, UP "middle_block.1.proj_in.weight") == 2;
    if (u->mid_attn && u->cross_dim == 0 && shp(f, s, UP "middle_block.1.transformer_blocks.0.attn2.to_k.weight") == 2)
        u->cross_dim = (int)s[1];
    u->use_linear_projection = linear;
    u->family = (openclip || linear) ? SD_FAMILY_2 : SD_FAMILY_1;
    for (int i = 0; i < n; i++) {
        int h = u->family == SD_FAMILY_2 ? u->block_out[i] / 64 : 8;
        u->heads[i] = h > 0 ? h : 1;
    }
    u->norm_groups = 32;
    u->norm_eps = 1e-5f;
    u->flip_sin_to_cos = 1;
    u->freq_shift = 0;
    // The released SD 2.x (320 channels, context 1024) is the 768px v-model
    // (diffusers from_single_file assumes the same); SD 2.x-base needs the
    // user's flag or a config_dir. Everything else: 512px-style, epsilon.
    int sd2_full = u->family == SD_FAMILY_2 && u->block_out[0] == 320 && u->cross_dim == 1024;
    u->sample_size = sd2_full ? 96 : 64;
    u->prediction = sd2_full ? PRED_V : PRED_EPSILON;
    return 0;
}

static int infer_vae(VaeConfig *v, const StFile *f, SdcError *err) {
    int64_t s[4];
    memset(v, 0, sizeof *v);
    if (shp(f, s, VP "encoder.conv_in.weight") != 4)
        return sdc_err(err, SDC_ERR_SHAPE, "%s: no VAE: tensor %sencoder.conv_in.weight not found\n---> is this "
                       "an SD 1.x/2.x checkpoint with its VAE? (files with only a UNet need a diffusers folder "
                       "for the rest)", f->path, VP);
    v->in_channels = (int)s[1];
    v->n_levels = count_index(f, VP "encoder.down.");
    char pre[128];
    snprintf(pre, sizeof pre, VP "encoder.down.0.block.");
    v->layers_per_block = count_index(f, pre);
    if (v->n_levels < 1 || v->n_levels > SDC_MAX_LEVELS || v->layers_per_block < 1)
        return sdc_err(err, SDC_ERR_SHAPE, "%s: VAE encoder with %d levels x %d blocks: expected 1..%d levels",
                       f->path, v->n_levels, v->layers_per_block, SDC_MAX_LEVELS);
    for (int i = 0; i < v->n_levels; i++) {
        if (shp(f, s, VP "encoder.down.%d.block.0.conv2.weight", i) != 4)
            return sdc_err(err, SDC_ERR_SHAPE, "%s: tensor %sencoder.down.%d.block.0.conv2.weight missing", f->path,
                           VP, i);
        v->block_out[i] = (int)s[0];
    }
    if (shp(f, s, VP "post_quant_conv.weight") != 4 && shp(f, s, VP "decoder.conv_in.weight") != 4)
        return sdc_err(err, SDC_ERR_SHAPE, "%s: VAE has neither post_quant_conv.weight nor decoder.conv_in.weight",
                       f->path);
    v->latent_channels = (int)s[1];
    if (shp(f, s, VP "decoder.conv_out.weight") != 4)
        return sdc_err(err, SDC_ERR_SHAPE, "%s: tensor %sdecoder.conv_out.weight missing", f->path, VP);
    v->out_channels = (int)s[0];
    v->norm_groups = 32;
    v->norm_eps = 1e-6f;
    v->scaling_factor = 0.18215f;
    return 0;
}

static int infer_clip(ClipConfig *k, const StFile *f, int openclip, SdcError *err) {
    int64_t s[4];
    memset(k, 0, sizeof *k);
    char pre[96], name[160];
    if (openclip) {
        snprintf(pre, sizeof pre, "cond_stage_model.model.");
    } else {
        snprintf(pre, sizeof pre, "cond_stage_model.transformer.text_model.");
        snprintf(name, sizeof name, "%sembeddings.token_embedding.weight", pre);
        if (!st_find(f, name)) snprintf(pre, sizeof pre, "cond_stage_model.transformer.");
    }
    const char *tok = openclip ? "token_embedding.weight" : "embeddings.token_embedding.weight";
    const char *pos = openclip ? "positional_embedding" : "embeddings.position_embedding.weight";
    if (shp(f, s, "%s%s", pre, tok) != 2)
        return sdc_err(err, SDC_ERR_SHAPE, "%s: no text encoder: tensor %s%s not found\n---> is this an SD 1.x/2.x "
                       "checkpoint? (SD 1.x: cond_stage_model.transformer.*, SD 2.x: cond_stage_model.model.*)",
                       f->path, pre, tok);
    k->vocab_size = (int)s[0];
    k->hidden = (int)s[1];
    if (shp(f, s, "%s%s", pre, pos) != 2)
        return sdc_err(err, SDC_ERR_SHAPE, "%s: tensor %s%s missing or not 2-D", f->path, pre, pos);
    k->max_positions = (int)s[0];
    snprintf(name, sizeof name, "%s%s", pre, openclip ? "transformer.resblocks." : "encoder.layers.");
    k->layers = count_index(f, name);
    if (k->layers < 1 || shp(f, s, "%s0.%s", name, openclip ? "mlp.c_fc.weight" : "mlp.fc1.weight") != 2)
        return sdc_err(err, SDC_ERR_SHAPE, "%s: text encoder has no layers %s0.*", f->path, name);
    k->intermediate = (int)s[0];
    k->heads = k->hidden / 64 > 0 ? k->hidden / 64 : 1;
    k->act = openclip ? ACT_GELU : ACT_QUICK_GELU;
    k->ln_eps = 1e-5f;
    clip_set_tokens(k, openclip ? SD_FAMILY_2 : SD_FAMILY_1);
    // The file has all OpenCLIP layers; SD 2.x conditions on the penultimate.
    k->default_skip = openclip ? 2 : 1;
    return 0;
}

// SDXL base in the original layout: the UNet (conditioned on 2048-wide
// contexts, head dim 64, the label_emb MLP of the pooled embedding and six
// 256-wide time ids), the VAE (scaling factor 0.13025), CLIP ViT-L
// (conditioner.embedders.0.transformer.*) and OpenCLIP ViT-bigG with its
// projection (conditioner.embedders.1.model.*), as diffusers' from_single_file
// configures SDXL base. The refiner (refiner = 1): OpenCLIP ViT-bigG alone
// (conditioner.embedders.0.model.*), a UNet on its 1280-wide hidden states
// with five time ids, and stable-diffusion-xl-refiner-1.0's
// force_zeros_for_empty_prompt false (diffusers takes that config from the
// Hub for a single file; the same constants otherwise).
static int infer_xl(ModelInfo *info, const StFile *f, int refiner, SdcError *err) {
    int64_t s[4];
    SDC_TRY(infer_unet(&info->unet, f, 1, err));
    SDC_TRY(infer_vae(&info->vae, f, err));
    UnetConfig *u = &info->unet;
    for (int i = 0; i < u->n_levels; i++) u->heads[i] = u->block_out[i] / 64 > 0 ? u->block_out[i] / 64 : 1;
    if (shp(f, s, UP "label_emb.0.0.weight") != 2)
        return sdc_err(err, SDC_ERR_SHAPE, "%s: an SDXL checkpoint (conditioner.embedders.*) without %slabel_emb.0.0."
                       "weight (the added embedding)\n---> is this an SDXL base or refiner model?", f->path, UP);
    u->add_in_dim = (int)s[1];
    u->add_time_dim = 256;
    u->sample_size = 128;
    u->prediction = PRED_EPSILON;
    u->family = info->family = SD_FAMILY_XL;
    info->vae.scaling_factor = 0.13025f;
    info->vae.sample_size = 1024;
    ClipConfig *k = &info->clip, *k2 = &info->clip2;
    memset(k, 0, sizeof *k);
    memset(k2, 0, sizeof *k2);
    const char *p1 = "conditioner.embedders.0.transformer.text_model.",
               *p2 = refiner ? "conditioner.embedders.0.model." : "conditioner.embedders.1.model.";
    for (int e = refiner; e < 2; e++) {
        ClipConfig *c = e ? k2 : k;
        const char *pre = e ? p2 : p1;
        char name[160];
        if (shp(f, s, "%s%s", pre, e ? "token_embedding.weight" : "embeddings.token_embedding.weight") != 2)
            return sdc_err(err, SDC_ERR_SHAPE, "%s: an SDXL checkpoint without its %s text encoder (%s, %s*): no "
                           "%s%s\n---> an SDXL base file holds both (conditioner.embedders.0: CLIP ViT-L, "
                           "conditioner.embedders.1: OpenCLIP ViT-bigG); use the whole file, or the model's "
                           "diffusers folder", f->path, e ? "second" : "first", e ? "OpenCLIP ViT-bigG" : "CLIP ViT-L",
                           pre, pre, e ? "token_embedding.weight" : "embeddings.token_embedding.weight");
        c->vocab_size = (int)s[0];
        c->hidden = (int)s[1];
        if (shp(f, s, "%s%s", pre, e ? "positional_embedding" : "embeddings.position_embedding.weight") != 2)
            return sdc_err(err, SDC_ERR_SHAPE, "%s: SDXL text encoder %d: no position embedding", f->path, e + 1);
        c->max_positions = (int)s[0];
        snprintf(name, sizeof name, "%s%s", pre, e ? "transformer.resblocks." : "encoder.layers.");
        c->layers = count_index(f, name);
        if (c->layers < 1 || shp(f, s, "%s0.%s", name, e ? "mlp.c_fc.weight" : "mlp.fc1.weight") != 2)
            return sdc_err(err, SDC_ERR_SHAPE, "%s: SDXL text encoder %d has no layers %s0.*", f->path, e + 1, name);
        c->intermediate = (int)s[0];
        c->heads = c->hidden / 64 > 0 ? c->hidden / 64 : 1;
        c->act = e ? ACT_GELU : ACT_QUICK_GELU;
        c->ln_eps = 1e-5f;
        c->default_skip = 1;
        c->pool_argmax = 1; // SDXL's text_encoder_2 config: eos_token_id 2
        clip_set_tokens(c, e ? SD_FAMILY_2 : SD_FAMILY_1);
    }
    if (shp(f, s, "%stext_projection", p2) != 2)
        return sdc_err(err, SDC_ERR_SHAPE, "%s: SDXL text encoder 2 has no %stext_projection", f->path, p2);
    k2->projection_dim = (int)s[1];
    info->has_clip2 = 1;
    info->refiner = refiner;
    info->force_zeros_negative = !refiner;
    u->cross_dim = u->cross_dim ? u->cross_dim : k->hidden + k2->hidden;
    if (u->add_in_dim > k2->projection_dim && (u->add_in_dim - k2->projection_dim) % u->add_time_dim == 0)
        u->n_time_ids = (u->add_in_dim - k2->projection_dim) / u->add_time_dim;
    return 0;
}

// ----------------------------------------------------------------------------
// the lookup tables

static int cmp_wentry(const void *a, const void *b) {
    return strcmp(((const WEntry *)a)->name, ((const WEntry *)b)->name);
}

static int add_entry(ModelFiles *m, Component c, const char *name, const StFile *f, const StEntry *e,
                     NameMapKind kind, int slice, int cap[COMP_COUNT], SdcError *err) {
    if (m->n_ents[c] == cap[c]) {
        int nc = cap[c] ? cap[c] * 2 : 256;
        WEntry *ne = realloc(m->ents[c], (size_t)nc * sizeof *ne);
        if (!ne) return sdc_err(err, SDC_ERR_OOM, "out of memory");
        m->ents[c] = ne;
        cap[c] = nc;
    }
    WEntry *w = &m->ents[c][m->n_ents[c]];
    w->name = strdup(name);
    if (!w->name) return sdc_err(err, SDC_ERR_OOM, "out of memory");
    w->file = f;
    w->e = e;
    w->kind = kind;
    w->slice = slice;
    m->n_ents[c]++;
    return 0;
}

static int sort_entries(ModelFiles *m, SdcError *err) {
    for (int c = 0; c < COMP_COUNT; c++) {
        if (m->n_ents[c]) qsort(m->ents[c], (size_t)m->n_ents[c], sizeof(WEntry), cmp_wentry);
        for (int i = 1; i < m->n_ents[c]; i++)
            if (!strcmp(m->ents[c][i - 1].name, m->ents[c][i].name))
                return sdc_err(err, SDC_ERR_FORMAT, "%s: %s parameter %s is given twice (by \"%s\" and \"%s\")\n"
                               "---> the file mixes two naming layouts; re-save it with one", m->path,
                               COMP_NAMES[c], m->ents[c][i].name, m->ents[c][i - 1].e->name, m->ents[c][i].e->name);
    }
    return 0;
}

// Maps one more safetensors file; *out stays valid until model_files_close.
static int add_file(ModelFiles *m, const char *path, StFile **out, SdcError *err) {
    if (m->n_files == m->cap_files) {
        int cap = m->cap_files ? 2 * m->cap_files : 8;
        StFile **nf = realloc(m->files, (size_t)cap * sizeof *nf);
        if (!nf) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
        m->files = nf, m->cap_files = cap;
    }
    StFile *f = calloc(1, sizeof *f);
    if (!f) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
    f->fd = -1;
    int rc = st_open(f, path, err);
    if (rc) {
        free(f);
        return rc;
    }
    m->files[m->n_files++] = f;
    *out = f;
    return 0;
}

static int open_single(ModelFiles *m, const char *path, const char *config_dir, SdcError *err) {
    StFile *f;
    SDC_TRY(add_file(m, path, &f, err));
    ModelInfo *info = &m->info;
    info->layout = LAYOUT_SINGLE_FILE;
    int openclip = 0, xl = 0, refiner = 0;
    for (int i = 0; i < f->n && !openclip && !refiner; i++) {
        openclip = !strncmp(f->entries[i].name, "cond_stage_model.model.", 23);
        xl |= !strncmp(f->entries[i].name, "conditioner.embedders.", 22);
        refiner = !strncmp(f->entries[i].name, "conditioner.embedders.0.model.", 30); // OpenCLIP alone
    }
    if (config_dir) {
        SDC_TRY(read_diffusers_configs(m, config_dir, err));
        if (xl != (info->family == SD_FAMILY_XL))
            return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s is %san SDXL checkpoint but config_dir %s describes %san "
                           "SDXL model\n---> give the config folder of the file's own model", path, xl ? "" : "not ",
                           config_dir, xl ? "not " : "");
        if (refiner != info->refiner)
            return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s is %s SDXL %s but config_dir %s describes the %s\n---> give "
                           "the config folder of the file's own model", path, refiner ? "the" : "an",
                           refiner ? "refiner" : "base model", config_dir, info->refiner ? "refiner" : "base model");
    } else if (xl) {
        SDC_TRY(infer_xl(info, f, refiner, err));
    } else {
        SDC_TRY(infer_unet(&info->unet, f, openclip, err));
        SDC_TRY(infer_vae(&info->vae, f, err));
        SDC_TRY(infer_clip(&info->clip, f, openclip, err));
        info->family = info->unet.family;
        info->vae.sample_size = info->unet.sample_size * 8;
    }
    SDC_TRY(namemap_init(&m->nm, &info->unet, &info->vae, refiner ? NM_TEXT_XL_REFINER : xl ? NM_TEXT_XL : openclip,
                         err));
    int cap[COMP_COUNT] = {0};
    for (int i = 0; i < f->n; i++) {
        NameMapping maps[3];
        int k = namemap_from_original(&m->nm, f->entries[i].name, maps);
        if (k < 0)
            return sdc_err(err, SDC_ERR_FORMAT, "%s: tensor name \"%.200s...\" is too long (max %d)", path,
                           f->entries[i].name, NAMEMAP_NAME_MAX);
        for (int j = 0; j < k; j++)
            SDC_TRY(add_entry(m, maps[j].comp, maps[j].name, f, &f->entries[i], maps[j].kind, maps[j].slice, cap, err));
    }
    return sort_entries(m, err);
}

// The names the libraries that save a component use, in the order sdc
// looks for them: a whole file, transformers' / diffusers' shard index
// ({"weight_map": {tensor: shard file}}), and their fp16 variants.
static const char *const WEIGHT_FILES[COMP_COUNT][4] = {
    {"model.safetensors", "model.safetensors.index.json", "model.fp16.safetensors", "model.safetensors.index.fp16.json"},
    {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
     "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors.index.fp16.json"},
    {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
     "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors.index.fp16.json"},
    {"model.safetensors", "model.safetensors.index.json", "model.fp16.safetensors", "model.safetensors.index.fp16.json"},
};

// The diffusers name of a tensor as a component's file names it. Text
// encoders saved by transformers 5 have no "text_model." prefix (*prefix:
// the component has none anywhere); diffusers still reads VAEs with the
// attention names of diffusers < 0.14 (query, key, value, proj_attn).
static void component_name(Component c, const char *name, int no_prefix, char *out, size_t cap) {
    if ((c == COMP_TEXT_ENCODER || c == COMP_TEXT_ENCODER_2) && no_prefix && strncmp(name, "text_projection.", 16)) {
        snprintf(out, cap, "text_model.%s", name);
        return;
    }
    static const char *const OLD[4][2] = {{"query.", "to_q."}, {"key.", "to_k."}, {"value.", "to_v."},
                                          {"proj_attn.", "to_out.0."}};
    const char *at = c == COMP_VAE ? strstr(name, "mid_block.attentions.0.") : NULL;
    if (at && (!strncmp(name, "encoder.", 8) || !strncmp(name, "decoder.", 8))) {
        const char *tail = at + strlen("mid_block.attentions.0.");
        for (int k = 0; k < 4; k++)
            if (!strncmp(tail, OLD[k][0], strlen(OLD[k][0]))) {
                snprintf(out, cap, "%.*s%s%s", (int)(tail - name), name, OLD[k][1], tail + strlen(OLD[k][0]));
                return;
            }
    }
    snprintf(out, cap, "%s", name);
}

// Registers every tensor of one component from the files in cdir (a
// diffusers component folder: unet/, vae/, text_encoder/).
static int open_component(ModelFiles *m, Component c, const char *cdir, int cap[COMP_COUNT], SdcError *err) {
    char p[1200] = "";
    int k = 0;
    for (; k < 4; k++) {
        path_join(p, sizeof p, cdir, WEIGHT_FILES[c][k], NULL);
        if (is_file(p)) break;
    }
    if (k == 4) {
        char bin[1200];
        path_join(p, sizeof p, cdir, WEIGHT_FILES[c][0], NULL);
        path_join(bin, sizeof bin, cdir, c == COMP_TEXT_ENCODER || c == COMP_TEXT_ENCODER_2 ? "pytorch_model.bin" : "diffusion_pytorch_model.bin",
                  NULL);
        return sdc_err(err, SDC_ERR_IO, "%s: missing %s (or its sharded or .fp16 variants)%s", cdir, p,
                       is_file(bin) ? "\n---> only a .bin (pickle) is there: re-save the model with "
                                      "safe_serialization=True"
                                    : "\n---> is this a complete diffusers folder?");
    }
    // the files: the one, or the shards the index names (each once, in order)
    char **shards = NULL;
    int n_shards = 0, rc = 0;
    JsonDoc idx = {0};
    if (k == 1 || k == 3) {
        if ((rc = json_parse_file(&idx, p, JSON_MAX_BYTES, err))) return rc;
        const JsonNode *wm = json_get(&idx, json_root(&idx), "weight_map");
        if (!wm || wm->type != JSON_OBJECT || !wm->n) {
            json_free(&idx);
            return sdc_err(err, SDC_ERR_FORMAT, "%s: no \"weight_map\" object\n---> is this a safetensors shard "
                           "index?", p);
        }
        shards = calloc((size_t)wm->n, sizeof *shards);
        if (!shards) rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory", p);
        for (const JsonNode *e = json_first(&idx, wm); !rc && e; e = json_next(&idx, e)) {
            const char *f = json_str(&idx, e);
            if (!f || !*f || strchr(f, '/') || strstr(f, ".."))
                rc = sdc_err(err, SDC_ERR_FORMAT, "%s: \"%s\" maps to %s\n---> a shard must be a file name in %s", p,
                             json_key(&idx, e), f ? f : "a non-string", cdir);
            int seen = 0;
            for (int i = 0; !rc && i < n_shards && !seen; i++) seen = !strcmp(shards[i], f);
            if (!rc && !seen) shards[n_shards++] = (char *)f;
        }
    }
    const int n_src = shards ? n_shards : 1;
    const int first = m->n_files;
    for (int i = 0; !rc && i < n_src; i++) {
        char sp[1200];
        if (shards) path_join(sp, sizeof sp, cdir, shards[i], NULL);
        StFile *f;
        rc = add_file(m, shards ? sp : p, &f, err);
    }
    free(shards);
    json_free(&idx);
    if (rc) return rc;
    int has_prefix = 0;
    for (int i = first; i < m->n_files; i++)
        for (int j = 0; j < m->files[i]->n && !has_prefix; j++)
            has_prefix = !strncmp(m->files[i]->entries[j].name, "text_model.", 11);
    for (int i = first; i < m->n_files; i++) {
        const StFile *f = m->files[i];
        for (int j = 0; j < f->n; j++) {
            char name[NAMEMAP_NAME_MAX + 16];
            component_name(c, f->entries[j].name, !has_prefix, name, sizeof name);
            SDC_TRY(add_entry(m, c, name, f, &f->entries[j], NM_PLAIN, 0, cap, err));
        }
    }
    return 0;
}

static int open_diffusers(ModelFiles *m, const char *dir, SdcError *err) {
    ModelInfo *info = &m->info;
    info->layout = LAYOUT_DIFFUSERS;
    SDC_TRY(read_diffusers_configs(m, dir, err));
    int cap[COMP_COUNT] = {0};
    for (int c = 0; c < COMP_COUNT; c++) {
        char cdir[1200];
        if ((c == COMP_TEXT_ENCODER_2 && !info->has_clip2) || (c == COMP_TEXT_ENCODER && info->refiner)) continue;
        path_join(cdir, sizeof cdir, dir, COMP_NAMES[c], NULL);
        SDC_TRY(open_component(m, (Component)c, cdir, cap, err));
    }
    return sort_entries(m, err);
}

// What sdc's models and pipeline run, checked once the configs are known:
// an SD VAE (4 levels: 8x down-sampling; 4 latent channels), a UNet on those
// latents (4 input channels, or 9 for inpainting) conditioned on this text
// encoder. cdir: the folder whose */config.json describe the model, or NULL
// (a single file's architecture inferred from its tensors).
static int check_model(const ModelInfo *info, const char *path, const char *cdir, SdcError *err) {
    char vae[1200], unet[1200], te[1200];
    if (cdir) {
        path_join(vae, sizeof vae, cdir, "vae", "config.json");
        path_join(unet, sizeof unet, cdir, "unet", "config.json");
        path_join(te, sizeof te, cdir, "text_encoder", "config.json");
    } else {
        snprintf(vae, sizeof vae, "%s (" VP "*)", path);
        snprintf(unet, sizeof unet, "%s (the UNet, " UP "*)", path);
        snprintf(te, sizeof te, "%s (the text encoder)", path);
    }
    const VaeConfig *v = &info->vae;
    const UnetConfig *u = &info->unet;
    // the latents are 2^(levels-1) times smaller than the image (SD's 4 levels: 8x, a small model's 3:
    // 4x); image sizes are multiples of 8, so at most 4 levels divide every one
    if (v->n_levels < 3 || v->n_levels > 4) {
        char list[96] = "";
        for (int i = 0; i < v->n_levels && i < SDC_MAX_LEVELS; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", i ? ", " : "", v->block_out[i]);
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: %s has %d levels ([%s]): sdc's pipeline works on latents 8x "
                       "(SD 1.x/2.x's 4-level VAE) or 4x (a 3-level VAE) smaller than the image\n---> use an SD "
                       "1.x/2.x VAE (--vae FILE, or the model's own)", vae,
                       cdir ? "\"block_out_channels\"" : "the VAE (encoder.down.N)", v->n_levels, list);
    }
    if (v->latent_channels != 4)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"latent_channels\" is %d: sdc's pipeline works on the 4-channel "
                       "latents of SD 1.x/2.x\n---> use an SD 1.x/2.x VAE (SD3 / FLUX VAEs have 16)", vae,
                       v->latent_channels);
    if (u->out_channels != v->latent_channels)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"out_channels\" is %d but the VAE's latent_channels is %d\n"
                       "---> the UNet and the VAE are not one model's", unet, u->out_channels, v->latent_channels);
    if (u->in_channels != v->latent_channels && u->in_channels != 2 * v->latent_channels + 1)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"in_channels\" is %d: sdc runs UNets on %d-channel latents, or "
                       "%d channels for inpainting (latent, mask, masked-image latent)\n---> is this an SD 1.x/2.x "
                       "UNet?", unet, u->in_channels, v->latent_channels, 2 * v->latent_channels + 1);
    if (info->family == SD_FAMILY_XL) {
        char te2[1200];
        if (cdir) path_join(te2, sizeof te2, cdir, "text_encoder_2", "config.json");
        else snprintf(te2, sizeof te2, "%s (the second text encoder)", path);
        if (!info->has_clip2)
            return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: an SDXL UNet (\"addition_embed_type\": \"text_time\") "
                           "without a second text encoder (text_encoder_2/)\n---> SDXL base has both encoders, the "
                           "refiner text_encoder_2 alone", unet);
        if (!u->add_time_dim)
            return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: a second text encoder, but the UNet has no "
                           "\"addition_embed_type\": \"text_time\"\n---> is this an SDXL model?", unet);
        if (info->refiner && u->cross_dim != info->clip2.hidden)
            return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"cross_attention_dim\" is %d but the refiner's one text "
                           "encoder (%s) gives %d\n---> the text encoder is not this UNet's (SDXL refiner: 1280)",
                           unet, u->cross_dim, te2, info->clip2.hidden);
        if (info->refiner && u->add_in_dim != info->clip2.projection_dim + 5 * u->add_time_dim)
            return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"projection_class_embeddings_input_dim\" is %d: the SDXL "
                           "refiner's is the pooled embedding (%d, %s's projection_dim) + 5 time ids x %d "
                           "(\"addition_time_embed_dim\"): original size, crop, aesthetic score\n---> a folder "
                           "without text_encoder/ is read as the SDXL refiner; is this one?", unet, u->add_in_dim,
                           info->clip2.projection_dim, te2, u->add_time_dim);
        if (!info->refiner && u->cross_dim != info->clip.hidden + info->clip2.hidden)
            return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"cross_attention_dim\" is %d but the text encoders give "
                           "%d + %d (%s, %s)\n---> the text encoders are not this UNet's (SDXL: 768 + 1280 = 2048)",
                           unet, u->cross_dim, info->clip.hidden, info->clip2.hidden, te, te2);
        int ids = u->add_in_dim - info->clip2.projection_dim;
        if (ids <= 0 || ids % u->add_time_dim || (ids / u->add_time_dim != 6 && ids / u->add_time_dim != 5))
            return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"projection_class_embeddings_input_dim\" is %d: expected "
                           "the pooled embedding (%d, %s's projection_dim) + 6 (base) or 5 (refiner) time ids x %d "
                           "(\"addition_time_embed_dim\")", unet, u->add_in_dim, info->clip2.projection_dim, te2,
                           u->add_time_dim);
        return 0;
    }
    if (u->cross_dim != info->clip.hidden)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: \"cross_attention_dim\" is %d but %s has hidden_size %d\n---> "
                       "the text encoder is not this UNet's (SD 1.x: 768, SD 2.x: 1024)", unet, u->cross_dim, te,
                       info->clip.hidden);
    return 0;
}

int model_files_open(ModelFiles **out, const char *path, const char *config_dir, int prediction, SdcError *err) {
    *out = NULL;
    if (prediction != -1 && prediction != PRED_EPSILON && prediction != PRED_V)
        return sdc_err(err, SDC_ERR_ARG, "prediction type %d: expected -1 (from the model), epsilon or v", prediction);
    if (strlen(path) > SDC_PATH_MAX || (config_dir && strlen(config_dir) > SDC_PATH_MAX))
        return sdc_err(err, SDC_ERR_ARG, "model path longer than %d characters", SDC_PATH_MAX);
    ModelFiles *m = calloc(1, sizeof *m);
    if (!m) return sdc_err(err, SDC_ERR_OOM, "out of memory");
    snprintf(m->path, sizeof m->path, "%s", path);
    int rc;
    if (is_dir(path)) {
        rc = open_diffusers(m, path, err);
    } else if (is_file(path)) {
        rc = open_single(m, path, config_dir, err);
        if (!rc && config_dir && !(m->info.sched.have & SCHED_HAS_PREDICTION)) {
            int sd2_768 = m->info.family == SD_FAMILY_2 && m->info.unet.sample_size == 96;
            m->info.unet.prediction = sd2_768 ? PRED_V : PRED_EPSILON;
        }
        // no config folder: the original repository's scheduler config, as diffusers' from_single_file
        // takes it (SDXL base and refiner: EulerDiscreteScheduler, "leading"; SD 1.x / 2.x: PNDM)
        const int xl = m->info.family == SD_FAMILY_XL || m->info.refiner;
        if (!rc && !config_dir && xl) sched_config_sdxl(&m->info.sched, m->info.unet.prediction);
        else if (!rc && !config_dir) sched_config_sd(&m->info.sched, m->info.unet.prediction);
    } else {
        rc = sdc_err(err, SDC_ERR_IO, "%s: no such file or folder\n---> pass a .safetensors file in the original "
                     "layout or a diffusers folder (with unet/, vae/, text_encoder/)", path);
    }
    if (!rc) rc = check_model(&m->info, path, is_dir(path) ? path : config_dir, err);
    if (rc) {
        model_files_close(m);
        return rc;
    }
    if (prediction != -1) m->info.unet.prediction = (PredictionType)prediction;
    m->info.sched.prediction = m->info.unet.prediction;
    m->info.sched.have |= SCHED_HAS_PREDICTION;
    *out = m;
    return 0;
}

int model_files_open_configs(ModelFiles **out, const char *dir, SdcError *err) {
    *out = NULL;
    if (strlen(dir) > SDC_PATH_MAX) return sdc_err(err, SDC_ERR_ARG, "path longer than %d characters", SDC_PATH_MAX);
    if (!is_dir(dir))
        return sdc_err(err, SDC_ERR_IO, "%s: not a folder ---> pass a diffusers folder (unet/, vae/, text_encoder/ "
                       "with their config.json)", dir);
    ModelFiles *m = calloc(1, sizeof *m);
    if (!m) return sdc_err(err, SDC_ERR_OOM, "out of memory");
    snprintf(m->path, sizeof m->path, "%s", dir);
    m->info.layout = LAYOUT_DIFFUSERS;
    int rc = read_diffusers_configs(m, dir, err);
    if (!rc) rc = check_model(&m->info, dir, dir, err);
    if (rc) {
        model_files_close(m);
        return rc;
    }
    m->info.sched.prediction = m->info.unet.prediction;
    m->info.sched.have |= SCHED_HAS_PREDICTION;
    *out = m;
    return 0;
}

void model_files_close(ModelFiles *m) {
    if (!m) return;
    for (int c = 0; c < COMP_COUNT; c++) {
        for (int i = 0; i < m->n_ents[c]; i++) free(m->ents[c][i].name);
        free(m->ents[c]);
    }
    for (int i = 0; i < m->n_files; i++) st_close(m->files[i]), free(m->files[i]);
    free(m->files);
    free(m->sched_json);
    free(m);
}

const ModelInfo *model_files_info(const ModelFiles *m) { return &m->info; }
const char *model_files_path(const ModelFiles *m) { return m->path; }
const char *model_files_scheduler_json(const ModelFiles *m) { return m->sched_json; }

// ---------------------------------------------------------------------------
// a separate VAE

int model_files_set_vae(ModelFiles *m, const char *path, SdcError *err) {
    char p[1200];
    if (strlen(path) > SDC_PATH_MAX) return sdc_err(err, SDC_ERR_ARG, "--vae path longer than %d characters", SDC_PATH_MAX);
    if (m->vae_set) return sdc_err(err, SDC_ERR_INTERNAL, "model_files_set_vae called twice");
    m->vae_set = 1;
    // the model's VAE entries go; the new ones come from the given file(s)
    for (int i = 0; i < m->n_ents[COMP_VAE]; i++) free(m->ents[COMP_VAE][i].name);
    free(m->ents[COMP_VAE]);
    m->ents[COMP_VAE] = NULL;
    m->n_ents[COMP_VAE] = 0;
    int cap[COMP_COUNT] = {0};
    if (is_dir(path)) { // a diffusers vae/ folder, or a model folder holding one
        path_join(p, sizeof p, path, "config.json", NULL);
        if (!is_file(p)) path_join(p, sizeof p, path, "vae", NULL);
        else snprintf(p, sizeof p, "%s", path);
        if (!is_dir(p)) snprintf(p, sizeof p, "%s", path);
        int rc = open_component(m, COMP_VAE, p, cap, err);
        if (rc) return sdc_err_wrap(err, "--vae %s (a diffusers vae/ folder, or a model folder with vae/)", path);
        // its config.json's scaling factor is the VAE's, as diffusers'
        // vae=AutoencoderKL.from_pretrained(folder) (sdxl-vae-fp16-fix's
        // 0.13025); the architecture stays the model's (a tensor of another
        // shape fails at load, naming it)
        char cfg[1300];
        VaeConfig vc;
        path_join(cfg, sizeof cfg, p, "config.json", NULL);
        if (is_file(cfg)) {
            if ((rc = read_vae_config(&vc, cfg, err))) return sdc_err_wrap(err, "--vae %s", path);
            m->info.vae.scaling_factor = vc.scaling_factor;
        }
        return sort_entries(m, err);
    }
    if (!is_file(path)) return sdc_err(err, SDC_ERR_IO, "--vae %s: no such file or folder", path);
    snprintf(p, sizeof p, "%s", path);
    StFile *f;
    SDC_TRY(add_file(m, p, &f, err));
    // Which naming: a whole SD checkpoint (first_stage_model.*), an A1111 VAE
    // file (the same names without the prefix: encoder.down.0...), or
    // diffusers' AutoencoderKL (encoder.down_blocks.0...).
    int full = 0, original = 0, diffusers = 0;
    for (int i = 0; i < f->n; i++) {
        const char *n = f->entries[i].name;
        full |= !strncmp(n, VP, strlen(VP));
        original |= !strncmp(n, "encoder.down.", 13) || !strncmp(n, "decoder.up.", 11);
        diffusers |= !strncmp(n, "encoder.down_blocks.", 20) || !strncmp(n, "decoder.up_blocks.", 18);
    }
    if (!full && !original && !diffusers)
        return sdc_err(err, SDC_ERR_FORMAT, "--vae %s: no VAE tensors (expected first_stage_model.*, encoder.down.* "
                       "as A1111 VAE files have, or diffusers' encoder.down_blocks.*)", p);
    NameMap nm;
    if (!diffusers) SDC_TRY(namemap_init(&nm, &m->info.unet, &m->info.vae, 0, err));
    for (int i = 0; i < f->n; i++) {
        const char *n = f->entries[i].name;
        if (diffusers) {
            char name[NAMEMAP_NAME_MAX + 16];
            component_name(COMP_VAE, n, 0, name, sizeof name);
            SDC_TRY(add_entry(m, COMP_VAE, name, f, &f->entries[i], NM_PLAIN, 0, cap, err));
            continue;
        }
        char orig[NAMEMAP_NAME_MAX + 32];
        if (full) {
            if (strncmp(n, VP, strlen(VP))) continue; // the checkpoint's UNet and text encoder stay the model's
            snprintf(orig, sizeof orig, "%s", n);
        } else {
            snprintf(orig, sizeof orig, "%s%s", VP, n);
        }
        NameMapping maps[3];
        int k = namemap_from_original(&nm, orig, maps);
        for (int j = 0; j < k; j++)
            if (maps[j].comp == COMP_VAE)
                SDC_TRY(add_entry(m, COMP_VAE, maps[j].name, f, &f->entries[i], maps[j].kind, maps[j].slice, cap, err));
    }
    if (!m->n_ents[COMP_VAE]) return sdc_err(err, SDC_ERR_FORMAT, "--vae %s: none of its tensors is a VAE weight", p);
    return sort_entries(m, err);
}

static const WEntry *find_entry(const ModelFiles *m, Component c, const char *name) {
    if (c < 0 || c >= COMP_COUNT || !m->n_ents[c]) return NULL;
    WEntry key = {.name = (char *)name};
    return bsearch(&key, m->ents[c], (size_t)m->n_ents[c], sizeof(WEntry), cmp_wentry);
}

int model_files_has(const ModelFiles *m, Component c, const char *name) { return find_entry(m, c, name) != NULL; }

void model_files_drop_pages(const ModelFiles *m, const void *p, size_t bytes) {
    const uint8_t *b = p;
    for (int i = 0; m && b && i < m->n_files; i++) {
        const StFile *f = m->files[i];
        if (f->fd < 0 || !f->map || b < f->map || b + bytes > f->map + f->size) continue; // not this mapping
        const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
        const uintptr_t lo = ((uintptr_t)b + pg - 1) / pg * pg, hi = ((uintptr_t)b + bytes) / pg * pg;
        // a read-only private file mapping: dropped pages come back from the file if touched again
        if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
        return;
    }
}

int model_files_transposed(const ModelFiles *m, Component c, const char *name) {
    const WEntry *w = find_entry(m, c, name);
    return w && w->kind == NM_TRANSPOSE;
}

// The view of one entry (the reshapes of the name map applied); where: the
// file and, when it differs, the original name, for messages.
static int entry_view(const WEntry *w, Component c, char *where, size_t cap, Tensor *out, SdcError *err) {
    const StEntry *e = w->e;
    const char *comp = c >= 0 && c < COMP_COUNT ? COMP_NAMES[c] : "?";
    if (w->kind == NM_PLAIN && !strcmp(e->name, w->name)) snprintf(where, cap, "%s", w->file->path);
    else snprintf(where, cap, "%s (original name %s)", w->file->path, e->name);
    Tensor t;
    SDC_TRY(st_get(w->file, e->name, &t, err));
    if (t.dtype != DT_F32 && t.dtype != DT_F16 && t.dtype != DT_BF16)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: %s tensor %s is %s; expected F32, F16 or BF16", where, comp,
                       w->name, e->dtype_str);
    if (w->kind == NM_TRANSPOSE) {
        char got[96];
        if (t.ndim != 2)
            return sdc_err(err, SDC_ERR_SHAPE, "%s: %s has shape %s: expected a matrix", where, e->name,
                           tensor_shape_str(&t, got, sizeof got));
        int64_t r = t.shape[0]; // the shape of the transpose; the bytes stay (model_files_transposed)
        t.shape[0] = t.shape[1], t.shape[1] = r;
    } else if (w->kind == NM_CONV_TO_LINEAR && t.ndim == 4 && t.shape[2] == 1 && t.shape[3] == 1) {
        t.ndim = 2; // (C, C, 1, 1) -> (C, C): same bytes
    } else if (w->kind == NM_ROW_SLICE) {
        char got[96];
        if (t.ndim < 1 || t.shape[0] == 0 || t.shape[0] % 3)
            return sdc_err(err, SDC_ERR_SHAPE, "%s: fused in_proj %s has shape %s: expected 3*D rows", where, e->name,
                           tensor_shape_str(&t, got, sizeof got));
        int64_t rows = t.shape[0] / 3;
        size_t row_bytes = (size_t)(tensor_numel(&t) / t.shape[0]) * dtype_size(t.dtype);
        t.data = (char *)t.data + (size_t)(w->slice * rows) * row_bytes;
        t.shape[0] = rows;
    }
    *out = t;
    return 0;
}

int model_files_count(const ModelFiles *m, Component c) { return c >= 0 && c < COMP_COUNT ? m->n_ents[c] : 0; }

int model_files_at(const ModelFiles *m, Component c, int i, const char **name, Tensor *out, SdcError *err) {
    if (c < 0 || c >= COMP_COUNT || i < 0 || i >= m->n_ents[c])
        return sdc_err(err, SDC_ERR_ARG, "model_files_at: %d is not a tensor of component %d", i, (int)c);
    const WEntry *w = &m->ents[c][i];
    char where[1400];
    *name = w->name;
    return entry_view(w, c, where, sizeof where, out, err);
}

int model_files_get(const ModelFiles *m, Component c, const char *name, int ndim, const int64_t *shape, Tensor *out,
                    SdcError *err) {
    const WEntry *w = find_entry(m, c, name);
    const char *comp = c >= 0 && c < COMP_COUNT ? COMP_NAMES[c] : "?";
    if (!w) {
        if (m->info.layout == LAYOUT_DIFFUSERS)
            return sdc_err(err, SDC_ERR_SHAPE, "%s/%s: no tensor %s\n---> is this an SD 1.x/2.x model? (the %s "
                           "weights have %d tensors)", m->path, comp, name, comp, m->n_ents[c]);
        NameMapping orig;
        int has = namemap_to_original(&m->nm, c, name, &orig) == 0;
        return sdc_err(err, SDC_ERR_SHAPE, "%s: no %s tensor %s (original name %s)\n---> is this an SD 1.x/2.x "
                       "checkpoint in the original layout? (its %s has %d tensors)", m->path, comp, name,
                       has ? orig.name : "?", comp, m->n_ents[c]);
    }
    char where[1400], got[96], want[96];
    Tensor t;
    SDC_TRY(entry_view(w, c, where, sizeof where, &t, err));
    Tensor exp = {.ndim = ndim};
    for (int i = 0; i < ndim && i < TENSOR_MAX_DIMS; i++) exp.shape[i] = shape[i];
    if (ndim < 0 || ndim > TENSOR_MAX_DIMS || !tensor_same_shape(&t, &exp))
        return sdc_err(err, SDC_ERR_SHAPE, "%s: %s tensor %s has shape %s, expected %s\n---> the model's config "
                       "does not match its weights (wrong config_dir, or a model type sdc does not know?)", where,
                       comp, name, tensor_shape_str(&t, got, sizeof got), tensor_shape_str(&exp, want, sizeof want));
    *out = t;
    return 0;
}

// ---- a VAE on its own (sdc train vae) ----------------------------------------

int model_files_read_vae_config(VaeConfig *v, const char *config_json, SdcError *err) {
    if (!is_file(config_json))
        return sdc_err(err, SDC_ERR_IO, "%s: no such file\n---> pass an AutoencoderKL config.json", config_json);
    return read_vae_config(v, config_json, err);
}

int model_files_open_vae(ModelFiles **out, const char *dir, SdcError *err) {
    *out = NULL;
    if (strlen(dir) > SDC_PATH_MAX) return sdc_err(err, SDC_ERR_ARG, "vae path longer than %d characters", SDC_PATH_MAX);
    char p[1200];
    path_join(p, sizeof p, dir, "config.json", NULL);
    if (!is_dir(dir) || !is_file(p))
        return sdc_err(err, SDC_ERR_IO, "%s: not a diffusers vae/ folder (no config.json)\n---> pass the vae/ folder "
                       "of a diffusers model, or the model folder itself", dir);
    ModelFiles *m = calloc(1, sizeof *m);
    if (!m) return sdc_err(err, SDC_ERR_OOM, "out of memory");
    snprintf(m->path, sizeof m->path, "%s", dir);
    int cap[COMP_COUNT] = {0};
    int rc = read_vae_config(&m->info.vae, p, err);
    if (!rc) rc = open_component(m, COMP_VAE, dir, cap, err);
    if (!rc) rc = sort_entries(m, err);
    if (rc) {
        model_files_close(m);
        return sdc_err_wrap(err, "vae folder %s", dir);
    }
    m->info.layout = LAYOUT_DIFFUSERS;
    *out = m;
    return 0;
}
