// vae_layout.c: the VAE's block lists from a config (see vae_layout.h).
#include "models/vae_layout.h"

#include <stdio.h>
#include <string.h>

const char *vae_block_kind_name(VaeBlockKind k) {
    switch (k) {
    case VAE_BLOCK_CONV_IN: return "conv_in";
    case VAE_BLOCK_RESNET: return "resnet";
    case VAE_BLOCK_ATTENTION: return "attention";
    case VAE_BLOCK_DOWNSAMPLE: return "downsample";
    case VAE_BLOCK_UPSAMPLE: return "upsample";
    case VAE_BLOCK_OUT: return "out";
    case VAE_BLOCK_QUANT: return "quant_conv";
    case VAE_BLOCK_POST_QUANT: return "post_quant_conv";
    case VAE_BLOCK_KINDS: break;
    }
    return "?";
}

typedef struct Builder {
    VaeBlockInfo *b;
    int n;
    int ch, div; // channels and divisor of the running activation
} Builder;

// A block from the running activation to cout channels at divisor out_div.
static VaeBlockInfo *add(Builder *B, VaeBlockKind kind, int cout, int out_div) {
    VaeBlockInfo *b = &B->b[B->n++];
    memset(b, 0, sizeof *b);
    b->kind = kind;
    b->in_channels = B->ch;
    b->out_channels = cout;
    b->in_div = B->div;
    b->out_div = out_div;
    B->ch = cout;
    B->div = out_div;
    return b;
}

static void prefix(VaeBlockInfo *b, const char *orig, const char *diff) {
    VaePrefix *p = &b->pre[b->n_pre++];
    snprintf(p->orig, sizeof p->orig, "%s", orig);
    snprintf(p->diff, sizeof p->diff, "%s", diff);
}

// name = diff without its dot; one prefix pair "<orig>." / "<diff>."
static void named(VaeBlockInfo *b, const char *orig, const char *diff) {
    char o[48], d[48];
    snprintf(b->name, sizeof b->name, "%s", diff);
    snprintf(o, sizeof o, "%.46s.", orig);
    snprintf(d, sizeof d, "%.46s.", diff);
    prefix(b, o, d);
}

// A block whose parameters have the same name in both layouts.
static void same_named(VaeBlockInfo *b, const char *name) { named(b, name, name); }

// The mid block of part s ("encoder" / "decoder"): resnet, attention, resnet.
static void mid(Builder *B, const char *s) {
    char o[48], d[48];
    snprintf(o, sizeof o, "%s.mid.block_1", s);
    snprintf(d, sizeof d, "%s.mid_block.resnets.0", s);
    named(add(B, VAE_BLOCK_RESNET, B->ch, B->div), o, d);
    snprintf(o, sizeof o, "%s.mid.attn_1", s);
    snprintf(d, sizeof d, "%s.mid_block.attentions.0", s);
    named(add(B, VAE_BLOCK_ATTENTION, B->ch, B->div), o, d);
    snprintf(o, sizeof o, "%s.mid.block_2", s);
    snprintf(d, sizeof d, "%s.mid_block.resnets.1", s);
    named(add(B, VAE_BLOCK_RESNET, B->ch, B->div), o, d);
}

// conv_norm_out + SiLU + conv_out of part s to cout channels.
static void out(Builder *B, const char *s, int cout) {
    VaeBlockInfo *b = add(B, VAE_BLOCK_OUT, cout, B->div);
    char o[48], d[48];
    snprintf(b->name, sizeof b->name, "%s.conv_out", s);
    snprintf(o, sizeof o, "%s.norm_out.", s);
    snprintf(d, sizeof d, "%s.conv_norm_out.", s);
    prefix(b, o, d);
    snprintf(d, sizeof d, "%s.conv_out.", s);
    prefix(b, d, d);
}

int vae_layout(const VaeConfig *c, VaePart part, VaeBlockInfo *list, int *n_out, SdcError *err) {
    const int nl = c->n_levels, lpb = c->layers_per_block, L = c->latent_channels;
    *n_out = 0;
    if (nl < 1 || nl > SDC_MAX_LEVELS || lpb < 1 || lpb > VAE_MAX_LAYERS)
        return sdc_err(err, SDC_ERR_UNSUPPORTED, "vae config: %d levels (block_out_channels) with %d layers_per_block: "
                       "sdc handles 1..%d levels and 1..%d layers\n---> check vae/config.json", nl, lpb,
                       SDC_MAX_LEVELS, VAE_MAX_LAYERS);
    const int f = 1 << (nl - 1);
    char o[48], d[48];
    VaeBlockInfo *b;
    if (part == VAE_ENCODER) {
        Builder B = {.b = list, .ch = c->in_channels, .div = 1};
        same_named(add(&B, VAE_BLOCK_CONV_IN, c->block_out[0], 1), "encoder.conv_in");
        for (int l = 0; l < nl; l++) {
            for (int j = 0; j < lpb; j++) {
                snprintf(o, sizeof o, "encoder.down.%d.block.%d", l, j);
                snprintf(d, sizeof d, "encoder.down_blocks.%d.resnets.%d", l, j);
                named(add(&B, VAE_BLOCK_RESNET, c->block_out[l], B.div), o, d);
            }
            if (l < nl - 1) {
                b = add(&B, VAE_BLOCK_DOWNSAMPLE, B.ch, B.div * 2);
                snprintf(b->name, sizeof b->name, "encoder.down_blocks.%d.downsamplers.0", l);
                snprintf(o, sizeof o, "encoder.down.%d.downsample.conv.", l);
                snprintf(d, sizeof d, "%.40s.conv.", b->name);
                prefix(b, o, d);
            }
        }
        mid(&B, "encoder");
        out(&B, "encoder", 2 * L);
        same_named(add(&B, VAE_BLOCK_QUANT, 2 * L, f), "quant_conv");
        *n_out = B.n;
        return 0;
    }
    Builder B = {.b = list, .ch = L, .div = f};
    same_named(add(&B, VAE_BLOCK_POST_QUANT, L, f), "post_quant_conv");
    same_named(add(&B, VAE_BLOCK_CONV_IN, c->block_out[nl - 1], f), "decoder.conv_in");
    mid(&B, "decoder");
    for (int i = 0; i < nl; i++) { // diffusers' up_blocks.i is the original up.(nl-1-i)
        const int cout = c->block_out[nl - 1 - i];
        for (int j = 0; j <= lpb; j++) {
            snprintf(o, sizeof o, "decoder.up.%d.block.%d", nl - 1 - i, j);
            snprintf(d, sizeof d, "decoder.up_blocks.%d.resnets.%d", i, j);
            named(add(&B, VAE_BLOCK_RESNET, cout, B.div), o, d);
        }
        if (i < nl - 1) {
            b = add(&B, VAE_BLOCK_UPSAMPLE, B.ch, B.div / 2);
            snprintf(b->name, sizeof b->name, "decoder.up_blocks.%d.upsamplers.0", i);
            snprintf(o, sizeof o, "decoder.up.%d.upsample.conv.", nl - 1 - i);
            snprintf(d, sizeof d, "%.40s.conv.", b->name);
            prefix(b, o, d);
        }
    }
    out(&B, "decoder", c->out_channels);
    *n_out = B.n;
    return 0;
}
