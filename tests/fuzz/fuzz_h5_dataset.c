// fuzz_h5_dataset.c: libFuzzer target for the dataset file reader
// (data/dataset.c) as the trainer uses it: the input written as a .h5 file,
// dataset_open, and, for a file at the seeds' resolution (16 px, as
// `--resolution 16` would ask), every image and cached latent read into
// buffers of the documented sizes (images (R, R, 3) u8, latents (4, R/f,
// R/f) f32, f = 8 or 4). HDF5 itself is the system's (not instrumented); what is checked
// is sdc's use of it: sizes it trusts, ids it leaks (none may be open when it returns),
// errors it names.
// Seeds: tests/fuzz/seeds/h5_dataset (sdc dataset import of two small
// images, with and without latents; tests/fuzz/make_fuzz_seeds.c).
// Run with tools/fuzz.sh SECONDS 1 h5_dataset.
#include "fuzz_util.h"

#include "data/dataset.h"
#include "fuzz_h5.h"

#define RES 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[600];
    if (!path[0]) fuzz_h5_start(), fuzz_path(path, sizeof path, "data.h5");
    FUZZ_H5_INPUT(path, data, size);
    SdcError err = {0};
    Dataset d;
    int rc = dataset_open(&d, path, &err);
    fuzz_note("dataset_open", rc, err.msg);
    if (rc) {
        if (!strstr(err.msg, path)) __builtin_trap(); // errors name the file
        fuzz_h5_end();
        return 0;
    }
    if (d.resolution < 1 || d.n < 0) __builtin_trap();
    if (d.latents >= 0 && (d.latent_shape[0] != 4 || d.latent_shape[1] != d.latent_shape[2] ||
                           (d.latent_shape[1] * 8 != d.resolution && d.latent_shape[1] * 4 != d.resolution)))
        __builtin_trap(); // the documented layout: latents (N, 4, R/f, R/f), f = 8 (SD's VAE) or 4 (3 levels)
    if (d.resolution == RES) {
        uint8_t rgb[RES * RES * 3];
        float lat[4 * (RES / 4) * (RES / 4)];
        for (int64_t i = 0; i < d.n && i < 8; i++) {
            if (!d.captions[i] || !d.sources[i]) __builtin_trap();
            rc = dataset_read_image(&d, i, rgb, &err);
            fuzz_note("dataset_read_image", rc, err.msg);
            if (rc && !err.msg[0]) __builtin_trap();
            if (d.latents < 0) continue;
            rc = dataset_read_latent(&d, i, lat, &err);
            fuzz_note("dataset_read_latent", rc, err.msg);
            if (rc && !err.msg[0]) __builtin_trap();
        }
    }
    dataset_close(&d);
    fuzz_h5_end();
    return 0;
}
