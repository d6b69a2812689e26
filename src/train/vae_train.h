// vae_train.h: one training step of an AutoencoderKL (sdc train vae), the
// loss of ldm's / diffusers' autoencoder training without the perceptual
// and adversarial terms:
//   mean, logvar = encode(x)                 x (N, 3, H, W) in [-1, 1]
//   z = mean + exp(logvar / 2) * eps         eps (N, L, h, w) given by the caller
//   rec = decode(z)
//   rec_loss = mean over every element of |rec - x| (L1) or (rec - x)^2 (MSE)
//   kl = mean over the batch of 0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)
//   loss = rec_loss + kl_weight * kl
// then gradient clipping by global norm, AdamW and the lr schedule, as
// torch's clip_grad_norm_ / AdamW / diffusers' get_scheduler. The data, the
// noise (vae_train_sample_seed), checkpoints and the output folder are the
// runner's (jobs/vae_runner.c); this file knows no file format.
// Checked against a torch loop over the same data and noise
// (tests/test_vae_train.c, tools/make_vae_train_fixture.py).
#ifndef SDC_VAE_TRAIN_H
#define SDC_VAE_TRAIN_H

#include <stdint.h>

#include "core/arena.h"
#include "models/vae.h"
#include "train/lr_schedule.h"
#include "train/optim.h"

typedef enum { VAE_REC_L1 = 0, VAE_REC_MSE = 1 } VaeRecLoss;

typedef struct VaeTrainConfig {
    int batch;             // images per step
    int resolution;        // square images of this side
    double learning_rate;  // base lr (the schedule scales it)
    double kl_weight;      // 1e-6 (ldm's kl_weight)
    VaeRecLoss rec_loss;
    double max_grad_norm;  // 0: no clipping
    AdamWConfig adam;
    int decoder_only;      // train decoder.* and post_quant_conv.* only: no encoder backward, the rest unchanged
} VaeTrainConfig;

typedef struct VaeStepStats {
    double loss, rec, kl; // this step's, before the update
    float grad_norm;      // the pre-clip global norm
    double lr;            // the lr the update used
} VaeStepStats;

typedef struct VaeTrainer {
    Vae *m;
    const Backend *be;
    VaeTrainConfig cfg;
    LrSchedule sched;
    AdamW opt;              // one group: every tensor of vae_train_table in its order (decoder_only: those trained)
    int N, H, W, L, h, w;
    Arena io;               // the step's tensors on the backend
    Tensor x, rec, drec;    // (N, 3, H, W)
    Tensor mean, lv, z, dz, dm, dl; // (N, L, h, w)
    float *host;            // host copies: rec, then mean, lv, z, dz (the loss maths)
    // Data parallel (set by the caller after init; NULL: one process): each
    // of R ranks runs the step on its equal share of the batch (cfg.batch is
    // the share), the gradients' mean over the ranks then equals the whole
    // batch's gradient; grad_mean averages the flat gradient buffer in place,
    // loss_mean the step's (loss, rec, kl) (3 doubles), both on every rank.
    int (*grad_mean)(void *user, float *g, size_t n, SdcError *err);
    int (*loss_mean)(void *user, double *v, int n, SdcError *err);
    void *user;
} VaeTrainer;

// A parameter of the decoder side (decoder.*, post_quant_conv.*): what
// VaeTrainConfig.decoder_only trains.
int vae_decoder_param(const char *name);
// m loaded trainable (vae_load_opts / vae_create); plans its training memory.
int vae_trainer_init(VaeTrainer *t, Vae *m, const VaeTrainConfig *c, const LrSchedule *s, SdcError *err);
void vae_trainer_free(VaeTrainer *t);
// One optimizer step on x (N, 3, H, W) host f32 in [-1, 1] and eps (N, L, h, w):
// the forward, the backward, clipping, AdamW at the schedule's lr for
// t->opt.step. SDC_ERR_NONFINITE when the gradient norm is NaN / Inf.
int vae_trainer_step(VaeTrainer *t, const float *x, const float *eps, VaeStepStats *st, SdcError *err);

// torch's default initialisation of a fresh model (vae_create), from seed:
// conv and linear weights kaiming_uniform(a = sqrt 5), i.e. U(+-1/sqrt(fan_in)),
// their biases U(+-1/sqrt(fan_in)); norms weight 1, bias 0. One mt19937
// stream over the table in order.
int vae_init_params(Vae *m, uint64_t seed, SdcError *err);
// The generator seed of item j of step `step` (its noise, then its flip).
uint64_t vae_train_sample_seed(uint64_t seed, int64_t step, int64_t j);
// Epoch e's item order: Fisher-Yates over 0..n-1 from (seed, e).
void vae_train_order(uint64_t seed, int64_t epoch, int64_t *order, int64_t n);
// Reconstruction PSNR (dB, images in [0, 1], the decode clamped to [-1, 1])
// of x (N, 3, H, W) host f32 in [-1, 1] through the posterior mean, with the
// inference passes (vae_encode / vae_decode). latent_std (may be NULL): the
// standard deviation of those posterior means over every value, whose
// inverse is the scaling_factor that gives the UNet unit-variance latents
// (the latent diffusion paper's rule; SD's VAE: 0.18215).
int vae_psnr(Vae *m, const float *x, int n, int height, int width, double *psnr, double *latent_std, SdcError *err);

#endif
