// unet_layout.c: the UNet block list from a config (see unet_layout.h).
#include "models/unet_layout.h"

#include <stdio.h>
#include <string.h>

const char *unet_block_kind_name(UnetBlockKind k) {
    switch (k) {
    case UNET_BLOCK_TIME: return "time";
    case UNET_BLOCK_CONV_IN: return "conv_in";
    case UNET_BLOCK_RESNET: return "resnet";
    case UNET_BLOCK_TRANSFORMER: return "transformer";
    case UNET_BLOCK_DOWNSAMPLE: return "downsample";
    case UNET_BLOCK_UPSAMPLE: return "upsample";
    case UNET_BLOCK_OUT: return "out";
    case UNET_BLOCK_KINDS: break;
    }
    return "?";
}

typedef struct Builder {
    const UnetConfig *c;
    UnetBlockInfo *b;
    int n;
    int skip_ch[UNET_MAX_SKIPS], n_skip;
    int ch, div;
} Builder;

static UnetBlockInfo *add(Builder *B, UnetBlockKind kind, int cin, int cout, int push, int pop) {
    UnetBlockInfo *b = &B->b[B->n++];
    memset(b, 0, sizeof *b);
    b->kind = kind;
    b->in_channels = cin;
    b->out_channels = cout;
    b->in_div = b->out_div = B->div;
    b->pushes_skip = push;
    b->pops_skip = pop;
    if (pop) b->skip_channels = B->skip_ch[--B->n_skip];
    if (push) B->skip_ch[B->n_skip++] = cout;
    return b;
}

static void prefix(UnetBlockInfo *b, const char *orig, const char *diff) {
    UnetPrefix *p = &b->pre[b->n_pre++];
    snprintf(p->orig, sizeof p->orig, "%s", orig);
    snprintf(p->diff, sizeof p->diff, "%s", diff);
}

// name "down_blocks.1.resnets.0"; prefixes "<orig>." and "<name>."
static void named(UnetBlockInfo *b, const char *orig, const char *fmt, int i, int j) {
    snprintf(b->name, sizeof b->name, fmt, i, j);
    char o[48], d[64];
    snprintf(o, sizeof o, "%.40s.", orig);
    snprintf(d, sizeof d, "%.47s.", b->name);
    prefix(b, o, d);
}

static void transformer(Builder *B, int level, int push, const char *orig, const char *fmt, int i, int j) {
    const UnetConfig *c = B->c;
    UnetBlockInfo *b = add(B, UNET_BLOCK_TRANSFORMER, B->ch, B->ch, push, 0);
    named(b, orig, fmt, i, j);
    b->heads = c->heads[level];
    b->n_layers = c->transformer_layers[level];
    b->inner = b->heads > 0 ? b->heads * (B->ch / b->heads) : 0;
    b->linear_proj = c->use_linear_projection;
}

