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

// An open cache: being written (latent_cache_create .. commit) or read
// (latent_cache_open). Rows are read and written one item (or a run of
// items) at a time, so neither side holds the whole encoded dataset: a
// text-to-image run with --cache-latents-to-disk reads each batch's rows from
// the file as it trains (kohya's --cache_latents_to_disk), its memory the
// same for ten items or ten million.
#define LATENT_CACHE_ARRAYS 4 // mean, std, flip_mean, flip_std
typedef struct LatentCache {
    int64_t file;                    // hid_t; -1 when closed
    int64_t d[LATENT_CACHE_ARRAYS];  // the datasets (-1: flip_* without --random-flip)
    LatentCacheKey key;
    int writing;
    char path[1100], tmp[1110];
} LatentCache;

// Starts path.tmp with the key's arrays (n rows each, allocated now), to be
// filled by latent_cache_put and made path by latent_cache_commit (the key
// attributes and a rename: a run stopped before then leaves the earlier
// cache or none, never a half-written one); latent_cache_abort removes it.
int latent_cache_create(LatentCache *c, const char *path, const LatentCacheKey *k, SdcError *err);
// Rows first .. first + count - 1 of each array: rows[a] holds count x (c *
// lh * lw) floats (rows[2], rows[3] only with k->flip).
int latent_cache_put(LatentCache *c, int64_t first, int64_t count, const float *const rows[LATENT_CACHE_ARRAYS],
                     SdcError *err);
int latent_cache_commit(LatentCache *c, SdcError *err);
void latent_cache_abort(LatentCache *c);

// Opens path for reading when its key equals k: returns 1. Returns 0 with
// why[] set when there is none, it is unreadable or it was made from
// something else; never an error: the caller encodes.
int latent_cache_open(LatentCache *c, const char *path, const LatentCacheKey *k, char *why, size_t why_n);
// Item i's mean and std (c * lh * lw floats each), of its mirror image when
// flip (a cache with flip only).
int latent_cache_get(LatentCache *c, int64_t i, int flip, float *mean, float *std, SdcError *err);
void latent_cache_close(LatentCache *c);

#endif
