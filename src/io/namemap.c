// namemap.c: the rule tables of namemap.h and the two lookups over them.
//
// A name maps by its longest matching rule prefix, then by the first matching
// entry of the rule's inner table (the rest is kept as is: the transformer
// blocks inside UNet attentions have the same names in both layouts). Each
// component has a catch-all rule (its bare prefix), so names this table does
// not know pass through unchanged rather than vanish.
#include "io/namemap.h"

#include <stdio.h>
#include <string.h>

#include "models/unet_layout.h"
#include "models/vae_layout.h"

// ----------------------------------------------------------------------------
// inner rename tables: {original, diffusers, kind}; '*' in a NM_ROW_SLICE
// diffusers name stands for q / k / v.

typedef struct InnerRename {
    const char *orig, *diff;
    NameMapKind kind;
} InnerRename;

enum { IN_UNET_RESNET = 0, IN_VAE_RESNET, IN_VAE_ATTN, IN_OPENCLIP_LAYER, IN_TRANSPOSE, IN_COUNT };

static const InnerRename UNET_RESNET[] = {
    {"in_layers.0.", "norm1.", NM_PLAIN},     {"in_layers.2.", "conv1.", NM_PLAIN},
    {"emb_layers.1.", "time_emb_proj.", NM_PLAIN}, {"out_layers.0.", "norm2.", NM_PLAIN},
    {"out_layers.3.", "conv2.", NM_PLAIN},    {"skip_connection.", "conv_shortcut.", NM_PLAIN},
    {NULL, NULL, 0},
};
static const InnerRename VAE_RESNET[] = {
    {"nin_shortcut.", "conv_shortcut.", NM_PLAIN},
    {NULL, NULL, 0},
};
static const InnerRename VAE_ATTN[] = {
    {"norm.", "group_norm.", NM_PLAIN},
    {"q.weight", "to_q.weight", NM_CONV_TO_LINEAR},     {"q.bias", "to_q.bias", NM_PLAIN},
    {"k.weight", "to_k.weight", NM_CONV_TO_LINEAR},     {"k.bias", "to_k.bias", NM_PLAIN},
    {"v.weight", "to_v.weight", NM_CONV_TO_LINEAR},     {"v.bias", "to_v.bias", NM_PLAIN},
    {"proj_out.weight", "to_out.0.weight", NM_CONV_TO_LINEAR}, {"proj_out.bias", "to_out.0.bias", NM_PLAIN},
    {NULL, NULL, 0},
};
static const InnerRename OPENCLIP_LAYER[] = {
    {"ln_1.", "layer_norm1.", NM_PLAIN},      {"ln_2.", "layer_norm2.", NM_PLAIN},
    {"mlp.c_fc.", "mlp.fc1.", NM_PLAIN},      {"mlp.c_proj.", "mlp.fc2.", NM_PLAIN},
    {"attn.out_proj.", "self_attn.out_proj.", NM_PLAIN},
    {"attn.in_proj_weight", "self_attn.*_proj.weight", NM_ROW_SLICE},
    {"attn.in_proj_bias", "self_attn.*_proj.bias", NM_ROW_SLICE},
    {NULL, NULL, 0},
};
static const InnerRename TRANSPOSED[] = { // the whole (exact) name
    {"", "", NM_TRANSPOSE},
    {NULL, NULL, 0},
};
static const InnerRename *const INNER[IN_COUNT] = {UNET_RESNET, VAE_RESNET, VAE_ATTN, OPENCLIP_LAYER, TRANSPOSED};

// Original names of tensors no model uses (prefix match).
static const char *const IGNORED[] = {
    "model_ema.", "cond_stage_model.model.text_projection", "cond_stage_model.model.logit_scale",
    "conditioner.embedders.1.model.logit_scale", "conditioner.embedders.0.model.logit_scale",
};

#define P_UNET "model.diffusion_model."
#define P_VAE "first_stage_model."
#define P_CLIP "cond_stage_model.transformer."
#define P_OPENCLIP "cond_stage_model.model."
#define P_XL_CLIP "conditioner.embedders.0.transformer."
#define P_XL_OPENCLIP "conditioner.embedders.1.model."
#define P_XL_REFINER "conditioner.embedders.0.model." // the refiner's one embedder

