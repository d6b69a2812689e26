// bench_blocks.c: the UNet's training profile, block by block, for the
// pipeline's cut and the scaling model (bench/scale_model.c): each block's
// forward and backward seconds on this machine, what its forward keeps for
// the backward, its parameters, its FLOPs and the cut entering it.
//
//   bench_blocks MODEL [--rows N] [--latent L] [--threads T] [--lora R] [--checkpointing] [--repeat K]
//
// MODEL: a single .safetensors file or a diffusers folder (e.g. the
// real-shape SD 1.5 of `python3 tools/make_fixtures.py --full-sd15
// /tmp/sd15.safetensors`). The weights are loaded for inference (mapped,
// not copied); parameter gradients go to scratch (unet_train_reserve with
// time_blocks), so the profile of a full fine-tuning costs the memory of
// one micro-batch's activations, not of the optimizer. One warm-up pass,
// then the sum of K timed passes / K. Prints a CSV on stdout:
//   block,kind,name,params,fwd_s,bwd_s,keep_bytes,cut_bytes,fwd_flops
// after a "# rows=N latent=L threads=T lora=R checkpointing=C adam_ns=A model=PATH"
// line (A: nanoseconds per parameter of the optimizer's part of a step: the
// gradient norm, the clip, AdamW, zeroing the gradients) (keep_bytes and cut_bytes for the N rows; cut_bytes: what a stage
// starting at the block receives) and a summary line on stderr. A benchmark, not a
// test: nothing is checked.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "io/weights.h"
#include "models/unet.h"

#include "benchutil.h"

