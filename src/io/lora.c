// lora.c: LoRA files (see lora.h). Reads top to bottom: the --lora argument,
// the module names a kohya key can mean, key parsing (kohya, diffusers), the
// alpha of diffusers' adapter metadata, opening a file, merging into a base
// weight, writing a file.
#include "io/lora.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/json.h"
#include "io/namemap.h"
#include "models/unet_layout.h"

#define HINT_OTHER_MODEL \
    "---> a LoRA for another model? a LoRA fits the family it was trained on (SD 1.x, SD 2.x or SDXL)"

static const char *comp_label(Component c) {
    return c == COMP_UNET ? "UNet" : c == COMP_TEXT_ENCODER_2 ? "second text encoder" : "text encoder";
}

static int ends_with(const char *s, const char *suffix) {
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && !memcmp(s + ls - lx, suffix, lx);
}

static int starts_with(const char *s, const char *prefix) { return !strncmp(s, prefix, strlen(prefix)); }

static void dots_to_underscores(char *s) {
    for (; *s; s++)
        if (*s == '.') *s = '_';
}

// ----------------------------------------------------------------------------
// --lora FILE[:WEIGHT]

int lora_spec_parse(const char *arg, LoraSpec *out, SdcError *err) {
    memset(out, 0, sizeof *out);
    out->weight = 1.0f;
    if (!arg || !arg[0])
        return sdc_err(err, SDC_ERR_ARG, "--lora: empty argument\n---> --lora FILE.safetensors[:WEIGHT]");
    size_t len = strlen(arg);
    const char *colon = strrchr(arg, ':');
    if (colon && !colon[1])
        return sdc_err(err, SDC_ERR_ARG, "--lora %s: no weight after ':'\n---> --lora FILE.safetensors:0.8", arg);
    if (colon) {
        char *end;
        errno = 0;
        float w = strtof(colon + 1, &end);
        if (!errno && end != colon + 1 && !*end) { // a number: the weight; else ':' is part of the path
            if (!isfinite(w))
                return sdc_err(err, SDC_ERR_ARG, "--lora %s: the weight must be a finite number\n"
                               "---> e.g. --lora FILE.safetensors:0.8", arg);
            out->weight = w;
            len = (size_t)(colon - arg);
        }
    }
    if (len == 0) return sdc_err(err, SDC_ERR_ARG, "--lora %s: no file before the weight", arg);
    if (len >= sizeof out->path)
        return sdc_err(err, SDC_ERR_ARG, "--lora: path longer than %zu bytes", sizeof out->path - 1);
    memcpy(out->path, arg, len);
    out->path[len] = 0;
    return 0;
}

// ----------------------------------------------------------------------------
// module names: what a kohya underscore name can mean. Every LoRA-able module
// the model has (probed by name in its files), with its kohya form in the
// diffusers naming (kohya's SD 1.x/2.x UNet and the HF CLIP) and in the
// original naming (input_blocks_1_1_..., as written against a single file).

typedef struct ModName {
    Component comp;
    char module[LORA_NAME_MAX]; // "down_blocks.0.attentions.0.proj_in"
    char under[LORA_NAME_MAX];  // "down_blocks_0_attentions_0_proj_in"
    char orig[LORA_NAME_MAX];   // "input_blocks_1_1_proj_in" ("" when there is none)
} ModName;

typedef struct ModNames {
    const ModelFiles *mf;
    NameMap *nm; // NULL: no original names
    ModName *v;
    int n, cap;
    int oom;
} ModNames;

static int has_weight(const ModelFiles *mf, Component c, const char *module) {
    char w[LORA_NAME_MAX + 8];
    snprintf(w, sizeof w, "%s.weight", module);
    return model_files_has(mf, c, w);
}