// ----------------------------------------------------------------------------
// building the rules

static int add_rule(NameMap *nm, Component c, int inner, const char *orig, const char *diff) {
    if (nm->n >= NAMEMAP_MAX_RULES) return -1;
    NameRule *r = &nm->rules[nm->n++];
    r->comp = c;
    r->inner = inner;
    snprintf(r->orig, sizeof r->orig, "%s", orig);
    snprintf(r->diff, sizeof r->diff, "%s", diff);
    return 0;
}

// RULE(comp, inner, (orig_fmt, ...), (diff_fmt, ...)): a rule with numbers.
#define NM_UNPAREN(...) __VA_ARGS__
#define NM_SNPRINTF(buf, ...) snprintf(buf, sizeof buf, __VA_ARGS__)
#define RULE(c, inner, O, D)                                                 \
    do {                                                                     \
        char o_[80], d_[80];                                                 \
        NM_SNPRINTF(o_, NM_UNPAREN O);                                       \
        NM_SNPRINTF(d_, NM_UNPAREN D);                                       \
        if (add_rule(nm, c, inner, o_, d_)) goto full;                       \
    } while (0)

#define ADD(c, inner, orig, diff)                                             \
    do {                                                                     \
        if (add_rule(nm, c, inner, orig, diff)) goto full;                   \
    } while (0)

int namemap_init(NameMap *nm, const UnetConfig *u, const VaeConfig *v, int openclip, SdcError *err) {
    memset(nm, 0, sizeof *nm);
    nm->openclip = openclip; // NM_TEXT_*
    const int n = u->n_levels, lpb = u->layers_per_block;
    if (n < 1 || n > SDC_MAX_LEVELS || lpb < 1 || lpb > 8 || v->n_levels < 1 || v->n_levels > SDC_MAX_LEVELS ||
        v->layers_per_block < 1 || v->layers_per_block > 8)
        return sdc_err(err, SDC_ERR_ARG, "namemap: UNet %d levels x %d layers, VAE %d levels x %d layers: "
                       "expected 1..%d levels and 1..8 layers per block", n, lpb, v->n_levels,
                       v->layers_per_block, SDC_MAX_LEVELS);

    // UNet: one rule per parameter prefix of every block of its layout
    // (src/models/unet_layout.h, the list the model itself is built from);
    // resnets rename their inner names too.
    ADD(COMP_UNET, -1, P_UNET, "");
    ADD(COMP_UNET, -1, P_UNET "label_emb.0.0.", "add_embedding.linear_1.");
    ADD(COMP_UNET, -1, P_UNET "label_emb.0.2.", "add_embedding.linear_2.");
    {
        UnetBlockInfo blocks[UNET_MAX_BLOCKS];
        int nb = 0;
        SDC_TRY(unet_layout(u, blocks, &nb, err));
        for (int i = 0; i < nb; i++)
            for (int k = 0; k < blocks[i].n_pre; k++)
                RULE(COMP_UNET, blocks[i].kind == UNET_BLOCK_RESNET ? IN_UNET_RESNET : -1,
                     (P_UNET "%s", blocks[i].pre[k].orig), ("%s", blocks[i].pre[k].diff));
    }

    // VAE: one rule per parameter prefix of every block of its encoder and
    // decoder lists (src/models/vae_layout.h, the lists the model is built
    // from); resnets and the attention rename their inner names too.
    ADD(COMP_VAE, -1, P_VAE, "");
    for (int part = 0; part < VAE_PARTS; part++) {
        VaeBlockInfo blocks[VAE_MAX_BLOCKS];
        int nb = 0;
        SDC_TRY(vae_layout(v, (VaePart)part, blocks, &nb, err));
        for (int i = 0; i < nb; i++) {
            const VaeBlockKind k = blocks[i].kind;
            const int inner = k == VAE_BLOCK_RESNET ? IN_VAE_RESNET : k == VAE_BLOCK_ATTENTION ? IN_VAE_ATTN : -1;
            for (int j = 0; j < blocks[i].n_pre; j++)
                RULE(COMP_VAE, inner, (P_VAE "%s", blocks[i].pre[j].orig), ("%s", blocks[i].pre[j].diff));
        }
    }

    // Text encoder(s).
    if (openclip == NM_TEXT_CLIP) {
        ADD(COMP_TEXT_ENCODER, -1, P_CLIP "text_model.", "text_model.");
        ADD(COMP_TEXT_ENCODER, -1, P_CLIP, "text_model."); // transformers < 4.x layout
        // CLIPTextModelWithProjection's projection (unused by SD) keeps its place
        ADD(COMP_TEXT_ENCODER, -1, P_CLIP "text_projection.", "text_projection.");
    } else if (openclip == NM_TEXT_XL) {
        ADD(COMP_TEXT_ENCODER, -1, P_XL_CLIP "text_model.", "text_model.");
        ADD(COMP_TEXT_ENCODER, -1, P_XL_CLIP, "text_model.");
    }
    if (openclip != NM_TEXT_CLIP) {
        const int xl = openclip == NM_TEXT_XL || openclip == NM_TEXT_XL_REFINER;
        const Component c = xl ? COMP_TEXT_ENCODER_2 : COMP_TEXT_ENCODER;
        const char *P = openclip == NM_TEXT_XL ? P_XL_OPENCLIP : openclip == NM_TEXT_XL_REFINER ? P_XL_REFINER
                                                                                                : P_OPENCLIP;
        RULE(c, -1, ("%s", P), ("%s", ""));
        RULE(c, -1, ("%stoken_embedding.", P), ("%s", "text_model.embeddings.token_embedding."));
        RULE(c, -1, ("%spositional_embedding", P), ("%s", "text_model.embeddings.position_embedding.weight"));
        RULE(c, -1, ("%sln_final.", P), ("%s", "text_model.final_layer_norm."));
        RULE(c, IN_OPENCLIP_LAYER, ("%stransformer.resblocks.#.", P), ("%s", "text_model.encoder.layers.#."));
        if (xl) // (hidden, projection): x @ P
            RULE(c, IN_TRANSPOSE, ("%stext_projection", P), ("%s", "text_projection.weight"));
    }
    return 0;
full:
    return sdc_err(err, SDC_ERR_INTERNAL, "namemap: more than %d rules; raise NAMEMAP_MAX_RULES",
                   NAMEMAP_MAX_RULES);
}