int unet_layout(const UnetConfig *c, UnetBlockInfo *out, int *n_out, SdcError *err) {
    const int nl = c->n_levels, lpb = c->layers_per_block;
    *n_out = 0;
    if (nl < 1 || nl > SDC_MAX_LEVELS || lpb < 1 || lpb > 8)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "unet config: %d levels (down_block_types) with %d layers_per_block: "
                       "sdc handles 1..%d levels and 1..8 layers\n---> check unet/config.json", nl, lpb,
                       SDC_MAX_LEVELS);
    Builder B = {.c = c, .b = out, .ch = c->block_out[0], .div = 1};
    const int C0 = c->block_out[0];
    char o[40];
    UnetBlockInfo *b;
    _Static_assert(sizeof o <= sizeof ((UnetPrefix *)0)->orig - 8, "room for the original prefixes");

    b = add(&B, UNET_BLOCK_TIME, C0, 4 * C0, 0, 0);
    snprintf(b->name, sizeof b->name, "time_embedding");
    prefix(b, "time_embed.0.", "time_embedding.linear_1.");
    prefix(b, "time_embed.2.", "time_embedding.linear_2.");
    if (c->add_time_dim) {
        prefix(b, "label_emb.0.0.", "add_embedding.linear_1.");
        prefix(b, "label_emb.0.2.", "add_embedding.linear_2.");
    }

    b = add(&B, UNET_BLOCK_CONV_IN, c->in_channels, C0, 1, 0);
    snprintf(b->name, sizeof b->name, "conv_in");
    prefix(b, "input_blocks.0.0.", "conv_in.");

    for (int l = 0; l < nl; l++) { // down: input_blocks 1 + l * (lpb + 1) + j
        const int cout = c->block_out[l];
        for (int j = 0; j < lpb; j++) {
            const int k = 1 + l * (lpb + 1) + j, attn = c->down_attn[l];
            snprintf(o, sizeof o, "input_blocks.%d.0", k);
            b = add(&B, UNET_BLOCK_RESNET, B.ch, cout, !attn, 0);
            named(b, o, "down_blocks.%d.resnets.%d", l, j);
            B.ch = cout;
            if (attn) {
                snprintf(o, sizeof o, "input_blocks.%d.1", k);
                transformer(&B, l, 1, o, "down_blocks.%d.attentions.%d", l, j);
            }
        }
        if (l < nl - 1) {
            const int k = 1 + l * (lpb + 1) + lpb;
            b = add(&B, UNET_BLOCK_DOWNSAMPLE, B.ch, B.ch, 1, 0);
            b->out_div = B.div * 2;
            snprintf(b->name, sizeof b->name, "down_blocks.%d.downsamplers.0", l);
            char d[64];
            snprintf(o, sizeof o, "input_blocks.%d.0.op.", k);
            snprintf(d, sizeof d, "%.47s.conv.", b->name);
            prefix(b, o, d);
            B.div *= 2;
        }
    }

    b = add(&B, UNET_BLOCK_RESNET, B.ch, B.ch, 0, 0);
    named(b, "middle_block.0", "mid_block.resnets.%d", 0, 0);
    if (c->mid_attn) transformer(&B, nl - 1, 0, "middle_block.1", "mid_block.attentions.%d", 0, 0);
    b = add(&B, UNET_BLOCK_RESNET, B.ch, B.ch, 0, 0);
    named(b, c->mid_attn ? "middle_block.2" : "middle_block.1", "mid_block.resnets.%d", 1, 0);

    for (int i = 0; i < nl; i++) { // up: output_blocks i * (lpb + 1) + j; level i mirrors down level nl-1-i
        const int dl = nl - 1 - i, cout = c->block_out[dl];
        for (int j = 0; j <= lpb; j++) {
            const int k = i * (lpb + 1) + j;
            if (B.n_skip < 1) return sdc_err(err, SDC_ERR_INTERNAL, "unet layout: skip stack underflow");
            snprintf(o, sizeof o, "output_blocks.%d.0", k);
            b = add(&B, UNET_BLOCK_RESNET, B.ch, cout, 0, 1);
            named(b, o, "up_blocks.%d.resnets.%d", i, j);
            B.ch = cout;
            if (c->up_attn[i]) {
                snprintf(o, sizeof o, "output_blocks.%d.1", k);
                transformer(&B, dl, 0, o, "up_blocks.%d.attentions.%d", i, j);
            }
        }
        if (i < nl - 1) {
            const int k = i * (lpb + 1) + lpb;
            b = add(&B, UNET_BLOCK_UPSAMPLE, B.ch, B.ch, 0, 0);
            b->out_div = B.div / 2;
            snprintf(b->name, sizeof b->name, "up_blocks.%d.upsamplers.0", i);
            char d[64];
            snprintf(o, sizeof o, "output_blocks.%d.%d.conv.", k, c->up_attn[i] ? 2 : 1);
            snprintf(d, sizeof d, "%.47s.conv.", b->name);
            prefix(b, o, d);
            B.div /= 2;
        }
    }
    if (B.n_skip != 0 || B.div != 1) return sdc_err(err, SDC_ERR_INTERNAL, "unet layout: unbalanced skips");

    b = add(&B, UNET_BLOCK_OUT, B.ch, c->out_channels, 0, 0);
    snprintf(b->name, sizeof b->name, "conv_out");
    prefix(b, "out.0.", "conv_norm_out.");
    prefix(b, "out.2.", "conv_out.");
    *n_out = B.n;
    return 0;
}

int unet_block_module(const UnetBlockInfo *b, int k, char *buf, size_t n) {
    static const char *const TF_LEAF[] = {"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                                          "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
                                          "ff.net.0.proj", "ff.net.2"};
    static const char *const RES[] = {"conv1", "conv2", "time_emb_proj", "conv_shortcut"};
    const int n_leaf = (int)(sizeof TF_LEAF / sizeof TF_LEAF[0]);
    int last = -1; // index of the block's last module
    switch (b->kind) {
    case UNET_BLOCK_TIME: last = b->n_pre - 1; break;
    case UNET_BLOCK_RESNET: last = b->in_channels + b->skip_channels != b->out_channels ? 3 : 2; break;
    case UNET_BLOCK_TRANSFORMER: last = 1 + b->n_layers * n_leaf; break;
    case UNET_BLOCK_KINDS: break;
    default: last = 0; break;
    }
    if (k < 0 || k > last) return 0;
    switch (b->kind) {
    case UNET_BLOCK_TIME: snprintf(buf, n, "%s_embedding.linear_%d", k < 2 ? "time" : "add", k % 2 + 1); break;
    case UNET_BLOCK_CONV_IN: snprintf(buf, n, "conv_in"); break;
    case UNET_BLOCK_OUT: snprintf(buf, n, "conv_out"); break;
    case UNET_BLOCK_DOWNSAMPLE:
    case UNET_BLOCK_UPSAMPLE: snprintf(buf, n, "%s.conv", b->name); break;
    case UNET_BLOCK_RESNET: snprintf(buf, n, "%s.%s", b->name, RES[k]); break;
    case UNET_BLOCK_TRANSFORMER:
        if (k < 2) snprintf(buf, n, "%s.%s", b->name, k ? "proj_out" : "proj_in");
        else snprintf(buf, n, "%s.transformer_blocks.%d.%s", b->name, (k - 2) / n_leaf, TF_LEAF[(k - 2) % n_leaf]);
        break;
    case UNET_BLOCK_KINDS: return 0;
    }
    return 1;
}

int unet_module_is_attn_proj(const char *module) {
    static const char *const END[] = {".to_q", ".to_k", ".to_v", ".to_out.0"};
    const size_t lm = strlen(module);
    for (int i = 0; i < 4; i++) {
        const size_t le = strlen(END[i]);
        if (lm > le && !strcmp(module + lm - le, END[i])) return 1;
    }
    return 0;
}