static void names_add(ModNames *mn, Component c, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void names_add(ModNames *mn, Component c, const char *fmt, ...) {
    char module[LORA_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(module, sizeof module, fmt, ap);
    va_end(ap);
    if (len < 0 || len >= (int)sizeof module || mn->oom || !has_weight(mn->mf, c, module)) return;
    if (mn->n == mn->cap) {
        int cap = mn->cap ? 2 * mn->cap : 256;
        ModName *v = realloc(mn->v, (size_t)cap * sizeof *v);
        if (!v) {
            mn->oom = 1;
            return;
        }
        mn->v = v;
        mn->cap = cap;
    }
    ModName *m = &mn->v[mn->n++];
    m->comp = c;
    memcpy(m->module, module, (size_t)len + 1);
    memcpy(m->under, module, (size_t)len + 1);
    dots_to_underscores(m->under);
    m->orig[0] = 0;
    NameMapping o;
    char w[LORA_NAME_MAX + 8];
    snprintf(w, sizeof w, "%s.weight", module);
    if (mn->nm && c == COMP_UNET && namemap_to_original(mn->nm, c, w, &o) == 0) {
        const char *pre = namemap_prefix(mn->nm, c);
        size_t lp = strlen(pre), lo = strlen(o.name);
        if (!strncmp(o.name, pre, lp) && ends_with(o.name, ".weight") && lo - lp - 7 < sizeof m->orig) {
            memcpy(m->orig, o.name + lp, lo - lp - 7);
            m->orig[lo - lp - 7] = 0;
            dots_to_underscores(m->orig);
        }
    }
}

// Fills mn with every LoRA-able module of the model.
static int names_build(ModNames *mn, const ModelFiles *mf, SdcError *err) {
    memset(mn, 0, sizeof *mn);
    mn->mf = mf;
    const ModelInfo *info = model_files_info(mf);
    mn->nm = malloc(sizeof *mn->nm);
    SdcError ignored;
    if (mn->nm && namemap_init(mn->nm, &info->unet, &info->vae, 0, &ignored)) {
        free(mn->nm); // a config namemap cannot describe: no original names, diffusers ones still work
        mn->nm = NULL;
    }
    // the UNet's modules, block by block (src/models/unet_layout.h: the
    // list the model is built from); names the file lacks are skipped
    UnetBlockInfo *blocks = malloc(UNET_MAX_BLOCKS * sizeof *blocks);
    int nb = 0;
    if (!blocks) return sdc_err(err, SDC_ERR_OOM, "LoRA: out of memory for the module names");
    if (unet_layout(&info->unet, blocks, &nb, &ignored)) nb = 0; // no UNet to target; the text encoder still is
    char p[LORA_NAME_MAX];
    for (int i = 0; i < nb; i++)
        for (int k = 0; unet_block_module(&blocks[i], k, p, sizeof p); k++) names_add(mn, COMP_UNET, "%s", p);
    free(blocks);
    static const char *const TE_LEAF[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                          "self_attn.out_proj", "mlp.fc1", "mlp.fc2"};
    for (int e = 0; e < (info->has_clip2 ? 2 : 1); e++) { // SDXL: both text encoders
        const Component c = e ? COMP_TEXT_ENCODER_2 : COMP_TEXT_ENCODER;
        for (int l = 0; l < 256; l++) {
            snprintf(p, sizeof p, "text_model.encoder.layers.%d.self_attn.q_proj", l);
            if (!has_weight(mf, c, p)) break;
            for (size_t k = 0; k < sizeof TE_LEAF / sizeof TE_LEAF[0]; k++)
                names_add(mn, c, "text_model.encoder.layers.%d.%s", l, TE_LEAF[k]);
        }
    }
    if (mn->oom) return sdc_err(err, SDC_ERR_OOM, "LoRA: out of memory for the module names");
    return 0;
}

static void names_free(ModNames *mn) {
    free(mn->v);
    free(mn->nm);
    memset(mn, 0, sizeof *mn);
}

static const ModName *names_find(const ModNames *mn, Component c, const char *under) {
    for (int i = 0; i < mn->n; i++)
        if (mn->v[i].comp == c && (!strcmp(mn->v[i].under, under) || !strcmp(mn->v[i].orig, under)))
            return &mn->v[i];
    return NULL;
}

// ----------------------------------------------------------------------------
// key parsing: one tensor name -> (component, diffusers module, part)

typedef enum { PART_DOWN = 0, PART_UP = 1, PART_ALPHA = 2 } LoraPart;

typedef struct LoraKey {
    Component comp;
    char module[LORA_NAME_MAX]; // diffusers module name, resolved and checked against the model
    char label[LORA_NAME_MAX];  // the name without its part: "lora_unet_..._to_q", "unet.down_blocks....to_q"
    LoraPart part;
    LoraFormat format;
} LoraKey;

static int err_not_lora(const char *path, const char *key, SdcError *err) {
    return sdc_err(err, SDC_ERR_FORMAT,
                   "%s: tensor \"%s\" is not a LoRA tensor (expected kohya lora_unet_* / lora_te_* names ending "
                   "in .lora_down.weight, .lora_up.weight or .alpha, or diffusers unet.* / text_encoder.* names "
                   "ending in .lora.down.weight / .lora.up.weight / .lora_A.weight / .lora_B.weight)\n"
                   "---> is this a LoRA file? A full model goes to -m; LyCORIS LoHa / LoKr files are not supported",
                   path, key);
}

// Variants sdc does not merge: a clear error instead of "not a LoRA tensor".
static int check_unsupported(const char *path, const char *key, SdcError *err) {
    if (strstr(key, "dora_scale") || strstr(key, "lora_magnitude_vector"))
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: tensor \"%s\": DoRA LoRAs are not supported\n"
                       "---> use a plain LoRA of the same training, or merge it with its trainer", path, key);
    if (strstr(key, ".hada_") || strstr(key, ".lokr_") || strstr(key, ".lora_mid.") || ends_with(key, ".diff") ||
        ends_with(key, ".diff_b"))
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: tensor \"%s\": a LyCORIS network (LoHa / LoKr / Tucker / "
                       "diff), not a plain LoRA: not supported\n---> convert it to a LoRA, or use a LoRA / LoCon "
                       "file", path, key);
    if (ends_with(key, ".lora_B.bias") || ends_with(key, ".lora_up.bias") || ends_with(key, ".lora.up.bias"))
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: tensor \"%s\": LoRA biases (peft lora_bias) are not "
                       "supported\n---> train without lora_bias", path, key);
    return 0;
}

// A key for SDXL's second text encoder on a model without one.
static int err_no_te2(const char *path, const char *key, SdcError *err) {
    return sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: tensor \"%s\" is for a second text encoder: an SDXL LoRA\n"
                   HINT_OTHER_MODEL, path, key);
}

static int err_no_module(const char *path, const char *key, Component c, const char *module, SdcError *err) {
    return sdc_err(err, SDC_ERR_SHAPE, "%s: tensor \"%s\" updates a module this model does not have\n"
                   "---> a LoRA for another model? this model's %s has no %s",
                   path, key, comp_label(c), module);
}

