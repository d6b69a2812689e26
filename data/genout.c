// genout.c: the generation output file (see genout.h, data/README.md).
#define _GNU_SOURCE // realpath, st_mtim
#include "data/genout.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#include "data/fsutil.h"


// ----------------------------------------------------------------------------
// SHA-256 (for the model hash), by libcrypto (OpenSSL's EVP interface): it
// uses the CPU's SHA instructions where there are any (x86 SHA-NI, ARMv8
// SHA2): a 2 GB file at 957 MB/s instead of the 53 MB/s of the hand-written
// version it replaced, same digests (bench/bench_model_hash.c,
// docs/decisions.md).

// libcrypto's own reason for a failure (its error queue), for a message
static const char *crypto_reason(char *buf, size_t n) {
    unsigned long e = ERR_get_error();
    if (!e) return "no reason given";
    ERR_error_string_n(e, buf, n);
    ERR_clear_error();
    return buf;
}

int genout_sha256(const void *data, size_t n, uint8_t out[32], SdcError *err) {
    unsigned len = 0;
    char why[256];
    if (!EVP_Digest(data, n, out, &len, EVP_sha256(), NULL) || len != 32)
        return sdc_err(err, SDC_ERR_INTERNAL, "SHA-256 of %zu bytes: libcrypto failed (%s)", n,
                       crypto_reason(why, sizeof why));
    return 0;
}

// SHA-256 of the whole file at path, read in 4 MiB blocks.
static int sha256_file(const char *path, uint8_t out[32], SdcError *err) {
    enum { BLOCK = 4 << 20 };
    char why[256];
    FILE *f = fopen(path, "rb");
    if (!f)
        return sdc_err(err, SDC_ERR_IO, "%s: cannot read the model file to hash it (%s) ---> was it moved or "
                       "deleted while sdc ran?", path, strerror(errno));
    uint8_t *buf = malloc(BLOCK);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int rc = 0;
    if (!buf || !ctx) {
        rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory for hashing (%d MiB buffer)", path, BLOCK >> 20);
        goto done;
    }
    if (!EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
        rc = sdc_err(err, SDC_ERR_INTERNAL, "%s: libcrypto cannot start SHA-256 (%s)", path,
                     crypto_reason(why, sizeof why));
        goto done;
    }
    size_t k;
    while ((k = fread(buf, 1, BLOCK, f)) > 0)
        if (!EVP_DigestUpdate(ctx, buf, k)) {
            rc = sdc_err(err, SDC_ERR_INTERNAL, "%s: libcrypto SHA-256 failed (%s)", path,
                         crypto_reason(why, sizeof why));
            goto done;
        }
    if (ferror(f)) {
        rc = sdc_err(err, SDC_ERR_IO, "%s: read error while hashing (%s) ---> is the file (or its disk) "
                     "damaged? `sha256sum %s` reads it the same way", path, strerror(errno), path);
        goto done;
    }
    unsigned len = 0;
    if (!EVP_DigestFinal_ex(ctx, out, &len) || len != 32)
        rc = sdc_err(err, SDC_ERR_INTERNAL, "%s: libcrypto SHA-256 failed (%s)", path, crypto_reason(why, sizeof why));
done:
    EVP_MD_CTX_free(ctx);
    free(buf);
    fclose(f);
    return rc;
}

// The hash cache (as A1111 keeps one): lines "size mtime_ns sha256 path" in
// $SDC_CACHE_DIR, else $XDG_CACHE_HOME/sdc, else ~/.cache/sdc,
// model-hashes.tsv. A file whose size or mtime changed is hashed again.
// Best effort: a cache that cannot be read or written only costs the time.
static int hash_cache_path(char *buf, size_t n) {
    const char *d = getenv("SDC_CACHE_DIR"), *x = getenv("XDG_CACHE_HOME"), *h = getenv("HOME");
    if (d && d[0]) snprintf(buf, n, "%s", d);
    else if (x && x[0]) snprintf(buf, n, "%s/sdc", x);
    else if (h && h[0]) snprintf(buf, n, "%s/.cache/sdc", h);
    else return 0;
    return 1;
}

