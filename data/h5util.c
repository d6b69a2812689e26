// h5util.c: checked HDF5 calls, kind/version checks, string helpers and the
// serial-or-MPI handle shared by the three sdc file kinds (see h5util.h).
#include "data/h5util.h"
#include "data/fsutil.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

// ----------------------------------------------------------------------------
// errors

typedef struct H5Msgs {
    char top[256], deep[256];
    char sys[128]; // the system's error text, when a file driver reported one
    int sys_errno;
    int n;
} H5Msgs;

static herr_t walk_cb(unsigned n, const H5E_error2_t *e, void *user) {
    H5Msgs *m = user;
    (void)n;
    const char *d = e->desc && e->desc[0] ? e->desc : "(no description)";
    if (m->n == 0) snprintf(m->top, sizeof m->top, "%s: %s", e->func_name ? e->func_name : "?", d);
    snprintf(m->deep, sizeof m->deep, "%s", d);
    // the sec2 / MPI-IO drivers say "..., errno = 28, error message = 'No
    // space left on device', ...": keep those two, the rest is noise
    const char *en = strstr(d, "errno = "), *em = strstr(d, "error message = '");
    if (en && !m->sys_errno) m->sys_errno = atoi(en + 8);
    if (em && !m->sys[0]) {
        em += strlen("error message = '");
        size_t k = strcspn(em, "'");
        snprintf(m->sys, sizeof m->sys, "%.*s", (int)(k < sizeof m->sys ? k : sizeof m->sys - 1), em);
    }
    m->n++;
    return 0;
}

void h5_fail(SdcError *err, const char *file, int line, const char *call, const char *fmt, ...) {
    H5Msgs m = {0};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk_cb, &m);
    H5Eclear2(H5E_DEFAULT);
    char ctx[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    if (m.sys[0] || m.sys_errno) {
        // a system error under HDF5 (a full disk, a lost file system): that is
        // the message; the caller's own hint, if any, is for other causes
        char *hint = strstr(ctx, " --->");
        if (hint) *hint = 0;
        const char *why = fs_write_hint(m.sys_errno);
        sdc_err(err, SDC_ERR_IO, "%s: %s (HDF5: %s) [%s failed at %s:%d] ---> %s", ctx,
                m.sys[0] ? m.sys : strerror(m.sys_errno), m.top, call, file, line, why);
    } else if (m.n > 1)
        sdc_err(err, SDC_ERR_IO, "%s: HDF5: %s (%s) [%s failed at %s:%d]", ctx, m.top, m.deep, call, file, line);
    else
        sdc_err(err, SDC_ERR_IO, "%s: HDF5: %s [%s failed at %s:%d]", ctx, m.n ? m.top : "error", call, file,
                line);
}

int h5_close_file_at(hid_t *f, const char *path, SdcError *err, const char *file, int line) {
    if (*f < 0) return 0;
    herr_t rc = H5Fclose(*f);
    *f = -1; // closed or not, the id must not be closed again (HDF5 1.10 crashes on it)
    if (rc < 0) {
        h5_fail(err, file, line, "H5Fclose", "%s: closing (the last writes go out now)", path);
        return err->code;
    }
    return 0;
}

void h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

void h5_lib_start(void) { H5dont_atexit(); }

void h5_lib_finish(int ok) {
    if (ok) H5close();
}

// ----------------------------------------------------------------------------
// serial or MPI

H5Par h5_par_serial(void) { return (H5Par){.comm = MPI_COMM_NULL, .rank = 0, .size = 1}; }

H5Par h5_par_world(void) {
    int inited = 0, fin = 0;
    MPI_TRY_FATAL(MPI_COMM_WORLD, MPI_Initialized(&inited), "storage: MPI state");
    MPI_TRY_FATAL(MPI_COMM_WORLD, MPI_Finalized(&fin), "storage: MPI state");
    if (!inited || fin) return h5_par_serial();
    H5Par p = {.comm = MPI_COMM_WORLD};
    MPI_TRY_FATAL(p.comm, MPI_Comm_rank(p.comm, &p.rank), "storage: rank");
    MPI_TRY_FATAL(p.comm, MPI_Comm_size(p.comm, &p.size), "storage: ranks");
    return p;
}

int h5_par_agree(const H5Par *p, int rc, SdcError *err) {
    if (!h5_par_is_mpi(p)) return rc;
    // the lowest failing rank is the root; no allocation, so agreeing on an
    // out-of-memory status cannot itself run out of memory
    int mine = rc ? p->rank : p->size, root = p->size, out = rc;
    int mrc = MPI_Allreduce(&mine, &root, 1, MPI_INT, MPI_MIN, p->comm);
    if (mrc != MPI_SUCCESS) return mpi_fail(err, __FILE__, __LINE__, "MPI_Allreduce", mrc, "ranks agreeing on a status");
    if (root == p->size) return 0;
    mrc = MPI_Bcast(&out, 1, MPI_INT, root, p->comm);
    if (mrc != MPI_SUCCESS) return mpi_fail(err, __FILE__, __LINE__, "MPI_Bcast", mrc, "rank %d's status", root);
    if (err) {
        int brc = MPI_Bcast(err->msg, (int)sizeof err->msg, MPI_CHAR, root, p->comm);
        if (brc != MPI_SUCCESS) return mpi_fail(err, __FILE__, __LINE__, "MPI_Bcast", brc, "rank %d's error", root);
        err->code = out;
        if (p->rank != root) {
            char tmp[sizeof err->msg];
            memcpy(tmp, err->msg, sizeof tmp);
            tmp[sizeof tmp - 20] = 0;
            snprintf(err->msg, sizeof err->msg, "rank %d: %.2000s", root, tmp);
        }
    }
    return out;
}

