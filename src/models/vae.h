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
//
// Tiling (the *_tiled entry points): the pass runs over overlapping tiles,
// blended linearly where they overlap, exactly as diffusers' AutoencoderKL
// with enable_tiling() (tiled_decode, _tiled_encode), so the arena is bounded
// by one tile instead of the image: decoding 2048x2048 in 64-latent-pixel
// tiles plans ~650 MiB instead of ~10 GiB. Tiling changes the result (each
// tile is normalised on its own); inputs that fit one tile run untiled.
#ifndef SDC_VAE_H
#define SDC_VAE_H

#include <stddef.h>

#include "core/backend.h"
#include "core/error.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "models/config.h"
#include "models/vae_layout.h"

typedef struct Vae Vae;

// Tile sizes in latent pixels. diffusers' tile_latent_min_size = tile and
// tile_overlap_factor = overlap / tile (its SD default: 64 and 0.25, i.e.
// 512-pixel tiles overlapping by 128 pixels). tile 0 = no tiling.
typedef struct VaeTiling {
    int tile;    // tile side; tiles start every tile - overlap
    int overlap; // shared by neighbours, 0 <= overlap < tile; blended over overlap * 8 pixels
} VaeTiling;

#define VAE_TILE_DEFAULT 64                   // latent pixels (512 px for SD), overlap 16
#define VAE_TILE_BUDGET ((size_t)1 << 30)     // vae_tiling_auto tiles above 1 GiB of decode activations

// Loads the vae component of mf (diffusers names encoder.*, decoder.*,
// quant_conv, post_quant_conv) onto be; config from model_files_info(mf)->vae.
int vae_load(Vae **out, const ModelFiles *mf, const Backend *be, SdcError *err);

// Plans and allocates the activation arena for encode and decode of up to
// `batch` images of height x width pixels (multiples of 8, or of
// 2^(n_levels-1) in general). A call whose need fits is free; a larger one
// re-plans. vae_encode/vae_decode plan for their own size on first use and
// fail with SDC_ERR_ARG if a later call needs more than was planned.
int vae_reserve(Vae *m, int batch, int height, int width, SdcError *err);
// The same for passes tiled by t (NULL or tile 0: untiled, as vae_reserve).
int vae_reserve_tiled(Vae *m, int batch, int height, int width, const VaeTiling *t, SdcError *err);

// image (N, 3, H, W) in [-1, 1] -> mean, logvar (N, latent, H/8, W/8), all on
// be's device in be->act_dtype, allocated by the caller. logvar is clamped to
// [-30, 20] as diffusers' DiagonalGaussianDistribution does.
int vae_encode(Vae *m, const Tensor *image, Tensor *mean, Tensor *logvar, SdcError *err);

// z (N, latent, h, w), already divided by scaling_factor by the caller ->
// image (N, 3, 8h, 8w), unclamped.
int vae_decode(Vae *m, const Tensor *z, Tensor *image, SdcError *err);

// vae_encode / vae_decode over tiles t when the input exceeds one tile
// (encode: height or width > t->tile * 8 pixels; decode: > t->tile latent
// pixels), else untiled. Host scratch of a few output tiles per call.
int vae_encode_tiled(Vae *m, const Tensor *image, Tensor *mean, Tensor *logvar, const VaeTiling *t,
                     SdcError *err);
int vae_decode_tiled(Vae *m, const Tensor *z, Tensor *image, const VaeTiling *t, SdcError *err);

const VaeConfig *vae_config(const Vae *m);
size_t vae_param_bytes(const Vae *m);
size_t vae_activation_bytes(const Vae *m);
// The encoder's or decoder's block list (vae_layout.h) in execution order:
// block i's place, parameter count and, for the shape of the last
// vae_reserve (one tile when tiled), its output and scratch bytes.
int vae_block_count(const Vae *m, VaePart part);
const VaeBlockInfo *vae_block_info(const Vae *m, VaePart part, int i);

// Activation bytes encode and decode of (batch, 3, height, width) would need
// for this config with activations of dtype act, without weights.
int vae_plan(const VaeConfig *cfg, DType act, int batch, int height, int width,
             size_t *encode_bytes, size_t *decode_bytes, SdcError *err);
int vae_plan_tiled(const VaeConfig *cfg, DType act, int batch, int height, int width, const VaeTiling *t,
                   size_t *encode_bytes, size_t *decode_bytes, SdcError *err);

// The rule for "tile when needed": VAE_TILE_DEFAULT tiles (overlap a quarter)
// when the untiled decode of (batch, height, width) would plan more than
// VAE_TILE_BUDGET bytes of activations, else no tiling. SD 1.x/2.x in f32:
// untiled up to 640x640 (1.0 GiB at 648x648 would tip it), tiled from 768x768.
VaeTiling vae_tiling_auto(const VaeConfig *cfg, DType act, int batch, int height, int width);

void vae_free(Vae *m);

#endif