static int hash_cache_find(const char *path, const struct stat *st, char hex[65]) {
    char dir[1024], file[1100], line[4400], key[2100];
    if (!hash_cache_path(dir, sizeof dir)) return 0;
    snprintf(file, sizeof file, "%s/model-hashes.tsv", dir);
    FILE *f = fopen(file, "r");
    if (!f) return 0;
    snprintf(key, sizeof key, "%lld\t%lld\t", (long long)st->st_size,
             (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec);
    int found = 0;
    while (fgets(line, sizeof line, f)) { // the last matching line wins
        size_t len = strcspn(line, "\n");
        line[len] = 0;
        const size_t kl = strlen(key);
        if (strncmp(line, key, kl) || len < kl + 65 || line[kl + 64] != '\t' || strcmp(line + kl + 65, path)) continue;
        memcpy(hex, line + kl, 64);
        hex[64] = 0;
        found = strspn(hex, "0123456789abcdef") == 64;
    }
    fclose(f);
    return found;
}

static void hash_cache_add(const char *path, const struct stat *st, const char hex[65]) {
    char dir[1024], file[1100], line[2400];
    SdcError e = {0};
    if (!hash_cache_path(dir, sizeof dir) || fs_mkdir_p(dir, &e)) return;
    snprintf(file, sizeof file, "%s/model-hashes.tsv", dir);
    int n = snprintf(line, sizeof line, "%lld\t%lld\t%s\t%s\n", (long long)st->st_size,
                     (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec, hex, path);
    if (n <= 0 || n >= (int)sizeof line || strchr(path, '\n')) return;
    int fd = open(file, O_WRONLY | O_APPEND | O_CREAT, 0644); // one write: whole lines even with writers in parallel
    if (fd < 0) return;
    if (write(fd, line, (size_t)n) != n) { /* best effort */ }
    close(fd);
}

int genout_model_hash(const char *model_path, char short_hex[11], char full_hex[65], SdcError *err) {
    char p[2048], real[PATH_MAX];
    struct stat st;
    if (!stat(model_path, &st) && S_ISDIR(st.st_mode))
        snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", model_path);
    else snprintf(p, sizeof p, "%s", model_path);
    const int cacheable = realpath(p, real) && !stat(real, &st) && S_ISREG(st.st_mode);
    char hex[65];
    if (cacheable && hash_cache_find(real, &st, hex)) {
        if (full_hex) memcpy(full_hex, hex, 65);
        memcpy(short_hex, hex, 10);
        short_hex[10] = 0;
        return 0;
    }
    uint8_t d[32];
    SDC_TRY(sha256_file(p, d, err));
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
    if (cacheable) hash_cache_add(real, &st, hex);
    if (full_hex) memcpy(full_hex, hex, 65);
    memcpy(short_hex, hex, 10);
    short_hex[10] = 0;
    return 0;
}

// ----------------------------------------------------------------------------
// the file

static int write_num(hid_t f, const char *name, hid_t ftype, hid_t mtype, int64_t n, const void *v, const char *path,
                     SdcError *err) {
    hid_t sp = -1, d = -1;
    hsize_t dims[1] = {(hsize_t)n};
    H5_TRY(sp = H5Screate_simple(1, dims, NULL), "%s: %s", path, name);
    H5_TRY(d = H5Dcreate2(f, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "%s: creating %s", path, name);
    if (n) H5_TRY(H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, v), "%s: writing %s", path, name);
    H5Dclose(d);
    H5Sclose(sp);
    return 0;
fail:
    if (d >= 0) H5Dclose(d);
    if (sp >= 0) H5Sclose(sp);
    return err->code;
}

static int create_file(const char *path, const GenItem *it, int64_t n, int W, int H, const char *hash,
                       const char *manifest, SdcError *err) {
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    hid_t f = -1, sp = -1, dcpl = -1, d = -1;
    const char **s = calloc((size_t)n + 1, sizeof(char *));
    int64_t *seed = calloc((size_t)n + 1, sizeof(int64_t));
    int32_t *i32 = calloc((size_t)n + 1, sizeof(int32_t));
    float *f32 = calloc((size_t)n + 1, sizeof(float));
    uint8_t *zero = calloc((size_t)n + 1, 1);
    int rc = 0;
    if (!s || !seed || !i32 || !f32 || !zero) {
        sdc_err(err, SDC_ERR_OOM, "%s: out of memory for %lld items", path, (long long)n);
        goto fail;
    }
    H5_TRY(f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), "%s: cannot create ---> is the folder "
           "writable?", tmp);
    {
        // Contiguous, its space allocated now (sparse: no fill written), not
        // deflated: writing an image then changes raw bytes only, never
        // HDF5's metadata, so a kill at any moment leaves a file HDF5 opens.
        // (Chunks deflated one image each were allocated at the flush, which
        // wrote the chunk index before the superblock's end of file: a
        // SIGKILL between the two left a file whose every read failed with
        // "addr overflow", the sweep lost; tools/kill_campaign.py found it.)
        hsize_t dims[4] = {(hsize_t)n, (hsize_t)H, (hsize_t)W, 3};
        H5_TRY(sp = H5Screate_simple(4, dims, NULL), "%s: images", tmp);
        H5_TRY(dcpl = H5Pcreate(H5P_DATASET_CREATE), "%s: images", tmp);
        H5_TRY(H5Pset_layout(dcpl, H5D_CONTIGUOUS), "%s: images", tmp);
        H5_TRY(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY), "%s: images", tmp);
        H5_TRY(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER), "%s: images", tmp);
        H5_TRY(d = H5Dcreate2(f, "images", H5T_STD_U8LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT), "%s: images", tmp);
        H5Dclose(d), d = -1;
    }
