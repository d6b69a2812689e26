// fuzz_h5_build.h: the structure-aware form of the HDF5 fuzz targets
// (fuzz_h5_dataset.c, fuzz_h5_ckpt.c, fuzz_h5_genout.c built with
// FUZZ_H5_STRUCT as fuzz_h5s_*): the input is not the file's bytes but a
// program that builds a valid HDF5 file through HDF5's API (groups, datasets
// and attributes of any name, type, shape, layout and contents), which sdc's
// real readers then open by path as before.
//
// Why: the byte-level targets spend their time in libhdf5's own parser (a
// third of it in its 1-second hangs on damaged heaps, and every crash they
// found was inside libhdf5, docs/fuzzing.md), so they run in fork mode at
// 170-520 inputs/s and rarely get past the superblock. A built file is always
// one libhdf5 reads, so what is exercised is sdc's use of it: a dataset of
// the wrong type, rank or size, an attribute that is a vector, a string that
// is fixed-length or not UTF-8, counts that disagree between datasets, shapes
// of 2^60 elements (declared, never allocated: such datasets are chunked and
// not written), in-process at thousands of inputs/s.
//
// The program, a sequence of records (decoding never fails: a short input
// just ends the program; every HDF5 call that refuses its arguments is
// skipped, as a file the library will not write cannot be given to sdc):
//   record    op:u8 (op % 3: 0 dataset, 1 attribute, 2 group) then
//     dataset    path, type, shape, data      (intermediate groups made)
//     attribute  path (the object; "." = root), name, type, shape, data
//     group      path
//   path/name u8 length, then that many bytes
//   type      u8 t: t % 4 = 0 or 3 integer (size 1 << ((t >> 2) & 3), signed
//             if t & 16), 1 float ((t >> 2) & 3: 0 IEEE half as sdc writes
//             f16, 1 f32, 2 f64, 3 a 16-bit float with bf16's fields), 2
//             string (variable-length if t & 4, else a fixed size of the next
//             byte + 1; UTF-8 if t & 8; padding (t >> 6) & 3: null-terminated,
//             null-padded, space-padded); big-endian if t & 32 (numbers)
//   shape     u8 s: rank s % 5 (0: scalar), layout (s / 5) % 4 (contiguous,
//             chunked, chunked + deflate, compact), then one LEB128 varint
//             per dimension
//   data      a varint n and n bytes, repeated to fill the elements (numbers
//             and fixed strings: their raw bytes; variable-length strings: the
//             bytes split at NUL, one piece per element, cyclically)
// fuzz_h5_describe writes the program that rebuilds an existing file (the
// seeds: make_fuzz_seeds.c turns each tests/fuzz/seeds/h5_* file into its
// program in tests/fuzz/seeds/h5s_*), so mutations start from files sdc
// accepts whole.
#ifndef SDC_FUZZ_H5_BUILD_H
#define SDC_FUZZ_H5_BUILD_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hdf5.h>

#define FZ_MAX_RECORDS 512
#define FZ_MAX_BYTES (1u << 18) // data written per dataset / attribute; larger ones are declared only

typedef struct FzIn {
    const uint8_t *p, *end;
} FzIn;

static inline uint8_t fz_u8(FzIn *in) { return in->p < in->end ? *in->p++ : 0; }

static inline uint64_t fz_varint(FzIn *in) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && in->p < in->end; shift += 7) {
        uint8_t b = *in->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) break;
    }
    return v;
}

static inline void fz_name(FzIn *in, char *out) { // out: 256 bytes
    size_t n = fz_u8(in);
    if (n > (size_t)(in->end - in->p)) n = (size_t)(in->end - in->p);
    memcpy(out, in->p, n);
    out[n] = 0; // a NUL inside shortens the name, as a C string would
    in->p += n;
}

