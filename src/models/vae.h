// vae.h: the Stable Diffusion autoencoder (diffusers AutoencoderKL as SD uses
// it): the encoder maps an image in [-1, 1] to the mean and log-variance of
// the latent Gaussian, the decoder maps a latent back to an image. Scaling by
// VaeConfig.scaling_factor and sampling from the Gaussian are the caller's
// (the pipeline's) business, so both stay in one place there.
//
// Memory: one activation arena planned by vae_reserve (a measuring pass over
// encode and decode). Each block writes its result back into one "main"
// buffer and frees its temporaries, so a 512x512 SD decode peaks at the main
// buffer (256-channel 512x512) plus two temporaries of the first ResNet of the
// last level: 640 MiB in f32 at batch 1 (see vae_plan and tests/test_vae.c).
#ifndef SDC_VAE_H
#define SDC_VAE_H

#include <stddef.h>

#include "core/backend.h"
#include "core/error.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "models/config.h"

typedef struct Vae Vae;

// Loads the vae component of mf (diffusers names encoder.*, decoder.*,
// quant_conv, post_quant_conv) onto be; config from model_files_info(mf)->vae.
int vae_load(Vae **out, const ModelFiles *mf, const Backend *be, SdcError *err);

// Plans and allocates the activation arena for encode and decode of up to
// `batch` images of height x width pixels (multiples of 8, or of
// 2^(n_levels-1) in general). A call whose need fits is free; a larger one
// re-plans. vae_encode/vae_decode plan for their own size on first use and
// fail with SDC_ERR_ARG if a later call needs more than was planned.
int vae_reserve(Vae *m, int batch, int height, int width, SdcError *err);

// image (N, 3, H, W) in [-1, 1] -> mean, logvar (N, latent, H/8, W/8), all on
// be's device in be->act_dtype, allocated by the caller. logvar is clamped to
// [-30, 20] as diffusers' DiagonalGaussianDistribution does.
int vae_encode(Vae *m, const Tensor *image, Tensor *mean, Tensor *logvar, SdcError *err);

// z (N, latent, h, w), already divided by scaling_factor by the caller ->
// image (N, 3, 8h, 8w), unclamped.
int vae_decode(Vae *m, const Tensor *z, Tensor *image, SdcError *err);

const VaeConfig *vae_config(const Vae *m);
size_t vae_param_bytes(const Vae *m);
size_t vae_activation_bytes(const Vae *m);

// Activation bytes encode and decode of (batch, 3, height, width) would need
// for this config with activations of dtype act, without weights.
int vae_plan(const VaeConfig *cfg, DType act, int batch, int height, int width,
             size_t *encode_bytes, size_t *decode_bytes, SdcError *err);

void vae_free(Vae *m);

#endif