static int parse_kohya(const char *path, const char *key, const ModNames *mn, LoraKey *k, SdcError *err) {
    const char *dot = strchr(key, '.');
    if (!dot) return err_not_lora(path, key, err);
    const char *rest = dot + 1;
    if (!strcmp(rest, "lora_down.weight")) k->part = PART_DOWN;
    else if (!strcmp(rest, "lora_up.weight")) k->part = PART_UP;
    else if (!strcmp(rest, "alpha")) k->part = PART_ALPHA;
    else return err_not_lora(path, key, err);
    size_t stem_len = (size_t)(dot - key);
    if (stem_len >= sizeof k->label) return err_not_lora(path, key, err);
    memcpy(k->label, key, stem_len);
    k->label[stem_len] = 0;
    const char *under;
    if (starts_with(k->label, "lora_unet_")) k->comp = COMP_UNET, under = k->label + 10;
    else if (starts_with(k->label, "lora_te1_")) k->comp = COMP_TEXT_ENCODER, under = k->label + 9;
    else if (starts_with(k->label, "lora_te2_")) k->comp = COMP_TEXT_ENCODER_2, under = k->label + 9;
    else k->comp = COMP_TEXT_ENCODER, under = k->label + 8; // lora_te_
    if (k->comp == COMP_TEXT_ENCODER_2 && !model_files_info(mn->mf)->has_clip2) return err_no_te2(path, key, err);
    k->format = LORA_FORMAT_KOHYA;
    const ModName *m = names_find(mn, k->comp, under);
    if (!m) return err_no_module(path, key, k->comp, under, err);
    snprintf(k->module, sizeof k->module, "%s", m->module);
    return 0;
}

// "...attn1.to_q" from the old attention-processor names (to_q_lora.down):
// the UNet's to_out is to_out.0; the text encoder's to_q is q_proj.
static void normalize_old_names(Component c, char *m, size_t cap) {
    static const char *const TE_OLD[][2] = {
        {".to_q", ".q_proj"}, {".to_k", ".k_proj"}, {".to_v", ".v_proj"}, {".to_out", ".out_proj"}};
    char *p;
    while ((p = strstr(m, ".processor"))) // "attn1.processor.to_q" -> "attn1.to_q"
        memmove(p, p + 10, strlen(p + 10) + 1);
    if (c == COMP_UNET) {
        if (ends_with(m, ".to_out") && strlen(m) + 2 < cap) strcat(m, ".0");
        return;
    }
    for (size_t i = 0; i < 4; i++)
        if (ends_with(m, TE_OLD[i][0])) {
            size_t l = strlen(m) - strlen(TE_OLD[i][0]);
            if (l + strlen(TE_OLD[i][1]) < cap) strcpy(m + l, TE_OLD[i][1]);
            return;
        }
}

static int parse_diffusers(const char *path, const char *key, const ModelFiles *mf, LoraKey *k, SdcError *err) {
    static const struct {
        const char *suffix;
        LoraPart part;
    } SUFFIX[] = {
        {".lora.down.weight", PART_DOWN}, {".lora.up.weight", PART_UP},
        {".lora_A.weight", PART_DOWN},    {".lora_B.weight", PART_UP},
        {".lora_linear_layer.down.weight", PART_DOWN}, {".lora_linear_layer.up.weight", PART_UP},
        {"_lora.down.weight", PART_DOWN}, {"_lora.up.weight", PART_UP}, // old attention processors
        {".lora_down.weight", PART_DOWN}, {".lora_up.weight", PART_UP},
        {".alpha", PART_ALPHA},
    };
    static const char *const UNET_ROOTS[] = {"down_blocks.", "up_blocks.", "mid_block.", "conv_in.", "conv_out.",
                                             "time_embedding."};
    const char *body = key;
    if (starts_with(key, "unet.")) k->comp = COMP_UNET, body = key + 5;
    else if (starts_with(key, "text_encoder.")) k->comp = COMP_TEXT_ENCODER, body = key + 13;
    else if (starts_with(key, "text_encoder_2.")) k->comp = COMP_TEXT_ENCODER_2, body = key + 15;
    else if (starts_with(key, "text_model.")) k->comp = COMP_TEXT_ENCODER;
    else {
        int unet = 0;
        for (size_t i = 0; i < sizeof UNET_ROOTS / sizeof UNET_ROOTS[0]; i++) unet |= starts_with(key, UNET_ROOTS[i]);
        if (!unet) return err_not_lora(path, key, err);
        k->comp = COMP_UNET; // old attention-processor files had no "unet." prefix
    }
    size_t i = 0, n = sizeof SUFFIX / sizeof SUFFIX[0];
    while (i < n && !ends_with(body, SUFFIX[i].suffix)) i++;
    if (i == n) return err_not_lora(path, key, err);
    k->part = SUFFIX[i].part;
    k->format = LORA_FORMAT_DIFFUSERS;
    size_t ml = strlen(body) - strlen(SUFFIX[i].suffix);
    size_t pl = (size_t)(body - key) + ml;
    if (ml + 16 >= sizeof k->module || pl >= sizeof k->label) return err_not_lora(path, key, err);
    memcpy(k->label, key, pl);
    k->label[pl] = 0;
    char *m = k->module;
    if (k->comp == COMP_TEXT_ENCODER_2 && !model_files_info(mf)->has_clip2) return err_no_te2(path, key, err);
    if (k->comp != COMP_UNET && starts_with(body, "encoder.")) { // a flattened CLIPTextModel's names
        strcpy(m, "text_model.");
        strncat(m, body, ml);
    } else {
        memcpy(m, body, ml);
        m[ml] = 0;
    }
    normalize_old_names(k->comp, m, sizeof k->module);
    if (!has_weight(mf, k->comp, m)) return err_no_module(path, key, k->comp, m, err);
    return 0;
}

