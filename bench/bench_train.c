// bench_train.c: seconds per DreamBooth training step of the UNet on the CPU
// backend (fp32, every parameter trains), next to bench/train_torch.py.
//
//   bench_train MODEL [--config DIR] [--threads N] [--repeat R] [--latent 64] [--batch 1]
//                     [--checkpointing] [--plan] [--precision fp32|bf16]
//
// MODEL is a single .safetensors file or a diffusers folder (e.g. the
// full-size random SD 1.5 from `python3 tools/make_fixtures.py --full-sd15
// /tmp/sd15.safetensors`). One step is what diffusers' train_dreambooth.py
// does per batch, less the VAE / text encoder / noise scheduler:
//   out = unet(x, t, ctx)                 x (N, Cin, L, L), ctx (N, 77, cross)
//   loss = mean((out - target)^2)         d loss / d out = 2 (out - target) / numel
//   backward                              gradients add into the zeroed buffer
//   clip_grad_norm(1.0), AdamW step (lr 5e-6; betas 0.9/0.999, wd 1e-2, eps 1e-8)
//   zero_grad
// One warm-up step, then R timed steps. Prints
//   sdc_train_s_per_step=<median> forward_s=<median> backward_s=<median>
//   adamw_s=<median> peak_rss_mb=<MB> checkpointing=<0|1>
// forward_s includes the loss and its gradient, adamw_s the clip, the step
// and zero_grad. --plan only loads, reserves and prints the planned bytes
// (parameters, gradients + activations, AdamW moments) for the shape, without
// running a step: a memory estimate that touches just the parameters and
// gradients (the activation arenas are allocated but not written).
// --precision bf16: the CPU's mixed variant (backend_cpu_create_bf16_mixed:
// fp32 master weights, gradients and AdamW state; bf16 forward and backward
// operands), what `sdc train --mixed-precision bf16` runs; its "bf16 ops:"
// line names what computed them.
// This is a benchmark, not a test: the step's numbers are not checked
// (tests/test_unet_grad.c and tests/test_optim.c do that).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "core/backend.h"
#include "io/weights.h"
#include "models/unet.h"
#include "train/optim.h"

#include "benchutil.h"

#define LR 5e-6
#define MAX_GRAD_NORM 1.0
#define CTX_LEN 77

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; // ru_maxrss is in KiB on Linux
}

static double mib(size_t b) { return (double)b / 1048576.0; }

static void usage(void) {
    fprintf(stderr, "usage: bench_train MODEL [--config DIR] [--threads N] [--repeat R] [--latent 64] "
                    "[--batch 1] [--checkpointing] [--lora-rank R] [--plan] [--precision fp32|bf16]\n");
}

