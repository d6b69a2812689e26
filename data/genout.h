// genout.h: the generation output file (sdc_kind "generation", layout in
// data/README.md): the images of a sweep with every item's provenance
// (prompt, negative prompt, seed, sampler, steps, cfg, strength, size, model
// hash) and a `done` mask written after each image, so an interrupted sweep
// re-run with the same job resumes without gaps or duplicates. Under MPI the
// ranks write their own items into the one file collectively.
#ifndef SDC_GENOUT_H
#define SDC_GENOUT_H

#include <stdint.h>

#include "core/error.h"
#include "data/h5util.h"

typedef struct GenItem {
    const char *prompt, *negative_prompt, *sampler;
    int64_t index; // the item's number in the whole sweep (a shard's file holds a range of them)
    int64_t seed;
    int32_t steps;
    float cfg, strength;
} GenItem;

typedef struct GenOut {
    char path[1024];
    H5Par par;
    hid_t file, images, done;
    int64_t n;
    int width, height;
    uint8_t *done_mask; // (n,) as read at open, updated by genout_write on every rank
} GenOut;

// Collective. Creates path (rank 0) with all n items' metadata and done = 0,
// or, when it exists, checks that it holds this same sweep (count, size,
// prompts, seeds) and reads its done mask; then opens it on every rank.
// model_hash: genout_model_hash's short form; manifest: text format (or NULL).
int genout_open(GenOut *g, const char *path, const GenItem *items, int64_t n, int width, int height,
                const char *model_hash, const char *manifest, const H5Par *p, SdcError *err);
// Collective: this rank's k items (k may be 0) at indices idx (increasing),
// rgb (k, H, W, 3): images first, then their done flags, then a flush.
int genout_write(GenOut *g, const int64_t *idx, int k, const uint8_t *rgb, SdcError *err);
int genout_close(GenOut *g, SdcError *err);

// The model's hash as A1111 shows it ("Model hash"): the first 10 hex digits
// of the SHA-256 of the weights file (a diffusers folder: of
// unet/diffusion_pytorch_model.safetensors). full: all 64 digits. Cached
// by (path, size, mtime) in $SDC_CACHE_DIR (default ~/.cache/sdc), so a
// requeued or array job does not read a 4 GB file again.
int genout_model_hash(const char *model_path, char short_hex[11], char full_hex[65], SdcError *err);
// SHA-256 of n bytes (FIPS 180-4), by libcrypto.
int genout_sha256(const void *data, size_t n, uint8_t out[32], SdcError *err);

#endif
