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
#include "models/params.h"
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

// 2^(n_levels-1): how much smaller than the image the latents are (8 for SD's
// 4-level VAE; diffusers' vae_scale_factor).
int vae_scale_factor(const VaeConfig *c);

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
const Backend *vae_backend(const Vae *m);
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

// ---- training (sdc train vae: src/train/vae_train.c) ----------------------------
//
// A VAE loaded trainable holds F32 copies of its parameters in one arena,
// named by diffusers name in vae_train_table (the downsamplers' (C, C, 3, 3)
// conv weights among them, as the files have them). A training step:
//   vae_train_encode(image) -> mean, logvar          (activations kept)
//   the caller samples z = mean + exp(logvar / 2) * eps
//   vae_train_decode(z) -> reconstruction            (activations kept)
//   vae_train_decode_backward(d rec) -> d z
//   vae_train_encode_backward(d mean, d logvar)      (parameter gradients ADDED)
//   the optimizer over vae_trainables / the table, then vae_train_sync.
// The caller's image and z must stay unchanged until the backwards ran.
// Gradients are checked against torch autograd (tests/test_vae_grad.c).

// vae_load with o->trainable: the parameters as F32 copies, named.
int vae_load_opts(Vae **out, const ModelFiles *mf, const Backend *be, const ModelLoadOpts *o, SdcError *err);
// A trainable VAE of config cfg whose parameters are all zero, for the
// caller to initialise through vae_train_table (then vae_train_sync).
int vae_create(Vae **out, const VaeConfig *cfg, const Backend *be, SdcError *err);
// Plans (a measuring encode + decode + both backwards) and allocates the
// kept activations, the backward scratch and the gradients (zeroed) for
// batch images of height x width. Every training call takes exactly that shape.
int vae_train_reserve(Vae *m, int batch, int height, int width, SdcError *err);
// image (N, in, H, W) -> mean, logvar (N, L, H/f, W/f), logvar clamped to
// [-30, 20] as vae_encode does.
int vae_train_encode(Vae *m, const Tensor *image, Tensor *mean, Tensor *logvar, SdcError *err);
// z (N, L, h, w) -> image (N, out, H, W).
int vae_train_decode(Vae *m, const Tensor *z, Tensor *image, SdcError *err);
// d loss / d the decoded image -> d loss / d z (overwritten; NULL: not wanted).
int vae_train_decode_backward(Vae *m, const Tensor *dimage, Tensor *dz, SdcError *err);
// d loss / d mean and d loss / d the clamped logvar -> d loss / d image
// (overwritten; NULL: not wanted).
int vae_train_encode_backward(Vae *m, const Tensor *dmean, const Tensor *dlogvar, Tensor *dimage, SdcError *err);
// After the parameters changed (an optimizer step, a checkpoint loaded, an
// initialisation): rebuilds what is derived from them.
int vae_train_sync(Vae *m, SdcError *err);
// The parameter arena and the gradient arena as flat f32 buffers of *n
// floats (grads NULL before vae_train_reserve). A table entry's gradient is
// at the same offset from grads as the entry from params.
void vae_trainables(Vae *m, float **params, float **grads, size_t *n);
const ParamTable *vae_train_table(const Vae *m);
// Bytes vae_train_reserve allocated: kept activations, scratch, gradients.
size_t vae_train_bytes(const Vae *m);

#endif