#define STRS(field, name)                                                           \
    for (int64_t i = 0; i < n; i++) s[i] = it[i].field ? it[i].field : "";          \
    if ((rc = h5_write_strings(f, name, s, n, tmp, err))) goto fail;
    STRS(prompt, "prompt")
    STRS(negative_prompt, "negative_prompt")
    STRS(sampler, "sampler")
#undef STRS
    for (int64_t i = 0; i < n; i++) s[i] = hash;
    if ((rc = h5_write_strings(f, "model_hash", s, n, tmp, err))) goto fail;
    for (int64_t i = 0; i < n; i++) seed[i] = it[i].index;
    if ((rc = write_num(f, "sweep_index", H5T_STD_I64LE, H5T_NATIVE_INT64, n, seed, tmp, err))) goto fail;
    for (int64_t i = 0; i < n; i++) seed[i] = it[i].seed;
    if ((rc = write_num(f, "seed", H5T_STD_I64LE, H5T_NATIVE_INT64, n, seed, tmp, err))) goto fail;
    for (int64_t i = 0; i < n; i++) i32[i] = it[i].steps;
    if ((rc = write_num(f, "steps", H5T_STD_I32LE, H5T_NATIVE_INT32, n, i32, tmp, err))) goto fail;
    for (int64_t i = 0; i < n; i++) i32[i] = W;
    if ((rc = write_num(f, "width", H5T_STD_I32LE, H5T_NATIVE_INT32, n, i32, tmp, err))) goto fail;
    for (int64_t i = 0; i < n; i++) i32[i] = H;
    if ((rc = write_num(f, "height", H5T_STD_I32LE, H5T_NATIVE_INT32, n, i32, tmp, err))) goto fail;
    for (int64_t i = 0; i < n; i++) f32[i] = it[i].cfg;
    if ((rc = write_num(f, "cfg", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, n, f32, tmp, err))) goto fail;
    for (int64_t i = 0; i < n; i++) f32[i] = it[i].strength;
    if ((rc = write_num(f, "strength", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, n, f32, tmp, err))) goto fail;
    if ((rc = write_num(f, "done", H5T_STD_U8LE, H5T_NATIVE_UINT8, n, zero, tmp, err))) goto fail;
    if ((rc = h5_attr_str(f, "model_hash_kind", "sha256[:10] of the model weights file (A1111 'Model hash')", tmp,
                          err)) ||
        (rc = h5_attr_str(f, "manifest", manifest ? manifest : "", tmp, err)) ||
        (rc = h5_attr_str(f, "created_by", "sdc " SDC_VERSION, tmp, err)) || (rc = h5_set_kind(f, tmp, "generation", err)))
        goto fail;
    if ((rc = h5_close_file(&f, tmp, err))) goto fail;
    if (rename(tmp, path)) {
        rc = sdc_err(err, SDC_ERR_IO, "%s: cannot rename to %s", tmp, path);
        goto fail;
    }
    goto out;