static inline hid_t fz_type(FzIn *in) {
    uint8_t t = fz_u8(in);
    int be = (t & 32) != 0;
    hid_t ty = -1;
    switch (t & 3) {
    case 1:
        switch ((t >> 2) & 3) {
        case 0:
        case 3:
            ty = H5Tcopy(H5T_IEEE_F32LE);
            if (ty < 0) return -1;
            if (((t >> 2) & 3) == 0 ? H5Tset_fields(ty, 15, 10, 5, 0, 10) < 0 || H5Tset_size(ty, 2) < 0 ||
                                          H5Tset_ebias(ty, 15) < 0
                                    : H5Tset_fields(ty, 15, 7, 8, 0, 7) < 0 || H5Tset_size(ty, 2) < 0 ||
                                          H5Tset_ebias(ty, 127) < 0) {
                H5Tclose(ty);
                return -1;
            }
            break;
        case 1: ty = H5Tcopy(H5T_IEEE_F32LE); break;
        default: ty = H5Tcopy(H5T_IEEE_F64LE); break;
        }
        break;
    case 2: {
        ty = H5Tcopy(H5T_C_S1);
        if (ty < 0) return -1;
        size_t sz = (t & 4) ? H5T_VARIABLE : (size_t)fz_u8(in) + 1;
        H5T_str_t pad = (t >> 6) == 1 ? H5T_STR_NULLPAD : (t >> 6) == 2 ? H5T_STR_SPACEPAD : H5T_STR_NULLTERM;
        if (H5Tset_size(ty, sz) < 0 || H5Tset_cset(ty, (t & 8) ? H5T_CSET_UTF8 : H5T_CSET_ASCII) < 0 ||
            H5Tset_strpad(ty, pad) < 0) {
            H5Tclose(ty);
            return -1;
        }
        return ty;
    }
    default: {
        static const hid_t *const INT[2][2][4] = {
            {{&H5T_STD_U8LE_g, &H5T_STD_U16LE_g, &H5T_STD_U32LE_g, &H5T_STD_U64LE_g},
             {&H5T_STD_I8LE_g, &H5T_STD_I16LE_g, &H5T_STD_I32LE_g, &H5T_STD_I64LE_g}},
            {{&H5T_STD_U8BE_g, &H5T_STD_U16BE_g, &H5T_STD_U32BE_g, &H5T_STD_U64BE_g},
             {&H5T_STD_I8BE_g, &H5T_STD_I16BE_g, &H5T_STD_I32BE_g, &H5T_STD_I64BE_g}}};
        return H5Tcopy(*INT[be][(t >> 4) & 1][(t >> 2) & 3]);
    }
    }
    if (be && H5Tset_order(ty, H5T_ORDER_BE) < 0) {
        H5Tclose(ty);
        return -1;
    }
    return ty;
}

// The shape: a dataspace (or -1), its element count (UINT64_MAX past 2^64)
// and the layout code.
static inline hid_t fz_space(FzIn *in, uint64_t *nelem, int *layout, hsize_t *dims) {
    uint8_t s = fz_u8(in);
    int rank = s % 5;
    *layout = (s / 5) % 4;
    uint64_t n = 1;
    for (int i = 0; i < rank; i++) {
        dims[i] = fz_varint(in);
        if (n != UINT64_MAX && __builtin_mul_overflow(n, (uint64_t)dims[i], &n)) n = UINT64_MAX;
    }
    *nelem = n;
    return rank ? H5Screate_simple(rank, dims, NULL) : H5Screate(H5S_SCALAR);
}