int64_t h5_par_sum(const H5Par *p, int64_t x) {
    if (!h5_par_is_mpi(p)) return x;
    int64_t s = 0;
    MPI_TRY_FATAL(p->comm, MPI_Allreduce(&x, &s, 1, MPI_INT64_T, MPI_SUM, p->comm), "storage: a sum over the ranks");
    return s;
}

int64_t h5_par_max(const H5Par *p, int64_t x) {
    if (!h5_par_is_mpi(p)) return x;
    int64_t s = 0;
    MPI_TRY_FATAL(p->comm, MPI_Allreduce(&x, &s, 1, MPI_INT64_T, MPI_MAX, p->comm), "storage: a max over the ranks");
    return s;
}

void h5_par_max_bytes(const H5Par *p, uint8_t *x, int n) {
    if (h5_par_is_mpi(p) && n > 0)
        MPI_TRY_FATAL(p->comm, MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_UINT8_T, MPI_MAX, p->comm),
                      "storage: merging %d done flags", n);
}

void h5_par_barrier(const H5Par *p) {
    if (h5_par_is_mpi(p)) MPI_TRY_FATAL(p->comm, MPI_Barrier(p->comm), "storage: barrier");
}

hid_t h5_fapl(const H5Par *p) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) return fapl;
    if (h5_par_is_mpi(p) && H5Pset_fapl_mpio(fapl, p->comm, MPI_INFO_NULL) < 0) {
        H5Pclose(fapl);
        return -1;
    }
    return fapl;
}

hid_t h5_dxpl(const H5Par *p) {
    if (!h5_par_is_mpi(p)) return H5P_DEFAULT;
    hid_t x = H5Pcreate(H5P_DATASET_XFER);
    if (x < 0) return x;
    if (H5Pset_dxpl_mpio(x, H5FD_MPIO_COLLECTIVE) < 0) {
        H5Pclose(x);
        return -1;
    }
    return x;
}

void h5_close_plist(hid_t pl) {
    if (pl > 0 && pl != H5P_DEFAULT) H5Pclose(pl);
}

// ----------------------------------------------------------------------------
// kinds

int h5_set_kind(hid_t file, const char *path, const char *kind, SdcError *err) {
    SDC_TRY(h5_attr_str(file, "sdc_kind", kind, path, err));
    return h5_attr_i64(file, "sdc_layout_version", SDC_LAYOUT_VERSION, path, err);
}

int h5_open_kind(const char *path, const char *kind, int rw, const H5Par *p, hid_t *out, SdcError *err) {
    h5_quiet();
    *out = -1;
    struct stat st;
    if (stat(path, &st) != 0)
        return sdc_err(err, SDC_ERR_IO, "%s: no such file ---> expected an sdc %s file (.h5)", path, kind);
    if (!S_ISREG(st.st_mode))
        return sdc_err(err, SDC_ERR_IO, "%s: not a regular file ---> expected an sdc %s file (.h5)", path, kind);
    htri_t is = H5Fis_hdf5(path);
    H5Eclear2(H5E_DEFAULT);
    if (is <= 0)
        return sdc_err(err, SDC_ERR_FORMAT, "%s: not an HDF5 file (no HDF5 signature in its %lld bytes)\n---> "
                       "expected an sdc %s file; is it truncated, or another format?", path, (long long)st.st_size,
                       kind);
    hid_t fapl = -1, f = -1;
    char *k = NULL;
    int64_t ver = 0;
    H5_TRY(fapl = h5_fapl(p), "%s: file access list", path);
    H5_TRY(f = H5Fopen(path, rw ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl),
           "%s: cannot open as HDF5 ---> is the file truncated or still being written?", path);
    h5_close_plist(fapl);
    fapl = -1;
    if (!h5_has_attr(f, "sdc_kind")) {
        sdc_err(err, SDC_ERR_FORMAT, "%s: root attribute sdc_kind is missing: an HDF5 file, but not one sdc wrote"
                "\n---> expected an sdc %s file (layouts: data/README.md)", path, kind);
        goto fail;
    }
    if (h5_attr_get_str(f, "sdc_kind", &k, path, err) || h5_attr_get_i64(f, "sdc_layout_version", &ver, path, err))
        goto fail;
    if (strcmp(k, kind)) {
        sdc_err(err, SDC_ERR_FORMAT, "%s: sdc_kind is \"%s\", expected \"%s\"\n---> this is an sdc %s file; pass "
                "a %s file here", path, k, kind, k, kind);
        goto fail;
    }
    if (ver != SDC_LAYOUT_VERSION) {
        sdc_err(err, SDC_ERR_UNSUPPORTED, "%s: sdc_layout_version is %lld, this sdc reads version %d\n---> "
                "written by a %s sdc; convert it with that version", path, (long long)ver, SDC_LAYOUT_VERSION,
                ver > SDC_LAYOUT_VERSION ? "newer" : "older");
        goto fail;
    }
    free(k);
    *out = f;
    return 0;
fail:
    free(k);
    h5_close_plist(fapl);
    if (f >= 0) H5Fclose(f);
    return err ? err->code : SDC_ERR_IO;
}

