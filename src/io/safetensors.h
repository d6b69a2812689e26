// safetensors.h: a validating, mmap-based reader (and a writer) of the
// safetensors format: 8-byte little-endian header length, a JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
// "__metadata__": {str: str}}, then the data. Validation: the JSON is
// well-formed, every dtype is known, offsets lie inside the file, agree with
// the shape and dtype, and together tile the data region exactly.
// The reader never copies tensor data: tensors are views into the mapping.
#ifndef SDC_SAFETENSORS_H
#define SDC_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tensor.h"

typedef struct StEntry {
    char *name;
    DType dtype;      // meaningful only when supported
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    // Files may hold tensors sdc never loads (F64 / BOOL / I8 / U16 ... buffers,
    // more than 4 dims). They are validated like the others (size, offsets) and
    // kept with supported = 0; asking for one (st_get) gives a clear error.
    int supported;
    char dtype_str[8];  // the dtype as written in the file ("F32", "F64", ...)
    size_t offset;    // into the data region
    size_t nbytes;
} StEntry;

typedef struct StFile {
    char *path;
    int fd;
    const uint8_t *map; // whole file
    size_t size;
    const uint8_t *data; // start of the data region
    StEntry *entries;   // sorted by name
    int n;
    char **meta_keys, **meta_vals; // __metadata__
    int n_meta;
} StFile;

int st_open(StFile *f, const char *path, SdcError *err);
// Parses an in-memory buffer (the fuzz target and tests use this); the
// buffer must outlive f. path is used in messages only.
int st_parse(StFile *f, const uint8_t *buf, size_t size, const char *path, SdcError *err);
void st_close(StFile *f);
const StEntry *st_find(const StFile *f, const char *name); // NULL if absent
Tensor st_tensor(const StFile *f, const StEntry *e);      // a CPU view into the map (data NULL if !supported)
// Lookup by name with errors naming the file and tensor: missing, or a dtype /
// rank sdc cannot load.
int st_get(const StFile *f, const char *name, Tensor *out, SdcError *err);
const char *st_meta(const StFile *f, const char *key);   // NULL if absent

// Writer: tensors are CPU tensors of F32/F16/BF16/I32/I64/U8; written with
// names in the given order's sorted form, header padded to 8 bytes, to
// path.tmp then renamed.
int st_write(const char *path, const char *const *names, const Tensor *tensors, int n,
             const char *const *meta_keys, const char *const *meta_vals, int n_meta, SdcError *err);

#endif