// The element data: ne elements of type ty, filled from the data record;
// NULL when the record is empty for a fixed-size type (the fill value, zeros,
// stays) or the total is over FZ_MAX_BYTES. *vlen: the buffer holds char *s
// into *text (free both).
static inline void *fz_data(FzIn *in, hid_t ty, uint64_t ne, int *vlen, char **text) {
    uint64_t n = fz_varint(in);
    if (n > (uint64_t)(in->end - in->p)) n = (uint64_t)(in->end - in->p);
    const uint8_t *d = in->p;
    in->p += n;
    *text = NULL;
    *vlen = H5Tis_variable_str(ty) > 0;
    size_t es = *vlen ? sizeof(char *) : H5Tget_size(ty);
    uint64_t total;
    if (es == 0 || __builtin_mul_overflow(ne, (uint64_t)es, &total) || total > FZ_MAX_BYTES) return NULL;
    if (*vlen) { // the pieces between NULs, copied once; the pointers cycle over them
        char **v = malloc(total ? total : 1);
        *text = malloc(n + 1);
        if (!*text || !v) {
            free(*text), free(v);
            *text = NULL;
            return NULL;
        }
        memcpy(*text, d, n);
        (*text)[n] = 0;
        size_t starts[64], ns = 0;
        for (size_t i = 0; i <= n && ns < 64; i++)
            if (i == 0 || (*text)[i - 1] == 0) starts[ns++] = i;
        for (uint64_t i = 0; i < ne; i++) v[i] = *text + starts[i % ns];
        return v;
    }
    if (n == 0) return NULL;
    uint8_t *buf = malloc(total ? total : 1);
    if (!buf) return NULL;
    uint64_t have = n < total ? n : total; // the record, then doubled until full
    memcpy(buf, d, have);
    while (have < total) {
        uint64_t k = have < total - have ? have : total - have;
        memcpy(buf + have, buf, k);
        have += k;
    }
    return buf;
}

// A record's type, shape and data, decoded (every part consumed even when
// HDF5 refuses the type, so the records after it stay in step).
typedef struct FzValue {
    hid_t ty, sp;
    hsize_t dims[4];
    uint64_t ne;
    int layout, vlen;
    char *text;
    void *buf;
} FzValue;

static inline void fz_value(FzIn *in, FzValue *v) {
    memset(v, 0, sizeof *v);
    v->ty = fz_type(in);
    v->sp = fz_space(in, &v->ne, &v->layout, v->dims);
    if (v->ty >= 0) {
        v->buf = fz_data(in, v->ty, v->ne, &v->vlen, &v->text);
    } else { // the data record, skipped
        uint64_t n = fz_varint(in);
        in->p += n < (uint64_t)(in->end - in->p) ? n : (uint64_t)(in->end - in->p);
    }
}

static inline void fz_value_free(FzValue *v) {
    free(v->text), free(v->buf);
    if (v->sp >= 0) H5Sclose(v->sp);
    if (v->ty >= 0) H5Tclose(v->ty);
}

static inline void fz_dataset(hid_t file, hid_t lcpl, FzIn *in) {
    char path[256];
    fz_name(in, path);
    FzValue v;
    fz_value(in, &v);
    hid_t dcpl = v.ty >= 0 && v.sp >= 0 ? H5Pcreate(H5P_DATASET_CREATE) : -1;
    if (dcpl >= 0) {
        const int rank = H5Sget_simple_extent_ndims(v.sp);
        const size_t es = v.vlen ? sizeof(char *) : H5Tget_size(v.ty);
        uint64_t total = 0;
        const int big = __builtin_mul_overflow(v.ne, (uint64_t)es, &total) || total > FZ_MAX_BYTES;
        if (rank > 0 && (big || v.layout == 1 || v.layout == 2)) { // declared-only datasets: chunked, nothing stored
            hsize_t ch[4];
            for (int i = 0; i < rank; i++) ch[i] = v.dims[i] == 0 ? 1 : v.dims[i] < 16 ? v.dims[i] : 16;
            if (H5Pset_chunk(dcpl, rank, ch) >= 0 && v.layout == 2) H5Pset_deflate(dcpl, 1);
        } else if (v.layout == 3 && !big && total < 60000) {
            H5Pset_layout(dcpl, H5D_COMPACT);
        }
        hid_t d = H5Dcreate2(file, path, v.ty, v.sp, lcpl, dcpl, H5P_DEFAULT);
        if (d >= 0) {
            if (v.buf && !big) H5Dwrite(d, v.ty, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.buf);
            H5Dclose(d);
        }
        H5Pclose(dcpl);
    }
    fz_value_free(&v);
}