// ----------------------------------------------------------------------------
// attributes

static hid_t vlen_utf8(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0) return t;
    if (H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

static int attr_write(hid_t obj, const char *name, hid_t ftype, hid_t mtype, int n, const void *v,
                      const char *where, SdcError *err) {
    hid_t sp = -1, a = -1;
    hsize_t dims[1] = {(hsize_t)n};
    if (H5Aexists(obj, name) > 0) H5_TRY(H5Adelete(obj, name), "%s: replacing attribute %s", where, name);
    H5_TRY(sp = n < 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, NULL), "%s: attribute %s", where, name);
    H5_TRY(a = H5Acreate2(obj, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT), "%s: creating attribute %s", where, name);
    H5_TRY(H5Awrite(a, mtype, v), "%s: writing attribute %s", where, name);
    H5Aclose(a);
    H5Sclose(sp);
    return 0;
fail:
    if (a >= 0) H5Aclose(a);
    if (sp >= 0) H5Sclose(sp);
    return err ? err->code : SDC_ERR_IO;
}

int h5_attr_str(hid_t obj, const char *name, const char *value, const char *where, SdcError *err) {
    hid_t t = vlen_utf8();
    if (t < 0) return sdc_err(err, SDC_ERR_INTERNAL, "%s: string type", where);
    const char *v = value ? value : "";
    int rc = attr_write(obj, name, t, t, -1, &v, where, err);
    H5Tclose(t);
    return rc;
}

int h5_attr_i64(hid_t obj, const char *name, int64_t value, const char *where, SdcError *err) {
    return attr_write(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, -1, &value, where, err);
}

int h5_attr_u32(hid_t obj, const char *name, uint32_t value, const char *where, SdcError *err) {
    return attr_write(obj, name, H5T_STD_U32LE, H5T_NATIVE_UINT32, -1, &value, where, err);
}

int h5_attr_f64(hid_t obj, const char *name, double value, const char *where, SdcError *err) {
    return attr_write(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, -1, &value, where, err);
}

int h5_attr_u64s(hid_t obj, const char *name, const uint64_t *v, int n, const char *where, SdcError *err) {
    return attr_write(obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, n, v, where, err);
}

int h5_has_attr(hid_t obj, const char *name) {
    htri_t r = H5Aexists(obj, name);
    H5Eclear2(H5E_DEFAULT);
    return r > 0;
}

int h5_has_link(hid_t loc, const char *name) {
    htri_t r = H5Lexists(loc, name, H5P_DEFAULT);
    H5Eclear2(H5E_DEFAULT);
    return r > 0;
}

// Bytes of one element as HDF5 stores it: variable-length data as a heap
// reference (a 4-byte length, an address, a 4-byte index), other types as
// their size; 0 for types whose stored size sdc does not know (references,
// variable-length data inside compounds or arrays).
static uint64_t stored_elem_size(hid_t obj, hid_t ft) {
    const H5T_class_t cls = H5Tget_class(ft);
    if (cls == H5T_VLEN || (cls == H5T_STRING && H5Tis_variable_str(ft) > 0)) {
        hid_t f = H5Iget_file_id(obj), fcpl = f >= 0 ? H5Fget_create_plist(f) : -1;
        size_t sa = 0, sl = 0;
        if (fcpl < 0 || H5Pget_sizes(fcpl, &sa, &sl) < 0) sa = 0;
        if (fcpl >= 0) H5Pclose(fcpl);
        if (f >= 0) H5Fclose(f);
        return sa ? 8 + (uint64_t)sa : 0;
    }
    if (cls == H5T_REFERENCE || H5Tdetect_class(ft, H5T_VLEN) != 0) return 0;
    return H5Tget_size(ft);
}

