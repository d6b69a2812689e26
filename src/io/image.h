// image.h: images in and out, and the pixel-level preparation the pipelines
// and DreamBooth need.
//   in:  PNG / JPEG decoding (format by magic bytes, never the extension),
//        EXIF Orientation applied, converted to RGB or gray as PIL's
//        exif_transpose + convert("RGB" / "L") would (what diffusers'
//        load_image does);
//   ops: PIL-exact resampling (Image.resize), crops, the DreamBooth
//        short-side resize + crop, the outpainting canvas and mask;
//   to tensors: the image as the VAE wants it, the mask as diffusers'
//        inpainting pipelines binarise and downsample it;
//   out: PNG output carries the generation parameters in a `parameters` text
//        chunk, as the A1111 web UI writes them, so image browsers that read
//        A1111 files show them.
// Every Image is (H, W, C) u8, C = 1 (gray) or 3 (RGB), rows packed.
#ifndef SDC_IMAGE_H
#define SDC_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

// Decoders refuse images larger than this (either side, or in total):
// decoding a hostile 100000 x 100000 header would otherwise allocate 30 GB.
#define IMAGE_MAX_SIDE 16384
#define IMAGE_MAX_PIXELS ((int64_t)1 << 26) // 67 Mpx: 8192 x 8192

typedef struct Image {
    int width, height, channels;
    uint8_t *data; // (height, width, channels) u8
} Image;

typedef enum {
    IMAGE_NEAREST = 0,
    IMAGE_BILINEAR, // PIL Image.BILINEAR (triangle, support 1)
    IMAGE_BICUBIC,  // PIL Image.BICUBIC (Keys, a = -0.5, support 2)
    IMAGE_LANCZOS,  // PIL Image.LANCZOS (Lanczos-3); diffusers' VaeImageProcessor default
} ImageFilter;

// ----------------------------------------------------------------------------
// allocation

// A zero-filled w x h x c image. Refuses sizes above the pixel limit.
int image_alloc(Image *im, int width, int height, int channels, SdcError *err);
void image_free(Image *im); // safe on a zeroed or already freed Image

// ----------------------------------------------------------------------------
// reading

// Reads a PNG or JPEG (detected by magic bytes). want_channels: 3 = RGB,
// 1 = gray (luminance as PIL convert("L"): (19595 R + 38470 G + 7471 B +
// 2^15) >> 16), 0 = as stored (1 for gray / gray+alpha files, else 3).
// Alpha is dropped (PIL convert("RGB") does not composite). EXIF Orientation
// 2..8 (JPEG APP1 Exif, PNG eXIf) is applied, so the result is upright.
// Palette, 1/2/4-bit gray and CMYK/YCCK JPEGs (Adobe polarity) become RGB;
// 16-bit samples keep their high byte (PIL does the same for 16-bit colour,
// but clips 16-bit gray to 255, which sdc deliberately does not follow).
// Errors (SDC_ERR_IO / FORMAT / UNSUPPORTED) name the file.
int image_read(Image *out, const char *path, int want_channels, SdcError *err);
// The same from memory; name is used in messages only. max_pixels caps
// width * height (<= 0: IMAGE_MAX_PIXELS); the fuzzer passes a small one.
int image_read_mem(Image *out, const uint8_t *buf, size_t size, const char *name, int want_channels,
                   int64_t max_pixels, SdcError *err);

// Applies EXIF Orientation o (1..8) in place of im, as PIL's
// ImageOps.exif_transpose: 2 mirror, 3 rotate 180, 4 flip, 5 transpose,
// 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
int image_orient(Image *im, int orientation, SdcError *err);
// The Orientation tag (1..8) of a TIFF-structured EXIF block (optionally
// prefixed by "Exif\0\0"), both byte orders; 1 if absent or malformed.
int image_exif_orientation(const uint8_t *exif, size_t size);

// ----------------------------------------------------------------------------
// pixel operations (dst is allocated here; free it with image_free)