// ----------------------------------------------------------------------------
// alpha from diffusers' adapter metadata: `lora_adapter_metadata` in the
// header, a JSON object of peft LoraConfig fields prefixed by component
// ("unet.lora_alpha", "unet.alpha_pattern", "unet.use_rslora", ...).

typedef struct AlphaMeta {
    JsonDoc doc;
    int parsed;
    int present[3];            // [meta_idx]: the metadata has this component's config
    double lora_alpha[3];      // peft's default is 8
    int rslora[3];
    const JsonNode *pattern[3]; // alpha_pattern object or NULL
} AlphaMeta;

static int meta_idx(Component c) { return c == COMP_UNET ? 1 : c == COMP_TEXT_ENCODER_2 ? 2 : 0; }

static int alpha_meta_read(AlphaMeta *am, const StFile *st, SdcError *err) {
    memset(am, 0, sizeof *am);
    const char *s = st_meta(st, "lora_adapter_metadata");
    if (!s) return 0;
    char what[1100];
    snprintf(what, sizeof what, "%s: __metadata__ lora_adapter_metadata", st->path);
    SDC_TRY(json_parse(&am->doc, s, strlen(s), what, err));
    am->parsed = 1;
    const JsonNode *root = json_root(&am->doc);
    if (root->type != JSON_OBJECT)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: expected a JSON object\n---> re-save the LoRA with diffusers", what);
    static const char *const PREFIX[3] = {"text_encoder", "unet", "text_encoder_2"};
    for (int c = 0; c < 3; c++) {
        char k[64];
        am->lora_alpha[c] = 8.0;
        for (const JsonNode *m = json_first(&am->doc, root); m; m = json_next(&am->doc, m))
            if (starts_with(json_key(&am->doc, m), PREFIX[c]) && json_key(&am->doc, m)[strlen(PREFIX[c])] == '.')
                am->present[c] = 1;
        snprintf(k, sizeof k, "%s.lora_alpha", PREFIX[c]);
        const JsonNode *v = json_get(&am->doc, root, k);
        if (v && v->type == JSON_NUMBER) am->lora_alpha[c] = v->num;
        snprintf(k, sizeof k, "%s.use_rslora", PREFIX[c]);
        v = json_get(&am->doc, root, k);
        am->rslora[c] = v && v->type == JSON_BOOL && v->boolean;
        snprintf(k, sizeof k, "%s.alpha_pattern", PREFIX[c]);
        v = json_get(&am->doc, root, k);
        am->pattern[c] = v && v->type == JSON_OBJECT ? v : NULL;
    }
    return 0;
}

// peft matches a pattern key k against a module name as the regex (.*\.)?k$;
// sdc takes k literally (module == k, or module ends with "." k).
static int pattern_matches(const char *module, const char *k) {
    if (k[0] == '^') k++;
    size_t lm = strlen(module), lk = strlen(k);
    if (lk == 0 || lk > lm) return 0;
    if (lk == lm) return !strcmp(module, k);
    return module[lm - lk - 1] == '.' && !strcmp(module + lm - lk, k);
}

// The alpha (and whether rsLoRA) the metadata gives a module, or 0 if none.
static int alpha_meta_get(const AlphaMeta *am, Component c, const char *module, double *alpha, int *rslora) {
    int i = meta_idx(c);
    if (!am->parsed || !am->present[i]) return 0;
    *alpha = am->lora_alpha[i];
    *rslora = am->rslora[i];
    if (am->pattern[i])
        for (const JsonNode *m = json_first(&am->doc, am->pattern[i]); m; m = json_next(&am->doc, m))
            if (m->type == JSON_NUMBER && pattern_matches(module, json_key(&am->doc, m))) *alpha = m->num;
    return 1;
}

// ----------------------------------------------------------------------------
// opening a file

static int cmp_entry(const void *a, const void *b) {
    const LoraEntry *x = a, *y = b;
    if (x->comp != y->comp) return x->comp < y->comp ? -1 : 1;
    return strcmp(x->target, y->target);
}

// Reads a float tensor of any supported dtype into f32 (alpha scalars).
static float scalar_f32(const Tensor *t) {
    float v = 0;
    convert_to_f32(&v, t->data, t->dtype, 1);
    return v;
}

static int is_float_dtype(DType d) { return d == DT_F32 || d == DT_F16 || d == DT_BF16; }

// Finds or appends the entry for (comp, target); -1 on OOM.
static int entry_for(LoraFile *f, int *cap, const LoraKey *k) {
    char target[LORA_NAME_MAX];
    snprintf(target, sizeof target, "%s.weight", k->module);
    for (int i = f->n - 1; i >= 0; i--)
        if (f->e[i].comp == k->comp && !strcmp(f->e[i].target, target)) return i;
    if (f->n == *cap) {
        int nc = *cap ? 2 * *cap : 256;
        LoraEntry *e = realloc(f->e, (size_t)nc * sizeof *e);
        if (!e) return -1;
        f->e = e;
        *cap = nc;
    }
    LoraEntry *e = &f->e[f->n];
    memset(e, 0, sizeof *e);
    e->comp = k->comp;
    memcpy(e->target, target, sizeof target);
    snprintf(e->key, sizeof e->key, "%s", k->label);
    e->alpha = NAN; // not given
    return f->n++;
}