fail:
    rc = err->code ? err->code : SDC_ERR_IO;
    if (d >= 0) H5Dclose(d);
    if (f >= 0) H5Fclose(f);
    unlink(tmp);
out:
    if (dcpl >= 0) H5Pclose(dcpl);
    if (sp >= 0) H5Sclose(sp);
    free(s);
    free(seed);
    free(i32);
    free(f32);
    free(zero);
    return rc;
}

// The string column `dataset` of an existing file against the items' field
// at offset `field` (a const char *, NULL read as "").
static int same_strings(hid_t f, const char *path, const char *dataset, const char *what, const GenItem *it,
                        int64_t n, size_t field, SdcError *err) {
    char **v = NULL;
    int64_t got = 0;
    SDC_TRY(h5_read_strings(f, dataset, n, &v, &got, path, err));
    int rc = 0;
    for (int64_t i = 0; i < n && !rc; i++) {
        const char *mine = *(const char *const *)((const char *)&it[i] + field);
        if (strcmp(v[i], mine ? mine : ""))
            rc = sdc_err(err, SDC_ERR_ARG, "%s: item %lld's %s is \"%.200s\", this job's is \"%.200s\"\n---> it belongs "
                         "to another sweep: pick another --output-h5 or delete it", path, (long long)i, what, v[i],
                         mine ? mine : "");
    }
    h5_free_strings(v, got);
    return rc;
}

// An existing file must hold this sweep: same count, size, model, prompts,
// negative prompts, samplers, seeds, steps, guidance and sweep indices.
// Opens the per-item dataset name of a sweep file that holds n items and
// checks that it has one value per item: a read with H5S_ALL writes every
// value the file declares into the caller's n-value buffer.
static int open_items(hid_t f, const char *name, int64_t n, hid_t *d, const char *path, SdcError *err) {
    hid_t sp = -1;
    hsize_t len = 0;
    int nd = -1;
    *d = -1;
    H5_TRY(*d = H5Dopen2(f, name, H5P_DEFAULT), "%s: %s", path, name);
    H5_TRY(sp = H5Dget_space(*d), "%s: %s", path, name);
    nd = H5Sget_simple_extent_ndims(sp);
    if (nd == 1 && H5Sget_simple_extent_dims(sp, &len, NULL) < 0) nd = -1;
    H5Sclose(sp);
    if (nd == 1 && len == (hsize_t)n) {
        if (!h5_check_stored(*d, 0, -1, name, path, err)) return 0;
        H5Dclose(*d), *d = -1;
        return err->code;
    }
    H5Dclose(*d), *d = -1;
    return sdc_err(err, SDC_ERR_FORMAT, "%s: %s has %s%llu values, the file holds %lld items\n---> the file is "
                   "damaged: pick another --output-h5 or delete it", path, name, nd == 1 ? "" : "a shape of rank != 1, ",
                   (unsigned long long)len, (long long)n);
fail:
    if (*d >= 0) H5Dclose(*d), *d = -1;
    return err->code ? err->code : SDC_ERR_IO;
}

