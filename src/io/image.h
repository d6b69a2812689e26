// image.h: image files in and out. PNG output carries the generation
// parameters in a `parameters` text chunk, as the A1111 web UI writes them,
// so image browsers that read A1111 files show them.
#ifndef SDC_IMAGE_H
#define SDC_IMAGE_H

#include <stdint.h>

#include "core/error.h"

// rgb: (H, W, 3) u8. parameters may be NULL. Written to path.tmp, then renamed.
int image_write_png(const char *path, const uint8_t *rgb, int width, int height, const char *parameters,
                    SdcError *err);

// (N, 3, H, W) float in [-1, 1] (the VAE's output range) -> (H, W, 3) u8 of
// item n, as diffusers does it: clamp((x + 1) / 2, 0, 1) * 255, rounded.
void image_from_vae(uint8_t *rgb, const float *x, int n, int height, int width);

#endif