// 3 -> 1 (PIL's L) or 1 -> 3 (replicated) channels, or a copy.
int image_convert(const Image *src, Image *dst, int channels, SdcError *err);
// PIL Image.resize(size, filter): separable convolution, support scaled by
// the downscale factor (antialiased), 22-bit fixed-point coefficients,
// horizontal pass first into a u8 intermediate, as Pillow's Resample.c.
// NEAREST picks floor((x + 0.5) * in / out) like PIL's affine transform.
int image_resize(const Image *src, Image *dst, int width, int height, ImageFilter filter, SdcError *err);
// The w x h rectangle at (x, y); it must lie inside src.
int image_crop(const Image *src, Image *dst, int x, int y, int width, int height, SdcError *err);
// torchvision Resize(resolution) sizes: the short side becomes resolution,
// the long side int(resolution * long / short).
void image_short_side_size(int width, int height, int resolution, int *out_w, int *out_h);
// torchvision CenterCrop offset of a crop of `crop` within `size`:
// int(round((size - crop) / 2)) with Python's round (half to even).
int image_center_offset(int size, int crop);
// DreamBooth preprocessing (diffusers train_dreambooth.py): resize so the
// short side is `resolution` (filter; diffusers uses BILINEAR), then a
// resolution x resolution crop: centred when x < 0 or y < 0, else at (x, y)
// of the resized image (the caller draws x, y in [0, resized - resolution]:
// image_short_side_size gives the resized size).
int image_resize_crop(const Image *src, Image *dst, int resolution, ImageFilter filter, int x, int y,
                      SdcError *err);
// Names both sizes when a and b differ ("mask 64x48 but image 512x512").
int image_check_same_size(const Image *a, const char *a_name, const Image *b, const char *b_name, SdcError *err);

// Outpainting: a canvas of (left + W + right) x (top + H + bottom); both
// totals must be multiples of 8. The original is pasted at (left, top); the
// new area is filled by edge replication (each new pixel copies the nearest
// original pixel: colours continue the border, which suits img2img-style
// denoising better than black or noise; the 9-channel inpainting UNet zeroes
// the masked area anyway). mask (1 channel): 255 (repaint) over the new area,
// 0 over the original, except that when overlap > 0 the original pixels
// within `overlap` pixels of an extended side ramp down from 255 at the seam
// to 0: value round(255 * (overlap - d) / overlap) at distance d = 0, 1, ...
// (after the mask processor binarises at 0.5, about overlap / 2 pixels of the
// original are repainted, hiding the seam).
int image_outpaint_canvas(const Image *src, int left, int top, int right, int bottom, int overlap, Image *canvas,
                          Image *mask, SdcError *err);

// ----------------------------------------------------------------------------
// tensors for the pipeline

// (H, W, 3) u8 -> (3, H, W) f32 in [-1, 1]: x / 255 * 2 - 1 in f32, as
// diffusers' VaeImageProcessor (and torchvision ToTensor + Normalize(0.5, 0.5)).
int image_to_tensor(const Image *im, float *out, SdcError *err);
// (H, W, 1 or 3) u8 mask -> (H, W) f32 in {0, 1}: gray (RGB as PIL's L),
// then /255 binarised at 0.5 (values >= 128 -> 1). White (1) = repaint.
int mask_to_tensor(const Image *mask, float *out, SdcError *err);
// (H, W) -> (h, w) nearest, as torch.nn.functional.interpolate(mode =
// "nearest"): source index floor(i * (float)H / h). For the latent mask
// (h = H / 8) this picks every 8th pixel.
void mask_downsample(const float *mask, int height, int width, float *out, int out_h, int out_w);
// (3, H, W) image, (H, W) mask -> (3, H, W) image * (mask < 0.5), the
// inpainting UNet's masked image (diffusers: init_image * (mask < 0.5)).
void image_mask_out(const float *image, const float *mask, int height, int width, float *out);

// ----------------------------------------------------------------------------
// writing

// rgb: (H, W, 3) u8. parameters may be NULL. Written to path.tmp, then renamed.
int image_write_png(const char *path, const uint8_t *rgb, int width, int height, const char *parameters,
                    SdcError *err);

// (N, 3, H, W) float in [-1, 1] (the VAE's output range) -> (H, W, 3) u8 of
// item n, as diffusers does it: clamp((x + 1) / 2, 0, 1) * 255, rounded.
void image_from_vae(uint8_t *rgb, const float *x, int n, int height, int width);

#endif
