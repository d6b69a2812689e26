// checkpoint.c: writing and reading sdc checkpoints (see checkpoint.h; the
// layout is in data/README.md).
#include "data/checkpoint.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

// The groups of parameters: the first three in every checkpoint; /extra and
// SDXL's /text_encoder_2 only where they have tensors (ckpt_put makes them).
static const char *const PARAM_GROUPS[] = {"text_encoder", "unet", "vae", "extra", "text_encoder_2"};
#define N_PARAM_GROUPS 5
#define N_BEGIN_GROUPS 4 // made by ckpt_begin (an empty /extra as before)

static uLong crc32_serial(uLong c, const Bytef *b, size_t n) {
    while (n) {
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = crc32(c, b, k);
        b += k, n -= k;
    }
    return c;
}

// zlib's CRC-32 runs at ~0.7 GB/s on one core, which made checking a 4 GB
// checkpoint take longer than reading it: large buffers are cut into 8 MiB
// chunks checksummed on every thread and joined with crc32_combine (the same
// value as one serial pass).
uint32_t ckpt_crc32(const void *p, size_t n) {
    const size_t chunk = (size_t)8 << 20;
    const Bytef *b = p;
    uLong c0 = crc32(0L, Z_NULL, 0);
    size_t nc = (n + chunk - 1) / chunk;
    uLong *part = nc >= 2 ? malloc(nc * sizeof *part) : NULL; // once per tensor, not per element
    if (!part) return (uint32_t)crc32_serial(c0, b, n);
#pragma omp parallel for schedule(static)
    for (long i = 0; i < (long)nc; i++) {
        size_t off = (size_t)i * chunk, k = n - off < chunk ? n - off : chunk;
        part[i] = crc32_serial(c0, b + off, k);
    }
    uLong c = part[0];
    for (size_t i = 1; i < nc; i++) {
        size_t k = n - i * chunk < chunk ? n - i * chunk : chunk;
        c = crc32_combine(c, part[i], (z_off_t)k);
    }
    free(part);
    return (uint32_t)c;
}

// ----------------------------------------------------------------------------
// writing

// The group at path g (created with its parents when absent); "" = root.
static hid_t group_at(hid_t f, const char *g, const char *where, SdcError *err) {
    hid_t lcpl = -1, gid = -1;
    if (!g[0] || !strcmp(g, "/")) return H5Gopen2(f, "/", H5P_DEFAULT);
    if (h5_has_link(f, g)) return H5Gopen2(f, g, H5P_DEFAULT);
    H5_TRY(lcpl = H5Pcreate(H5P_LINK_CREATE), "%s: group %s", where, g);
    H5_TRY(H5Pset_create_intermediate_group(lcpl, 1), "%s: group %s", where, g);
    H5_TRY(gid = H5Gcreate2(f, g, lcpl, H5P_DEFAULT, H5P_DEFAULT), "%s: creating group %s", where, g);
fail:
    if (lcpl >= 0) H5Pclose(lcpl);
    return gid;
}

int ckpt_begin(CkptWriter *w, const char *path, SdcError *err) {
    h5_quiet();
    memset(w, 0, sizeof *w);
    w->file = -1;
    if (strlen(path) >= sizeof w->path) return sdc_err(err, SDC_ERR_ARG, "%s: path too long", path);
    snprintf(w->path, sizeof w->path, "%s", path);
    snprintf(w->tmp, sizeof w->tmp, "%s.tmp", path);
    unlink(w->tmp);
    hid_t g = -1;
    H5_TRY(w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
           "%s: cannot create ---> is the folder writable?", w->tmp);
    for (int i = 0; i < N_BEGIN_GROUPS; i++) {
        H5_TRY(g = group_at(w->file, PARAM_GROUPS[i], w->tmp, err), "%s: group %s", w->tmp, PARAM_GROUPS[i]);
        H5Gclose(g);
    }
    H5_TRY(g = group_at(w->file, "optimizer", w->tmp, err), "%s: group optimizer", w->tmp);
    H5Gclose(g);
    return 0;
fail:
    if (w->file >= 0) H5Fclose(w->file);
    w->file = -1;
    unlink(w->tmp);
    return err->code;
}

