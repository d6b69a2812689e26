// latent_cache.c: see latent_cache.h.
#include "data/latent_cache.h"

#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
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

static const char *const ARRAY[LATENT_CACHE_ARRAYS] = {"mean", "std", "flip_mean", "flip_std"};

static void cache_init(LatentCache *c, const char *path, const LatentCacheKey *k) {
    memset(c, 0, sizeof *c);
    c->file = -1;
    for (int a = 0; a < LATENT_CACHE_ARRAYS; a++) c->d[a] = -1;
    c->key = *k;
    snprintf(c->path, sizeof c->path, "%s", path);
    snprintf(c->tmp, sizeof c->tmp, "%s.tmp", path);
}

static void cache_close_ids(LatentCache *c) {
    for (int a = 0; a < LATENT_CACHE_ARRAYS; a++)
        if (c->d[a] >= 0) H5Dclose((hid_t)c->d[a]), c->d[a] = -1;
}

int latent_cache_create(LatentCache *c, const char *path, const LatentCacheKey *k, SdcError *err) {
    h5_quiet();
    cache_init(c, path, k);
    c->writing = 1;
    hid_t f = -1, sp = -1, dcpl = -1;
    hsize_t dims[4] = {(hsize_t)k->n, (hsize_t)k->c, (hsize_t)k->lh, (hsize_t)k->lw};
    H5_TRY(f = H5Fcreate(c->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), "%s: cannot create ---> is the folder "
           "writable?", c->tmp);
    c->file = f;
    if (h5_set_kind(f, c->tmp, KIND, err)) goto fail;
    H5_TRY(sp = H5Screate_simple(4, dims, NULL), "%s: dataspace", c->tmp);
    H5_TRY(dcpl = H5Pcreate(H5P_DATASET_CREATE), "%s: property list", c->tmp);
    // contiguous, allocated now: a full disk shows here, not rows later
    H5_TRY(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY), "%s: property list", c->tmp);
    for (int a = 0; a < (k->flip ? 4 : 2); a++)
        H5_TRY(c->d[a] = H5Dcreate2(f, ARRAY[a], H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT),
               "%s: creating %s%s", c->tmp, ARRAY[a], fs_write_hint(errno));
    H5Pclose(dcpl), H5Sclose(sp);
    return 0;
fail:
    if (dcpl >= 0) H5Pclose(dcpl);
    if (sp >= 0) H5Sclose(sp);
    latent_cache_abort(c);
    return err->code ? err->code : SDC_ERR_IO;
}

// Rows first .. first + count - 1 of array a, written (put) or read into v.
static int cache_rows(LatentCache *c, int a, int64_t first, int64_t count, float *v, int put, SdcError *err) {
    const LatentCacheKey *k = &c->key;
    const char *path = c->writing ? c->tmp : c->path;
    if (first < 0 || count < 1 || first > k->n - count)
        return sdc_err(err, SDC_ERR_ARG, "%s: rows %lld..%lld of %lld", path, (long long)first,
                       (long long)(first + count - 1), (long long)k->n);
    hid_t fs = -1, ms = -1;
    hsize_t start[4] = {(hsize_t)first, 0, 0, 0}, cnt[4] = {(hsize_t)count, (hsize_t)k->c, (hsize_t)k->lh, (hsize_t)k->lw};
    H5_TRY(fs = H5Dget_space((hid_t)c->d[a]), "%s: %s", path, ARRAY[a]);
    H5_TRY(H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL), "%s: %s", path, ARRAY[a]);
    H5_TRY(ms = H5Screate_simple(4, cnt, NULL), "%s: %s", path, ARRAY[a]);
    if (put)
        H5_TRY(H5Dwrite((hid_t)c->d[a], H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, v), "%s: writing %s%s", path,
               ARRAY[a], fs_write_hint(errno));
    else if (h5_check_stored((hid_t)c->d[a], first, count, ARRAY[a], path, err))
        goto fail;
    else
        H5_TRY(H5Dread((hid_t)c->d[a], H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, v), "%s: reading %s", path, ARRAY[a]);
    H5Sclose(ms), H5Sclose(fs);
    return 0;
fail:
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    return err->code ? err->code : SDC_ERR_IO;
}

int latent_cache_put(LatentCache *c, int64_t first, int64_t count, const float *const rows[LATENT_CACHE_ARRAYS],
                     SdcError *err) {
    for (int a = 0; a < (c->key.flip ? 4 : 2); a++) SDC_TRY(cache_rows(c, a, first, count, (float *)rows[a], 1, err));
    return 0;
}