// Opens attribute `name` of obj, checking it holds `n` elements (n < 0:
// scalar or 1 element) of the given class.
static int attr_open(hid_t obj, const char *name, H5T_class_t cls, int n, const char *what, hid_t *out,
                     const char *where, SdcError *err) {
    hid_t a = -1, t = -1, sp = -1;
    if (!h5_has_attr(obj, name))
        return sdc_err(err, SDC_ERR_FORMAT, "%s: attribute %s is missing (expected %s)\n---> layouts: "
                       "data/README.md", where, name, what);
    H5_TRY(a = H5Aopen(obj, name, H5P_DEFAULT), "%s: attribute %s", where, name);
    H5_TRY(t = H5Aget_type(a), "%s: attribute %s", where, name);
    H5_TRY(sp = H5Aget_space(a), "%s: attribute %s", where, name);
    hssize_t np = H5Sget_simple_extent_npoints(sp);
    if (H5Tget_class(t) != cls || (n < 0 ? np != 1 : np != n)) {
        sdc_err(err, SDC_ERR_FORMAT, "%s: attribute %s has the wrong type or size (%lld values), expected %s", where,
                name, (long long)np, what);
        goto fail;
    }
    // A damaged datatype message can say a size other than the one HDF5 reads
    // with (a variable-length string's "1 byte"): HDF5 copies the value at
    // the size it reads with, past the bytes it stored (H5A__read's memcpy,
    // fuzz_h5_ckpt), so a value shorter than its type and count is refused;
    // a variable-length value is stored as a heap reference of 16 bytes (8
    // in memory: a 15-byte sdc_kind passed until session 15, fuzz_h5_dataset)
    const uint64_t esz = stored_elem_size(a, t);
    hsize_t stored = H5Aget_storage_size(a), need = (hsize_t)(esz ? esz : H5Tget_size(t)) * (hsize_t)np;
    if (stored < need) {
        sdc_err(err, SDC_ERR_FORMAT, "%s: attribute %s is damaged (%llu bytes stored, its type and shape need %llu) "
                "---> the file is damaged; restore it from a copy", where, name, (unsigned long long)stored,
                (unsigned long long)need);
        goto fail;
    }
    H5Tclose(t);
    H5Sclose(sp);
    *out = a;
    return 0;
fail:
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    if (a >= 0) H5Aclose(a);
    return err ? err->code : SDC_ERR_IO;
}

int h5_attr_get_str(hid_t obj, const char *name, char **out, const char *where, SdcError *err) {
    hid_t a = -1, ft = -1, mt = -1;
    *out = NULL;
    SDC_TRY(attr_open(obj, name, H5T_STRING, -1, "a string", &a, where, err));
    H5_TRY(ft = H5Aget_type(a), "%s: attribute %s", where, name);
    if (H5Tis_variable_str(ft) > 0) {
        char *v = NULL;
        H5_TRY(mt = vlen_utf8(), "%s: string type", where);
        H5_TRY(H5Aread(a, mt, &v), "%s: reading attribute %s", where, name);
        *out = strdup(v ? v : "");
        H5free_memory(v);
    } else { // fixed-length (written by other tools)
        size_t sz = H5Tget_size(ft);
        char *v = calloc(1, sz + 1);
        if (v && H5Aread(a, ft, v) < 0) {
            free(v);
            h5_fail(err, __FILE__, __LINE__, "H5Aread", "%s: reading attribute %s", where, name);
            goto fail;
        }
        *out = v;
    }
    if (!*out) {
        sdc_err(err, SDC_ERR_OOM, "%s: attribute %s: out of memory", where, name);
        goto fail;
    }
    if (mt >= 0) H5Tclose(mt);
    H5Tclose(ft);
    H5Aclose(a);
    return 0;
fail:
    if (mt >= 0) H5Tclose(mt);
    if (ft >= 0) H5Tclose(ft);
    H5Aclose(a);
    return err ? err->code : SDC_ERR_IO;
}

static int attr_get_num(hid_t obj, const char *name, H5T_class_t cls, hid_t mtype, int n, void *v, const char *what,
                        const char *where, SdcError *err) {
    hid_t a = -1;
    SDC_TRY(attr_open(obj, name, cls, n, what, &a, where, err));
    H5_TRY(H5Aread(a, mtype, v), "%s: reading attribute %s", where, name);
    H5Aclose(a);
    return 0;
fail:
    H5Aclose(a);
    return err ? err->code : SDC_ERR_IO;
}

int h5_attr_get_i64(hid_t obj, const char *name, int64_t *out, const char *where, SdcError *err) {
    return attr_get_num(obj, name, H5T_INTEGER, H5T_NATIVE_INT64, -1, out, "an integer", where, err);
}
int h5_attr_get_u32(hid_t obj, const char *name, uint32_t *out, const char *where, SdcError *err) {
    return attr_get_num(obj, name, H5T_INTEGER, H5T_NATIVE_UINT32, -1, out, "an unsigned integer", where, err);
}
int h5_attr_get_f64(hid_t obj, const char *name, double *out, const char *where, SdcError *err) {
    return attr_get_num(obj, name, H5T_FLOAT, H5T_NATIVE_DOUBLE, -1, out, "a number", where, err);
}
int h5_attr_get_u64s(hid_t obj, const char *name, uint64_t *v, int n, const char *where, SdcError *err) {
    return attr_get_num(obj, name, H5T_INTEGER, H5T_NATIVE_UINT64, n, v, "unsigned 64-bit integers", where, err);
}

// ----------------------------------------------------------------------------
// string datasets

int h5_write_strings(hid_t loc, const char *name, const char *const *v, int64_t n, const char *where,
                     SdcError *err) {
    hid_t t = -1, sp = -1, d = -1, dcpl = -1;
    hsize_t dims[1] = {(hsize_t)n}, chunk[1] = {(hsize_t)(n > 0 ? (n < 4096 ? n : 4096) : 1)};
    H5_TRY(t = vlen_utf8(), "%s: string type", where);
    H5_TRY(sp = H5Screate_simple(1, dims, NULL), "%s: dataset %s", where, name);
    H5_TRY(dcpl = H5Pcreate(H5P_DATASET_CREATE), "%s: dataset %s", where, name);
    if (n > 0) {
        H5_TRY(H5Pset_chunk(dcpl, 1, chunk), "%s: dataset %s chunks", where, name);
        H5_TRY(H5Pset_deflate(dcpl, 4), "%s: dataset %s deflate", where, name);
    }
    H5_TRY(d = H5Dcreate2(loc, name, t, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT), "%s: creating dataset %s", where, name);
    if (n > 0) H5_TRY(H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, v), "%s: writing dataset %s", where, name);
    H5Dclose(d);
    H5Pclose(dcpl);
    H5Sclose(sp);
    H5Tclose(t);
    return 0;