int ckpt_put(CkptWriter *w, const char *group, const char *name, const Tensor *t, SdcError *err) {
    hid_t g = -1, sp = -1, type = -1, d = -1;
    if (t->device != DEV_CPU) return sdc_err(err, SDC_ERR_ARG, "%s: %s/%s is not a CPU tensor", w->tmp, group, name);
    if (strlen(group) >= CKPT_GROUP_MAX || strlen(name) >= CKPT_NAME_MAX || strchr(name, '/'))
        return sdc_err(err, SDC_ERR_ARG, "%s: tensor name %s/%s too long or contains '/'", w->tmp, group, name);
    hsize_t dims[TENSOR_MAX_DIMS];
    for (int k = 0; k < t->ndim; k++) dims[k] = (hsize_t)t->shape[k];
    const size_t nbytes = tensor_bytes(t);
    H5_TRY(g = group_at(w->file, group, w->tmp, err), "%s: group %s", w->tmp, group);
    H5_TRY(sp = t->ndim ? H5Screate_simple(t->ndim, dims, NULL) : H5Screate(H5S_SCALAR), "%s: %s/%s", w->tmp, group,
           name);
    H5_TRY(type = h5_type_for(t->dtype), "%s: %s/%s type", w->tmp, group, name);
    H5_TRY(d = H5Dcreate2(g, name, type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "%s: creating dataset %s/%s",
           w->tmp, group, name);
    if (nbytes) H5_TRY(H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, t->data), "%s: writing %s/%s", w->tmp, group,
                       name);
    if (h5_attr_str(d, "dtype", h5_dtype_tag(t->dtype), w->tmp, err) ||
        h5_attr_u32(d, "crc32", ckpt_crc32(t->data, nbytes), w->tmp, err))
        goto fail;
    H5Dclose(d);
    H5Tclose(type);
    H5Sclose(sp);
    H5Gclose(g);
    w->n_tensors++;
    w->bytes += (int64_t)nbytes;
    return 0;
fail:
    if (d >= 0) H5Dclose(d);
    if (type >= 0) H5Tclose(type);
    if (sp >= 0) H5Sclose(sp);
    if (g >= 0) H5Gclose(g);
    return err->code;
}

int ckpt_set_attr(CkptWriter *w, const char *group, const char *key, const char *value, SdcError *err) {
    hid_t g = -1;
    H5_TRY(g = group_at(w->file, group, w->tmp, err), "%s: group %s", w->tmp, group);
    int rc = h5_attr_str(g, key, value, w->tmp, err);
    H5Gclose(g);
    return rc;
fail:
    return err->code;
}

int ckpt_pause(CkptWriter *w, SdcError *err) {
    H5_TRY(H5Fflush(w->file, H5F_SCOPE_GLOBAL), "%s: flush", w->tmp);
    H5_TRY(H5Fclose(w->file), "%s: close", w->tmp);
    w->file = -1;
    return 0;
fail:
    ckpt_abort(w);
    return err->code ? err->code : SDC_ERR_IO;
}

int ckpt_resume(CkptWriter *w, const char *path, SdcError *err) {
    h5_quiet();
    memset(w, 0, sizeof *w);
    w->file = -1;
    if (strlen(path) >= sizeof w->path) return sdc_err(err, SDC_ERR_ARG, "%s: path too long", path);
    snprintf(w->path, sizeof w->path, "%s", path);
    snprintf(w->tmp, sizeof w->tmp, "%s.tmp", path);
    H5_TRY(w->file = H5Fopen(w->tmp, H5F_ACC_RDWR, H5P_DEFAULT), "%s: cannot open the part another stage wrote",
           w->tmp);
    return 0;
fail:
    return err->code;
}

