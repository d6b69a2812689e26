// test_vae_blocks.c: the VAE's encoder and decoder block lists
// (src/models/vae_layout.h), which loading, the name map, encode / decode and
// tiling walk. Checks, for the SD 1.x/2.x VAE config: the order and count of
// the blocks, that each block's input is the previous block's output
// (channels and spatial divisor), and the names in both layouts at the
// places diffusers' convert_ldm_vae_checkpoint reverses (decoder up levels).
// On the tiny fixture: every parameter of the file is owned by exactly one
// block (the blocks' parameter counts add up to the file's), and the
// activation plan is main (the largest output but the last one's) plus the
// largest block scratch, from the per-block bytes vae_reserve records.
// Parity of the walk itself with diffusers is test_vae / test_vae_tiled.
#include <stdio.h>
#include <string.h>

#include "core/arena.h"
#include "core/backend.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/vae.h"
#include "testutil.h"

static const VaeConfig SD = {.in_channels = 3, .out_channels = 3, .latent_channels = 4, .n_levels = 4,
                             .block_out = {128, 256, 512, 512}, .layers_per_block = 2, .norm_groups = 32,
                             .norm_eps = 1e-6f, .scaling_factor = 0.18215f, .sample_size = 512};

static int find(const VaeBlockInfo *b, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(b[i].name, name)) return i;
    return -1;
}

static void sd_lists(TestCtx *t) {
    VaeBlockInfo b[VAE_MAX_BLOCKS];
    int n = 0;
    SdcError err = {0};
    printf("SD VAE block lists\n");
    // encoder: conv_in, 4 x 2 resnets + 3 downsamples, mid (3), out, quant_conv
    int rc = vae_layout(&SD, VAE_ENCODER, b, &n, &err);
    check_true(t, rc == 0 && n == 17, "encoder: %d blocks (17)", n);
    check_true(t, b[0].kind == VAE_BLOCK_CONV_IN && b[0].in_channels == 3 && b[0].out_channels == 128,
               "encoder block 0 conv_in 3 -> 128");
    check_true(t, b[n - 1].kind == VAE_BLOCK_QUANT && b[n - 1].out_channels == 8 && b[n - 1].out_div == 8,
               "encoder ends with quant_conv -> 2 x 4 channels at 1/8");
    int chained = 1;
    for (int i = 1; i < n; i++)
        chained &= b[i].in_channels == b[i - 1].out_channels && b[i].in_div == b[i - 1].out_div;
    check_true(t, chained, "encoder: each block reads the previous block's output");
    int i = find(b, n, "encoder.down_blocks.1.resnets.0");
    check_true(t, i > 0 && b[i].in_channels == 128 && b[i].out_channels == 256 && b[i].in_div == 2 &&
                      !strcmp(b[i].pre[0].orig, "encoder.down.1.block.0."),
               "encoder.down_blocks.1.resnets.0: 128 -> 256 at 1/2, original encoder.down.1.block.0.");
    i = find(b, n, "encoder.down_blocks.2.downsamplers.0");
    check_true(t, i > 0 && b[i].kind == VAE_BLOCK_DOWNSAMPLE && b[i].in_div == 4 && b[i].out_div == 8 &&
                      !strcmp(b[i].pre[0].orig, "encoder.down.2.downsample.conv."),
               "encoder.down_blocks.2.downsamplers.0: 1/4 -> 1/8, original encoder.down.2.downsample.conv.");

    // decoder: post_quant_conv, conv_in, mid (3), 4 x 3 resnets + 3 upsamples, out
    rc = vae_layout(&SD, VAE_DECODER, b, &n, &err);
    check_true(t, rc == 0 && n == 21, "decoder: %d blocks (21)", n);
    check_true(t, b[0].kind == VAE_BLOCK_POST_QUANT && b[0].in_div == 8, "decoder block 0 post_quant_conv at 1/8");
    check_true(t, b[n - 1].kind == VAE_BLOCK_OUT && b[n - 1].out_channels == 3 && b[n - 1].out_div == 1 &&
                      !strcmp(b[n - 1].pre[0].orig, "decoder.norm_out.") &&
                      !strcmp(b[n - 1].pre[0].diff, "decoder.conv_norm_out."),
               "decoder ends with norm_out + conv_out -> 3 channels at full size");
    chained = 1;
    for (i = 1; i < n; i++)
        chained &= b[i].in_channels == b[i - 1].out_channels && b[i].in_div == b[i - 1].out_div;
    check_true(t, chained, "decoder: each block reads the previous block's output");
    i = find(b, n, "decoder.up_blocks.3.resnets.0"); // the last level: 256 -> 128, original up.0
    check_true(t, i > 0 && b[i].in_channels == 256 && b[i].out_channels == 128 && b[i].in_div == 1 &&
                      !strcmp(b[i].pre[0].orig, "decoder.up.0.block.0."),
               "decoder.up_blocks.3.resnets.0: 256 -> 128 at full size, original decoder.up.0.block.0.");
    i = find(b, n, "decoder.up_blocks.0.upsamplers.0");
    check_true(t, i > 0 && b[i].kind == VAE_BLOCK_UPSAMPLE && b[i].in_div == 8 && b[i].out_div == 4 &&
                      !strcmp(b[i].pre[0].orig, "decoder.up.3.upsample.conv."),
               "decoder.up_blocks.0.upsamplers.0: 1/8 -> 1/4, original decoder.up.3.upsample.conv.");
    i = find(b, n, "decoder.mid_block.attentions.0");
    check_true(t, i == 3 && b[i].kind == VAE_BLOCK_ATTENTION && !strcmp(b[i].pre[0].orig, "decoder.mid.attn_1."),
               "decoder block 3: the mid attention, original decoder.mid.attn_1.");

    VaeConfig bad = SD;
    bad.layers_per_block = 9;
    check_true(t, vae_layout(&bad, VAE_DECODER, b, &n, &err) == SDC_ERR_UNSUPPORTED && strstr(err.msg, "layers"),
               "9 layers per block refused naming the field");
}