fail:
    if (d >= 0) H5Dclose(d);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
    return err ? err->code : SDC_ERR_IO;
}

void h5_free_strings(char **v, int64_t n) {
    if (!v) return;
    for (int64_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

int h5_check_written(hid_t d, uint64_t n, const char *unit, const char *name, const char *where, SdcError *err) {
    if (n == 0) return 0;
    // H5Dget_space_status says "part" for a whole chunked dataset whose
    // chunks are compressed (stored bytes < declared bytes): chunked data
    // counts its stored chunks instead, all ceil(dim / chunk) of them
    hid_t dcpl = -1, sp = -1;
    int whole = 0, partly = 0;
    H5D_space_status_t status = H5D_SPACE_STATUS_ERROR;
    H5_TRY(dcpl = H5Dget_create_plist(d), "%s: %s", where, name);
    if (H5Pget_layout(dcpl) == H5D_CHUNKED) {
        hsize_t dims[H5S_MAX_RANK], ch[H5S_MAX_RANK], want = 1, have = 0;
        H5_TRY(sp = H5Dget_space(d), "%s: %s", where, name);
        int r = H5Sget_simple_extent_dims(sp, dims, NULL);
        if (r < 0 || H5Pget_chunk(dcpl, r, ch) != r || H5Dget_num_chunks(d, sp, &have) < 0) {
            sdc_err(err, SDC_ERR_FORMAT, "%s: %s: cannot count its stored chunks ---> the file is damaged; restore "
                    "it from a copy", where, name);
            goto fail;
        }
        for (int k = 0; k < r; k++) want *= ch[k] ? (dims[k] + ch[k] - 1) / ch[k] : 0;
        whole = have >= want, partly = have > 0;
    } else if (H5Dget_space_status(d, &status) >= 0) {
        whole = status == H5D_SPACE_STATUS_ALLOCATED, partly = status == H5D_SPACE_STATUS_PART_ALLOCATED;
    }
    if (sp >= 0) H5Sclose(sp);
    H5Pclose(dcpl);
    if (whole) return h5_check_stored(d, 0, -1, name, where, err); // and every byte of it as its layout says
    return sdc_err(err, SDC_ERR_FORMAT, "%s: %s (%llu %s) %s written\n---> the file is damaged; restore it from a "
                   "copy", where, name, (unsigned long long)n, unit, partly ? "was only partly" : "was never");
fail:
    if (sp >= 0) H5Sclose(sp);
    if (dcpl >= 0) H5Pclose(dcpl);
    return err->code;
}

// The filters sdc can follow in sizes (deflate, shuffle, Fletcher-32, as
// sdc and h5py write them: shuffle before deflate); 0 or a message.
static int pipeline_known(hid_t dcpl, int nf, const char *name, const char *where, SdcError *err) {
    int deflates = 0;
    for (int i = 0; i < nf; i++) {
        unsigned flags = 0, cfg = 0;
        size_t ncd = 0;
        char fname[64] = "";
        const H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, NULL, sizeof fname, fname, &cfg);
        if (id == H5Z_FILTER_DEFLATE && !deflates++) continue;
        if (id == H5Z_FILTER_SHUFFLE && !deflates) continue;
        if (id == H5Z_FILTER_FLETCHER32) continue;
        return sdc_err(err, SDC_ERR_FORMAT, "%s: %s: its chunks go through filter %d (%s)%s, which sdc does not "
                       "check\n---> sdc writes deflate (with shuffle before it): rewrite the file with h5repack -f "
                       "GZIP=4", where, name, (int)id, fname[0] ? fname : "unnamed",
                       id == H5Z_FILTER_DEFLATE || id == H5Z_FILTER_SHUFFLE ? " in this order" : "");
    }
    return 0;
}

// The size of a stored chunk once its filters are undone (those not skipped
// in mask, last first), up to cap bytes: -1 when deflate cannot inflate it.
static int64_t unfiltered_size(hid_t dcpl, int nf, unsigned mask, const uint8_t *raw, uint64_t n, uint64_t cap) {
    for (int i = nf - 1; i >= 0; i--) {
        if (mask & (1u << i)) continue;
        unsigned flags = 0, cfg = 0;
        size_t ncd = 0;
        const H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, NULL, 0, NULL, &cfg);
        if (id == H5Z_FILTER_FLETCHER32) { // a trailing checksum (HDF5 verifies it)
            if (n < 4) return 0;
            n -= 4;
        } else if (id == H5Z_FILTER_DEFLATE) { // the only one: what follows (in reverse) keeps sizes
            z_stream z = {0};
            uint8_t sink[16384];
            uint64_t out = 0;
            if (inflateInit(&z) != Z_OK) return -1;
            z.next_in = (Bytef *)raw;
            int zr = Z_OK;
            for (uint64_t fed = 0; zr == Z_OK && out <= cap;) {
                if (z.avail_in == 0 && fed < n) {
                    z.avail_in = (uInt)(n - fed < (1u << 30) ? n - fed : (1u << 30));
                    fed += z.avail_in;
                }
                z.next_out = sink, z.avail_out = sizeof sink;
                zr = inflate(&z, Z_NO_FLUSH);
                out += sizeof sink - z.avail_out;
                if (zr == Z_BUF_ERROR && z.avail_in == 0 && fed >= n) break; // input ends before the stream does
                if (zr == Z_BUF_ERROR) zr = Z_OK;
            }
            inflateEnd(&z);
            if (zr != Z_STREAM_END && out <= cap) return -1;
            n = out;
        }
    }
    return (int64_t)(n < cap ? n : cap);
}

