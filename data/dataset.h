// dataset.h: the sdc training-image dataset file (sdc_kind "dataset", layout
// in data/README.md): `sdc dataset import` turns folders of JPEG/PNG photos
// (and kohya-style .txt captions) into one HDF5 file of preprocessed
// resolution x resolution images, optionally with VAE latents cached; the
// reader gives them back to the trainer. Import runs as one process or as MPI
// ranks that each decode their own items and write them collectively.
#ifndef SDC_DATASET_H
#define SDC_DATASET_H

#include <stdint.h>

#include "core/error.h"
#include "core/tensor.h"
#include "data/h5util.h"
#include "data/synth.h"

typedef struct DatasetImportOpts {
    const char *const *sources; // folders (their JPEG/PNG files, sorted by name) or image files
    int n_sources;
    const char *output;         // .h5 path; written as output.tmp, then renamed
    int resolution;             // output side in pixels (multiple of 8 with cache_latents)
    int center_crop;            // 1: centre crop; 0: random crop drawn from (seed, item)
    int random_flip;            // 1: each image mirrored left-right with probability 1/2, drawn from
                                // (seed, item) once, as train_dreambooth_lora_sdxl.py's --random_flip
    uint64_t seed;
    int no_upscale;             // refuse (skip) images whose short side is below resolution
    const char *prompt;         // caption for every image; NULL: FILE.txt beside each image
    const char *caption_fallback; // prompt NULL: the caption of an image without FILE.txt (NULL: required)
    const char *cache_latents_model; // NULL, or a model whose VAE encodes the images
    DType latents_dtype;        // DT_F32 or DT_F16
    int threads;                // CPU threads of the VAE (0 = all cores; the runner passes -t)
    int quiet;
    // `sdc dataset synth`: > 0 items drawn by data/synth.c from (seed, item)
    // instead of read from sources (none given); captions from the items,
    // a "labels" dataset beside them
    int64_t synth_count;
    SynthSplit synth_split;
} DatasetImportOpts;

typedef struct DatasetImportStats {
    int64_t candidates; // image files found
    int64_t written;    // items in the file
    int64_t skipped;    // unreadable, or too small with no_upscale
    int64_t upscaled;   // smaller than the resolution, upscaled
    double seconds;
} DatasetImportStats;

// Collective over p's ranks (every rank passes the same options).
int dataset_import(const DatasetImportOpts *o, const H5Par *p, DatasetImportStats *st, SdcError *err);

// ----------------------------------------------------------------------------
// reading

typedef struct Dataset {
    char path[1024];
    hid_t file, images, latents; // latents < 0 when not cached
    hid_t size_crop;             // (n, 4) int32, < 0 in files of older sdc
    int64_t n;
    int resolution;
    int latent_shape[3];         // (4, h, w) when cached
    DType latents_dtype;
    double latents_scaling;      // scaling_factor that was applied to the latents
    int random_flip;             // the import mirrored some images (attribute random_flip; 0 when absent)
    char **captions, **sources;  // n each
    uint8_t *checked;            // n: bit k once item's stored data in images (1), latents (2), size_crop (4) was
                                 // checked (h5_check_stored: inflating a chunk here costs as much as its read)
} Dataset;

// Opens and validates a dataset file (kind, version, every dataset's shape
// and type against the documented layout).
int dataset_open(Dataset *d, const char *path, SdcError *err);
// Item i as (res, res, 3) u8.
int dataset_read_image(const Dataset *d, int64_t i, uint8_t *rgb, SdcError *err);
// Item i's latent as f32 (4, h, w); SDC_ERR_ARG when the file has none.
int dataset_read_latent(const Dataset *d, int64_t i, float *out, SdcError *err);
// Item i's original height, width and crop top, left (in the image resized
// to the resolution's short side): SDXL's original_size / crop_top_left.
int dataset_read_size_crop(const Dataset *d, int64_t i, int32_t geom[4], SdcError *err);
void dataset_close(Dataset *d);

// 1 when every item's caption is what an import with prompt NULL would read
// now (its source's FILE.txt, or fallback where there is none), else 0 (a
// changed, added or removed caption file; a source gone).
int dataset_captions_current(const Dataset *d, const char *fallback);

#endif