static int lora_read(LoraFile *f, const ModelFiles *mf, SdcError *err) {
    const char *path = f->path;
    ModNames mn = {0};
    int names_ready = 0, cap = 0, rc = 0;
    AlphaMeta am;
    rc = alpha_meta_read(&am, &f->st, err);
    for (int i = 0; !rc && i < f->st.n; i++) {
        const char *key = f->st.entries[i].name;
        LoraKey k;
        memset(&k, 0, sizeof k);
        if ((rc = check_unsupported(path, key, err))) break;
        if (starts_with(key, "lora_unet_") || starts_with(key, "lora_te_") || starts_with(key, "lora_te1_") ||
            starts_with(key, "lora_te2_")) {
            if (!names_ready && (rc = names_build(&mn, mf, err))) break;
            names_ready = 1;
            rc = parse_kohya(path, key, &mn, &k, err);
        } else {
            rc = parse_diffusers(path, key, mf, &k, err);
        }
        if (rc) break;
        if (f->n == 0) f->format = k.format;
        Tensor t;
        if ((rc = st_get(&f->st, key, &t, err))) break;
        if (!is_float_dtype(t.dtype)) {
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: tensor \"%s\" is %s; expected F32, F16 or BF16", path, key,
                         dtype_name(t.dtype));
            break;
        }
        if (k.part == PART_ALPHA ? tensor_numel(&t) != 1 : (t.ndim != 2 && t.ndim != 4)) {
            char s[96];
            rc = sdc_err(err, SDC_ERR_SHAPE, "%s: tensor \"%s\" has shape %s; expected %s", path, key,
                         tensor_shape_str(&t, s, sizeof s),
                         k.part == PART_ALPHA ? "one value" : "2 dims (linear) or 4 dims (conv)");
            break;
        }
        int idx = entry_for(f, &cap, &k);
        if (idx < 0) {
            rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
            break;
        }
        LoraEntry *e = &f->e[idx];
        Tensor *slot = k.part == PART_DOWN ? &e->down : k.part == PART_UP ? &e->up : NULL;
        if ((slot && slot->data) || (!slot && !isnan(e->alpha))) {
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: two tensors give the LoRA %s of %s %s (the second: \"%s\")\n"
                         "---> a file mixing two formats of the same LoRA? keep one", path,
                         k.part == PART_DOWN ? "down" : k.part == PART_UP ? "up" : "alpha", comp_label(e->comp),
                         e->target, key);
            break;
        }
        if (slot) *slot = t;
        else e->alpha = scalar_f32(&t);
    }
    if (names_ready) names_free(&mn);

    // every module: both halves, one rank; then its scale
    int kept = 0;
    for (int i = 0; !rc && i < f->n; i++) {
        LoraEntry *e = &f->e[i];
        if (!e->down.data && !e->up.data) continue; // an alpha alone updates nothing
        char sd[96], su[96];
        if (!e->down.data || !e->up.data) {
            rc = sdc_err(err, SDC_ERR_FORMAT, "%s: LoRA %s has a %s tensor but no %s tensor\n"
                         "---> the file is incomplete (an interrupted save?)", path, e->key,
                         e->down.data ? "down" : "up", e->down.data ? "up" : "down");
            break;
        }
        if (e->down.shape[0] != e->up.shape[1] || e->down.shape[0] < 1) {
            rc = sdc_err(err, SDC_ERR_SHAPE, "%s: LoRA %s: the down tensor has rank %lld (shape %s) but the up "
                         "tensor has rank %lld (shape %s)\n---> a damaged file? down is (rank, in), up is (out, "
                         "rank)", path, e->key, (long long)e->down.shape[0], tensor_shape_str(&e->down, sd, sizeof sd),
                         (long long)e->up.shape[1], tensor_shape_str(&e->up, su, sizeof su));
            break;
        }
        if (e->up.ndim == 4 && (e->up.shape[2] != 1 || e->up.shape[3] != 1)) {
            rc = sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: LoRA %s: up tensor %s: expected a 1x1 kernel\n"
                         "---> not a kohya / diffusers LoRA layout", path, e->key,
                         tensor_shape_str(&e->up, su, sizeof su));
            break;
        }
        e->rank = (int)e->down.shape[0];
        double alpha = e->alpha;
        int rslora = 0;
        char module[LORA_NAME_MAX];
        snprintf(module, sizeof module, "%.*s", (int)(strlen(e->target) - 7), e->target);
        if (isnan(alpha) && !alpha_meta_get(&am, e->comp, module, &alpha, &rslora)) alpha = e->rank;
        if (alpha == 0) alpha = e->rank; // kohya: alpha 0 or None means rank
        e->alpha = (float)alpha;
        e->scale = (float)(rslora ? alpha / sqrt((double)e->rank) : alpha / e->rank);
        f->e[kept++] = *e;
    }
    if (am.parsed) json_free(&am.doc);
    if (rc) return rc;
    f->n = kept;
    if (f->n == 0)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: no LoRA tensors in the file\n---> is this a LoRA file?", path);
    qsort(f->e, (size_t)f->n, sizeof *f->e, cmp_entry);
    return 0;
}

int lora_open(LoraFile *f, const char *path, float weight, const ModelFiles *mf, SdcError *err) {
    memset(f, 0, sizeof *f);
    f->st.fd = -1;
    if (strlen(path) >= sizeof f->path)
        return sdc_err(err, SDC_ERR_ARG, "LoRA path longer than %zu bytes", sizeof f->path - 1);
    snprintf(f->path, sizeof f->path, "%s", path);
    f->weight = weight;
    SDC_TRY(st_open(&f->st, path, err));
    int rc = lora_read(f, mf, err);
    if (rc) lora_close(f);
    return rc;
}

void lora_close(LoraFile *f) {
    if (!f) return;
    free(f->e);
    if (f->st.path) st_close(&f->st);
    memset(f, 0, sizeof *f);
    f->st.fd = -1;
}