// Sum of the elements of every tensor in a safetensors file.
static size_t file_numel(const StFile *f) {
    size_t n = 0;
    for (int i = 0; i < f->n; i++) {
        size_t e = 1;
        for (int d = 0; d < f->entries[i].ndim; d++) e *= (size_t)f->entries[i].shape[d];
        n += e;
    }
    return n;
}

static void tiny_records(TestCtx *t, const Backend *be) {
    const char *dir = "tests/fixtures/tiny-sd1", *file = "tests/fixtures/tiny-sd1/vae/diffusion_pytorch_model.safetensors";
    SdcError err = {0};
    ModelFiles *mf = NULL;
    Vae *m = NULL;
    StFile f;
    printf("%s: block records\n", dir);
    if (!check_true(t, model_files_open(&mf, dir, NULL, -1, &err) == 0, "model_files_open %s", err.msg)) return;
    if (!check_true(t, vae_load(&m, mf, be, &err) == 0, "vae_load %s", err.msg) ||
        !check_true(t, st_open(&f, file, &err) == 0, "st_open %s", err.msg)) {
        vae_free(m);
        model_files_close(mf);
        return;
    }
    size_t owned = 0;
    for (int p = 0; p < VAE_PARTS; p++)
        for (int i = 0; i < vae_block_count(m, (VaePart)p); i++) owned += vae_block_info(m, (VaePart)p, i)->param_count;
    check_true(t, owned == file_numel(&f), "the blocks own %zu parameters, the file holds %zu", owned, file_numel(&f));
    st_close(&f);

    // batch 2, 64x64 pixels: the plan is max over the parts of main + the largest scratch
    const int N = 2, S = 64;
    check_true(t, vae_reserve(m, N, S, S, &err) == 0, "vae_reserve (%d, 3, %d, %d) %s", N, S, S, err.msg);
    size_t plan = 0;
    for (int p = 0; p < VAE_PARTS; p++) {
        const int n = vae_block_count(m, (VaePart)p);
        size_t main = 0, scratch = 0;
        for (int i = 0; i < n; i++) {
            const VaeBlockInfo *b = vae_block_info(m, (VaePart)p, i);
            const size_t side = (size_t)(S / b->out_div), want = (size_t)N * b->out_channels * side * side * 4;
            if (b->out_bytes != want)
                check_true(t, 0, "%s: output %zu bytes, expected %zu", b->name, b->out_bytes, want);
            if (i < n - 1 && b->out_bytes > main) main = b->out_bytes;
            if (b->scratch_bytes > scratch) scratch = b->scratch_bytes;
        }
        main = (main + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
        printf("  %s: main %.1f KiB + largest scratch %.1f KiB\n", p ? "decode" : "encode", main / 1024.0,
               scratch / 1024.0);
        if (main + scratch > plan) plan = main + scratch;
    }
    check_true(t, plan == vae_activation_bytes(m), "plan %zu bytes == main + scratch of the hungrier part (%zu)",
               vae_activation_bytes(m), plan);
    vae_free(m);
    model_files_close(mf);
}

int main(void) {
    TestCtx t = {0};
    SdcError err = {0};
    Backend *be = NULL;
    if (backend_cpu_create(&be, 0, &err)) {
        fprintf(stderr, "backend_cpu_create: %s\n", err.msg);
        return 1;
    }
    sd_lists(&t);
    tiny_records(&t, be);
    backend_destroy(be);
    return test_summary(&t);
}
