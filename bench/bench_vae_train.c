// bench_vae_train.c: seconds per `sdc train vae` step (encode, sample,
// decode, L1 + KL loss, both backwards, clip_grad_norm 1.0, AdamW) for an
// AutoencoderKL config.json, from scratch (the trainer's seeded init), on
// random images. Prints one line per step and the median; its PyTorch peer
// is bench/vae_train_torch.py, which runs this binary and prints the ratio.
//
//   bench_vae_train CONFIG.json [--batch 4] [--res 64] [--threads 2] [--steps 5]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "benchutil.h"
#include "core/backend.h"
#include "io/weights.h"
#include "models/vae.h"
#include "sampling/rng.h"
#include "train/vae_train.h"

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_vae_train CONFIG.json [--batch N] [--res PX] [--threads T] [--steps K]\n");
        return 2;
    }
    int batch = 4, res = 64, threads = 2, steps = 5;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--batch")) batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--res")) res = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
    }
    SdcError err = {0};
    Backend *be = NULL;
    Vae *m = NULL;
    VaeConfig c;
    VaeTrainer t;
    LrSchedule s;
    if (model_files_read_vae_config(&c, argv[1], &err) || backend_cpu_create(&be, threads, &err) ||
        vae_create(&m, &c, be, &err) || vae_init_params(m, 0, &err) ||
        lr_schedule_init(&s, LR_CONSTANT, 1e-4, 0, steps, 1, 1.0, &err)) {
        fprintf(stderr, "bench_vae_train: %s\n", err.msg);
        return 1;
    }
    VaeTrainConfig tc = {.batch = batch, .resolution = res, .learning_rate = 1e-4, .kl_weight = 1e-6,
                         .rec_loss = VAE_REC_L1, .max_grad_norm = 1.0, .adam = adamw_config_default()};
    if (vae_trainer_init(&t, m, &tc, &s, &err)) {
        fprintf(stderr, "bench_vae_train: %s\n", err.msg);
        return 1;
    }
    const size_t ni = (size_t)batch * 3 * res * res, nl = (size_t)batch * t.L * t.h * t.w;
    float *x = malloc(ni * sizeof *x), *eps = malloc(nl * sizeof *eps);
    Rng r;
    rng_seed(&r, 1);
    rng_uniform(&r, x, ni);
    for (size_t i = 0; i < ni; i++) x[i] = 2 * x[i] - 1;
    rng_normal(&r, eps, nl);
    double *sec = malloc((size_t)(steps + 1) * sizeof *sec);
    for (int k = 0; k <= steps; k++) { // step 0 warms up
        VaeStepStats st;
        double t0 = now_sec();
        if (vae_trainer_step(&t, x, eps, &st, &err)) {
            fprintf(stderr, "bench_vae_train: %s\n", err.msg);
            return 1;
        }
        sec[k] = now_sec() - t0;
        printf("sdc step %d: %.4f s  loss %.5f\n", k, sec[k], st.loss);
    }
    qsort(sec + 1, (size_t)steps, sizeof *sec, cmp_d);
    printf("sdc median s/step: %.4f  (batch %d, %d px, %d threads, %.1f MiB training memory)\n", sec[1 + steps / 2],
           batch, res, threads, (double)vae_train_bytes(m) / (1 << 20));
    free(x), free(eps), free(sec);
    vae_trainer_free(&t);
    vae_free(m);
    backend_destroy(be);
    return 0;
}
