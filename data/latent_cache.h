// latent_cache.h: a text-to-image run's encoded dataset on disk
// (sdc train text-to-image --cache-latents-to-disk, kohya's
// --cache_latents_to_disk): each item's VAE distribution (mean and std, both
// times the scaling factor) and, with --random-flip, its mirror image's,
// keyed by what they were made from, so that a resumed or repeated run skips
// the VAE. Layout (sdc_kind "latent_cache"): datasets mean, std [, flip_mean,
// flip_std], f32 (n, c, lh, lw); the key's fields as root attributes.
#ifndef SDC_LATENT_CACHE_H
#define SDC_LATENT_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct LatentCacheKey {
    int64_t dataset_size, dataset_mtime_ns; // the dataset file's (stat)
    int64_t n;                              // items
    int64_t res, c, lh, lw;                 // image side; latent channels, height, width
    int64_t flip;                           // mirror images too
    double scaling_factor;
} LatentCacheKey;

// The key of dataset file `dataset` (its size and modification time).
int latent_cache_key(LatentCacheKey *k, const char *dataset, SdcError *err);

// Writes path through path.tmp and a rename: a run stopped mid-write leaves
// the earlier cache or none, never a half-written one. fmean / fstd are
// written when k->flip.
int latent_cache_write(const char *path, const LatentCacheKey *k, const float *mean, const float *std,
                       const float *fmean, const float *fstd, SdcError *err);

// Reads path into mean, std (and fmean, fstd when k->flip; n * c * lh * lw
// floats each) when its key equals k: returns 1. Returns 0 with why[] set
// when there is none, it is unreadable or it was made from something else
// (the buffers then hold nothing useful); never an error: the caller encodes.
int latent_cache_read(const char *path, const LatentCacheKey *k, float *mean, float *std, float *fmean, float *fstd,
                      char *why, size_t why_n);

#endif