// ----------------------------------------------------------------------------
// matching

// Length of s consumed by pattern pat ('#' = one decimal number, stored in
// *num), or -1 if s does not start with it.
static int pat_match(const char *pat, const char *s, long *num) {
    const char *p = pat, *q = s;
    while (*p) {
        if (*p == '#') {
            if (*q < '0' || *q > '9') return -1;
            long v = 0;
            int digits = 0;
            while (*q >= '0' && *q <= '9' && digits < 9) v = v * 10 + (*q++ - '0'), digits++;
            if (*q >= '0' && *q <= '9') return -1;
            *num = v;
            p++;
            continue;
        }
        if (*p != *q) return -1;
        p++, q++;
    }
    return (int)(q - s);
}

// Writes pat with '#' replaced by num into out.
static size_t pat_write(char *out, size_t cap, const char *pat, long num) {
    size_t k = 0;
    for (const char *p = pat; *p && k + 1 < cap; p++) {
        if (*p == '#') k += (size_t)snprintf(out + k, cap - k, "%ld", num);
        else out[k++] = *p;
        if (k >= cap) k = cap - 1;
    }
    out[k] = 0;
    return k;
}

// Best (longest) rule for name, matching the original (dir 0) or diffusers
// (dir 1) side; for dir 1 only rules of component c.
static const NameRule *best_rule(const NameMap *nm, const char *name, int dir, Component c, int *len, long *num) {
    const NameRule *best = NULL;
    int best_len = -1;
    for (int i = 0; i < nm->n; i++) {
        const NameRule *r = &nm->rules[i];
        if (dir && r->comp != c) continue;
        long v = 0;
        int l = pat_match(dir ? r->diff : r->orig, name, &v);
        if (l > best_len) {
            best = r;
            best_len = l;
            *num = v;
        }
    }
    *len = best_len;
    return best;
}