int main(int argc, char **argv) {
    const char *model = NULL, *config = NULL;
    int threads = 0, repeat = 3, latent = 64, batch = 1, ckpt = 0, plan_only = 0, lora = 0, bf16 = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "--threads") && has) threads = atoi(argv[++i]);
        else if (!strcmp(a, "--repeat") && has) repeat = atoi(argv[++i]);
        else if (!strcmp(a, "--latent") && has) latent = atoi(argv[++i]);
        else if (!strcmp(a, "--batch") && has) batch = atoi(argv[++i]);
        else if (!strcmp(a, "--config") && has) config = argv[++i];
        else if (!strcmp(a, "--checkpointing")) ckpt = 1;
        else if (!strcmp(a, "--lora-rank") && has) lora = atoi(argv[++i]);
        else if (!strcmp(a, "--plan")) plan_only = 1;
        else if (!strcmp(a, "--precision") && has && (!strcmp(argv[i + 1], "fp32") || !strcmp(argv[i + 1], "bf16")))
            bf16 = !strcmp(argv[++i], "bf16");
        else if (a[0] != '-' && !model) model = a;
        else {
            usage();
            return 2;
        }
    }
    if (!model || repeat < 1 || latent < 8 || batch < 1) {
        usage();
        return 2;
    }

    SdcError err = {0};
    Backend *be = NULL;
    ModelFiles *mf = NULL;
    Unet *m = NULL;
    AdamW opt = {0};
    float *hx = NULL, *hctx = NULL, *htarget = NULL, *hout = NULL, *hdout = NULL, *ts = NULL;
    double *t_step = NULL, *t_fwd = NULL, *t_bwd = NULL, *t_opt = NULL;
    int rc = 1;

    // ---- model: own F32 copies, so the file can be closed after loading ----
    if (bf16 ? backend_cpu_create_bf16_mixed(&be, threads, &err) : backend_cpu_create(&be, threads, &err)) goto done;
    double t0 = now_sec();
    if (model_files_open(&mf, model, config, -1, &err)) goto done;
    // full: own F32 copies (the file can be closed); LoRA: the base stays
    // mmap'd (frozen views) and only the LoRA tensors train
    if (unet_load_opts(&m, mf, be, &(ModelLoadOpts){.trainable = !lora}, &err)) goto done;
    if (!lora) {
        model_files_close(mf); // trainable parameters are copies, never views into the mapping
        mf = NULL;
    }
    const UnetConfig *c = unet_config(m);
    printf("loaded %s in %.2f s: %zu parameters (%.1f MiB f32), threads %d\n", model, now_sec() - t0,
           unet_param_count(m), mib(unet_param_bytes(m)), be->threads);

    t0 = now_sec();
    UnetTrainOpts to = {.checkpointing = ckpt, .lora_rank = lora, .lora_alpha = (float)lora, .lora_seed = 1};
    if (unet_train_reserve(m, &to, batch, latent, latent, CTX_LEN, &err)) goto done;
    float *p, *g;
    size_t n;
    unet_trainables(m, &p, &g, &n);
    size_t param_b = n * sizeof(float), train_b = unet_train_bytes(m), adam_b = 2 * param_b;
    // train_b = gradients (param_b) + kept activations + backward scratch
    printf("plan batch %d latent %dx%d ctx (%d, %d) checkpointing %d (%.2f s): params %.1f MiB, "
           "grads %.1f MiB, activations + scratch %.1f MiB, adamw m+v %.1f MiB, total %.1f MiB\n",
           batch, latent, latent, CTX_LEN, c->cross_dim, ckpt, now_sec() - t0, mib(param_b), mib(param_b),
           mib(train_b - param_b), mib(adam_b), mib(param_b + train_b + adam_b));
    if (plan_only) {
        printf("sdc_train_plan_mb=%.1f peak_rss_mb=%.1f checkpointing=%d\n", mib(param_b + train_b + adam_b),
               peak_rss_mb(), ckpt);
        rc = 0;
        goto done;
    }

    AdamWConfig ac = adamw_config_default(); // diffusers: 0.9, 0.999, 1e-8, wd 1e-2
    OptimTensor ot = {p, g, n};
    AdamWGroupDesc gd = {.tensors = &ot, .n_tensors = 1, .lr_scale = 1.0};
    if (adamw_init(&opt, be, &ac, &gd, 1, &err)) goto done;

    // ---- inputs: deterministic values in [-0.5, 0.5) on the host (CPU backend) ----
    size_t nx = (size_t)batch * c->in_channels * latent * latent;
    size_t nout = (size_t)batch * c->out_channels * latent * latent;
    size_t nctx = (size_t)batch * CTX_LEN * c->cross_dim;
    hx = buf(nx, 1);           // (N, Cin, L, L) noisy latents
    hctx = buf(nctx, 2);       // (N, 77, cross) text embeddings
    htarget = buf(nout, 3);    // (N, Cout, L, L) the noise to predict
    hout = buf(nout, 4);       // (N, Cout, L, L) prediction
    hdout = buf(nout, 5);      // (N, Cout, L, L) d loss / d prediction
    ts = malloc((size_t)batch * sizeof *ts);
    t_step = malloc((size_t)repeat * sizeof *t_step);
    t_fwd = malloc((size_t)repeat * sizeof *t_fwd);
    t_bwd = malloc((size_t)repeat * sizeof *t_bwd);
    t_opt = malloc((size_t)repeat * sizeof *t_opt);
    if (!ts || !t_step || !t_fwd || !t_bwd || !t_opt) {
        sdc_err(&err, SDC_ERR_OOM, "out of memory for the inputs");
        goto done;
    }
    for (int i = 0; i < batch; i++) ts[i] = 999.0f - 100.0f * (float)i;
    Tensor x = tensor_make(DT_F32, DEV_CPU, hx, 4, (int64_t[]){batch, c->in_channels, latent, latent});
    Tensor ctx = tensor_make(DT_F32, DEV_CPU, hctx, 3, (int64_t[]){batch, CTX_LEN, c->cross_dim});
    Tensor out = tensor_make(DT_F32, DEV_CPU, hout, 4, (int64_t[]){batch, c->out_channels, latent, latent});
    Tensor dout = tensor_make(DT_F32, DEV_CPU, hdout, 4, (int64_t[]){batch, c->out_channels, latent, latent});

    // ---- steps: step 0 is the warm-up ----
    for (int r = -1; r < repeat; r++) {
        double s0 = now_sec();
        if (unet_train_forward(m, &out, &x, ts, &ctx, &err)) goto done;
        double loss = 0, k = 2.0 / (double)nout; // F.mse_loss, reduction="mean"
        for (size_t i = 0; i < nout; i++) {
            float d = hout[i] - htarget[i];
            loss += (double)d * d;
            hdout[i] = (float)(k * d);
        }
        loss /= (double)nout;
        double s1 = now_sec();
        if (unet_train_backward(m, &dout, NULL, &err)) goto done;
        double s2 = now_sec();
        float norm = 0;
        if (adamw_clip_grad_norm(&opt, MAX_GRAD_NORM, &norm, &err)) {
            sdc_err_wrap(&err, "step %d (loss %g)", r + 1, loss);
            goto done;
        }
        adamw_step(&opt, LR);
        adamw_zero_grad(&opt);
        double s3 = now_sec();
        printf("step %d%s: loss %.6f grad_norm %.4g forward %.3f s backward %.3f s adamw %.3f s\n", r + 1,
               r < 0 ? " (warm-up)" : "", loss, norm, s1 - s0, s2 - s1, s3 - s2);
        fflush(stdout);
        if (r < 0) continue;
        t_step[r] = s3 - s0;
        t_fwd[r] = s1 - s0;
        t_bwd[r] = s2 - s1;
        t_opt[r] = s3 - s2;
    }
    printf("sdc_train_s_per_step=%.4f forward_s=%.4f backward_s=%.4f adamw_s=%.4f peak_rss_mb=%.1f "
           "checkpointing=%d lora_rank=%d precision=%s\n",
           median(t_step, repeat), median(t_fwd, repeat), median(t_bwd, repeat), median(t_opt, repeat),
           peak_rss_mb(), ckpt, lora, bf16 ? "bf16" : "fp32");
    char info[512];
    backend_cpu_bf16_info(be, info, sizeof info);
    if (info[0]) printf("bf16 ops: %s\n", info);
    rc = 0;
done:
    if (rc) fprintf(stderr, "bench_train: %s\n", err.msg);
    free(hx), free(hctx), free(htarget), free(hout), free(hdout), free(ts);
    free(t_step), free(t_fwd), free(t_bwd), free(t_opt);
    adamw_free(&opt);
    unet_free(m);
    if (mf) model_files_close(mf);
    if (be) backend_destroy(be);
    return rc;
}