void ckpt_abort(CkptWriter *w) {
    if (w->file >= 0) H5Fclose(w->file);
    w->file = -1;
    unlink(w->tmp);
}

int ckpt_commit(CkptWriter *w, const CkptState *st, SdcError *err) {
    hid_t g = -1, sp = -1, d = -1;
    H5_TRY(g = group_at(w->file, "state", w->tmp, err), "%s: group state", w->tmp);
    if (st->n_order > 0) {
        hsize_t n = (hsize_t)st->n_order;
        H5_TRY(sp = H5Screate_simple(1, &n, NULL), "%s: state/data_order", w->tmp);
        H5_TRY(d = H5Dcreate2(g, "data_order", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
               "%s: state/data_order", w->tmp);
        H5_TRY(H5Dwrite(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, st->data_order), "%s: state/data_order",
               w->tmp);
        H5Dclose(d), d = -1;
        H5Sclose(sp), sp = -1;
    }
    if (h5_attr_u64s(g, "rng_state", st->rng, 4, w->tmp, err) || h5_attr_str(w->file, "created_by", "sdc " SDC_VERSION,
                                                                               w->tmp, err) ||
        h5_set_kind(w->file, w->tmp, "checkpoint", err))
        goto fail;
    // everything else is in the file: the step goes last
    H5_TRY(H5Fflush(w->file, H5F_SCOPE_GLOBAL), "%s: flush", w->tmp);
    if (h5_attr_i64(g, "step", st->step, w->tmp, err)) goto fail;
    H5Gclose(g), g = -1;
    H5_TRY(H5Fflush(w->file, H5F_SCOPE_GLOBAL), "%s: flush", w->tmp);
    if (h5_close_file(&w->file, w->tmp, err)) goto fail;
    FILE *fp = fopen(w->tmp, "rb+");
    if (!fp || fsync(fileno(fp))) {
        sdc_err(err, SDC_ERR_IO, "%s: fsync failed (%s) ---> is the disk full?", w->tmp, strerror(errno));
        if (fp) fclose(fp);
        goto fail;
    }
    fclose(fp);
    if (rename(w->tmp, w->path)) {
        sdc_err(err, SDC_ERR_IO, "%s: cannot rename to %s (%s)", w->tmp, w->path, strerror(errno));
        goto fail;
    }
    return 0;
fail:
    if (d >= 0) H5Dclose(d);
    if (sp >= 0) H5Sclose(sp);
    if (g >= 0) H5Gclose(g);
    ckpt_abort(w);
    return err->code ? err->code : SDC_ERR_IO;
}

// ----------------------------------------------------------------------------
// reading

typedef struct ListCtx {
    Ckpt *c;
    const char *group;
    int cap;
    int rc;
    SdcError *err;
} ListCtx;

static herr_t list_cb(hid_t g, const char *name, const H5L_info_t *info, void *user) {
    ListCtx *x = user;
    SdcError *err = x->err;
    hid_t d = -1, sp = -1, t = -1;
    char *tag = NULL;
    H5O_info_t oi;
    if (H5Oget_info_by_name(g, name, &oi, H5P_DEFAULT) < 0 || oi.type != H5O_TYPE_DATASET) return 0;
    if (strlen(name) >= CKPT_NAME_MAX) {
        x->rc = sdc_err(err, SDC_ERR_FORMAT, "%s: /%s/%.100s...: name too long", x->c->path, x->group, name);
        return -1;
    }
    if (x->c->n == x->cap) {
        int cap = x->cap ? x->cap * 2 : 256;
        CkptTensor *nt = realloc(x->c->t, (size_t)cap * sizeof *x->c->t);
        if (!nt) {
            x->rc = sdc_err(err, SDC_ERR_OOM, "%s: out of memory listing its tensors", x->c->path);
            return -1;
        }
        x->c->t = nt;
        x->cap = cap;
    }
    CkptTensor *ct = &x->c->t[x->c->n];
    memset(ct, 0, sizeof *ct);
    snprintf(ct->group, sizeof ct->group, "%s", x->group);
    snprintf(ct->name, sizeof ct->name, "%s", name);
    char where[1400];
    snprintf(where, sizeof where, "%s: /%s/%s", x->c->path, x->group, name);
    H5_TRY(d = H5Dopen2(g, name, H5P_DEFAULT), "%s", where);
    H5_TRY(sp = H5Dget_space(d), "%s", where);
    H5_TRY(t = H5Dget_type(d), "%s", where);
    int nd = H5Sget_simple_extent_ndims(sp);
    if (nd < 0 || nd > TENSOR_MAX_DIMS) {
        sdc_err(err, SDC_ERR_FORMAT, "%s has %d dims (at most %d)", where, nd, TENSOR_MAX_DIMS);
        goto fail;
    }
    hsize_t dims[TENSOR_MAX_DIMS];
    H5Sget_simple_extent_dims(sp, dims, NULL);
    ct->ndim = nd;
    // HDF5 takes dimensions up to 2^64 with no data stored: a damaged file's
    // shape must not wrap the byte count the reader allocates (2^56
    // elements of 8 bytes stay below 2^64)
    uint64_t numel = 1;
    for (int k = 0; k < nd; k++) {
        ct->shape[k] = (int64_t)dims[k];
        if (dims[k] && numel > (UINT64_C(1) << 56) / dims[k]) {
            sdc_err(err, SDC_ERR_FORMAT, "%s: dimension %d is %llu: more than 2^56 elements in all\n---> the file is "
                    "damaged; restore it from a copy or use an older checkpoint", where, k,
                    (unsigned long long)dims[k]);
            goto fail;
        }
        numel *= dims[k];
    }
    if (h5_attr_get_str(d, "dtype", &tag, where, err) || h5_attr_get_u32(d, "crc32", &ct->crc32, where, err)) goto fail;
    H5T_class_t cls = H5Tget_class(t);
    size_t sz = H5Tget_size(t);
    int ok = 1;
    if (!strcmp(tag, "f32")) ct->dtype = DT_F32, ok = cls == H5T_FLOAT && sz == 4;
    else if (!strcmp(tag, "f16")) ct->dtype = DT_F16, ok = cls == H5T_FLOAT && sz == 2;
    else if (!strcmp(tag, "bf16")) ct->dtype = DT_BF16, ok = cls == H5T_INTEGER && sz == 2;
    else if (!strcmp(tag, "i32")) ct->dtype = DT_I32, ok = cls == H5T_INTEGER && sz == 4;
    else if (!strcmp(tag, "i64")) ct->dtype = DT_I64, ok = cls == H5T_INTEGER && sz == 8;
    else if (!strcmp(tag, "u8")) ct->dtype = DT_U8, ok = cls == H5T_INTEGER && sz == 1;
    else ok = 0;
    if (!ok) {
        sdc_err(err, SDC_ERR_FORMAT, "%s: dtype attribute \"%s\" does not match the stored type (%zu-byte %s)\n"
                "---> expected f32 / f16 (floats), bf16 (u16), i32, i64 or u8", where, tag, sz,
                cls == H5T_FLOAT ? "float" : cls == H5T_INTEGER ? "integer" : "other");
        goto fail;
    }
    Tensor tt = {.dtype = ct->dtype, .ndim = nd};
    memcpy(tt.shape, ct->shape, sizeof tt.shape);
    ct->nbytes = tensor_bytes(&tt);
    // sdc writes every tensor whole: one whose data was never written is a
    // damaged file's, and its shape alone (up to 2^56 elements) would size the
    // reader's buffer
    if (h5_check_written(d, ct->nbytes, "bytes", "its data", where, err)) goto fail;
    x->c->n++;
    free(tag);
    H5Tclose(t);
    H5Sclose(sp);
    H5Dclose(d);
    return 0;
fail:
    free(tag);
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    x->rc = err->code ? err->code : SDC_ERR_FORMAT;
    return -1;
}

void ckpt_close(Ckpt *c) {
    if (c->file >= 0) H5Fclose(c->file);
    c->file = -1;
    free(c->t);
    free(c->data_order);
    c->t = NULL;
    c->data_order = NULL;
    c->n = 0;
}

int ckpt_open(Ckpt *c, const char *path, SdcError *err) {
    memset(c, 0, sizeof *c);
    c->file = -1;
    snprintf(c->path, sizeof c->path, "%s", path);
    H5Par ser = h5_par_serial();
    SDC_TRY(h5_open_kind(path, "checkpoint", 0, &ser, &c->file, err));
    hid_t g = -1, d = -1, sp = -1;
    if (!h5_has_link(c->file, "state") || (g = H5Gopen2(c->file, "state", H5P_DEFAULT)) < 0 ||
        !h5_has_attr(g, "step")) {
        sdc_err(err, SDC_ERR_FORMAT, "%s: /state has no step attribute: the checkpoint is incomplete\n---> its "
                "writer was interrupted; use the previous checkpoint", path);
        goto fail;
    }
    if (h5_attr_get_i64(g, "step", &c->step, path, err) || h5_attr_get_u64s(g, "rng_state", c->rng, 4, path, err))
        goto fail;
    if (h5_has_link(g, "data_order")) {
        hsize_t n = 0;
        H5_TRY(d = H5Dopen2(g, "data_order", H5P_DEFAULT), "%s: /state/data_order", path);
        H5_TRY(sp = H5Dget_space(d), "%s: /state/data_order", path);
        if (H5Sget_simple_extent_ndims(sp) != 1) {
            sdc_err(err, SDC_ERR_FORMAT, "%s: /state/data_order must be 1-D", path);
            goto fail;
        }
        H5Sget_simple_extent_dims(sp, &n, NULL);
        if (n > INT32_MAX) { // one entry per training image
            sdc_err(err, SDC_ERR_FORMAT, "%s: /state/data_order holds %llu entries (one per training image)\n---> "
                    "the file is damaged; use an older checkpoint", path, (unsigned long long)n);
            goto fail;
        }
        // written whole by sdc: entries with no data stored behind them are a
        // damaged file's, and would size the buffer below (fuzz_h5s_ckpt: a
        // 2 GiB malloc for 268 million declared entries of a small file)
        if (h5_check_written(d, n, "values", "/state/data_order", path, err)) goto fail;
        c->n_order = (int64_t)n;
        c->data_order = malloc((n ? n : 1) * sizeof(int64_t));
        if (!c->data_order) {
            sdc_err(err, SDC_ERR_OOM, "%s: out of memory for /state/data_order (%llu entries)", path,
                    (unsigned long long)n);
            goto fail;
        }
        if (n) H5_TRY(H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, c->data_order),
                      "%s: /state/data_order", path);
        H5Sclose(sp), sp = -1;
        H5Dclose(d), d = -1;
    }
    H5Gclose(g), g = -1;
    ListCtx x = {.c = c, .err = err}; // x.cap: the list's capacity across groups
    for (int i = 0; i < N_PARAM_GROUPS; i++) {
        if (!h5_has_link(c->file, PARAM_GROUPS[i])) {
            if (i >= 3) continue; // /extra and /text_encoder_2 are optional
            sdc_err(err, SDC_ERR_FORMAT, "%s: group /%s is missing\n---> layouts: data/README.md", path,
                    PARAM_GROUPS[i]);
            goto fail;
        }
        H5_TRY(g = H5Gopen2(c->file, PARAM_GROUPS[i], H5P_DEFAULT), "%s: /%s", path, PARAM_GROUPS[i]);
        x.group = PARAM_GROUPS[i];
        hsize_t idx = 0;
        herr_t r = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, &idx, list_cb, &x);
        if (x.rc) goto fail;
        H5_TRY(r, "%s: listing /%s", path, PARAM_GROUPS[i]);
        H5Gclose(g), g = -1;
    }
    return 0;