// out = a b c; -1 if that does not fit NAMEMAP_NAME_MAX (never truncated).
static int join3(char *out, const char *a, const char *b, const char *c) {
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    if (la + lb + lc >= NAMEMAP_NAME_MAX) return -1;
    memcpy(out, a, la);
    memcpy(out + la, b, lb);
    memcpy(out + la + lb, c, lc + 1);
    return 0;
}

int namemap_from_original(const NameMap *nm, const char *orig, NameMapping out[3]) {
    for (size_t i = 0; i < sizeof IGNORED / sizeof IGNORED[0]; i++)
        if (!strncmp(orig, IGNORED[i], strlen(IGNORED[i]))) return 0;
    int len;
    long num = 0;
    const NameRule *r = best_rule(nm, orig, 0, 0, &len, &num);
    if (!r) return 0; // no component: scheduler buffers (alphas_cumprod, ...) and the like
    char head[NAMEMAP_NAME_MAX];
    pat_write(head, sizeof head, r->diff, num);
    const char *rest = orig + len;
    const InnerRename *in = NULL;
    if (r->inner >= 0)
        for (const InnerRename *t = INNER[r->inner]; t->orig; t++)
            if (!strncmp(rest, t->orig, strlen(t->orig))) {
                in = t;
                break;
            }
    if (!in) {
        out[0] = (NameMapping){.comp = r->comp, .kind = NM_PLAIN};
        return join3(out[0].name, head, "", rest) ? -1 : 1;
    }
    const char *tail = rest + strlen(in->orig);
    if (in->kind != NM_ROW_SLICE) {
        out[0] = (NameMapping){.comp = r->comp, .kind = in->kind};
        return join3(out[0].name, head, in->diff, tail) ? -1 : 1;
    }
    for (int s = 0; s < 3; s++) {
        char d[96];
        snprintf(d, sizeof d, "%s", in->diff);
        char *star = strchr(d, '*');
        if (star) *star = "qkv"[s];
        out[s] = (NameMapping){.comp = r->comp, .kind = NM_ROW_SLICE, .slice = s};
        if (join3(out[s].name, head, d, tail)) return -1;
    }
    return 3;
}

int namemap_to_original(const NameMap *nm, Component c, const char *diff, NameMapping *out) {
    int len;
    long num = 0;
    const NameRule *r = best_rule(nm, diff, 1, c, &len, &num);
    if (!r) return -1;
    char head[NAMEMAP_NAME_MAX];
    pat_write(head, sizeof head, r->orig, num);
    const char *rest = diff + len;
    *out = (NameMapping){.comp = c, .kind = NM_PLAIN};
    if (r->inner >= 0)
        for (const InnerRename *t = INNER[r->inner]; t->orig; t++) {
            const char *star = strchr(t->diff, '*');
            size_t dl = strlen(t->diff);
            int slice = 0, hit;
            if (star) {
                size_t pre = (size_t)(star - t->diff);
                const char *sp = strchr("qkv", rest[pre]);
                hit = !strncmp(rest, t->diff, pre) && rest[pre] && sp &&
                      !strncmp(rest + pre + 1, star + 1, dl - pre - 1);
                if (hit) slice = (int)(sp - "qkv");
            } else {
                hit = !strncmp(rest, t->diff, dl);
            }
            if (!hit) continue;
            out->kind = t->kind;
            out->slice = slice;
            return join3(out->name, head, t->orig, rest + dl);
        }
    return join3(out->name, head, "", rest);
}

const char *namemap_prefix(const NameMap *nm, Component c) {
    switch (c) {
    case COMP_UNET: return P_UNET;
    case COMP_VAE: return P_VAE;
    case COMP_TEXT_ENCODER:
        return nm->openclip == NM_TEXT_XL           ? P_XL_CLIP
               : nm->openclip == NM_TEXT_XL_REFINER ? "" // the refiner has no first text encoder
               : nm->openclip                       ? P_OPENCLIP
                                                    : P_CLIP;
    case COMP_TEXT_ENCODER_2:
        return nm->openclip == NM_TEXT_XL ? P_XL_OPENCLIP : nm->openclip == NM_TEXT_XL_REFINER ? P_XL_REFINER : "";
    default: return "";
    }
}