int h5_check_stored(hid_t d, int64_t first, int64_t count, const char *name, const char *where, SdcError *err) {
    // the layouts whose stored size is known in advance: compact and
    // contiguous data (extent x element size), chunks (chunk shape x element
    // size, after the filters are undone)
    hid_t dcpl = -1, ft = -1, sp = -1;
    uint8_t *raw = NULL;
    int rc = 0;
    H5_TRY(dcpl = H5Dget_create_plist(d), "%s: %s", where, name);
    const H5D_layout_t lay = H5Pget_layout(dcpl);
    const int nf = lay == H5D_CHUNKED ? H5Pget_nfilters(dcpl) : 0;
    if (lay != H5D_CHUNKED && lay != H5D_COMPACT && lay != H5D_CONTIGUOUS) goto pass;
    H5_TRY(ft = H5Dget_type(d), "%s: %s", where, name);
    const uint64_t esz = stored_elem_size(d, ft);
    if (esz == 0) goto pass;
    if (nf < 0 || (nf > 0 && pipeline_known(dcpl, nf, name, where, err))) goto fail;
    H5_TRY(sp = H5Dget_space(d), "%s: %s", where, name);
    // every byte read must be stored: where nothing is, HDF5 hands out the
    // fill value (from the file: a damaged one of fewer bytes than the type
    // is read past its end, H5VM_array_fill) or, fill time "never" (sdc's
    // images), the caller's buffer as it was; sdc reads only what it wrote
    if (lay != H5D_CHUNKED) {
        const hssize_t np = H5Sget_simple_extent_npoints(sp);
        const uint64_t have = H5Dget_storage_size(d);
        uint64_t need = UINT64_MAX;
        if (np >= 0 && __builtin_mul_overflow((uint64_t)np, esz, &need)) need = UINT64_MAX;
        if (have == 0 && need > 0 && lay == H5D_CONTIGUOUS) {
            sdc_err(err, SDC_ERR_FORMAT, "%s: %s: its data was never written\n---> the file is damaged; restore it "
                    "from a copy", where, name);
            goto fail;
        }
        if (have < need) {
            sdc_err(err, SDC_ERR_FORMAT, "%s: %s: its %s data stores %llu bytes, its shape needs %llu\n---> the file "
                    "is damaged; restore it from a copy", where, name, lay == H5D_COMPACT ? "compact" : "contiguous",
                    (unsigned long long)have, (unsigned long long)need);
            goto fail;
        }
        goto pass;
    }
    hsize_t dims[H5S_MAX_RANK], ch[H5S_MAX_RANK], lo[H5S_MAX_RANK], hi[H5S_MAX_RANK], at[H5S_MAX_RANK],
        off[H5S_MAX_RANK];
    const int r = H5Sget_simple_extent_dims(sp, dims, NULL);
    if (r <= 0 || H5Pget_chunk(dcpl, r, ch) != r) {
        sdc_err(err, SDC_ERR_FORMAT, "%s: %s: cannot read its chunk shape ---> the file is damaged; restore it from "
                "a copy", where, name);
        goto fail;
    }
    uint64_t want = esz;
    for (int k = 0; k < r; k++) {
        if (dims[k] == 0) goto pass; // no chunk holds anything
        if (ch[k] == 0 || want > UINT32_MAX || ch[k] > UINT32_MAX) want = 0; // HDF5 caps chunks at 4 GiB
        want *= ch[k];
        lo[k] = 0, hi[k] = ch[k] ? (dims[k] - 1) / ch[k] : 0;
    }
    if (want == 0 || want > UINT32_MAX) {
        sdc_err(err, SDC_ERR_FORMAT, "%s: %s: its chunk shape is damaged ---> the file is damaged; restore it from a "
                "copy", where, name);
        goto fail;
    }
    if (count >= 0) { // rows first .. first + count - 1 of dimension 0 (callers check them against the extent)
        if (count == 0) goto pass;
        lo[0] = (hsize_t)first / ch[0], hi[0] = (hsize_t)(first + count - 1) / ch[0];
    }
    memcpy(at, lo, (size_t)r * sizeof *at);
    for (;;) { // each chunk of the grid lo..hi, last dimension fastest
        unsigned mask = 0;
        haddr_t addr = HADDR_UNDEF;
        hsize_t got = 0;
        int64_t size = 0;
        for (int k = 0; k < r; k++) off[k] = at[k] * ch[k];
        if (nf > 0) {
            // a filtered chunk's stored size is a field of its index record: looked up (a B-tree search),
            // where H5Dget_chunk_info_by_coord walks the whole index in libhdf5 1.10 (O(chunks) a call);
            // no record (or none readable) is a chunk never written
            if (H5Dget_chunk_storage_size(d, off, &got) >= 0 && got > 0) addr = 0;
            H5Eclear2(H5E_DEFAULT);
        } else { // an unfiltered chunk's lookup gives the nominal size: only the record has the stored one
            H5_TRY(H5Dget_chunk_info_by_coord(d, off, &mask, &addr, &got), "%s: %s: its chunk index", where, name);
        }
        if (addr != HADDR_UNDEF && nf > 0) { // the stored bytes, their filters undone here first
            if (got > UINT32_MAX) {
                size = INT64_MAX;
            } else {
                uint8_t *b = realloc(raw, got ? got : 1);
                if (!b) {
                    sdc_err(err, SDC_ERR_OOM, "%s: %s: out of memory for a chunk of %llu bytes", where, name,
                            (unsigned long long)got);
                    goto fail;
                }
                raw = b;
                H5_TRY(H5Dread_chunk(d, H5P_DEFAULT, off, &mask, raw), "%s: %s: reading a chunk", where, name);
                size = unfiltered_size(dcpl, nf, mask, raw, got, want + 1);
            }
        } else {
            size = (int64_t)got;
        }
        if (addr == HADDR_UNDEF || (uint64_t)size != want) {
            char pos[128];
            int n = 0;
            for (int k = 0; k < r && n < (int)sizeof pos - 24; k++)
                n += snprintf(pos + n, sizeof pos - (size_t)n, "%s%llu", k ? ", " : "", (unsigned long long)off[k]);
            if (addr == HADDR_UNDEF)
                sdc_err(err, SDC_ERR_FORMAT, "%s: %s: its chunk at (%s) was never written\n---> the file is damaged; "
                        "restore it from a copy", where, name, pos);
            else if (size < 0)
                sdc_err(err, SDC_ERR_FORMAT, "%s: %s: its chunk at (%s) does not inflate\n---> the file is damaged; "
                        "restore it from a copy", where, name, pos);
            else
                sdc_err(err, SDC_ERR_FORMAT, "%s: %s: its chunk at (%s) %s %s%llu bytes, its shape needs %llu\n---> "
                        "the file is damaged; restore it from a copy", where, name, pos, nf ? "inflates to" : "stores",
                        nf && (uint64_t)size > want ? "more than " : "",
                        (unsigned long long)(nf && (uint64_t)size > want ? want : (uint64_t)size),
                        (unsigned long long)want);
            goto fail;
        }
        int k = r - 1;
        while (k >= 0 && at[k] == hi[k]) at[k] = lo[k], k--;
        if (k < 0) break;
        at[k]++;
    }
    goto pass;
fail:
    rc = err->code;
pass:
    free(raw);
    if (sp >= 0) H5Sclose(sp);
    if (ft >= 0) H5Tclose(ft);
    if (dcpl >= 0) H5Pclose(dcpl);
    return rc;
}