static int check_same_sweep(hid_t f, const char *path, const GenItem *it, int64_t n, int W, int H,
                            const char *model_hash, SdcError *err) {
    char **pr = NULL;
    int64_t got = 0, *seed = NULL;
    hid_t d = -1, sp = -1;
    int rc = h5_read_strings(f, "prompt", -1, &pr, &got, path, err);
    if (rc) return rc;
    if (got != n) {
        rc = sdc_err(err, SDC_ERR_ARG, "%s holds %lld items, this job makes %lld\n---> it belongs to another sweep: "
                     "pick another --output-h5 or delete it", path, (long long)got, (long long)n);
        goto out;
    }
    h5_free_strings(pr, got);
    pr = NULL;
    if ((rc = same_strings(f, path, "prompt", "prompt", it, n, offsetof(GenItem, prompt), err)) ||
        (rc = same_strings(f, path, "negative_prompt", "negative prompt", it, n, offsetof(GenItem, negative_prompt),
                           err)) ||
        (rc = same_strings(f, path, "sampler", "sampler", it, n, offsetof(GenItem, sampler), err)))
        goto out;
    if ((rc = h5_read_strings(f, "model_hash", -1, &pr, &got, path, err))) goto out;
    if (model_hash && model_hash[0] && got > 0 && strcmp(pr[0], model_hash))
        rc = sdc_err(err, SDC_ERR_ARG, "%s was made with the model of hash %s, this job's model has hash %s\n---> a "
                     "sweep is one model's: pick another --output-h5 or delete it", path, pr[0], model_hash);
    if (rc) goto out;
    seed = malloc((size_t)(n ? n : 1) * 2 * sizeof(int64_t));
    if (!seed) {
        rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory for %lld items", path, (long long)n);
        goto out;
    }
    int32_t *steps = (int32_t *)(seed + n);
    float *cfg = (float *)(steps + n);
    hsize_t dims[4] = {0};
    if ((rc = open_items(f, "seed", n, &d, path, err))) goto out;
    if (n) H5_TRY(H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, seed), "%s: seed", path);
    H5Dclose(d), d = -1;
    if ((rc = open_items(f, "steps", n, &d, path, err))) goto out;
    if (n) H5_TRY(H5Dread(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, steps), "%s: steps", path);
    H5Dclose(d), d = -1;
    if ((rc = open_items(f, "cfg", n, &d, path, err))) goto out;
    if (n) H5_TRY(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, cfg), "%s: cfg", path);
    H5Dclose(d), d = -1;
    for (int64_t i = 0; i < n && !rc; i++)
        if (seed[i] != it[i].seed || steps[i] != it[i].steps || cfg[i] != it[i].cfg)
            rc = sdc_err(err, SDC_ERR_ARG, "%s: item %lld has seed %lld, %d steps, cfg %g; this job's has seed %lld, "
                         "%d steps, cfg %g\n---> it belongs to another sweep: pick another --output-h5 or delete it",
                         path, (long long)i, (long long)seed[i], steps[i], cfg[i], (long long)it[i].seed,
                         it[i].steps, it[i].cfg);
    if (rc) goto out;
    if (h5_has_link(f, "sweep_index")) { // files of sdc before sweeps have none
        if ((rc = open_items(f, "sweep_index", n, &d, path, err))) goto out;
        if (n) H5_TRY(H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, seed), "%s: sweep_index", path);
        H5Dclose(d), d = -1;
        for (int64_t i = 0; i < n && !rc; i++)
            if (seed[i] != it[i].index)
                rc = sdc_err(err, SDC_ERR_ARG, "%s: item %lld is item %lld of its sweep, this job's is item %lld\n---> "
                             "it is another shard: pick another --output-h5 or delete it", path, (long long)i,
                             (long long)seed[i], (long long)it[i].index);
        if (rc) goto out;
    }
    // the done flags are read whole into n bytes (genout_open): one per item, as seed and the rest
    if ((rc = open_items(f, "done", n, &d, path, err))) goto out;
    H5Dclose(d), d = -1;
    H5_TRY(d = H5Dopen2(f, "images", H5P_DEFAULT), "%s: images", path);
    H5_TRY(sp = H5Dget_space(d), "%s: images", path);
    if (H5Sget_simple_extent_ndims(sp) == 4 && H5Sget_simple_extent_dims(sp, dims, NULL) == 4 && dims[0] != (hsize_t)n)
        rc = sdc_err(err, SDC_ERR_FORMAT, "%s: images has %llu entries, the file holds %lld items\n---> the file is "
                     "damaged: pick another --output-h5 or delete it", path, (unsigned long long)dims[0], (long long)n);
    else if (H5Sget_simple_extent_ndims(sp) != 4 || (H5Sget_simple_extent_dims(sp, dims, NULL), 0) ||
        dims[1] != (hsize_t)H || dims[2] != (hsize_t)W || dims[3] != 3)
        rc = sdc_err(err, SDC_ERR_ARG, "%s: images are %llux%llu, this job makes %dx%d\n---> pick another "
                     "--output-h5 or delete it", path, (unsigned long long)dims[2], (unsigned long long)dims[1], W, H);
    goto out;
fail:
    rc = err->code ? err->code : SDC_ERR_IO;
out:
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    free(seed);
    h5_free_strings(pr, got);
    return rc;
}