static inline void fz_attribute(hid_t file, FzIn *in) {
    char obj[256], name[256];
    fz_name(in, obj);
    fz_name(in, name);
    FzValue v;
    fz_value(in, &v);
    if (v.ty >= 0 && v.sp >= 0 && v.ne <= FZ_MAX_BYTES) {
        hid_t a = H5Acreate_by_name(file, obj[0] ? obj : ".", name, v.ty, v.sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (a >= 0) {
            if (v.buf) H5Awrite(a, v.ty, v.buf);
            H5Aclose(a);
        }
    }
    fz_value_free(&v);
}

// Builds the file at path from the program (replacing it). Returns 0, or -1
// when the file itself cannot be created (a harness problem).
static inline int fuzz_h5_build(const char *path, const uint8_t *data, size_t size) {
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) return -1;
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    FzIn in = {data, data + size};
    for (int r = 0; r < FZ_MAX_RECORDS && in.p < in.end; r++) {
        switch (fz_u8(&in) % 3) {
        case 0: fz_dataset(file, lcpl, &in); break;
        case 1: fz_attribute(file, &in); break;
        default: {
            char path2[256];
            fz_name(&in, path2);
            hid_t g = H5Gcreate2(file, path2, lcpl, H5P_DEFAULT, H5P_DEFAULT);
            if (g >= 0) H5Gclose(g);
        }
        }
    }
    H5Pclose(lcpl);
    return H5Fclose(file) < 0 ? -1 : 0;
}

// ---- the program of an existing file (seeds) ----------------------------------
typedef struct FzOut {
    uint8_t *p;
    size_t n, cap;
} FzOut;

static inline void fz_put(FzOut *o, const void *b, size_t n) {
    if (o->n + n > o->cap) {
        o->cap = (o->n + n) * 2 + 256;
        o->p = realloc(o->p, o->cap);
        if (!o->p) abort();
    }
    memcpy(o->p + o->n, b, n);
    o->n += n;
}
static inline void fz_put_u8(FzOut *o, uint8_t v) { fz_put(o, &v, 1); }
static inline void fz_put_varint(FzOut *o, uint64_t v) {
    do {
        fz_put_u8(o, (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0)));
        v >>= 7;
    } while (v);
}
static inline int fz_put_name(FzOut *o, const char *s) {
    size_t n = strlen(s);
    if (n > 255) return -1;
    fz_put_u8(o, (uint8_t)n);
    fz_put(o, s, n);
    return 0;
}

// The type code of ty, or -1 for a type the program cannot state.
static inline int fz_put_type(FzOut *o, hid_t ty) {
    int be = H5Tget_order(ty) == H5T_ORDER_BE;
    size_t sz = H5Tget_size(ty);
    switch (H5Tget_class(ty)) {
    case H5T_INTEGER: {
        int k = sz == 1 ? 0 : sz == 2 ? 1 : sz == 4 ? 2 : sz == 8 ? 3 : -1;
        if (k < 0) return -1;
        fz_put_u8(o, (uint8_t)((k << 2) | (H5Tget_sign(ty) == H5T_SGN_2 ? 16 : 0) | (be ? 32 : 0)));
        return 0;
    }
    case H5T_FLOAT: {
        int k = sz == 2 ? (H5Tget_ebias(ty) == 15 ? 0 : 3) : sz == 4 ? 1 : sz == 8 ? 2 : -1;
        if (k < 0) return -1;
        fz_put_u8(o, (uint8_t)(1 | (k << 2) | (be ? 32 : 0)));
        return 0;
    }
    case H5T_STRING: {
        int vl = H5Tis_variable_str(ty) > 0;
        H5T_str_t pad = H5Tget_strpad(ty);
        uint8_t t = (uint8_t)(2 | (vl ? 4 : 0) | (H5Tget_cset(ty) == H5T_CSET_UTF8 ? 8 : 0) |
                              (pad == H5T_STR_NULLPAD ? 64 : pad == H5T_STR_SPACEPAD ? 128 : 0));
        if (!vl && (sz < 1 || sz > 256)) return -1;
        fz_put_u8(o, t);
        if (!vl) fz_put_u8(o, (uint8_t)(sz - 1));
        return 0;
    }
    default: return -1;
    }
}