int h5_read_strings(hid_t loc, const char *name, int64_t expect_n, char ***out, int64_t *n_out, const char *where,
                    SdcError *err) {
    hid_t d = -1, ft = -1, mt = -1, sp = -1;
    char **raw = NULL, **v = NULL;
    hsize_t dims[1] = {0};
    *out = NULL;
    if (!h5_has_link(loc, name))
        return sdc_err(err, SDC_ERR_FORMAT, "%s: dataset %s is missing (expected %lld strings)\n---> layouts: "
                       "data/README.md", where, name, (long long)(expect_n < 0 ? 0 : expect_n));
    H5_TRY(d = H5Dopen2(loc, name, H5P_DEFAULT), "%s: dataset %s", where, name);
    H5_TRY(ft = H5Dget_type(d), "%s: dataset %s", where, name);
    H5_TRY(sp = H5Dget_space(d), "%s: dataset %s", where, name);
    if (H5Tget_class(ft) != H5T_STRING || H5Tis_variable_str(ft) <= 0 || H5Sget_simple_extent_ndims(sp) != 1) {
        sdc_err(err, SDC_ERR_FORMAT, "%s: dataset %s is not a 1-D dataset of variable-length strings", where, name);
        goto fail;
    }
    H5Sget_simple_extent_dims(sp, dims, NULL);
    if (expect_n >= 0 && (int64_t)dims[0] != expect_n) {
        sdc_err(err, SDC_ERR_SHAPE, "%s: dataset %s has %llu entries, expected %lld (one per item)", where, name,
                (unsigned long long)dims[0], (long long)expect_n);
        goto fail;
    }
    if (dims[0] > INT32_MAX) { // sdc writes one string per item; HDF5 takes 2^64 entries with nothing stored
        sdc_err(err, SDC_ERR_FORMAT, "%s: dataset %s has %llu entries (more than 2^31)\n---> the file is damaged",
                where, name, (unsigned long long)dims[0]);
        goto fail;
    }
    if (h5_check_written(d, dims[0], "values", name, where, err)) goto fail;
    raw = calloc(dims[0] + 1, sizeof *raw);
    v = calloc(dims[0] + 1, sizeof *v);
    if (!raw || !v) {
        sdc_err(err, SDC_ERR_OOM, "%s: out of memory for the %llu strings of dataset %s", where,
                (unsigned long long)dims[0], name);
        goto fail;
    }
    H5_TRY(mt = vlen_utf8(), "%s: string type", where);
    if (dims[0]) H5_TRY(H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw), "%s: reading dataset %s", where, name);
    int oom = 0;
    for (hsize_t i = 0; i < dims[0] && !oom; i++) oom = !(v[i] = strdup(raw[i] ? raw[i] : ""));
    if (dims[0]) H5Dvlen_reclaim(mt, sp, H5P_DEFAULT, raw);
    if (oom) {
        for (hsize_t i = 0; i < dims[0]; i++) free(v[i]);
        sdc_err(err, SDC_ERR_OOM, "%s: dataset %s: out of memory", where, name);
        goto fail;
    }
    free(raw);
    H5Tclose(mt);
    H5Tclose(ft);
    H5Sclose(sp);
    H5Dclose(d);
    *out = v;
    *n_out = (int64_t)dims[0];
    return 0;