const LoraEntry *lora_find(const LoraFile *f, Component c, const char *name) {
    if (!f->n) return NULL;
    LoraEntry key;
    key.comp = c;
    if (snprintf(key.target, sizeof key.target, "%s", name) >= (int)sizeof key.target) return NULL;
    return bsearch(&key, f->e, (size_t)f->n, sizeof *f->e, cmp_entry);
}

int lora_set_open(LoraSet *s, const LoraSpec *specs, int n, const ModelFiles *mf, SdcError *err) {
    memset(s, 0, sizeof *s);
    if (n <= 0) return 0;
    s->files = calloc((size_t)n, sizeof *s->files);
    if (!s->files) return sdc_err(err, SDC_ERR_OOM, "LoRA: out of memory");
    for (int i = 0; i < n; i++) {
        int rc = lora_open(&s->files[i], specs[i].path, specs[i].weight, mf, err);
        if (rc) {
            lora_set_free(s);
            return rc;
        }
        s->n++;
    }
    return 0;
}

void lora_set_free(LoraSet *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) lora_close(&s->files[i]);
    free(s->files);
    memset(s, 0, sizeof *s);
}

int lora_set_targets(const LoraSet *s, Component c, const char *name) {
    for (int i = 0; s && i < s->n; i++)
        if (lora_find(&s->files[i], c, name)) return 1;
    return 0;
}

// ----------------------------------------------------------------------------
// merging: w (out, K) += weight * scale * up (out, r) @ down (r, K), K = in * kh * kw

// Whether e fits a base weight of this shape: up's rows are its rows, down's
// columns (and kernel) its inputs; a 1x1 conv and a linear layer take either form.
static int entry_fits(const LoraEntry *e, int ndim, const int64_t *shape) {
    if (ndim != 2 && ndim != 4) return 0;
    if (e->up.shape[0] != shape[0] || e->down.shape[1] != shape[1]) return 0;
    int64_t kh = ndim == 4 ? shape[2] : 1, kw = ndim == 4 ? shape[3] : 1;
    int64_t dh = e->down.ndim == 4 ? e->down.shape[2] : 1, dw = e->down.ndim == 4 ? e->down.shape[3] : 1;
    return kh == dh && kw == dw;
}

int lora_merge(const LoraSet *s, Component c, const char *name, int ndim, const int64_t *shape, float *w,
               SdcError *err) {
    for (int fi = 0; s && fi < s->n; fi++) {
        const LoraFile *f = &s->files[fi];
        const LoraEntry *e = lora_find(f, c, name);
        if (!e) continue;
        if (!entry_fits(e, ndim, shape)) {
            Tensor base = {.ndim = ndim};
            for (int i = 0; i < ndim && i < TENSOR_MAX_DIMS; i++) base.shape[i] = shape[i];
            Tensor prod = e->down;
            prod.shape[0] = e->up.shape[0];
            char sb[96], sp[96], sd[96], su[96];
            return sdc_err(err, SDC_ERR_SHAPE, "%s: LoRA %s does not fit the model's %s %s: the weight is %s, the "
                           "LoRA's up @ down is %s (down %s, up %s)\n" HINT_OTHER_MODEL " (an SD 2.x LoRA on SD "
                           "1.x: widths 1024 vs 768)", f->path, e->key, comp_label(c), name,
                           tensor_shape_str(&base, sb, sizeof sb), tensor_shape_str(&prod, sp, sizeof sp),
                           tensor_shape_str(&e->down, sd, sizeof sd), tensor_shape_str(&e->up, su, sizeof su));
        }
        if (!w || f->weight == 0.0f) continue;
        const int64_t out = shape[0], R = e->rank, K = tensor_numel(&e->down) / R;
        float *up = malloc((size_t)(out * R + R * K + K) * sizeof(float)); // (out, R), (R, K), one row (K)
        if (!up) return sdc_err(err, SDC_ERR_OOM, "%s: out of memory merging %s", f->path, e->key);
        float *down = up + out * R, *row = down + R * K;
        convert_to_f32(up, e->up.data, e->up.dtype, (size_t)(out * R));
        convert_to_f32(down, e->down.data, e->down.dtype, (size_t)(R * K));
        const float a = f->weight * e->scale;
        for (int64_t o = 0; o < out; o++) {
            memset(row, 0, (size_t)K * sizeof(float));
            for (int64_t r = 0; r < R; r++) {
                const float u = up[o * R + r], *d = down + r * K;
                for (int64_t k = 0; k < K; k++) row[k] += u * d[k];
            }
            float *wo = w + o * K;
            for (int64_t k = 0; k < K; k++) wo[k] += a * row[k];
        }
        free(up);
    }
    return 0;
}

// ----------------------------------------------------------------------------
// writing

// A growable string (the metadata JSON).
typedef struct Buf {
    char *s;
    size_t len, cap;
    int oom;
} Buf;