int main(int argc, char **argv) {
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: bench_blocks MODEL [--rows N] [--latent L] [--threads T] [--lora R] "
                        "[--checkpointing] [--repeat K]\n");
        return 2;
    }
    int rows = 1, latent = 64, threads = 0, lora = 0, ckpt = 0, repeat = 2;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--latent") && i + 1 < argc) latent = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--lora") && i + 1 < argc) lora = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc) repeat = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--checkpointing")) ckpt = 1;
        else {
            fprintf(stderr, "bench_blocks: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (rows < 1 || latent < 8 || repeat < 1) return 2;
    SdcError err = {0};
    Backend *be = NULL;
    ModelFiles *mf = NULL;
    Unet *u = NULL;
    const int L = 77;
    float *ts = NULL;
    double *f0 = NULL, *b0 = NULL;
    int rc = backend_cpu_create(&be, threads, &err);
    if (!rc) rc = model_files_open(&mf, argv[1], NULL, -1, &err);
    if (!rc) rc = unet_load(&u, mf, be, &err);
    UnetTrainOpts o = {.checkpointing = ckpt, .lora_rank = lora, .lora_alpha = (float)(lora ? lora : 1),
                       .lora_seed = 1, .want_dctx = 1, .tapes = 1, .time_blocks = 1};
    if (!rc) rc = unet_train_reserve(u, &o, rows, latent, latent, L, &err);
    const int nb = rc ? 0 : unet_block_count(u);
    if (!rc) {
        ts = calloc((size_t)rows, sizeof *ts);
        f0 = calloc((size_t)nb, sizeof *f0), b0 = calloc((size_t)nb, sizeof *b0);
        if (!ts || !f0 || !b0) rc = sdc_err(&err, SDC_ERR_OOM, "bench_blocks");
    }
    for (int i = 0; i < rows && ts; i++) ts[i] = 400.0f + 7 * i;
    for (int pass = 0; !rc && pass <= repeat; pass++) {
        UnetCut in, out, gin, gout;
        rc = unet_train_cut_in(u, 0, rows, &in, &err);
        if (!rc) {
            be->zero(be, in.x.data, tensor_bytes(&in.x));
            be->zero(be, in.ctx.data, tensor_bytes(&in.ctx));
        }
        if (!rc) rc = unet_train_stage_forward(u, 0, ts, &out, &err);
        if (!rc) rc = unet_train_grad_in(u, 0, &gin, &err);
        if (!rc) be->zero(be, gin.x.data, tensor_bytes(&gin.x));
        if (!rc) rc = unet_train_stage_backward(u, 0, &gout, &err);
        if (!rc && pass == 0) { // the warm-up pass: page faults, first-touch of the arenas
            memcpy(f0, unet_train_block_times(u, 0), (size_t)nb * sizeof *f0);
            memcpy(b0, unet_train_block_times(u, 1), (size_t)nb * sizeof *b0);
        }
    }
    // The optimizer's part of a step per parameter: the gradient norm (sum of
    // squares), the clip (scale), AdamW and zeroing the gradients, as
    // src/train/dreambooth.c does them, over as many floats as the UNet has.
    double adam_ns = 0;
    if (!rc) {
        size_t n = 0;
        for (int i = 0; i < nb; i++) n += unet_block_info(u, i)->param_count;
        float *buf = be->alloc(be, 4 * n * sizeof(float));
        if (buf) {
            be->zero(be, buf, 4 * n * sizeof(float));
            float *pp = buf, *g = buf + n, *m1 = buf + 2 * n, *v1 = buf + 3 * n;
            const AdamWScalars sc = {.decay = 1, .w1 = 0.1f, .b2 = 0.999f, .w2 = 0.001f, .bc2_sqrt = 1, .eps = 1e-8f,
                                     .neg_step = -1e-6f};
            Tensor gt = tensor_make(DT_F32, be->device, g, 1, (int64_t[]){(int64_t)n});
            const double t0 = now_sec();
            for (int k = 0; k < 2; k++) {
                volatile double ss = be->sum_squares(be, g, n);
                (void)ss;
                be->scale(be, &gt, &gt, 1.0f);
                be->adamw(be, pp, g, m1, v1, n, &sc);
                be->zero(be, g, n * sizeof(float));
            }
            adam_ns = (now_sec() - t0) / 2 / (double)n * 1e9;
            be->free(be, buf);
        }
    }
    if (rc) {
        fprintf(stderr, "bench_blocks: %s\n", err.msg);
    } else {
        const double *f = unet_train_block_times(u, 0), *b = unet_train_block_times(u, 1);
        double tf = 0, tb = 0, fl = 0;
        size_t keep = 0;
        printf("# rows=%d latent=%d threads=%d lora=%d checkpointing=%d adam_ns=%.4g model=%s\n", rows, latent,
               be->threads, lora, ckpt, adam_ns, argv[1]);
        printf("block,kind,name,params,fwd_s,bwd_s,keep_bytes,cut_bytes,fwd_flops\n");
        for (int i = 0; i < nb; i++) {
            const UnetBlockInfo *bi = unet_block_info(u, i);
            const double fs = (f[i] - f0[i]) / repeat, bs = (b[i] - b0[i]) / repeat;
            const double flops = unet_block_flops(u, i, rows, latent, latent, L);
            printf("%d,%s,%s,%zu,%.6g,%.6g,%zu,%zu,%.6g\n", i, unet_block_kind_name(bi->kind), bi->name,
                   bi->param_count, fs, bs, bi->keep_bytes, unet_cut_bytes(u, i, rows, latent, latent, L), flops);
            tf += fs, tb += bs, fl += flops, keep += bi->keep_bytes;
        }
        fprintf(stderr, "bench_blocks: %d blocks, %d row%s at %dx%d on %d thread%s: forward %.3f s, backward %.3f s "
                "(%.1f GFLOP/s forward), %.1f MiB kept for the backward%s\n", nb, rows, rows == 1 ? "" : "s",
                latent, latent, be->threads, be->threads == 1 ? "" : "s", tf, tb, tf > 0 ? fl / tf * 1e-9 : 0,
                keep / 1048576.0, ckpt ? " (checkpointing)" : "");
    }
    free(ts), free(f0), free(b0);
    unet_free(u);
    model_files_close(mf);
    backend_destroy(be);
    return rc ? 1 : 0;
}