int latent_cache_commit(LatentCache *c, SdcError *err) {
    int64_t v[8];
    key_values(&c->key, v);
    hid_t f = (hid_t)c->file;
    int rc = 0;
    for (int i = 0; !rc && KEY_NAMES[i]; i++) rc = h5_attr_i64(f, KEY_NAMES[i], v[i], c->tmp, err);
    if (!rc) rc = h5_attr_f64(f, "scaling_factor", c->key.scaling_factor, c->tmp, err);
    cache_close_ids(c);
    SdcError e2 = {0};
    if (h5_close_file(&f, c->tmp, rc ? &e2 : err) && !rc) rc = err->code;
    c->file = -1;
    if (!rc && rename(c->tmp, c->path) != 0)
        rc = sdc_err(err, SDC_ERR_IO, "%s: cannot rename to %s: %s%s", c->tmp, c->path, strerror(errno),
                     fs_write_hint(errno));
    if (rc) unlink(c->tmp);
    c->writing = 0;
    return rc;
}

void latent_cache_abort(LatentCache *c) {
    latent_cache_close(c);
    if (c->writing) unlink(c->tmp);
    c->writing = 0;
}

int latent_cache_open(LatentCache *c, const char *path, const LatentCacheKey *k, char *why, size_t why_n) {
    cache_init(c, path, k);
    if (access(path, F_OK) != 0) {
        snprintf(why, why_n, "none yet");
        return 0;
    }
    SdcError e = {0};
    hid_t f = -1;
    const H5Par serial = h5_par_serial();
    int rc = h5_open_kind(path, KIND, 0, &serial, &f, &e);
    c->file = rc ? -1 : f;
    int64_t v[8], got = 0;
    double sf = 0;
    key_values(k, v);
    for (int i = 0; !rc && KEY_NAMES[i]; i++) {
        rc = h5_attr_get_i64(f, KEY_NAMES[i], &got, path, &e);
        if (!rc && got != v[i]) {
            snprintf(why, why_n, "made for another %s (%lld, now %lld)", KEY_NAMES[i], (long long)got,
                     (long long)v[i]);
            latent_cache_close(c);
            return 0;
        }
    }
    if (!rc) rc = h5_attr_get_f64(f, "scaling_factor", &sf, path, &e);
    if (!rc && sf != k->scaling_factor) {
        snprintf(why, why_n, "made with scaling factor %g, now %g", sf, k->scaling_factor);
        latent_cache_close(c);
        return 0;
    }
    hsize_t want[4] = {(hsize_t)k->n, (hsize_t)k->c, (hsize_t)k->lh, (hsize_t)k->lw};
    for (int a = 0; !rc && a < (k->flip ? 4 : 2); a++) {
        hid_t d = -1, sp = -1;
        hsize_t dims[4] = {0};
        if (!h5_has_link(f, ARRAY[a]) || (d = H5Dopen2(f, ARRAY[a], H5P_DEFAULT)) < 0) {
            rc = sdc_err(&e, SDC_ERR_FORMAT, "%s: no dataset %s", path, ARRAY[a]);
            break;
        }
        c->d[a] = d;
        sp = H5Dget_space(d);
        const hid_t ty = H5Dget_type(d);
        const int is_f32 = ty >= 0 && H5Tget_class(ty) == H5T_FLOAT && H5Tget_size(ty) == 4;
        if (ty >= 0) H5Tclose(ty);
        if (sp < 0 || H5Sget_simple_extent_ndims(sp) != 4 || H5Sget_simple_extent_dims(sp, dims, NULL) != 4 ||
            memcmp(dims, want, sizeof dims) || !is_f32)
            rc = sdc_err(&e, SDC_ERR_FORMAT, "%s: %s is not f32 (%lld, %lld, %lld, %lld)", path, ARRAY[a],
                         (long long)k->n, (long long)k->c, (long long)k->lh, (long long)k->lw);
        if (sp >= 0) H5Sclose(sp);
    }
    // the last rows read back: a file cut short fails here rather than mid-run
    if (!rc) {
        const size_t lat = (size_t)k->c * k->lh * k->lw;
        float *row = malloc(2 * lat * sizeof(float));
        rc = row ? latent_cache_get(c, k->n - 1, 0, row, row + lat, &e) : sdc_err(&e, SDC_ERR_OOM, "out of memory");
        if (!rc && k->flip) rc = latent_cache_get(c, k->n - 1, 1, row, row + lat, &e);
        free(row);
    }
    if (rc) {
        snprintf(why, why_n, "unreadable (%.300s)", e.msg);
        latent_cache_close(c);
        return 0;
    }
    return 1;
}

int latent_cache_get(LatentCache *c, int64_t i, int flip, float *mean, float *std, SdcError *err) {
    if (flip && !c->key.flip) return sdc_err(err, SDC_ERR_ARG, "%s: no mirror images in it", c->path);
    SDC_TRY(cache_rows(c, flip ? 2 : 0, i, 1, mean, 0, err));
    return cache_rows(c, flip ? 3 : 1, i, 1, std, 0, err);
}

void latent_cache_close(LatentCache *c) {
    cache_close_ids(c);
    if (c->file >= 0) {
        hid_t f = (hid_t)c->file;
        SdcError e = {0};
        h5_close_file(&f, c->writing ? c->tmp : c->path, &e);
        c->file = -1;
    }
}