int genout_open(GenOut *g, const char *path, const GenItem *items, int64_t n, int width, int height,
                const char *model_hash, const char *manifest, const H5Par *p, SdcError *err) {
    h5_quiet();
    memset(g, 0, sizeof *g);
    g->file = g->images = g->done = -1;
    g->par = *p;
    g->n = n;
    g->width = width, g->height = height;
    snprintf(g->path, sizeof g->path, "%s", path);
    int rc = 0;
    if (p->rank == 0) {
        struct stat st;
        if (stat(path, &st)) {
            rc = create_file(path, items, n, width, height, model_hash, manifest, err);
        } else {
            H5Par ser = h5_par_serial();
            hid_t f = -1;
            rc = h5_open_kind(path, "generation", 0, &ser, &f, err);
            if (!rc) rc = check_same_sweep(f, path, items, n, width, height, model_hash, err);
            if (f >= 0) H5Fclose(f);
        }
    }
    g->done_mask = rc ? NULL : calloc((size_t)n + 1, 1);
    if (!rc && !g->done_mask) rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory for %lld done flags", path, (long long)n);
    if ((rc = h5_par_agree(p, rc, err))) {
        free(g->done_mask), g->done_mask = NULL;
        return rc;
    }
    hid_t fapl = -1;
    H5_TRY(fapl = h5_fapl(p), "%s: access list", path);
    // no data sieve: HDF5 would write a 64 KiB window around each image (its
    // neighbours' unwritten bytes too: space a full disk may not have)
    H5_TRY(H5Pset_sieve_buf_size(fapl, 0), "%s: access list", path);
    H5_TRY(g->file = H5Fopen(path, H5F_ACC_RDWR, fapl), "%s: reopening for writing", path);
    h5_close_plist(fapl), fapl = -1;
    H5_TRY(g->images = H5Dopen2(g->file, "images", H5P_DEFAULT), "%s: images", path);
    H5_TRY(g->done = H5Dopen2(g->file, "done", H5P_DEFAULT), "%s: done", path);
    if (h5_check_stored(g->done, 0, -1, "done", path, err)) goto fail;
    if (n) H5_TRY(H5Dread(g->done, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, g->done_mask), "%s: done", path);
    return 0;
fail:
    h5_close_plist(fapl);
    genout_close(g, NULL);
    return err->code ? err->code : SDC_ERR_IO;
}

int genout_write(GenOut *g, const int64_t *idx, int k, const uint8_t *rgb, SdcError *err) {
    uint8_t ones[64];
    memset(ones, 1, sizeof ones);
    if (k > 64) return sdc_err(err, SDC_ERR_ARG, "genout_write: at most 64 items per call");
    SDC_TRY(h5_write_rows(g->images, H5T_NATIVE_UINT8, &g->par, idx, k, rgb, g->path, "images", err));
    // the done flags only after their images are in the file: images sit in
    // HDF5's caches until a flush (a deflated chunk of an older file waits
    // for its space), so without this flush a full disk or
    // a kill could keep the flags and lose the images (done items with no image)
    H5_TRY(H5Fflush(g->file, H5F_SCOPE_GLOBAL), "%s: flush (images)", g->path);
    SDC_TRY(h5_write_rows(g->done, H5T_NATIVE_UINT8, &g->par, idx, k, ones, g->path, "done", err));
    H5_TRY(H5Fflush(g->file, H5F_SCOPE_GLOBAL), "%s: flush (done flags)", g->path);
    // every rank learns which items are now done: the ranks' masks agree
    // on what was done before, so the maximum of theirs is the union
    for (int j = 0; j < k; j++) g->done_mask[idx[j]] = 1;
    for (int64_t off = 0; off < g->n; off += 1 << 30) {
        int len = g->n - off < (1 << 30) ? (int)(g->n - off) : 1 << 30;
        h5_par_max_bytes(&g->par, g->done_mask + off, len);
    }
    return 0;
fail:
    return err->code;
}

int genout_close(GenOut *g, SdcError *err) {
    int rc = 0;
    if (g->images >= 0) H5Dclose(g->images);
    if (g->done >= 0) H5Dclose(g->done);
    if (g->file >= 0 && H5Fclose(g->file) < 0 && err) rc = sdc_err(err, SDC_ERR_IO, "%s: close failed", g->path);
    g->file = g->images = g->done = -1;
    free(g->done_mask);
    g->done_mask = NULL;
    return rc;
}