fail:
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    if (g >= 0) H5Gclose(g);
    ckpt_close(c);
    return err->code ? err->code : SDC_ERR_FORMAT;
}

int ckpt_list_group(Ckpt *c, const char *group, SdcError *err) {
    if (strlen(group) >= CKPT_GROUP_MAX)
        return sdc_err(err, SDC_ERR_ARG, "%s: group name %.100s... too long", c->path, group);
    if (!h5_has_link(c->file, group)) return 0;
    hid_t g = -1;
    ListCtx x = {.c = c, .group = group, .cap = c->n, .err = err}; // cap: grows from the current count
    H5_TRY(g = H5Gopen2(c->file, group, H5P_DEFAULT), "%s: /%s", c->path, group);
    hsize_t idx = 0;
    herr_t r = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, &idx, list_cb, &x);
    if (x.rc) goto fail;
    H5_TRY(r, "%s: listing /%s", c->path, group);
    H5Gclose(g);
    return 0;
fail:
    if (g >= 0) H5Gclose(g);
    return err->code ? err->code : SDC_ERR_FORMAT;
}

int ckpt_find(const Ckpt *c, const char *group, const char *name) {
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->t[i].group, group) && !strcmp(c->t[i].name, name)) return i;
    return -1;
}

int ckpt_read(const Ckpt *c, int i, void *buf, int verify, SdcError *err) {
    const CkptTensor *ct = &c->t[i];
    hid_t g = -1, d = -1, t = -1;
    H5_TRY(g = H5Gopen2(c->file, ct->group, H5P_DEFAULT), "%s: /%s", c->path, ct->group);
    H5_TRY(d = H5Dopen2(g, ct->name, H5P_DEFAULT), "%s: /%s/%s", c->path, ct->group, ct->name);
    H5_TRY(t = H5Dget_type(d), "%s: /%s/%s", c->path, ct->group, ct->name);
    if (ct->nbytes)
        H5_TRY(H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf), "%s: reading /%s/%s ---> is the file truncated?",
               c->path, ct->group, ct->name);
    H5Tclose(t);
    H5Dclose(d);
    H5Gclose(g);
    if (verify) {
        uint32_t got = ckpt_crc32(buf, ct->nbytes);
        if (got != ct->crc32)
            return sdc_err(err, SDC_ERR_FORMAT, "%s: /%s/%s: CRC32 of the data is %08x, its crc32 attribute says "
                           "%08x: the tensor is corrupt\n---> restore the file from a copy or use an older "
                           "checkpoint", c->path, ct->group, ct->name, got, ct->crc32);
    }
    return 0;
fail:
    if (t >= 0) H5Tclose(t);
    if (d >= 0) H5Dclose(d);
    if (g >= 0) H5Gclose(g);
    return err->code;
}

int ckpt_get_attr(const Ckpt *c, const char *group, const char *key, char **out, SdcError *err) {
    hid_t g = -1;
    *out = NULL;
    char where[1200];
    snprintf(where, sizeof where, "%s: /%s", c->path, group);
    if (group[0] && !h5_has_link(c->file, group))
        return sdc_err(err, SDC_ERR_FORMAT, "%s: group /%s is missing", c->path, group);
    H5_TRY(g = H5Gopen2(c->file, group[0] ? group : "/", H5P_DEFAULT), "%s", where);
    int rc = h5_attr_get_str(g, key, out, where, err);
    H5Gclose(g);
    return rc;
fail:
    return err->code;
}
