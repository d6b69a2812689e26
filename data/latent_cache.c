// latent_cache.c: see latent_cache.h.
#include "data/latent_cache.h"

#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/fsutil.h"
#include "data/h5util.h"

#define KIND "latent_cache"

static const char *const KEY_NAMES[9] = {"dataset_size", "dataset_mtime_ns", "n", "resolution", "latent_channels",
                                         "latent_height", "latent_width", "flip", NULL};

static void key_values(const LatentCacheKey *k, int64_t v[8]) {
    const int64_t x[8] = {k->dataset_size, k->dataset_mtime_ns, k->n, k->res, k->c, k->lh, k->lw, k->flip};
    memcpy(v, x, sizeof x);
}

int latent_cache_key(LatentCacheKey *k, const char *dataset, SdcError *err) {
    struct stat st;
    if (stat(dataset, &st) != 0) return sdc_err(err, SDC_ERR_IO, "%s: %s", dataset, strerror(errno));
    k->dataset_size = (int64_t)st.st_size;
    k->dataset_mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    return 0;
}

static int write_array(hid_t f, const char *name, const LatentCacheKey *k, const float *v, const char *path,
                       SdcError *err) {
    hsize_t dims[4] = {(hsize_t)k->n, (hsize_t)k->c, (hsize_t)k->lh, (hsize_t)k->lw};
    hid_t sp = -1, d = -1;
    int rc = 0;
    H5_TRY(sp = H5Screate_simple(4, dims, NULL), "%s: %s", path, name);
    H5_TRY(d = H5Dcreate2(f, name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "%s: creating %s",
           path, name);
    H5_TRY(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v), "%s: writing %s", path, name);
    goto out;
fail:
    rc = err->code ? err->code : SDC_ERR_IO;
out:
    if (d >= 0) H5Dclose(d);
    if (sp >= 0) H5Sclose(sp);
    return rc;
}

int latent_cache_write(const char *path, const LatentCacheKey *k, const float *mean, const float *std,
                       const float *fmean, const float *fstd, SdcError *err) {
    h5_quiet();
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    hid_t f = -1;
    int rc = 0;
    H5_TRY(f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), "%s: cannot create ---> is the folder "
           "writable?", tmp);
    rc = h5_set_kind(f, tmp, KIND, err);
    int64_t v[8];
    key_values(k, v);
    for (int i = 0; !rc && KEY_NAMES[i]; i++) rc = h5_attr_i64(f, KEY_NAMES[i], v[i], tmp, err);
    if (!rc) rc = h5_attr_f64(f, "scaling_factor", k->scaling_factor, tmp, err);
    if (!rc) rc = write_array(f, "mean", k, mean, tmp, err);
    if (!rc) rc = write_array(f, "std", k, std, tmp, err);
    if (!rc && k->flip) rc = write_array(f, "flip_mean", k, fmean, tmp, err);
    if (!rc && k->flip) rc = write_array(f, "flip_std", k, fstd, tmp, err);
    SdcError e2 = {0};
    if (h5_close_file(&f, tmp, rc ? &e2 : err) && !rc) rc = err->code;
    if (!rc && rename(tmp, path) != 0)
        rc = sdc_err(err, SDC_ERR_IO, "%s: cannot rename to %s: %s%s", tmp, path, strerror(errno),
                     fs_write_hint(errno));
    if (rc) unlink(tmp);
    return rc;
fail:
    rc = err->code ? err->code : SDC_ERR_IO;
    SdcError e3 = {0};
    if (f >= 0) h5_close_file(&f, tmp, &e3);
    unlink(tmp);
    return rc;
}

static int read_array(hid_t f, const char *name, const LatentCacheKey *k, float *v, const char *path,
                      SdcError *err) {
    hid_t d = -1, sp = -1;
    int rc = 0;
    hsize_t dims[4] = {0}, want[4] = {(hsize_t)k->n, (hsize_t)k->c, (hsize_t)k->lh, (hsize_t)k->lw};
    H5_TRY(d = H5Dopen2(f, name, H5P_DEFAULT), "%s: no dataset %s", path, name);
    H5_TRY(sp = H5Dget_space(d), "%s: %s", path, name);
    if (H5Sget_simple_extent_ndims(sp) != 4 || H5Sget_simple_extent_dims(sp, dims, NULL) != 4 ||
        memcmp(dims, want, sizeof dims)) {
        rc = sdc_err(err, SDC_ERR_FORMAT, "%s: %s is not (%lld, %lld, %lld, %lld)", path, name, (long long)k->n,
                     (long long)k->c, (long long)k->lh, (long long)k->lw);
        goto out;
    }
    H5_TRY(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v), "%s: reading %s", path, name);
    goto out;
fail:
    rc = err->code ? err->code : SDC_ERR_IO;
out:
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    return rc;
}

int latent_cache_read(const char *path, const LatentCacheKey *k, float *mean, float *std, float *fmean, float *fstd,
                      char *why, size_t why_n) {
    if (access(path, F_OK) != 0) {
        snprintf(why, why_n, "none yet");
        return 0;
    }
    SdcError e = {0};
    hid_t f = -1;
    const H5Par serial = h5_par_serial();
    int rc = h5_open_kind(path, KIND, 0, &serial, &f, &e);
    int64_t v[8], got = 0;
    double sf = 0;
    key_values(k, v);
    for (int i = 0; !rc && KEY_NAMES[i]; i++) {
        rc = h5_attr_get_i64(f, KEY_NAMES[i], &got, path, &e);
        if (!rc && got != v[i]) {
            snprintf(why, why_n, "made for another %s (%lld, now %lld)", KEY_NAMES[i], (long long)got,
                     (long long)v[i]);
            h5_close_file(&f, path, &e);
            return 0;
        }
    }
    if (!rc) rc = h5_attr_get_f64(f, "scaling_factor", &sf, path, &e);
    if (!rc && sf != k->scaling_factor) {
        snprintf(why, why_n, "made with scaling factor %g, now %g", sf, k->scaling_factor);
        h5_close_file(&f, path, &e);
        return 0;
    }
    if (!rc) rc = read_array(f, "mean", k, mean, path, &e);
    if (!rc) rc = read_array(f, "std", k, std, path, &e);
    if (!rc && k->flip) rc = read_array(f, "flip_mean", k, fmean, path, &e);
    if (!rc && k->flip) rc = read_array(f, "flip_std", k, fstd, path, &e);
    if (f >= 0) h5_close_file(&f, path, &e);
    if (rc) {
        snprintf(why, why_n, "unreadable (%.300s)", e.msg);
        return 0;
    }
    return 1;
}