static void buf_printf(Buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(Buf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap : 4096;
        while (cap <= b->len + (size_t)n) cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
}

static int lt_rank(const LoraTensor *t) { return (int)t->down.shape[0]; }

// The most common value of f(t[i]) over the tensors of component c.
static double mode_of(const LoraTensor *t, int n, Component c, int use_alpha) {
    double best = 0;
    int best_count = 0;
    for (int i = 0; i < n; i++) {
        if (t[i].comp != c) continue;
        double v = use_alpha ? t[i].alpha : lt_rank(&t[i]);
        int count = 0;
        for (int j = 0; j < n; j++)
            if (t[j].comp == c && (use_alpha ? t[j].alpha : lt_rank(&t[j])) == v) count++;
        if (count > best_count) best = v, best_count = count;
    }
    return best;
}

// peft module names for the metadata: the text encoder's without "text_model."
// (a pattern matches a module's tail, so this fits flattened and nested CLIPs).
static const char *peft_name(const LoraTensor *t, const char *module) {
    return t->comp != COMP_UNET && starts_with(module, "text_model.") ? module + 11 : module;
}

// diffusers' lora_adapter_metadata: per component, peft LoraConfig fields.
static void adapter_metadata(Buf *b, const LoraTensor *t, char (*mods)[LORA_NAME_MAX], int n) {
    static const char *const PREFIX[3] = {"text_encoder", "unet", "text_encoder_2"};
    const Component COMPS[3] = {COMP_TEXT_ENCODER, COMP_UNET, COMP_TEXT_ENCODER_2};
    buf_printf(b, "{");
    int first = 1;
    for (int ci = 0; ci < 3; ci++) {
        Component c = COMPS[ci];
        int any = 0;
        for (int i = 0; i < n; i++) any |= t[i].comp == c;
        if (!any) continue;
        const double r = mode_of(t, n, c, 0), alpha = mode_of(t, n, c, 1);
        buf_printf(b, "%s\"%s.alpha_pattern\": {", first ? "" : ", ", PREFIX[ci]);
        first = 0;
        int k = 0;
        for (int i = 0; i < n; i++)
            if (t[i].comp == c && t[i].alpha != alpha)
                buf_printf(b, "%s\"%s\": %.9g", k++ ? ", " : "", peft_name(&t[i], mods[i]), t[i].alpha);
        buf_printf(b, "}, \"%s.lora_alpha\": %.9g, \"%s.r\": %d, \"%s.rank_pattern\": {", PREFIX[ci], alpha,
                   PREFIX[ci], (int)r, PREFIX[ci]);
        k = 0;
        for (int i = 0; i < n; i++)
            if (t[i].comp == c && lt_rank(&t[i]) != (int)r)
                buf_printf(b, "%s\"%s\": %d", k++ ? ", " : "", peft_name(&t[i], mods[i]), lt_rank(&t[i]));
        buf_printf(b, "}, \"%s.target_modules\": [", PREFIX[ci]);
        k = 0;
        for (int i = 0; i < n; i++)
            if (t[i].comp == c) buf_printf(b, "%s\"%s\"", k++ ? ", " : "", peft_name(&t[i], mods[i]));
        buf_printf(b, "]");
    }
    buf_printf(b, "}");
}

static int check_tensor(const char *path, const char *module, const char *what, const Tensor *x, SdcError *err) {
    if (x->device != DEV_CPU || !x->data || !is_float_dtype(x->dtype) || (x->ndim != 2 && x->ndim != 4))
        return sdc_err(err, SDC_ERR_ARG, "%s: LoRA %s of %s: expected a CPU F32/F16/BF16 tensor of 2 or 4 dims",
                       path, what, module);
    return 0;
}

int lora_save(const char *path, LoraFormat format, const LoraTensor *t, int n, SdcError *err) {
    if (n <= 0) return sdc_err(err, SDC_ERR_ARG, "%s: no LoRA tensors to write", path);
    if (format != LORA_FORMAT_DIFFUSERS && format != LORA_FORMAT_KOHYA)
        return sdc_err(err, SDC_ERR_ARG, "%s: unknown LoRA format %d", path, (int)format);
    const int per = format == LORA_FORMAT_KOHYA ? 3 : 2; // down, up (, alpha)
    char(*mods)[LORA_NAME_MAX] = malloc((size_t)n * sizeof *mods);
    char(*names)[LORA_NAME_MAX + 48] = malloc((size_t)n * per * sizeof *names);
    const char **np = malloc((size_t)n * per * sizeof *np);
    Tensor *ts = malloc((size_t)n * per * sizeof *ts);
    float *alphas = malloc((size_t)n * sizeof *alphas);
    Buf meta = {0};
    int rc = 0;
    if (!mods || !names || !np || !ts || !alphas) rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory", path);
    int uniform_rank = 1, uniform_alpha = 1, need_meta = 0, any_te2 = 0;
    for (int i = 0; i < n; i++) any_te2 |= t[i].comp == COMP_TEXT_ENCODER_2;
    for (int i = 0; !rc && i < n; i++) {
        const LoraTensor *x = &t[i];
        const char *m = x->module ? x->module : "";
        size_t ml = strlen(m);
        if (ends_with(m, ".weight")) ml -= 7;
        if (ml == 0 || ml >= LORA_NAME_MAX ||
            (x->comp != COMP_UNET && x->comp != COMP_TEXT_ENCODER && x->comp != COMP_TEXT_ENCODER_2)) {
            rc = sdc_err(err, SDC_ERR_ARG, "%s: LoRA tensor %d: module \"%s\" of component %d: expected a UNet or "
                         "text-encoder module name", path, i, m, (int)x->comp);
            break;
        }
        memcpy(mods[i], m, ml);
        mods[i][ml] = 0;
        if (x->comp != COMP_UNET && !starts_with(mods[i], "text_model.")) {
            rc = sdc_err(err, SDC_ERR_ARG, "%s: text-encoder module \"%s\": expected a name from text_model. "
                         "(e.g. text_model.encoder.layers.0.self_attn.q_proj)", path, mods[i]);
            break;
        }
        if ((rc = check_tensor(path, mods[i], "down", &x->down, err)) ||
            (rc = check_tensor(path, mods[i], "up", &x->up, err)))
            break;
        if (x->down.shape[0] != x->up.shape[1] || x->down.shape[0] < 1) {
            char sd[96], su[96];
            rc = sdc_err(err, SDC_ERR_SHAPE, "%s: LoRA of %s: down %s and up %s: expected down (rank, in) and up "
                         "(out, rank) of one rank", path, mods[i], tensor_shape_str(&x->down, sd, sizeof sd),
                         tensor_shape_str(&x->up, su, sizeof su));
            break;
        }
        if (!(x->alpha > 0) || !isfinite(x->alpha)) {
            rc = sdc_err(err, SDC_ERR_ARG, "%s: LoRA of %s: alpha %g; expected a positive number (alpha = rank: "
                         "scale 1)", path, mods[i], x->alpha);
            break;
        }
        uniform_rank &= lt_rank(x) == lt_rank(&t[0]);
        uniform_alpha &= x->alpha == t[0].alpha;
        need_meta |= x->alpha != (float)lt_rank(x);
        const int k = i * per;
        if (format == LORA_FORMAT_DIFFUSERS) {
            const char *pre = x->comp == COMP_UNET ? "unet" : x->comp == COMP_TEXT_ENCODER_2 ? "text_encoder_2"
                                                                                             : "text_encoder";
            // what diffusers' own save writes: the UNet's lora.down/up, the text
            // encoder's lora_linear_layer.down/up (its loader needs that spelling)
            const char *mid = x->comp == COMP_UNET ? "lora" : "lora_linear_layer";
            snprintf(names[k], sizeof names[k], "%s.%s.%s.down.weight", pre, mods[i], mid);
            snprintf(names[k + 1], sizeof names[k + 1], "%s.%s.%s.up.weight", pre, mods[i], mid);
        } else {
            char stem[LORA_NAME_MAX + 16];
            // SDXL (a second encoder present): kohya's lora_te1_ / lora_te2_
            snprintf(stem, sizeof stem, "%s_%s",
                     x->comp == COMP_UNET ? "lora_unet" : x->comp == COMP_TEXT_ENCODER_2 ? "lora_te2"
                                                          : any_te2 ? "lora_te1" : "lora_te", mods[i]);
            dots_to_underscores(stem);
            snprintf(names[k], sizeof names[k], "%s.lora_down.weight", stem);
            snprintf(names[k + 1], sizeof names[k + 1], "%s.lora_up.weight", stem);
            snprintf(names[k + 2], sizeof names[k + 2], "%s.alpha", stem);
            alphas[i] = x->alpha;
            ts[k + 2] = tensor_f32(&alphas[i], 0, NULL);
        }
        ts[k] = x->down;
        ts[k + 1] = x->up;
        for (int j = 0; j < per; j++) np[k + j] = names[k + j];
    }
    if (!rc) {
        const char *mk[4], *mv[4];
        char dim[32], alpha[32];
        int nm = 0;
        if (format == LORA_FORMAT_DIFFUSERS) {
            mk[nm] = "format", mv[nm++] = "pt";
            if (need_meta) {
                adapter_metadata(&meta, t, mods, n);
                if (meta.oom) rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory for the metadata", path);
                mk[nm] = "lora_adapter_metadata", mv[nm++] = meta.s;
            }
        } else {
            snprintf(dim, sizeof dim, uniform_rank ? "%d" : "Dynamic", lt_rank(&t[0]));
            if (uniform_alpha) snprintf(alpha, sizeof alpha, "%g", t[0].alpha);
            else snprintf(alpha, sizeof alpha, "Dynamic");
            mk[nm] = "ss_network_module", mv[nm++] = "networks.lora";
            mk[nm] = "ss_network_dim", mv[nm++] = dim;
            mk[nm] = "ss_network_alpha", mv[nm++] = alpha;
        }
        if (!rc) rc = st_write(path, np, ts, n * per, mk, mv, nm, err);
    }
    free(meta.s);
    free(mods);
    free(names);
    free(np);
    free(ts);
    free(alphas);
    return rc;
}

int lora_tensors_from_table(const ParamTable *tb, Component c, float alpha, LoraTensor **out, int *n,
                            SdcError *err) {
    *out = NULL;
    *n = 0;
    static const char DOWN[] = ".lora.down.weight", UP[] = ".lora.up.weight";
    int count = 0;
    size_t name_bytes = 0;
    for (int i = 0; i < tb->n; i++)
        if (ends_with(tb->e[i].name, DOWN)) count++, name_bytes += strlen(tb->e[i].name) + 1;
    if (!count) return sdc_err(err, SDC_ERR_ARG, "no \"<module>%s\" tensors in the table", DOWN);
    LoraTensor *t = malloc((size_t)count * sizeof *t + name_bytes);
    if (!t) return sdc_err(err, SDC_ERR_OOM, "LoRA table: out of memory");
    char *names = (char *)(t + count);
    int k = 0;
    for (int i = 0; i < tb->n; i++) {
        const char *nm = tb->e[i].name;
        if (!ends_with(nm, DOWN)) continue;
        size_t ml = strlen(nm) - strlen(DOWN);
        char up_name[sizeof tb->e[i].name + 8];
        snprintf(up_name, sizeof up_name, "%.*s%s", (int)ml, nm, UP);
        int j = param_table_find(tb, up_name);
        if (j < 0) {
            free(t);
            return sdc_err(err, SDC_ERR_ARG, "LoRA table: %s has no %s", nm, up_name);
        }
        memcpy(names, nm, ml);
        names[ml] = 0;
        t[k++] = (LoraTensor){.comp = c, .module = names, .down = tb->e[i].t, .up = tb->e[j].t, .alpha = alpha};
        names += ml + 1;
    }
    *out = t;
    *n = count;
    return 0;
}