// shape + data of an attribute (is_attr) or dataset obj.
static inline void fz_put_shape_data(FzOut *o, hid_t obj, int is_attr, hid_t ty, int layout) {
    hid_t sp = is_attr ? H5Aget_space(obj) : H5Dget_space(obj);
    int rank = H5Sget_simple_extent_ndims(sp);
    hsize_t dims[4] = {0};
    if (rank > 4) rank = 4;
    H5Sget_simple_extent_dims(sp, dims, NULL);
    fz_put_u8(o, (uint8_t)(rank + 5 * layout));
    uint64_t ne = 1;
    for (int i = 0; i < rank; i++) fz_put_varint(o, dims[i]), ne *= dims[i];
    H5Sclose(sp);
    if (H5Tis_variable_str(ty) > 0) {
        hid_t mt = H5Tcopy(ty); // (a C string type of another cset would not convert)
        char **v = calloc(ne ? ne : 1, sizeof *v);
        FzOut s = {0};
        if ((is_attr ? H5Aread(obj, mt, v) : H5Dread(obj, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, v)) >= 0)
            for (uint64_t i = 0; i < ne; i++) {
                if (i) fz_put_u8(&s, 0);
                if (v[i]) fz_put(&s, v[i], strlen(v[i]));
                free(v[i]);
            }
        fz_put_varint(o, s.n);
        if (s.n) fz_put(o, s.p, s.n);
        free(s.p), free(v), H5Tclose(mt);
        return;
    }
    size_t total = ne * H5Tget_size(ty);
    uint8_t *buf = malloc(total ? total : 1);
    if (!buf || (is_attr ? H5Aread(obj, ty, buf) : H5Dread(obj, ty, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf)) < 0)
        total = 0;
    fz_put_varint(o, total);
    fz_put(o, buf, total);
    free(buf);
}

static herr_t fz_put_attr(hid_t loc, const char *name, const H5A_info_t *info, void *op) {
    (void)info;
    FzOut *o = ((void **)op)[0];
    const char *objpath = ((void **)op)[1];
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t ty = H5Aget_type(a);
    size_t mark = o->n;
    fz_put_u8(o, 1);
    if (fz_put_name(o, objpath) || fz_put_name(o, name) || fz_put_type(o, ty)) o->n = mark; // left out
    else fz_put_shape_data(o, a, 1, ty, 0);
    H5Tclose(ty), H5Aclose(a);
    return 0;
}

static herr_t fz_put_object(hid_t root, const char *name, const H5O_info_t *info, void *op) {
    FzOut *o = op;
    int is_root = !strcmp(name, ".");
    size_t mark = o->n;
    if (info->type == H5O_TYPE_DATASET) {
        hid_t d = H5Dopen2(root, name, H5P_DEFAULT), ty = H5Dget_type(d), dcpl = H5Dget_create_plist(d);
        H5D_layout_t lay = H5Pget_layout(dcpl);
        int layout = lay == H5D_COMPACT ? 3 : lay == H5D_CHUNKED ? (H5Pget_nfilters(dcpl) > 0 ? 2 : 1) : 0;
        fz_put_u8(o, 0);
        if (fz_put_name(o, name) || fz_put_type(o, ty)) o->n = mark;
        else fz_put_shape_data(o, d, 0, ty, layout);
        H5Pclose(dcpl), H5Tclose(ty), H5Dclose(d);
    } else if (info->type == H5O_TYPE_GROUP && !is_root) {
        fz_put_u8(o, 2);
        if (fz_put_name(o, name)) o->n = mark;
    }
    void *ctx[2] = {o, (void *)name};
    hid_t obj = H5Oopen(root, name, H5P_DEFAULT);
    H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_INC, NULL, fz_put_attr, ctx);
    H5Oclose(obj);
    return 0;
}

// The program that rebuilds the file at path (malloc'd, *n bytes), or NULL.
static inline uint8_t *fuzz_h5_describe(const char *path, size_t *n) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return NULL;
    FzOut o = {0};
    H5Ovisit(f, H5_INDEX_NAME, H5_ITER_INC, fz_put_object, &o);
    H5Fclose(f);
    *n = o.n;
    return o.p;
}

#endif