fail:
    free(raw);
    free(v);
    if (mt >= 0) H5Tclose(mt);
    if (ft >= 0) H5Tclose(ft);
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    return err ? err->code : SDC_ERR_IO;
}

// ----------------------------------------------------------------------------
// types

hid_t h5_type_for(DType dt) {
    switch (dt) {
    case DT_F32: return H5Tcopy(H5T_IEEE_F32LE);
    case DT_F16: { // IEEE binary16, as h5py defines it (numpy float16)
        hid_t t = H5Tcopy(H5T_IEEE_F32LE);
        if (t < 0) return t;
        if (H5Tset_fields(t, 15, 10, 5, 0, 10) < 0 || H5Tset_size(t, 2) < 0 || H5Tset_ebias(t, 15) < 0) {
            H5Tclose(t);
            return -1;
        }
        return t;
    }
    case DT_BF16: return H5Tcopy(H5T_STD_U16LE);
    case DT_U8: return H5Tcopy(H5T_STD_U8LE);
    case DT_I32: return H5Tcopy(H5T_STD_I32LE);
    case DT_I64: return H5Tcopy(H5T_STD_I64LE);
    }
    return -1;
}

const char *h5_dtype_tag(DType dt) {
    switch (dt) {
    case DT_F32: return "f32";
    case DT_F16: return "f16";
    case DT_BF16: return "bf16";
    case DT_U8: return "u8";
    case DT_I32: return "i32";
    case DT_I64: return "i64";
    }
    return "?";
}

int h5_utf8_valid(const char *s, size_t n, size_t *bad) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = u[i];
        int len;
        unsigned cp;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F;
        else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F;
        else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07;
        else goto bad_byte;
        if (i + len > n) goto bad_byte;
        for (int k = 1; k < len; k++) {
            if ((u[i + k] & 0xC0) != 0x80) goto bad_byte;
            cp = cp << 6 | (u[i + k] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            goto bad_byte;
        i += len;
    }
    return 1;
bad_byte:
    if (bad) *bad = i;
    return 0;
}

// ----------------------------------------------------------------------------
// item rows

// Writes k items (contiguous in buf, item_bytes each) at rows rows[0..k) of
// dataset d, collectively under MPI (k may be 0).
int h5_write_rows(hid_t d, hid_t mtype, const H5Par *p, const int64_t *rows, int k, const void *buf,
                      const char *path, const char *name, SdcError *err) {
    hid_t fs = -1, ms = -1, dx = -1;
    hsize_t dims[5], mdims[5];
    H5_TRY(fs = H5Dget_space(d), "%s: dataset %s", path, name);
    int rank = H5Sget_simple_extent_ndims(fs);
    H5Sget_simple_extent_dims(fs, dims, NULL);
    memcpy(mdims, dims, sizeof dims);
    mdims[0] = k > 0 ? (hsize_t)k : 1;
    H5_TRY(ms = H5Screate_simple(rank, mdims, NULL), "%s: dataset %s", path, name);
    if (k == 0) {
        H5_TRY(H5Sselect_none(fs), "%s: dataset %s", path, name);
        H5_TRY(H5Sselect_none(ms), "%s: dataset %s", path, name);
    } else {
        hsize_t start[5] = {0}, count[5];
        memcpy(count, dims, sizeof dims);
        count[0] = 1;
        for (int j = 0; j < k; j++) {
            start[0] = (hsize_t)rows[j];
            H5_TRY(H5Sselect_hyperslab(fs, j ? H5S_SELECT_OR : H5S_SELECT_SET, start, NULL, count, NULL),
                   "%s: dataset %s row %lld", path, name, (long long)rows[j]);
        }
    }
    H5_TRY(dx = h5_dxpl(p), "%s: transfer list", path);
    H5_TRY(H5Dwrite(d, mtype, ms, fs, dx, buf), "%s: writing %d items of dataset %s", path, k, name);
    h5_close_plist(dx);
    H5Sclose(ms);
    H5Sclose(fs);
    return 0;
fail:
    h5_close_plist(dx);
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    return err->code;
}

