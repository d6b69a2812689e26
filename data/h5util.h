// h5util.h: the small layer every sdc HDF5 file kind (data/dataset.c,
// data/checkpoint.c, data/genout.c) is written through: checked HDF5 calls
// that put the call site and HDF5's own message into an SdcError (HDF5's
// automatic error printing is switched off), the root attributes that name a
// file's kind and layout version, UTF-8 string attributes and datasets, the
// f16 / bf16 file types, and a "parallel or not" handle so the same code runs
// as one plain process or as MPI ranks writing one file collectively.
// Layouts themselves are documented in data/README.md.
#ifndef SDC_H5UTIL_H
#define SDC_H5UTIL_H

#include <hdf5.h>
#include <mpi.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tensor.h"
#include "mpi/mpi_check.h"

#define SDC_LAYOUT_VERSION 1

// Evaluates an HDF5 call whose failure is a negative return (herr_t or
// hid_t). On failure fills `err` (a variable in scope) with the context
// (printf-style: name the file and the dataset), the call and its site, and
// HDF5's own message (or, when a system call failed underneath, the system's
// reason, e.g. "No space left on device", and a hint), then jumps to the
// label `fail`.
#define H5_TRY(call, ...)                                                         \
    do {                                                                          \
        if ((call) < 0) {                                                         \
            h5_fail(err, __FILE__, __LINE__, #call, __VA_ARGS__);                 \
            goto fail;                                                            \
        }                                                                         \
    } while (0)

// MPI calls: mpi/mpi_check.h (MPI_TRY_GOTO(fail, call, ...) here).
void h5_fail(SdcError *err, const char *file, int line, const char *call, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

// Closes *f (if >= 0) and sets it to -1 whatever happened: a failed
// H5Fclose (its final flush hit a full disk) must not be followed by another
// close of the same id. On failure err names path and the system's reason.
#define h5_close_file(f, path, err) h5_close_file_at(f, path, err, __FILE__, __LINE__)
int h5_close_file_at(hid_t *f, const char *path, SdcError *err, const char *file, int line);

// HDF5 1.10 closes every file still open when the process exits (its atexit
// handler), and crashes (SIGSEGV in H5F__close_cb) on a file whose close
// already failed, as a close does on a full disk: an error exit would become
// a segfault. sdc closes its own files, so main calls h5_lib_start() first
// (no atexit handler) and h5_lib_finish(ok) last, which closes the library
// only after a run that ended well; after an error whatever is still open is
// left to the exit.
void h5_lib_start(void);
void h5_lib_finish(int ok);

// Turns off HDF5's printing of its error stack (messages go into SdcError).
void h5_quiet(void);

// ----------------------------------------------------------------------------
// one process, or MPI ranks sharing a file

typedef struct H5Par {
    MPI_Comm comm; // MPI_COMM_NULL: a plain process (no MPI calls at all)
    int rank, size;
} H5Par;

// MPI_COMM_WORLD when MPI is initialised (sdc under mpiexec), else serial.
H5Par h5_par_world(void);
H5Par h5_par_serial(void);
static inline int h5_par_is_mpi(const H5Par *p) { return p->comm != MPI_COMM_NULL; }
// All ranks agree on a status: the first non-zero rc of any rank (by rank
// order) and its message end up on every rank. Serial: returns rc.
int h5_par_agree(const H5Par *p, int rc, SdcError *err);
// Sum / max of an int64 over the ranks (serial: x).
int64_t h5_par_sum(const H5Par *p, int64_t x);
int64_t h5_par_max(const H5Par *p, int64_t x);
// Element-wise max of n bytes over the ranks, in place.
void h5_par_max_bytes(const H5Par *p, uint8_t *x, int n);
void h5_par_barrier(const H5Par *p);

// File access property list: MPI-IO on p's communicator, else the default.
hid_t h5_fapl(const H5Par *p);
// Transfer property list: collective MPI-IO (required for filtered datasets
// in HDF5 1.10), else H5P_DEFAULT. Close with h5_close_plist.
hid_t h5_dxpl(const H5Par *p);
void h5_close_plist(hid_t pl);

// ----------------------------------------------------------------------------
// files of a kind

// Opens path (read-only or read-write) and checks that its root attributes
// say sdc_kind == kind and sdc_layout_version == SDC_LAYOUT_VERSION; a file
// that is not HDF5, is truncated, or is of another kind/version gets a message
// naming the file and what was found.
int h5_open_kind(const char *path, const char *kind, int rw, const H5Par *p, hid_t *out, SdcError *err);
// Writes sdc_kind and sdc_layout_version on the root group.
int h5_set_kind(hid_t file, const char *path, const char *kind, SdcError *err);

// ----------------------------------------------------------------------------
// attributes and strings (variable-length UTF-8, which h5py reads as str)

int h5_attr_str(hid_t obj, const char *name, const char *value, const char *where, SdcError *err);
int h5_attr_i64(hid_t obj, const char *name, int64_t value, const char *where, SdcError *err);
int h5_attr_u32(hid_t obj, const char *name, uint32_t value, const char *where, SdcError *err);
int h5_attr_f64(hid_t obj, const char *name, double value, const char *where, SdcError *err);
int h5_attr_u64s(hid_t obj, const char *name, const uint64_t *v, int n, const char *where, SdcError *err);
// Readers: missing attribute -> SDC_ERR_FORMAT naming it. get_str mallocs *out.
int h5_attr_get_str(hid_t obj, const char *name, char **out, const char *where, SdcError *err);
int h5_attr_get_i64(hid_t obj, const char *name, int64_t *out, const char *where, SdcError *err);
int h5_attr_get_u32(hid_t obj, const char *name, uint32_t *out, const char *where, SdcError *err);
int h5_attr_get_f64(hid_t obj, const char *name, double *out, const char *where, SdcError *err);
int h5_attr_get_u64s(hid_t obj, const char *name, uint64_t *v, int n, const char *where, SdcError *err);
int h5_has_attr(hid_t obj, const char *name);
int h5_has_link(hid_t loc, const char *name);

// 0 when dataset d has all its storage allocated, else an SDC_ERR_FORMAT
// error "WHERE: NAME (N UNIT) was never written / was only partly written
// ---> the file is damaged": for the datasets sdc writes whole, whose
// declared extent would otherwise size a reader's buffer with nothing stored
// behind it; then h5_check_stored of the whole dataset. n == 0 passes.
int h5_check_written(hid_t d, uint64_t n, const char *unit, const char *name, const char *where, SdcError *err);

// 0 unless dataset d holds other than its layout needs for rows first ..
// first + count - 1 of dimension 0 (every row when count < 0): a stored chunk
// that is not its chunk's full size once its filters are undone ("WHERE:
// NAME: its chunk at (...) stores S bytes / inflates to S bytes, its shape
// needs W", "... does not inflate"), compact or allocated contiguous data
// shorter than the extent ("its compact data stores S bytes, ..."): an
// SDC_ERR_FORMAT error, "---> the file is damaged"; or chunks through a
// filter other than deflate, shuffle (before deflate) and Fletcher-32, which
// it cannot follow (SDC_ERR_FORMAT, "---> ... h5repack -f GZIP=4"). Call it
// before H5Dread of such rows: HDF5 1.10 copies the full size out of a
// shorter chunk or compact buffer, a heap overflow inside libhdf5
// (tests/fuzz/regress/h5_dataset/*-short.h5). Filtered chunks are read and
// inflated here (H5Dread_chunk, zlib): twice the inflating of a plain read.
// Rows never written are refused too ("its chunk at (...) was never
// written", "its data was never written"): HDF5 would hand out the file's
// fill value (a damaged one is read past its end) or the buffer as it was.
int h5_check_stored(hid_t d, int64_t first, int64_t count, const char *name, const char *where, SdcError *err);

// A 1-D dataset of n strings (variable-length UTF-8), written in one call
// (serial files only: HDF5 1.10 cannot write variable-length data in parallel).
int h5_write_strings(hid_t loc, const char *name, const char *const *v, int64_t n, const char *where,
                     SdcError *err);
// Reads all strings of a 1-D string dataset; *out is an array of n malloc'd
// strings (free with h5_free_strings). Checks the length is `expect_n` (< 0:
// any).
int h5_read_strings(hid_t loc, const char *name, int64_t expect_n, char ***out, int64_t *n, const char *where,
                    SdcError *err);
void h5_free_strings(char **v, int64_t n);

// File datatypes for tensor dtypes: F32 / F16 as IEEE little-endian floats,
// BF16 as u16 (marked by a dtype="bf16" attribute), U8, I32, I64.
hid_t h5_type_for(DType dt); // a copy: close with H5Tclose
const char *h5_dtype_tag(DType dt); // "f32", "f16", "bf16", ...

// Writes k items (contiguous in buf, one row of dataset d each) at rows
// rows[0..k) (increasing), collectively under MPI; k may be 0 (the rank
// still takes part, with an empty selection).
int h5_write_rows(hid_t d, hid_t mtype, const H5Par *p, const int64_t *rows, int k, const void *buf,
                  const char *path, const char *name, SdcError *err);

// 1 if the bytes are valid UTF-8 (no overlongs, no surrogates); *bad gets the
// offset of the first bad byte.
int h5_utf8_valid(const char *s, size_t n, size_t *bad);

#endif
